"""Restoring a snapshot (native or legacy) into a directory.

* Files come back byte-identical with their modes and mtimes; directories (empty ones too) with theirs;
  symlinks as symlinks (the same target, the link's own mtime), names byte-exact.
* Exact by default: entries in the target that the snapshot does not have are removed, but only inside
  the restored scope (the whole target, one agent's directory, or the paths matching the globs), and
  never the paths the snapshot's backup excluded (its ``excludes`` patterns: aml's derived files by
  default), nor a directory that holds such a path (only its other entries are removed).
* Safe: every path of the manifest is validated before anything is written (no ``..``, no absolute
  paths, no empty components, no file used as a directory, no entry below a symlink entry); the target
  is accessed only through directory descriptors opened with ``O_NOFOLLOW`` one component at a time, so
  a symlink in the target is never followed (in exact mode it is replaced, only the link itself is
  removed). A snapshot's symlink is created as a link with ``symlinkat`` and renamed into place: its
  target, whatever it is (``../../etc``, an absolute path), is never opened or written through. A target
  inside the repository, or one that contains the snapshot's source store or the repository without being
  the source store itself (``<store>/..``), is refused (:func:`check_target`).
* Fast and crash-safe: each file is written to a temporary name and renamed into place, without a
  per-file fsync; one ``syncfs`` of the target's file system at the end. Objects are read pack by pack in
  file order, each decompressed once however many files share it, and re-hashed before it is written;
  a background thread decompresses ahead while :data:`RESTORE_THREADS` threads create the files (file
  creation is kernel work, and each thread owns a share of the directories).

The work is split as restic splits it: :mod:`~aml.backup.restore_plan` decides what to add, change and
remove (no writes; a dry run stops there), :mod:`~aml.backup.filerestorer` reads and verifies the
contents pack by pack, :mod:`~aml.backup.fileswriter` writes them, and this module orchestrates:
:func:`restore` (native or legacy), :func:`resolve_at`, :func:`check_target`.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from aml.store.names import text_names

from . import crypto
from ._fs import DirFds, open_root
from .errors import CorruptionError, SnapshotNotFound, UnsafePathError
from .excludes import Excludes
from .filerestorer import ContentSource, memory_source, missing_objects, native_source, prefetch
from .fileswriter import RESTORE_THREADS, FilesWriter, attempt, sync_filesystem, write_files
from .index import load_index
from .manifest import DirTable, FileTable, LinkTable, check_relpath, load_manifest
from .progress import ProgressCallback, Reporter
from .repository import Repository, as_repository, local_collector_paused
from .restore_plan import RestorePlan, Scope, Selection, plan_restore, select, validate_tables

__all__ = [
    "RESTORE_THREADS",
    "RestoreResult",
    "check_target",
    "resolve_at",
    "restore",
    "sync_filesystem",
    "validate_tables",
]


@dataclass
class RestoreResult:
    """What :func:`restore` did (or, with ``dry_run``, would do). Sizes in bytes, time in seconds.

    Attributes:
        backup_id: the snapshot restored.
        target: absolute target directory.
        dry_run, exact, legacy: as requested / whether the snapshot is a legacy Loom backup.
        added: paths created (directories end with ``/``).
        changed: paths whose content, link target or type differed and were replaced.
        metadata: paths whose content (or link target) matched but whose mode or mtime was reset.
        removed: paths removed because the snapshot does not have them (exact mode; dirs end with ``/``).
        unchanged: number of files already identical.
        files_written, bytes_written: files and bytes actually written.
        errors: ``[{"path", "reason"}]`` for entries that could not be restored.
        duration_seconds: wall time.
    """

    backup_id: str
    target: str
    dry_run: bool
    exact: bool
    legacy: bool = False
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    metadata: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    files_written: int = 0
    bytes_written: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    duration_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True if nothing failed."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (with ``ok``; names that are not valid UTF-8 escaped as ``\\xNN``)."""
        d = asdict(self)
        d["ok"] = self.ok
        return text_names(d)




# ----------------------------------------------------------------------------------------------------
# the generic restore: plan, then read and write


@dataclass
class _Tables:
    """A snapshot's tables and where its contents come from."""

    files: FileTable
    dirs: DirTable
    links: LinkTable
    source: ContentSource


