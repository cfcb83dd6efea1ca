"""Loom's own backups, found in the repository folder: listed and restorable, never modified.

Two origins (see data/DATA.md, section 1):

* **Python scripts** (``scripts/aml/backup.py``): directories ``full_YYYYMMDD_HHMMSS/`` and
  ``incr_YYYYMMDD_HHMMSS/`` holding ``<agent>/<name>.json.gz`` and ``global/<name>.gz`` files, described
  by ``backup_metadata.json`` (naive local timestamps, taken as UTC; sha256 of the uncompressed files in
  ``checksums``; ``parent_backup_id`` for incrementals, which hold only the changed files). A restore
  applies the chain full -> ... -> the requested incremental. An incremental whose parent is not
  recorded (no entry in ``backup_metadata.json``, or a ``null`` parent) is chained to the newest legacy
  backup of the same origin older than it (by the time in its name), which leads back to the newest full
  before it; without an older full the chain is incomplete and an exact restore of it is refused (its
  own files can still be restored with ``exact=False``). The scripts only ever covered the
  agent files ``patterns/solutions/decisions/metrics/context/index.json`` and the files directly in
  ``global/``, so an exact legacy restore only removes such files; everything else in the target is
  left alone. The scripts kept no mtimes: restored files get the backup's timestamp, mode 0644.
* **TypeScript runtime** (``BackupManager``): ``backup-<ms>-<rand>.tar.gz`` plus
  ``backup-<ms>-<rand>.meta.json`` (``id, timestamp, agents, totalSize, compressed, encrypted, type,
  checksum`` = sha256 of the archive, ``fileCount``; optional ``parentBackupId``); an older variant
  keeps a ``backup-<ms>-<rand>/`` directory instead of the archive. Files are restored byte for byte
  (gzip bytes under ``.json`` names stay gzip), with the archive's mtimes and modes. Only regular
  files and directories are accepted from an archive; links, devices and unsafe names are refused.
  An exact restore removes only files directly inside the archive's top-level directories.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aml.store.timestamps import require_timestamp, utc_iso_z

from .errors import BackupError, CorruptionError, SnapshotNotFound, UnsafePathError
from .manifest import DirTable, FileTable, check_relpath
from .repository import Repository, as_repository
from .summary import read_summary, salvage_summary

PYTHON_AGENT_FILES = frozenset(
    {"patterns.json", "solutions.json", "decisions.json", "metrics.json", "context.json", "index.json"}
)
_PY_DIR = re.compile(r"^(full|incr)_(\d{8})_(\d{6})$")
_TS_ID = re.compile(r"^backup-(\d+)-[0-9a-z]+$")

__all__ = ["LegacyBackup", "LegacyTables", "find_legacy", "legacy_tables", "verify_legacy"]


@dataclass
class LegacyBackup:
    """A Loom backup made before aml.

    Attributes:
        backup_id: directory name (Python) or ``backup-<ms>-<rand>`` (TypeScript).
        origin: ``"python"`` or ``"typescript"``.
        backup_type: ``"full"`` or ``"incremental"``.
        time: backup time, aware UTC.
        parent_backup_id: parent of an incremental (recorded, or inferred: see ``parent_inferred``).
        parent_inferred: the origin tool recorded no parent; ``parent_backup_id`` is the newest legacy
            backup of the same origin older than this incremental.
        agents: as recorded by the origin tool.
        file_count, total_size_bytes: as recorded by the origin tool (its own meaning of size).
        source_path: the store it came from, when recorded.
        location: the directory or archive holding the files.
        checksums: path -> sha256 of the uncompressed file (Python), if recorded.
        archive_sha256: sha256 of the ``.tar.gz`` (TypeScript), if recorded.
    """

    backup_id: str
    origin: str
    backup_type: str
    time: datetime
    parent_backup_id: str | None
    agents: list[str]
    file_count: int
    total_size_bytes: int
    source_path: str | None
    location: Path
    checksums: dict[str, str] = field(default_factory=dict)
    archive_sha256: str | None = None
    parent_inferred: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        d = asdict(self)
        d["time"] = utc_iso_z(self.time)
        d["location"] = str(self.location)
        d["checksums"] = len(self.checksums)
        return d


def _is_native_entry(root: Path, entry: dict[str, Any]) -> bool:
    bid = str(entry.get("backup_id"))
    bp = str(entry.get("backup_path") or "")
    return (root / "snapshots" / f"{bid}.json").exists() or bp.endswith(f"/snapshots/{bid}.json")


def find_legacy(repo: Repository | str | os.PathLike[str]) -> list[LegacyBackup]:
    """Find the legacy Loom backups in a repository folder.

    Python backups come from ``backup_metadata.json`` entries whose directory exists (plus ``full_*``/
    ``incr_*`` directories missing from it, with the time taken from the name); TypeScript backups from
    ``*.meta.json`` files whose archive or directory exists. Unreadable metadata is skipped; a
    ``backup_metadata.json`` that does not parse still gives the entries that can be decoded from it.
    An incremental without a recorded parent gets the newest older backup of its origin as parent
    (``parent_inferred``), or none if there is no older one.

    Returns:
        The backups, oldest first.
    """
    repo = as_repository(repo)
    root = repo.path
    out: dict[str, LegacyBackup] = {}
    doc = read_summary(root)
    for e in doc["backups"] if doc else salvage_summary(root):
        if not isinstance(e, dict) or _is_native_entry(root, e):
            continue
        bid = str(e.get("backup_id", ""))
        if not bid or "/" in bid or bid.startswith("."):
            continue
        location = root / bid
        if not location.is_dir():
            continue
        try:
            when = require_timestamp(e["timestamp"])
        except (KeyError, ValueError, TypeError):
            continue
        out[bid] = LegacyBackup(
            backup_id=bid,
            origin="python",
            backup_type=str(e.get("backup_type", "full")),
            time=when,
            parent_backup_id=e.get("parent_backup_id"),
            agents=[str(a) for a in e.get("agents", [])],
            file_count=int(e.get("file_count", 0)),
            total_size_bytes=int(e.get("total_size_bytes", 0)),
            source_path=e.get("source_path"),
            location=location,
            checksums={str(k): str(v) for k, v in (e.get("checksums") or {}).items()},
        )
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        names = []
    for name in names:
        mt = _PY_DIR.match(name)
        if mt and name not in out and (root / name).is_dir() and not (root / "snapshots" / f"{name}.json").exists():
            when = datetime.strptime(mt.group(2) + mt.group(3), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
            out[name] = LegacyBackup(
                backup_id=name,
                origin="python",
                backup_type="full" if mt.group(1) == "full" else "incremental",
                time=when,
                parent_backup_id=None,
                agents=sorted(p.name for p in (root / name).iterdir() if p.is_dir()),
                file_count=sum(1 for p in (root / name).rglob("*") if p.is_file()),
                total_size_bytes=0,
                source_path=None,
                location=root / name,
            )
        if name.endswith(".meta.json"):
            try:
                meta = json.loads((root / name).read_bytes())
                bid = str(meta["id"])
                when = require_timestamp(meta["timestamp"])
            except (ValueError, KeyError, TypeError, OSError):
                continue
            if not _TS_ID.match(bid) or bid + ".meta.json" != name:
                continue
            archive = root / f"{bid}.tar.gz"
            location = archive if archive.is_file() else root / bid
            if not location.exists():
                continue
            out[bid] = LegacyBackup(
                backup_id=bid,
                origin="typescript",
                backup_type=str(meta.get("type", "full")),
                time=when,
                parent_backup_id=meta.get("parentBackupId"),
                agents=[str(a) for a in meta.get("agents", [])],
                file_count=int(meta.get("fileCount", 0)),
                total_size_bytes=int(meta.get("totalSize", 0)),
                source_path=None,
                location=location,
                archive_sha256=meta.get("checksum"),
            )
    _infer_parents(out)
    return sorted(out.values(), key=lambda b: (b.time, b.backup_id))


def _age_key(b: LegacyBackup) -> tuple[datetime, int, datetime]:
    """Order of creation: the time in a Python backup's name (the scripts' own clock, to the second;
    a full sorts before an incremental of the same second), then the recorded time."""
    mt = _PY_DIR.match(b.backup_id) if b.origin == "python" else None
    if mt is None:
        return (b.time, 0 if b.backup_type == "full" else 1, b.time)
    named = datetime.strptime(mt.group(2) + mt.group(3), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    return (named, 0 if mt.group(1) == "full" else 1, b.time)


def _infer_parents(backups: dict[str, LegacyBackup]) -> None:
    """Give each incremental without a recorded parent the newest older backup of its origin.

    Chaining through the incrementals in between (rather than straight to the full) is right whether
    the origin tool's incrementals hold the changes since the last backup or since the last full.
    """
    for b in backups.values():
        if b.backup_type == "full" or b.parent_backup_id:
            continue
        key = _age_key(b)
        older = [o for o in backups.values() if o.origin == b.origin and o is not b and _age_key(o) < key]
        if older:
            b.parent_backup_id = max(older, key=_age_key).backup_id
            b.parent_inferred = True


@dataclass
class LegacyTables:
    """A legacy backup (with its parents applied) as restore tables.

    Attributes:
        files, dirs: the entries, like a manifest's.
        data: content of file ``i``.
        removable: exact-restore predicate ``(path, is_dir) -> bool``: what the origin tool covered. For
            an incomplete chain it raises :class:`BackupError` instead of answering True: removing
            what the partial backup lacks would delete the agent's other files.
        walk_roots: top-level directories to inspect in the target.
        complete: the chain starts at a full backup; False when an incremental has no older full to
            apply it on (only its own files are in the tables).
        chain: backup ids applied, oldest (the full) first.
    """

    files: FileTable
    dirs: DirTable
    data: list[bytes]
    removable: Callable[[str, bool], bool]
    walk_roots: tuple[str, ...]
    complete: bool = True
    chain: tuple[str, ...] = ()


def _chain(backups: dict[str, LegacyBackup], backup_id: str) -> list[LegacyBackup]:
    """The backups to apply, oldest first; starts at a full unless no parent is known (incomplete).

    Raises:
        BackupError: the parents loop.
        SnapshotNotFound: a recorded parent is missing.
    """
    chain = [backups[backup_id]]
    seen = {backup_id}
    while chain[0].backup_type != "full" and chain[0].parent_backup_id:
        pid = chain[0].parent_backup_id
        if pid in seen:
            raise BackupError(f"legacy backup {backup_id}: parent chain loops at {pid}")
        if pid not in backups:
            raise SnapshotNotFound(f"legacy backup {backup_id}: parent {pid} is missing")
        seen.add(pid)
        chain.insert(0, backups[pid])
    return chain


def _python_files(b: LegacyBackup) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for top in sorted(os.listdir(b.location)):
        tdir = b.location / top
        if not tdir.is_dir() or tdir.is_symlink():
            continue
        for name in sorted(os.listdir(tdir)):
            f = tdir / name
            if f.is_symlink() or not f.is_file():
                continue
            rel = f"{top}/{name[:-3]}" if name.endswith(".gz") else f"{top}/{name}"
            check_relpath(rel)
            raw = f.read_bytes()
            try:
                data = gzip.decompress(raw) if name.endswith(".gz") else raw
            except (OSError, EOFError, zlib.error) as exc:
                raise CorruptionError(
                    f"legacy backup {b.backup_id}: {top}/{name} does not decompress: {exc}",
                    location=f"{b.backup_id}/{top}/{name}",
                    snapshots=[b.backup_id],
                    files=[f"{b.backup_id}:{rel}"],
                ) from exc
            want = b.checksums.get(rel)
            if want is not None and hashlib.sha256(data).hexdigest() != want:
                raise CorruptionError(
                    f"legacy backup {b.backup_id}: {rel} does not match its recorded sha256",
                    location=f"{b.backup_id}/{top}/{name}",
                    snapshots=[b.backup_id],
                    files=[f"{b.backup_id}:{rel}"],
                )
            out[rel] = data
    return out


def _ts_members(b: LegacyBackup) -> tuple[dict[str, tuple[bytes, int, int]], dict[str, tuple[int, int]]]:
    """Return files ``path -> (data, mode, mtime_ns)`` and dirs ``path -> (mode, mtime_ns)``."""
    files: dict[str, tuple[bytes, int, int]] = {}
    dirs: dict[str, tuple[int, int]] = {}
    loc = b.location
    if loc.is_dir():
        for dirpath, dirnames, filenames in os.walk(loc):
            rel_dir = os.path.relpath(dirpath, loc).replace(os.sep, "/")
            for d in list(dirnames):
                p = d if rel_dir == "." else f"{rel_dir}/{d}"
                st = os.lstat(os.path.join(dirpath, d))
                if os.path.islink(os.path.join(dirpath, d)):
                    raise UnsafePathError(f"legacy backup {b.backup_id}: symlink {p}")
                dirs[p] = (st.st_mode & 0o7777, st.st_mtime_ns)
            for fn in filenames:
                full = os.path.join(dirpath, fn)
                p = fn if rel_dir == "." else f"{rel_dir}/{fn}"
                st = os.lstat(full)
                if not os.path.isfile(full) or os.path.islink(full):
                    raise UnsafePathError(f"legacy backup {b.backup_id}: {p} is not a regular file")
                with open(full, "rb") as fh:
                    files[p] = (fh.read(), st.st_mode & 0o7777, st.st_mtime_ns)
        return files, dirs
    raw = loc.read_bytes()
    if b.archive_sha256 and hashlib.sha256(raw).hexdigest() != b.archive_sha256:
        raise CorruptionError(
            f"legacy backup {b.backup_id}: archive does not match the checksum in its .meta.json",
            location=loc.name,
            snapshots=[b.backup_id],
        )
    import io

    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            for mem in tar.getmembers():
                name = mem.name
                while name.startswith("./"):
                    name = name[2:]
                name = name.rstrip("/")
                if not name or name == ".":
                    continue
                check_relpath(name)
                if mem.isdir():
                    dirs[name] = (mem.mode & 0o7777, int(mem.mtime) * 1_000_000_000)
                elif mem.isfile():
                    member = tar.extractfile(mem)
                    assert member is not None
                    files[name] = (member.read(), mem.mode & 0o7777, int(mem.mtime) * 1_000_000_000)
                else:
                    raise UnsafePathError(
                        f"legacy backup {b.backup_id}: archive member {name!r} is a link or special file"
                    )
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise CorruptionError(
            f"legacy backup {b.backup_id}: archive unreadable: {exc}", location=loc.name, snapshots=[b.backup_id]
        ) from exc
    return files, dirs


def legacy_tables(repo: Repository | str | os.PathLike[str], backup_id: str) -> LegacyTables:
    """Load a legacy backup (its whole parent chain applied) as restore tables.

    Args:
        repo: the repository (or its folder).
        backup_id: the legacy backup's id.

    Returns:
        :class:`LegacyTables`. For an incremental with no older full to chain from, ``complete`` is
        False, the tables hold only the chain found, and ``removable`` refuses (raises) rather than let
        an exact restore remove files.

    Raises:
        SnapshotNotFound: no legacy backup has that id, or a recorded parent is missing.
        BackupError: the recorded parents loop.
        CorruptionError: a file or archive does not decompress or does not match its recorded checksum.
        UnsafePathError: an archive holds links, special files or unsafe names.
    """
    backups = {b.backup_id: b for b in find_legacy(repo)}
    if backup_id not in backups:
        raise SnapshotNotFound(f"no snapshot or legacy backup {backup_id!r}")
    chain = _chain(backups, backup_id)
    merged: dict[str, tuple[bytes, int, int]] = {}
    dirs: dict[str, tuple[int, int]] = {}
    tops: set[str] = set()
    origin = chain[-1].origin
    for b in chain:
        if b.origin == "python":
            mtime = int(b.time.timestamp() * 1_000_000_000)
            for rel, content in _python_files(b).items():
                merged[rel] = (content, 0o644, mtime)
            for top in os.listdir(b.location):
                if (b.location / top).is_dir() and not (b.location / top).is_symlink():
                    check_relpath(top)
                    dirs.setdefault(top, (0o755, mtime))
        else:
            fs, ds = _ts_members(b)
            merged.update(fs)
            dirs.update(ds)
    for p in list(merged) + list(dirs):
        tops.add(p.split("/", 1)[0])
    for p in list(merged):  # parents of files must be directories
        parent = p.rpartition("/")[0]
        while parent and parent not in dirs:
            dirs[parent] = (0o755, merged[p][2])
            parent = parent.rpartition("/")[0]
    files = FileTable()
    data: list[bytes] = []
    for rel in sorted(merged):
        content, mode, mtime = merged[rel]
        files.append(rel, hashlib.sha256(content).hexdigest(), len(content), mtime, mode, 0)
        data.append(content)
    dt = DirTable()
    for p in sorted(dirs):
        dt.path.append(p)
        dt.mode.append(dirs[p][0])
        dt.mtime_ns.append(dirs[p][1])
    covered = frozenset(tops)
    complete = chain[0].backup_type == "full"
    ids = tuple(b.backup_id for b in chain)

    def removable(path: str, is_dir: bool) -> bool:
        if is_dir or path.count("/") != 1:
            return False
        top, name = path.split("/")
        if top not in covered:
            return False
        if not (origin != "python" or top == "global" or name in PYTHON_AGENT_FILES):
            return False
        if not complete:
            raise BackupError(
                f"legacy backup {backup_id} is an incremental with no known full backup before it (chain "
                f"{' -> '.join(ids)}): an exact restore would remove files it does not hold, such as "
                f"{path!r}; nothing was written. Restore it with exact=False (only its own files)."
            )
        return True

    return LegacyTables(files, dt, data, removable, tuple(sorted(covered)), complete, ids)


def verify_legacy(repo: Repository | str | os.PathLike[str]) -> list[tuple[str, str]]:
    """Read every legacy backup back and check it against its recorded checksums.

    Returns:
        ``[(backup_id, problem)]``; empty when all are intact.
    """
    problems: list[tuple[str, str]] = []
    for b in find_legacy(repo):
        try:
            if b.origin == "python":
                got = _python_files(b)
                for rel in b.checksums:
                    if rel not in got:
                        problems.append((b.backup_id, f"{rel}: listed in backup_metadata.json but missing"))
            else:
                _ts_members(b)
        except (BackupError, OSError) as exc:
            problems.append((b.backup_id, str(exc)))
    return problems
