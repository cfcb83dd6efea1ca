"""Find the newest snapshot that holds a good copy of a document that no longer parses.

The decision matrix answers "a document that does not parse" with ``optimize gc`` (a quarantine copy) and
names the snapshot to restore it from (``aml <store> backup restore --backup-id ID --path PATH``): aml never
overwrites a live document on its own. A copy is good when it reads and parses as the store's reader reads
it (:meth:`aml.store.FileStore.read_document`).
"""

from __future__ import annotations

import glob
import os
import shlex
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aml.backup.errors import BackupError
from aml.backup.listing import list_snapshots
from aml.backup.repository import Repository, as_repository
from aml.backup.restorer import restore
from aml.store import FileStore
from aml.store.documents import DocumentError
from aml.store.timestamps import utc_iso_z

MAX_SNAPSHOTS = 20
"""Snapshots examined, newest first: a good copy older than that is too stale to advise."""


@dataclass(frozen=True)
class GoodCopy:
    """The newest snapshot whose copy of ``path`` parses: ``backup_id``, its time (ISO 8601 UTC ``Z``), and
    the command that restores that one file over the store."""

    path: str
    backup_id: str
    time: str
    command: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"path": self.path, "backup_id": self.backup_id, "time": self.time, "command": self.command}


def _parses(root: Path, relpath: str) -> bool:
    try:
        FileStore(root).read_document(relpath)
    except (DocumentError, OSError, ValueError):
        return False
    return True


def newest_good_copies(repo: Repository | str | os.PathLike[str], store_root: str | os.PathLike[str],
                       paths: Iterable[str], *, max_snapshots: int = MAX_SNAPSHOTS) -> dict[str, GoodCopy | None]:
    """For each store-relative ``path``, the newest snapshot of the store whose copy of it parses.

    Args:
        repo: the store's backup repository.
        store_root: the store directory (snapshots of other stores in the repository are skipped).
        paths: POSIX paths relative to the store root (as health reports them).
        max_snapshots: snapshots examined, newest first (each is restored once, for the paths still missing a
            good copy, into a temporary directory that is then removed).

    Returns:
        path -> :class:`GoodCopy`, or ``None`` when no examined snapshot holds a copy that parses (or the
        repository has no snapshot of the store).

    Raises:
        BackupError: the repository cannot be listed.
    """
    repo = as_repository(repo)
    wanted = [p for p in paths if p]
    out: dict[str, GoodCopy | None] = dict.fromkeys(wanted)
    if not wanted or not repo.path.exists():
        return out
    source = os.path.realpath(store_root)
    snapshots = [s for s in list_snapshots(repo) if not s.legacy and s.source_path is not None
                 and os.path.realpath(s.source_path) == source]
    snapshots.sort(key=lambda s: s.time, reverse=True)
    for snap in snapshots[:max_snapshots]:
        missing = [p for p in wanted if out[p] is None]
        if not missing:
            break
        with tempfile.TemporaryDirectory(prefix="aml-goodcopy-") as scratch:
            try:  # one restore per snapshot for every path still without a good copy
                restore(repo, snap.backup_id, scratch, paths=[glob.escape(p) for p in missing], exact=False)
            except BackupError:
                continue
            for path in missing:
                if (Path(scratch) / path).is_file() and _parses(Path(scratch), path):
                    command = (f"aml {shlex.quote(os.fspath(store_root))} backup restore --backup-id "
                               f"{shlex.quote(snap.backup_id)} --path {shlex.quote(glob.escape(path))}")
                    out[path] = GoodCopy(path, snap.backup_id, utc_iso_z(snap.time), command)
    return out