def _restore_tables(
    *,
    backup_id: str,
    tables: _Tables,
    target: str | os.PathLike[str],
    scope: Scope,
    exact: bool,
    dry_run: bool,
    legacy: bool,
    progress: ProgressCallback | None,
    repository: Path,
    source_path: str | None,
    excludes: Excludes | None = None,
) -> RestoreResult:
    t0 = time.monotonic()
    validate_tables(tables.files, tables.dirs, tables.links)
    target_abs = os.path.abspath(os.fspath(target))
    protected = check_target(target_abs, repository, source_path)  # never touched by an exact restore
    sel = select(tables.files, tables.dirs, tables.links, scope)
    if scope.agent is not None and not sel:
        raise SnapshotNotFound(f"agent {scope.agent!r} is not in snapshot {backup_id}")
    plan = plan_restore(
        target=target_abs, files=tables.files, dirs=tables.dirs, links=tables.links, sel=sel, scope=scope,
        exact=exact, hasher=hashlib.sha256 if legacy else crypto.id_hasher(repository), protected=protected,
        excludes=excludes,
    )
    res = RestoreResult(
        backup_id=backup_id, target=target_abs, dry_run=dry_run, exact=exact, legacy=legacy, added=plan.added,
        changed=plan.changed, metadata=plan.metadata, removed=plan.removed, unchanged=plan.unchanged,
        errors=plan.errors,
    )
    if not dry_run:
        _apply(plan, tables, target_abs, exact, res, Reporter(progress, "restore"))
    res.duration_seconds = round(time.monotonic() - t0, 6)
    return res


def _apply(plan: RestorePlan, tables: _Tables, target: str, exact: bool, res: RestoreResult, rep: Reporter) -> None:
    """Carry out ``plan``: removals (deepest first), directories, files, symlinks, then the directories'
    modes and mtimes (deepest first), and one sync of the target's file system."""
    files, dirs, links, errors = tables.files, tables.dirs, tables.links, res.errors
    rep.state.files_total = len(plan.write)
    rep.state.bytes_total = sum(files.size[i] for i in plan.write)
    fresh = _is_fresh(target)
    root_fd = open_root(target, create=True)
    dirfds = DirFds(root_fd, create=True, replace=exact)
    w = FilesWriter(dirfds)
    try:
        for p, is_dir in sorted(plan.remove, key=lambda t: t[0].count("/"), reverse=True):
            _each(errors, p, "cannot remove", w.remove, is_dir)
        for d in sorted(plan.need_dirs):
            _each(errors, d, "cannot create directory", w.make_dir)
        contents = prefetch(tables.source(plan.write))
        res.files_written, res.bytes_written = write_files(files, plan.write, contents, root_fd, exact, rep, errors,
                                                           direct=fresh)
        for i in plan.meta:
            _each(errors, files.path[i], "cannot set mode/mtime", w.set_meta, files.mode[i], files.mtime_ns[i])
        for i in plan.link:
            _each(errors, links.path[i], "cannot create symlink", w.link, links.target[i], links.mtime_ns[i])
        for i in plan.link_meta:
            _each(errors, links.path[i], "cannot set symlink mtime", w.set_link_mtime, links.mtime_ns[i])
        for i in sorted(plan.dirs, key=lambda k: dirs.path[k].count("/"), reverse=True):
            _each(errors, dirs.path[i], "cannot set directory mode/mtime", w.set_dir_meta, dirs.mode[i],
                  dirs.mtime_ns[i])
        sync_filesystem(root_fd)
    finally:
        dirfds.close()
        os.close(root_fd)
    rep.done()


def _is_fresh(target: str) -> bool:
    """Whether the restore target is missing or an empty directory: nothing there for a torn file to replace
    and nobody reading it (see :mod:`~aml.backup.fileswriter`)."""
    try:
        with os.scandir(target) as it:
            return next(it, None) is None
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _each(errors: list[dict[str, str]], path: str, what: str, action: Callable[..., object], *args: Any) -> None:
    """``action(path, *args)``, a failure recorded for ``path``."""
    attempt(errors, path, what, partial(action, path, *args))


def _within(path: str, ancestor: str) -> bool:
    """True if the resolved ``path`` is ``ancestor`` or below it (both absolute and resolved)."""
    return os.path.commonpath([path, ancestor]) == ancestor


