"""Restore drills: restore a snapshot (or one agent of it) into a scratch directory and prove every file.

A drill answers "could this backup be restored today?" by doing it: the snapshot (default: the newest of
the repository) is restored with :func:`~aml.backup.restorer.restore`, the code path of ``backup restore
--target``, into a fresh scratch directory; then every restored file is read back and compared with the
manifest (size in bytes, sha256 of the content, mode and modification time; each directory's mode and
modification time, each symlink's target), nothing the manifest lists may be missing and nothing
it does not list may be there. The scratch copy is always removed, whatever happened. A damaged
repository (a flipped byte in a pack, a missing pack, a damaged manifest) gives a *failed* drill naming
each affected file, never a crash; a drill that could not run at all (no snapshot, repository locked by
a forget/prune, not enough free space) raises.

Source: the seeds' best practice "Test restores occasionally to verify backup integrity" (Loom
``scripts/aml`` README, Best Practices 6); ``verify --read-data`` proves the stored bytes, a drill proves
the restore itself (manifest, index, packs, decompression and the writer, end to end).

Concurrency: the drill holds a shared repository lock from choosing the snapshot to the end of the restore,
so a concurrent ``rotate`` (forget + prune, exclusive) cannot remove the snapshot or its packs mid-drill (it
waits or fails with :class:`~aml.backup.errors.LockError`, as it does against a running backup or check).
Backups may run beside a drill. The live store is never read or written.

Pure engine: no Celery, no catalog. Sizes in bytes, durations in seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import crypto
from ._common import hostname
from .errors import BackupError, CorruptionError, RepositoryNotFound, SnapshotNotFound, UnsafePathError
from .listing import list_damaged_snapshots, list_snapshots
from .lock import pid_alive
from .manifest import DirTable, FileTable, check_relpath, load_manifest
from .progress import ProgressCallback, Reporter
from .repository import Repository, as_repository
from .restorer import RestoreResult, check_target, restore

__all__ = ["SCRATCH_PREFIX", "DrillError", "DrillResult", "choose_snapshot", "remove_scratch", "run_drill",
           "sweep_scratch"]

SCRATCH_PREFIX = "aml-drill."
"""Scratch directories are named ``aml-drill.<pid>.<host>.<random>`` so a later drill on the same host can
remove those a killed process left behind (:func:`sweep_scratch`)."""

SPACE_MARGIN = 0.10
"""Free space a drill needs beyond the bytes it restores, as a share of them (file system overhead)."""

MAX_REASON = 300
"""Longest failure reason kept (characters): a repository error can name thousands of objects."""


class DrillError(BackupError):
    """The drill could not run (not enough free space, an unusable scratch directory): no verdict on data."""


@dataclass
class DrillResult:
    """What one drill found. Sizes in bytes, time in seconds.

    Attributes:
        backup_id: the snapshot drilled.
        agent: the agent drilled, or ``None`` for the whole snapshot.
        repository: the repository's root.
        legacy: the snapshot is one of Loom's own backups (its recorded checksums were checked on reading).
        scratch: the scratch directory used (removed afterwards: see ``scratch_removed``).
        files_expected, dirs_expected: entries of the manifest in the drilled scope.
        files_checked: restored files read back and compared with the manifest (size and sha256; then mode
            and mtime).
        bytes_checked: bytes read back and hashed.
        failures: ``[{"path", "reason"}]``, one per entry that is missing, extra, of the wrong size,
            content, mode or modification time (files and directories: the restorer sets both exactly),
            or could not be restored; a path is relative to the store root, or, for damage found
            before any file (a damaged manifest), the repository file's path relative to the repository.
        restore_seconds, check_seconds, duration_seconds: wall time of the restore, of the read-back, of
            the whole drill.
        scratch_removed: the scratch copy is gone (``False`` only if removing it failed; the next drill on
            this host sweeps it).
    """

    backup_id: str
    agent: str | None
    repository: str
    legacy: bool = False
    scratch: str = ""
    files_expected: int = 0
    dirs_expected: int = 0
    files_checked: int = 0
    bytes_checked: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    restore_seconds: float = 0.0
    check_seconds: float = 0.0
    duration_seconds: float = 0.0
    scratch_removed: bool = False

    @property
    def passed(self) -> bool:
        """True when every file of the scope came back identical and nothing else did."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (with ``passed``)."""
        d = asdict(self)
        d["passed"] = self.passed
        return d


