"""``backup_metadata.json``: the seeds' summary of every backup, kept up to date for older tools.

Format (the Loom Python scripts' ``BackupMetadata``, same keys, so their loader still reads it)::

    {"version": "1.0.0",
     "backups": [{"backup_id", "backup_type": "full" | "incremental", "timestamp", "source_path",
                  "backup_path", "agents", "total_size_bytes", "file_count", "checksums",
                  "parent_backup_id", "compressed", "encrypted"}]}

For aml snapshots: ``timestamp`` is ISO 8601 UTC with ``Z``; ``backup_path`` is the manifest header;
``file_count``/``total_size_bytes`` describe the complete snapshot (every aml snapshot is complete,
incremental only in what it stored); ``checksums`` maps each path to its sha256 only when the snapshot
has at most :data:`CHECKSUMS_INLINE_MAX` files, and is ``{}`` above that (the manifest has them all:
100,000 inline checksums would make this file ~10 MB per snapshot). Legacy entries written by the seeds
are preserved unchanged. The file is rewritten atomically under an ``flock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aml.store.atomic import atomic_write

from ._common import TMP_PREFIX, iso_z
from .errors import BackupError
from .manifest import Manifest, read_header

CHECKSUMS_INLINE_MAX = 200
SUMMARY_FILE = "backup_metadata.json"

__all__ = ["CHECKSUMS_INLINE_MAX", "read_summary", "summary_entry", "update_summary"]


def summary_entry(root: Path, m: Manifest) -> dict[str, Any]:
    """Return the ``backup_metadata.json`` entry for an aml snapshot (tables loaded or not)."""
    checksums: dict[str, str] = {}
    if m.files is not None and len(m.files) <= CHECKSUMS_INLINE_MAX:
        checksums = dict(zip(m.files.path, m.files.sha256, strict=True))
    return {
        "backup_id": m.backup_id,
        "backup_type": m.backup_type,
        "timestamp": iso_z(m.time),
        "source_path": m.source_path,
        "backup_path": str(root / "snapshots" / f"{m.backup_id}.json"),
        "agents": list(m.agents),
        "total_size_bytes": m.total_size_bytes,
        "file_count": m.file_count,
        "checksums": checksums,
        "parent_backup_id": m.parent_backup_id,
        "compressed": True,
        "encrypted": False,
    }


def read_summary(root: Path) -> dict[str, Any] | None:
    """Parse ``backup_metadata.json``.

    Returns:
        The document, or None if it is missing or unreadable (never raises for bad content).
    """
    try:
        doc = json.loads((root / SUMMARY_FILE).read_bytes())
    except (FileNotFoundError, ValueError, OSError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("backups"), list):
        return None
    return doc


@contextlib.contextmanager
def _flock(root: Path) -> Iterator[None]:
    locks = root / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / "summary.flock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def update_summary(root: Path, add: Iterable[dict[str, Any]] = (), remove: Iterable[str] = ()) -> None:
    """Add or replace entries and drop removed ones in ``backup_metadata.json``.

    The file is also reconciled with ``snapshots/``: an aml snapshot missing from it (a backup killed
    between its manifest and this file) is added, and an aml entry whose manifest is gone is dropped.
    Legacy entries are never touched. An existing file that does not parse is renamed
    ``backup_metadata.json.corrupt-<UTC time>`` (never deleted) and a new one is started.

    Args:
        root: repository root.
        add: entries (see :func:`summary_entry`); an entry with an existing id replaces it.
        remove: backup ids to drop.

    Raises:
        OSError: on write failure (the old file is then intact).
    """
    add = list(add)
    drop = set(remove) | {e["backup_id"] for e in add}
    path = root / SUMMARY_FILE
    with _flock(root):
        doc = read_summary(root)
        if doc is None:
            if path.exists():
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
                os.replace(path, root / f"{SUMMARY_FILE}.corrupt-{stamp}")
            doc = {"version": "1.0.0", "backups": []}
        snaps = root / "snapshots"
        native = (
            {n[:-5] for n in os.listdir(snaps) if n.endswith(".json") and not n.startswith(TMP_PREFIX)}
            if snaps.is_dir()
            else set()
        )
        kept = []
        for b in doc["backups"]:
            if not isinstance(b, dict):
                kept.append(b)
                continue
            bid = str(b.get("backup_id"))
            if bid in drop:
                continue
            if str(b.get("backup_path") or "").endswith(f"/snapshots/{bid}.json") and bid not in native:
                continue  # an aml snapshot that no longer exists
            kept.append(b)
        doc["backups"] = kept
        doc["backups"].extend(add)
        listed = {str(b.get("backup_id")) for b in kept if isinstance(b, dict)} | {e["backup_id"] for e in add}
        for bid in sorted(native - listed - set(remove)):
            try:
                doc["backups"].append(summary_entry(root, read_header(root, bid)))
            except BackupError:
                continue
        atomic_write(path, json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8"))
