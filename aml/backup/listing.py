"""Listing snapshots: aml's own and the legacy Loom backups in the same folder."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aml.store.names import text_names
from aml.store.timestamps import utc_iso_z

from .errors import CorruptionError, SnapshotNotFound
from .legacy import find_legacy
from .manifest import read_header
from .repository import Repository, as_repository

__all__ = ["DamagedSnapshot", "SnapshotInfo", "list_damaged_snapshots", "list_snapshots"]


@dataclass
class SnapshotInfo:
    """One entry of :func:`list_snapshots`.

    Attributes:
        backup_id: id to pass to restore/forget.
        backup_type: ``"full"`` or ``"incremental"``.
        time: when it was taken (aware UTC).
        parent_backup_id: parent (incremental), if any.
        source_path: store path, if recorded.
        hostname, tags, description: aml snapshots only.
        file_count, total_size_bytes: files and uncompressed bytes in the snapshot (legacy: as recorded
            by the origin tool; for a legacy incremental, only its changed files).
        agents: agent directories.
        errors: entries that were not stored (aml snapshots).
        legacy: True for Loom's own backups; ``legacy_origin`` is then ``"python"`` or ``"typescript"``.
    """

    backup_id: str
    backup_type: str
    time: datetime
    parent_backup_id: str | None = None
    source_path: str | None = None
    hostname: str = ""
    tags: list[str] = field(default_factory=list)
    description: str | None = None
    file_count: int = 0
    total_size_bytes: int = 0
    agents: list[str] = field(default_factory=list)
    errors: int = 0
    legacy: bool = False
    legacy_origin: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (time as ISO 8601 UTC ``Z``; names that are not UTF-8 escaped ``\\xNN``)."""
        return text_names({
            "backup_id": self.backup_id,
            "backup_type": self.backup_type,
            "time": utc_iso_z(self.time),
            "parent_backup_id": self.parent_backup_id,
            "source_path": self.source_path,
            "hostname": self.hostname,
            "tags": list(self.tags),
            "description": self.description,
            "file_count": self.file_count,
            "total_size_bytes": self.total_size_bytes,
            "agents": list(self.agents),
            "errors": self.errors,
            "legacy": self.legacy,
            "legacy_origin": self.legacy_origin,
        })


@dataclass
class DamagedSnapshot:
    """One entry of :func:`list_damaged_snapshots`: a manifest header that cannot be trusted.

    Attributes:
        backup_id: the id its file name gives (``snapshots/<backup_id>.json``).
        location: that file, relative to the repository root.
        reason: why it is unreadable (does not parse, checksum mismatch, names another id, ...).
    """

    backup_id: str
    location: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict ``{"backup_id", "location", "reason"}``."""
        return {"backup_id": self.backup_id, "location": self.location, "reason": self.reason}


def list_damaged_snapshots(repo: Repository | str | os.PathLike[str]) -> list[DamagedSnapshot]:
    """List the native snapshots whose manifest header is present but damaged.

    These are the ones :func:`list_snapshots` leaves out (they cannot be restored); a caller that lists
    snapshots for a person should show them too, so a damaged snapshot is never mistaken for an absent
    one. Only the header is read (the body is checked by :func:`~aml.backup.checker.check`).

    Args:
        repo: the repository (or its path); an uninitialised folder has none.

    Returns:
        :class:`DamagedSnapshot` entries sorted by backup id.
    """
    repo = as_repository(repo)
    out: list[DamagedSnapshot] = []
    for backup_id in repo.snapshot_ids():
        try:
            read_header(repo.path, backup_id)
        except SnapshotNotFound:
            continue  # removed meanwhile (forget), or not a snapshot name
        except CorruptionError as exc:
            out.append(DamagedSnapshot(backup_id, exc.location or f"snapshots/{backup_id}.json", str(exc)))
    return out


def list_snapshots(repo: Repository | str | os.PathLike[str], *, include_legacy: bool = True) -> list[SnapshotInfo]:
    """List the snapshots of a repository, oldest first.

    aml snapshots are those whose manifest header is present and intact. A header that is present but
    damaged is not listed here (it cannot be restored): :func:`list_damaged_snapshots` returns those,
    and :func:`~aml.backup.checker.check` reports them. Legacy Loom backups are included with
    ``legacy=True`` unless ``include_legacy`` is False.

    Args:
        repo: the repository (or its path); it need not be initialised (legacy-only folders).
        include_legacy: include Loom's own backups.

    Returns:
        :class:`SnapshotInfo` entries sorted by (time, backup_id).
    """
    repo = as_repository(repo)
    out: list[SnapshotInfo] = []
    for backup_id in repo.snapshot_ids():
        try:
            m = read_header(repo.path, backup_id)
        except (CorruptionError, SnapshotNotFound):
            continue
        out.append(
            SnapshotInfo(
                backup_id=m.backup_id,
                backup_type=m.backup_type,
                time=m.time,
                parent_backup_id=m.parent_backup_id,
                source_path=m.source_path,
                hostname=m.hostname,
                tags=list(m.tags),
                description=m.description,
                file_count=m.file_count,
                total_size_bytes=m.total_size_bytes,
                agents=list(m.agents),
                errors=len(m.errors),
            )
        )
    if include_legacy:
        for b in find_legacy(repo):
            out.append(
                SnapshotInfo(
                    backup_id=b.backup_id,
                    backup_type=b.backup_type,
                    time=b.time,
                    parent_backup_id=b.parent_backup_id,
                    source_path=b.source_path,
                    file_count=b.file_count,
                    total_size_bytes=b.total_size_bytes,
                    agents=list(b.agents),
                    legacy=True,
                    legacy_origin=b.origin,
                )
            )
    out.sort(key=lambda s: (s.time, s.backup_id))
    return out