# ----------------------------------------------------------------------------------------------------
# choosing the snapshot


_ID_TIME = re.compile(r"(\d{8})_(\d{6})")


def _id_time(backup_id: str) -> datetime | None:
    """The instant an aml/Loom backup id names (``full_YYYYMMDD_HHMMSS``), UTC, or ``None``."""
    m = _ID_TIME.search(backup_id)
    if m is None:
        return None
    try:
        return datetime.strptime(m.group(1) + m.group(2), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def _other_store(source_path: str | None, here: str) -> bool:
    """``source_path`` is an existing directory other than the store ``here`` (resolved)."""
    return bool(source_path) and os.path.isdir(str(source_path)) and os.path.realpath(str(source_path)) != here


def choose_snapshot(repo: Repository | str | os.PathLike[str], *,
                    source: str | os.PathLike[str] | None = None) -> str:
    """The snapshot a drill restores by default: the newest one of the repository.

    Native and legacy (Loom) snapshots count, newest by time (a native one wins a tie, as in
    :func:`~aml.backup.restorer.resolve_at`). A snapshot whose manifest header is damaged, and whose id
    names a later time than that, is chosen instead: the drill then fails on it, as a restore would, rather
    than passing on an older one.

    Args:
        repo: the repository (or its path).
        source: the store drilled, when the repository is shared by several stores (``AML_BACKUP_ROOT``):
            snapshots whose source path is another existing directory are skipped, and damaged headers
            (whose store cannot be known) are not considered.

    Returns:
        A backup id.

    Raises:
        SnapshotNotFound: the repository holds no snapshot (of that store).
    """
    repo = as_repository(repo)
    here = os.path.realpath(source) if source is not None else None
    infos = [s for s in list_snapshots(repo) if here is None or not _other_store(s.source_path, here)]
    best = max(infos, key=lambda s: (s.time, not s.legacy, s.backup_id), default=None)
    if here is None and repo.is_initialized():
        for d in list_damaged_snapshots(repo):
            when = _id_time(d.backup_id)
            # ids name whole seconds: a damaged header of the newest good one's second counts as newer
            if when is not None and (best is None or when >= best.time.replace(microsecond=0)):
                return d.backup_id
    if best is None:
        whose = f" of {source}" if source is not None else ""
        raise SnapshotNotFound(f"no snapshot{whose} in {repo.path}: nothing to drill")
    return best.backup_id


# ----------------------------------------------------------------------------------------------------
# scratch directories


def _make_writable(path: str) -> dict[str, int]:
    """Give the owner full access to every directory below ``path`` (restored modes may forbid removal).

    Returns:
        Each directory's permission bits before (absolute path -> ``st_mode & 0o7777``), for a caller that
        compares them.
    """
    before: dict[str, int] = {}
    stack = [path]
    while stack:
        d = stack.pop()
        with contextlib.suppress(OSError):
            before[d] = stat.S_IMODE(os.lstat(d).st_mode)
            os.chmod(d, 0o700)  # d is a directory found by lstat: never a symlink
        try:
            with os.scandir(d) as it:
                stack.extend(e.path for e in it if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
    return before


def remove_scratch(path: str | os.PathLike[str]) -> bool:
    """Remove a scratch directory and everything in it (never following symlinks).

    Returns:
        True when it is gone.
    """
    p = os.fspath(path)
    if not os.path.lexists(p):
        return True
    if os.path.isdir(p) and not os.path.islink(p):
        _make_writable(p)
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(p)
    return not os.path.lexists(p)


def sweep_scratch(scratch_root: str | os.PathLike[str]) -> list[str]:
    """Remove the scratch directories that drills of dead processes on this host left in ``scratch_root``.

    Only entries named by :data:`SCRATCH_PREFIX` with this host's name and the pid of a process that no
    longer exists are removed (another host's, or a live drill's, are left alone).

    Returns:
        The paths removed.
    """
    root = os.fspath(scratch_root)
    me = hostname()
    removed: list[str] = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(SCRATCH_PREFIX):
            continue
        pid_text, _, rest = name[len(SCRATCH_PREFIX):].partition(".")
        host = rest.rpartition(".")[0]
        if host != me or not pid_text.isdigit() or int(pid_text) == os.getpid() or pid_alive(int(pid_text)):
            continue
        path = os.path.join(root, name)
        if remove_scratch(path):
            removed.append(path)
    return removed


def _inside(path: str, ancestor: str) -> bool:
    return os.path.commonpath([path, ancestor]) == ancestor


# ----------------------------------------------------------------------------------------------------
# reading back


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def _walk(root: str) -> tuple[dict[str, os.stat_result], dict[str, os.stat_result]]:
    """Every non-directory entry and every directory below ``root`` (rel path -> lstat, each)."""
    entries: dict[str, os.stat_result] = {}
    dirs: dict[str, os.stat_result] = {}
    stack = [("", root)]
    while stack:
        rel_dir, abs_dir = stack.pop()
        with os.scandir(abs_dir) as it:
            for e in it:
                rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
                st = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    dirs[rel] = st
                    stack.append((rel, e.path))
                else:
                    entries[rel] = st
    return entries, dirs


def _sha256_file(path: str, hasher: Any = hashlib.sha256) -> tuple[str, int]:
    """sha256 hex and byte count of a regular file (opened without following a symlink; a restored mode that
    forbids reading is lifted first: the scratch copy is the drill's own)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except PermissionError:
        os.chmod(path, 0o600)  # a regular file (lstat) in the drill's private scratch directory
        fd = os.open(path, flags)
    h = hasher()
    n = 0
    try:
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            h.update(b)
            n += len(b)
    finally:
        os.close(fd)
    return h.hexdigest(), n


def _compare_meta(path: str, st: os.stat_result, mode: int, mtime_ns: int, fail: Callable[[str, str], None], *,
                  found_mode: int | None = None) -> None:
    """Fail ``path`` when its permission bits or modification time differ from the manifest's (the restorer
    sets both exactly: ``chmod`` and ``utime`` in nanoseconds)."""
    have = stat.S_IMODE(st.st_mode) if found_mode is None else found_mode
    if have != mode:
        fail(path, f"mode {have:04o} differs from the manifest's {mode:04o}")
    elif st.st_mtime_ns != mtime_ns:
        fail(path, f"modification time differs from the manifest's by {(st.st_mtime_ns - mtime_ns) / 1e9:+.9f} s")


def _compare(scratch: str, files: FileTable, dirs: DirTable, fsel: list[int], dsel: list[int],
             links: dict[str, str], restored: RestoreResult, res: DrillResult,
             progress: ProgressCallback | None, hasher: Any = hashlib.sha256) -> None:
    """Read every restored file back and compare it with the manifest; record failures in ``res``.

    ``links`` maps the symlinks of the scope (manifests that store links) to their targets: each must come
    back as a link with that exact target (never followed)."""
    rep = Reporter(progress, "drill")
    rep.state.files_total = len(fsel)
    rep.state.bytes_total = sum(files.size[i] for i in fsel)
    restore_errors: dict[str, str] = {}
    for e in restored.errors:
        restore_errors.setdefault(e["path"], e["reason"])
    named: set[str] = set()

    def fail(path: str, reason: str) -> None:
        named.add(path)
        res.failures.append({"path": path, "reason": _short(reason)})

    dir_modes = _make_writable(scratch)  # restored directory modes may forbid listing: compared as they were
    found, found_dirs = _walk(scratch)
    expected_files = {files.path[i] for i in fsel}
    parents: set[str] = set()
    for p in expected_files | set(links):
        d = p.rpartition("/")[0]
        while d and d not in parents:
            parents.add(d)
            d = d.rpartition("/")[0]
    for i in fsel:
        p = files.path[i]
        st = found.get(p)
        rep.state.current = p
        if st is None:
            why = restore_errors.get(p)
            fail(p, f"not restored: {why}" if why else "missing after restore")
        elif not stat.S_ISREG(st.st_mode):
            fail(p, "restored as something other than a regular file")
        elif st.st_size != files.size[i]:
            fail(p, f"size {st.st_size} bytes, manifest says {files.size[i]}")
        else:
            try:
                digest, n = _sha256_file(os.path.join(scratch, p), hasher)
            except OSError as exc:
                fail(p, f"cannot read back: {exc}")
            else:
                res.files_checked += 1
                res.bytes_checked += n
                if digest != files.sha256[i]:
                    fail(p, f"sha256 {digest[:16]}... differs from the manifest's {files.sha256[i][:16]}...")
                else:
                    _compare_meta(p, st, files.mode[i], files.mtime_ns[i], fail)
        rep.state.files_done += 1
        rep.state.bytes_done += files.size[i]
        if not rep.state.files_done & 63:
            rep.tick()
    for p, target in sorted(links.items()):
        st = found.get(p)
        if st is None:
            why = restore_errors.get(p)
            fail(p, f"link not restored: {why}" if why else "link missing after restore")
        elif not stat.S_ISLNK(st.st_mode):
            fail(p, "restored as something other than a symlink")
        elif os.readlink(os.path.join(scratch, p)) != target:
            fail(p, "symlink target differs from the manifest's")
    for p in sorted(set(found) - expected_files - set(links)):
        fail(p, "restored but not in the snapshot")
    expected_dirs = {dirs.path[i] for i in dsel}
    for d in sorted(expected_dirs - set(found_dirs)):
        fail(d + "/", "directory missing after restore")
    for d in sorted(set(found_dirs) - expected_dirs - parents):
        fail(d + "/", "directory restored but not in the snapshot")
    for i in dsel:
        d = dirs.path[i]
        if d in found_dirs:
            mode = dir_modes.get(os.path.join(scratch, d), stat.S_IMODE(found_dirs[d].st_mode))
            _compare_meta(d + "/", found_dirs[d], dirs.mode[i], dirs.mtime_ns[i], fail, found_mode=mode)
    for p, why in sorted(restore_errors.items()):
        if p not in named and p + "/" not in named:
            fail(p, f"restore error: {why}")
    rep.done()


def _corruption_failures(backup_id: str, exc: BackupError) -> list[dict[str, str]]:
    """Failures for damage found before any file was written (manifest, index, missing packs)."""
    reason = _short(str(exc))
    prefix = f"{backup_id}:"
    paths = [f[len(prefix):] if f.startswith(prefix) else f for f in getattr(exc, "files", [])]
    if paths:
        return [{"path": p, "reason": reason} for p in paths]
    location = getattr(exc, "location", None) or f"snapshots/{backup_id}.json"
    return [{"path": location, "reason": reason}]


# ----------------------------------------------------------------------------------------------------
# the drill


def run_drill(
    repo: Repository | str | os.PathLike[str],
    backup_id: str | None = None,
    *,
    agent: str | None = None,
    scratch_root: str | os.PathLike[str] | None = None,
    source: str | os.PathLike[str] | None = None,
    lock_wait: float = 0.0,
    progress: ProgressCallback | None = None,
) -> DrillResult:
    """Restore a snapshot (or one agent of it) into a scratch directory, check every file, remove the copy.

    Args:
        repo: the repository (or its path).
        backup_id: the snapshot; default :func:`choose_snapshot` (the newest).
        agent: drill only this top-level directory of the snapshot.
        scratch_root: directory in which the scratch directory is created (default: the system's temporary
            directory). Scratch directories of dead drills on this host found there are removed first.
        source: the store, when the repository is shared by several stores (see :func:`choose_snapshot`);
            the scratch directory may not be inside it.
        lock_wait: seconds to wait for an exclusive repository lock (forget/prune) before giving up.
        progress: called with the restore's ``"restore"`` events, then ``"drill"`` events (files read back).

    Returns:
        A :class:`DrillResult`; ``result.passed`` is the verdict. Damage in the repository is a failed drill
        (``failures`` name the files), not an exception.

    Raises:
        ValueError: ``agent`` is not a top-level directory name.
        RepositoryNotFound: ``repo`` is not a directory.
        SnapshotNotFound: no snapshot to drill, ``backup_id`` is not one, or ``agent`` is not in it.
        LockError: a forget/prune held the repository for longer than ``lock_wait``.
        DrillError: not enough free space for the scratch copy, or the scratch directory would be inside
            the repository or the store.
        OSError: the scratch directory cannot be created.
    """
    t0 = time.monotonic()
    repo = as_repository(repo)
    if agent is not None:
        try:
            check_relpath(agent)
        except UnsafePathError:
            raise ValueError(f"agent must be a top-level directory name, got {agent!r}") from None
        if "/" in agent:
            raise ValueError(f"agent must be a top-level directory name, got {agent!r}")
    if not repo.path.is_dir():
        raise RepositoryNotFound(f"no backup repository at {repo.path}")
    root = os.fspath(scratch_root) if scratch_root is not None else tempfile.gettempdir()
    os.makedirs(root, mode=0o700, exist_ok=True)
    sweep_scratch(root)
    lock: contextlib.AbstractContextManager[Any] = (
        repo.lock(exclusive=False, operation="drill", wait=lock_wait) if repo.is_initialized()
        else contextlib.nullcontext())
    with lock:  # no forget/prune between choosing the snapshot and the end of its restore
        chosen = backup_id or choose_snapshot(repo, source=source)
        scratch = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}.{hostname()}.", dir=root)
        res = DrillResult(backup_id=chosen, agent=agent, repository=repo.url, scratch=scratch)
        try:
            _drill(repo, chosen, agent, scratch, source, lock_wait, progress, res)
        finally:
            res.scratch_removed = remove_scratch(scratch)
    res.duration_seconds = round(time.monotonic() - t0, 6)
    return res


def _drill(repo: Repository, backup_id: str, agent: str | None, scratch: str, source: str | os.PathLike[str] | None,
           lock_wait: float, progress: ProgressCallback | None, res: DrillResult) -> None:
    real_scratch = os.path.realpath(scratch)
    for what, where in (("the repository", repo.path), ("the store", source)):
        if where is not None and _inside(real_scratch, os.path.realpath(where)):
            raise DrillError(f"the drill's scratch directory {scratch} is inside {what} ({where}); set AML_HOME "
                             "(or the scratch root) elsewhere")
    native = (repo.snapshots_dir / f"{backup_id}.json").is_file() and repo.is_initialized()
    source_path: str | None
    links: dict[str, str]
    try:
        if native:
            m = load_manifest(repo.path, backup_id)
            assert m.files is not None and m.dirs is not None
            files, dirs, source_path = m.files, m.dirs, m.source_path
            table = getattr(m, "links", None)  # symlinks, in manifests that store them
            links = dict(zip(table.path, table.target, strict=True)) if table is not None else {}
        else:
            from .legacy import find_legacy, legacy_tables

            tables = legacy_tables(repo, backup_id)  # checks the checksums Loom recorded; raises SnapshotNotFound
            files, dirs, links = tables.files, tables.dirs, {}
            source_path = next((b.source_path for b in find_legacy(repo) if b.backup_id == backup_id), None)
            res.legacy = True
    except (CorruptionError, UnsafePathError) as exc:  # the manifest (or a legacy archive) is damaged
        res.failures.extend(_corruption_failures(backup_id, exc))
        return

    def covers(path: str) -> bool:
        return agent is None or path == agent or path.startswith(agent + "/")

    fsel = [i for i, p in enumerate(files.path) if covers(p)]
    dsel = [i for i, p in enumerate(dirs.path) if covers(p)]
    links = {p: t for p, t in links.items() if covers(p)}
    if agent is not None and not fsel and not dsel and not links:
        raise SnapshotNotFound(f"agent {agent!r} is not in snapshot {backup_id}")
    res.files_expected, res.dirs_expected = len(fsel), len(dsel)
    needed = sum(files.size[i] for i in fsel)
    free = shutil.disk_usage(scratch).free
    if free < needed * (1 + SPACE_MARGIN):
        raise DrillError(f"not enough free space in {os.path.dirname(scratch)} for the drill: {needed} bytes to "
                         f"restore (+{SPACE_MARGIN:.0%}), {free} free")
    try:
        check_target(scratch, repo.path, source_path)
    except UnsafePathError as exc:
        raise DrillError(str(exc)) from None
    t_restore = time.monotonic()
    try:
        restored = restore(repo, backup_id, scratch, agent=agent, exact=True, verify=True, progress=progress,
                           lock_wait=lock_wait)
    except (CorruptionError, UnsafePathError) as exc:  # objects missing, unsafe manifest: nothing was written
        res.restore_seconds = round(time.monotonic() - t_restore, 6)
        res.failures.extend(_corruption_failures(backup_id, exc))
        return
    res.restore_seconds = round(time.monotonic() - t_restore, 6)
    t_check = time.monotonic()
    hasher = hashlib.sha256 if res.legacy else crypto.id_hasher(repo.path)  # keyed ids when encrypted
    _compare(scratch, files, dirs, fsel, dsel, links, restored, res, progress, hasher)
    res.check_seconds = round(time.monotonic() - t_check, 6)