def check_target(
    target: str | os.PathLike[str], repository: str | os.PathLike[str], source_path: str | None
) -> str:
    """Refuse a restore target that would let the restore damage the repository or the live store.

    Checked on resolved paths (symlinks followed), before anything is read or written, in every mode
    (an exact restore removes every entry of the target the snapshot does not have; a non-exact one
    still writes the snapshot's top-level entries among the target's own).

    Args:
        target: the restore target directory (need not exist).
        repository: the repository's root.
        source_path: the absolute path of the store the snapshot was taken from (the manifest's
            ``source_path``), or None when unknown (some legacy backups); a relative path is ignored.

    Returns:
        The repository's path relative to the target (``/``-separated) when the target is the source
        store itself and holds the repository (an exact restore must leave it alone), else ``""``.

    Raises:
        UnsafePathError: the target is the repository or inside it; or the target contains the
            snapshot's source store without being that store (e.g. ``<store>/..``); or the target
            contains the repository without being the source store. The message names the target and
            the reason.
    """
    target_abs = os.path.abspath(os.fspath(target))
    real_target, real_repo = os.path.realpath(target_abs), os.path.realpath(repository)
    if _within(real_target, real_repo):
        raise UnsafePathError(f"restore target {target_abs!r} is inside the repository {str(repository)!r}")
    real_source = os.path.realpath(source_path) if source_path and os.path.isabs(source_path) else None
    if real_source is not None and real_target == real_source:
        # over the live store (the task takes a safety snapshot first); a repository inside it is kept
        if _within(real_repo, real_target):
            return os.path.relpath(real_repo, real_target).replace(os.sep, "/")
        return ""
    if real_source is not None and _within(real_source, real_target):
        raise UnsafePathError(
            f"restore target {target_abs!r} contains the snapshot's source store {source_path!r}: an exact "
            "restore would delete it and the snapshot's entries would mix with its neighbours; restore into "
            "a new directory, or over the store itself"
        )
    if _within(real_repo, real_target):
        raise UnsafePathError(
            f"restore target {target_abs!r} contains the repository {str(repository)!r}: an exact restore "
            "would delete entries beside it; restore into a new directory, or over the store itself"
        )
    return ""



# ----------------------------------------------------------------------------------------------------
# public API


@local_collector_paused
def restore(
    repo: Repository | str | os.PathLike[str],
    backup_id: str,
    target: str | os.PathLike[str],
    *,
    agent: str | None = None,
    paths: Iterable[str] = (),
    exact: bool = True,
    dry_run: bool = False,
    verify: bool = True,
    progress: ProgressCallback | None = None,
    lock_wait: float = 0.0,
) -> RestoreResult:
    """Restore a snapshot (native or legacy Loom backup) into ``target``.

    Args:
        repo: the repository (or its path).
        backup_id: snapshot id (see :func:`~aml.backup.listing.list_snapshots`); legacy ids work too
            (an incremental legacy backup is applied on top of its parents).
        target: directory to restore into (created if missing). To restore over the live store, pass the
            store's path (take a safety snapshot first; the task layer does). A target that contains the
            snapshot's source store or the repository (e.g. ``<store>/..``), other than the source store
            itself, is refused (see :func:`check_target`).
        agent: restore only this top-level directory.
        paths: restore only paths matching these globs (``fnmatch``; a glob matching a directory covers
            everything below it), relative to the store root.
        exact: remove entries of the target that the snapshot does not have, inside the restored scope
            only (default True). With False, extra entries are left alone.
        dry_run: compute and return the changes (added/changed/metadata/removed) without writing.
        verify: re-hash every object before writing it (default True).
        progress: called with :class:`~aml.backup.progress.Progress` events (phase ``"restore"``).
        lock_wait: seconds to wait for a conflicting exclusive lock (prune) before failing.

    Returns:
        A :class:`RestoreResult`; check ``result.ok`` / ``result.errors``.

    Raises:
        SnapshotNotFound: no snapshot or legacy backup has that id, or ``agent`` is not in it.
        UnsafePathError: the manifest (or legacy archive) names an unsafe path, or the target is unsafe
            (inside the repository, or containing the source store or the repository without being the
            source store); nothing was written.
        CorruptionError: the manifest is damaged, or objects it needs are missing from the index
            (checked before anything is written).
        LockError: an exclusive lock is held.
        BackupError: the target exists and is not a directory.
    """
    repo = as_repository(repo)
    globs = tuple(str(g) for g in paths)
    if agent is not None:
        check_relpath(agent)
        if "/" in agent:
            raise UnsafePathError(f"agent must be a top-level directory name, got {agent!r}")
    native = (repo.snapshots_dir / f"{backup_id}.json").is_file() and repo.is_initialized()
    restore_into = partial(_restore_tables, backup_id=backup_id, target=target, exact=exact, dry_run=dry_run,
                           progress=progress, repository=repo.path)
    if not native:
        return _restore_legacy(repo, backup_id, agent, globs, restore_into)
    scope = Scope(agent=agent, globs=globs, walk_roots=(agent,) if agent else ("",))
    with repo.lock(exclusive=False, operation="restore", wait=lock_wait):
        return _restore_native(repo, backup_id, scope, verify, restore_into)


def _restore_legacy(
    repo: Repository, backup_id: str, agent: str | None, globs: tuple[str, ...],
    restore_into: Callable[..., RestoreResult],
) -> RestoreResult:
    """Restore a legacy Loom backup (applied on top of its parents, contents held in memory)."""
    from .legacy import find_legacy, legacy_tables

    tables = legacy_tables(repo, backup_id)  # raises SnapshotNotFound
    scope = Scope(
        agent=agent,
        globs=globs,
        removal=tables.removable,
        walk_roots=tables.walk_roots if agent is None else tuple(r for r in tables.walk_roots if r == agent),
        walk_depth=1,
    )
    return restore_into(
        tables=_Tables(tables.files, tables.dirs, LinkTable(), memory_source(tables.data)),
        scope=scope,
        legacy=True,
        source_path=next((b.source_path for b in find_legacy(repo) if b.backup_id == backup_id), None),
    )


def _restore_native(
    repo: Repository, backup_id: str, scope: Scope, verify: bool, restore_into: Callable[..., RestoreResult]
) -> RestoreResult:
    """Restore an aml snapshot (under a shared lock): refused before anything is written when objects its
    selected files need are missing."""
    m = load_manifest(repo.path, backup_id)
    assert m.files is not None and m.dirs is not None
    links = m.links or LinkTable()
    validate_tables(m.files, m.dirs, links)
    index = load_index(repo.path, strict=False, include_damaged=False)
    sel = select(m.files, m.dirs, links, scope)
    _refuse_missing(backup_id, m.files, sel, missing_objects(repo.path, index, m.files, sel.files))
    return restore_into(
        tables=_Tables(m.files, m.dirs, links, native_source(repo, index, m.files, verify)),
        scope=scope,
        legacy=False,
        source_path=m.source_path,
        excludes=Excludes(m.excludes, defaults=False),
    )


def _refuse_missing(backup_id: str, files: FileTable, sel: Selection, missing: list[str]) -> None:
    """Raise :class:`CorruptionError` naming the missing objects and the files they affect, if any."""
    if not missing:
        return
    gone = set(missing)
    affected = [files.path[i] for i in sel.files if any(o in gone for o in files.objects_of(i))]
    raise CorruptionError(
        f"snapshot {backup_id}: {len(missing)} objects are missing (not in the index, or pack missing or "
        "truncated) "
        f"({len(affected)} files, e.g. {affected[:3]}); nothing was written",
        objects=missing,
        snapshots=[backup_id],
        files=[f"{backup_id}:{p}" for p in affected],
    )


def resolve_at(repo: Repository | str | os.PathLike[str], when: datetime | str) -> str:
    """Return the id of the newest snapshot (native or legacy) taken at or before ``when``.

    Args:
        repo: the repository (or its path).
        when: the instant; naive datetimes and strings without offset are taken as UTC.

    Returns:
        A backup id.

    Raises:
        SnapshotNotFound: no snapshot is that old.
    """
    from aml.store.timestamps import require_timestamp

    from .listing import list_snapshots

    instant = require_timestamp(when)
    best = None
    for s in list_snapshots(repo):
        if s.time <= instant and (
            best is None or (s.time, not s.legacy, s.backup_id) > (best.time, not best.legacy, best.backup_id)
        ):
            best = s
    if best is None:
        raise SnapshotNotFound(f"no snapshot at or before {instant.isoformat()}")
    return best.backup_id
