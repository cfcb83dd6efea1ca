"""The restore plan: what a restore would create, change and remove in its target (restic's ``restorer``
planning pass, before its ``filerestorer`` reads and its ``fileswriter`` writes).

Given a snapshot's tables (files, directories, symlinks), the restore's scope (everything, one agent, or
paths matching globs), the target's current state and ``exact``, :func:`plan_restore` decides, for every
entry, whether it is added, replaced (content, link target or type differ), only given back its mode and
mtime, left alone, or (exact mode) removed. It reads the target (``lstat`` without following symlinks,
hashes of files whose size matches) and writes nothing: a dry run stops after it.

Also here, checked before any planning: :func:`validate_tables`, which refuses a manifest that could
write outside the target (``..``, absolute paths, entries below a symlink entry, a file used as a
directory).

Exact mode removes only inside the restored scope, never the paths the snapshot's backup excluded (its
``excludes`` patterns) nor a directory holding such a path, never the ``protected`` path (a repository
inside the store being restored over), and lists a removed directory once (its content goes with it).
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ._common import TMP_PREFIX
from .errors import BackupError, UnsafePathError
from .excludes import Excludes
from .manifest import DirTable, FileTable, LinkTable, check_relpath

__all__ = ["RestorePlan", "Scope", "Selection", "plan_restore", "select", "validate_tables"]


# ----------------------------------------------------------------------------------------------------
# validation


_UNSAFE = ("\x00/", "//", "/\x00", "\x00\x00", "/./", "/.\x00", "\x00./", "\x00.\x00", "/../", "/..\x00", "\x00../")
_UNSAFE_WHOLE = ("\x00..\x00",)


def _all_paths_safe(paths: list[str]) -> bool:
    """Fast check of many paths at once (see :func:`~aml.backup.manifest.check_relpath`): joined with
    NUL, which no path may contain, every unsafe form shows up as a substring."""
    if not paths:
        return True
    joined = "\x00" + "\x00".join(paths) + "\x00"
    if joined.count("\x00") != len(paths) + 1:  # a path contains NUL
        return False
    return not any(u in joined for u in _UNSAFE + _UNSAFE_WHOLE)


def validate_tables(files: FileTable, dirs: DirTable, links: LinkTable | None = None) -> None:
    """Refuse a manifest that could write outside the target or is self-contradictory.

    Raises:
        UnsafePathError: unsafe path (see :func:`~aml.backup.manifest.check_relpath`), duplicate path,
            a file or symlink that another entry uses as a directory, or a symlink with an empty target
            or one holding a NUL byte.
    """
    file_set = set(files.path)
    if len(file_set) != len(files.path):
        raise UnsafePathError("manifest lists a path twice")
    dir_set = set(dirs.path)
    if not _all_paths_safe(files.path) or not _all_paths_safe(dirs.path):
        for p in [*dirs.path, *files.path]:
            check_relpath(p)  # raises with the offending path
    if links:
        _validate_links(files, dirs, links, file_set, dir_set)
    for p in dirs.path:
        if p in file_set:
            raise UnsafePathError(f"manifest lists {p!r} as both a file and a directory")
    for p in files.path:
        parent = p.rpartition("/")[0]
        while parent:
            if parent in file_set:
                raise UnsafePathError(f"manifest uses file {parent!r} as a directory")
            if parent in dir_set:
                break
            parent = parent.rpartition("/")[0]
    for p in dirs.path:
        parent = p.rpartition("/")[0]
        while parent:
            if parent in file_set:
                raise UnsafePathError(f"manifest uses file {parent!r} as a directory")
            parent = parent.rpartition("/")[0]


def _validate_links(files: FileTable, dirs: DirTable, links: LinkTable, file_set: set[str], dir_set: set[str]) -> None:
    """The symlink part of :func:`validate_tables`."""
    if not _all_paths_safe(links.path):
        for p in links.path:
            check_relpath(p)
    link_set = set(links.path)
    if len(link_set) != len(links.path) or link_set & file_set or link_set & dir_set:
        dup = sorted(link_set & (file_set | dir_set)) or [p for p in links.path if links.path.count(p) > 1]
        raise UnsafePathError(f"manifest lists {dup[0]!r} twice (as a symlink and another entry)")
    for p, t in zip(links.path, links.target, strict=True):
        if not t or "\x00" in t:
            raise UnsafePathError(f"manifest gives symlink {p!r} an empty target or one with a NUL byte")
    # nothing may be written below a link: that would go through it, wherever it points
    for p in [*files.path, *dirs.path, *links.path]:
        parent = p.rpartition("/")[0]
        while parent:
            if parent in link_set:
                raise UnsafePathError(f"manifest places {p!r} below the symlink {parent!r}; nothing is written "
                                      "through a link")
            parent = parent.rpartition("/")[0]


# ----------------------------------------------------------------------------------------------------
# scope


def _glob_match(path: str, globs: tuple[str, ...]) -> bool:
    for g in globs:
        g = g.strip("/")
        if fnmatch.fnmatchcase(path, g):
            return True
        a = path
        while "/" in a:
            a = a.rpartition("/")[0]
            if fnmatch.fnmatchcase(a, g):
                return True
    return False


@dataclass
class Scope:
    """Which paths a restore covers (for selecting snapshot entries and for exact removal)."""

    agent: str | None
    globs: tuple[str, ...]
    removal: Callable[[str, bool], bool] | None = None  # legacy: (path, is_dir) -> removable
    walk_roots: tuple[str, ...] = ("",)
    walk_depth: int | None = None  # legacy: only entries directly inside walk roots

    def covers(self, path: str) -> bool:
        """True if ``path`` is inside the restored scope."""
        if self.agent is not None and path != self.agent and not path.startswith(self.agent + "/"):
            return False
        return not self.globs or _glob_match(path, self.globs)

    def may_remove(self, path: str, is_dir: bool) -> bool:
        """True if exact mode may remove ``path`` (in scope, and not kept by a legacy backup's rule)."""
        return self.covers(path) and (self.removal is None or self.removal(path, is_dir))


@dataclass
class Selection:
    """Indices of the snapshot's files, directories and symlinks inside the scope."""

    files: list[int]
    dirs: list[int]
    links: list[int]

    def __bool__(self) -> bool:
        return bool(self.files or self.dirs or self.links)


def select(files: FileTable, dirs: DirTable, links: LinkTable, scope: Scope) -> Selection:
    """Select the entries of the snapshot that ``scope`` covers."""
    return Selection(
        [i for i, p in enumerate(files.path) if scope.covers(p)],
        [i for i, p in enumerate(dirs.path) if scope.covers(p)],
        [i for i, p in enumerate(links.path) if scope.covers(p)],
    )


def _ancestors(path: str) -> Iterable[str]:
    """``path``'s parent directories, nearest first."""
    parent = path.rpartition("/")[0]
    while parent:
        yield parent
        parent = parent.rpartition("/")[0]


def _under(path: str, paths: set[str]) -> bool:
    """True if ``path`` or one of its ancestors is in ``paths``."""
    return path in paths or any(a in paths for a in _ancestors(path))


# ----------------------------------------------------------------------------------------------------
# target inspection (reads only)


def lstat_target(target: str, roots: Iterable[str], depth: int | None) -> dict[str, os.stat_result]:
    """Walk the target below ``roots`` without following symlinks: rel path -> lstat."""
    out: dict[str, os.stat_result] = {}
    for r in roots:
        base = os.path.join(target, r) if r else target
        try:
            st = os.lstat(base)
        except FileNotFoundError:
            continue
        if r:
            out[r] = st
        if not stat.S_ISDIR(st.st_mode):
            continue
        stack = [(r, base, 0)]
        while stack:
            rel_dir, abs_dir, d = stack.pop()
            try:
                it = os.scandir(abs_dir)
            except OSError:
                continue
            with it:
                for e in it:
                    if e.name.startswith(TMP_PREFIX):
                        continue
                    rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
                    try:
                        est = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    out[rel] = est
                    if stat.S_ISDIR(est.st_mode) and (depth is None or d + 1 < depth):
                        stack.append((rel, e.path, d + 1))
    return out


def _readlink(target: str, rel: str) -> str | None:
    try:
        return os.readlink(os.path.join(target, rel))
    except OSError:
        return None


def _hash_file(target: str, rel: str, hasher: Callable[..., Any] = hashlib.sha256) -> str | None:
    try:
        fd = os.open(os.path.join(target, rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        h = hasher()
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            h.update(b)
        return h.hexdigest()
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------------
# the plan


@dataclass
class RestorePlan:
    """What a restore does to its target; nothing of it is done yet.

    Attributes:
        need_dirs: directories the restored entries need (every ancestor, and the snapshot's directories).
        dirs: indices of the snapshot's directories whose mode and mtime are set (all in scope).
        write: indices of files to write (new or changed).
        meta: indices of files whose content matches but whose mode or mtime is reset.
        link, link_meta: indices of symlinks to create (new or changed) / whose own mtime is reset.
        remove: ``(path, is_dir)`` to remove before writing (exact mode; directories in the way).
        added, changed, metadata, removed, unchanged, errors: as in
            :class:`~aml.backup.restorer.RestoreResult`.
    """

    need_dirs: set[str]
    dirs: list[int]
    write: list[int] = field(default_factory=list)
    meta: list[int] = field(default_factory=list)
    link: list[int] = field(default_factory=list)
    link_meta: list[int] = field(default_factory=list)
    remove: list[tuple[str, bool]] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    metadata: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)

    def replace(self, path: str, st: os.stat_result, exact: bool) -> bool:
        """Plan to replace what is at ``path`` (not what the snapshot has there): a directory in the way
        is removed in exact mode, an error otherwise. Returns False when ``path`` is skipped."""
        if stat.S_ISDIR(st.st_mode):
            if not exact:
                self.errors.append({"path": path, "reason": "a directory is in the way (use exact mode to replace it)"})
                return False
            self.remove.append((path, True))
        self.changed.append(path)
        return True


def _needed_dirs(files: FileTable, dirs: DirTable, links: LinkTable, sel: Selection) -> set[str]:
    need: set[str] = set()
    starts = itertools.chain(
        (files.path[i].rpartition("/")[0] for i in sel.files),
        (dirs.path[i] for i in sel.dirs),
        (links.path[i].rpartition("/")[0] for i in sel.links),
    )
    for p in starts:
        while p and p not in need:
            need.add(p)
            p = p.rpartition("/")[0]
    return need


@dataclass
class _Links:
    """How a target's entry compares with a snapshot's symlink."""

    table: LinkTable
    target: str

    def is_kind(self, st: os.stat_result) -> bool:
        return stat.S_ISLNK(st.st_mode)

    def same_content(self, i: int, st: os.stat_result) -> bool:
        return _readlink(self.target, self.table.path[i]) == self.table.target[i]

    def same_meta(self, i: int, st: os.stat_result) -> bool:
        return st.st_mtime_ns == self.table.mtime_ns[i]


@dataclass
class _Files:
    """How a target's entry compares with a snapshot's file (hashed only when the size matches)."""

    table: FileTable
    target: str
    hasher: Callable[..., Any]

    def is_kind(self, st: os.stat_result) -> bool:
        return stat.S_ISREG(st.st_mode)

    def same_content(self, i: int, st: os.stat_result) -> bool:
        t = self.table
        return st.st_size == t.size[i] and _hash_file(self.target, t.path[i], self.hasher) == t.sha256[i]

    def same_meta(self, i: int, st: os.stat_result) -> bool:
        return st.st_mtime_ns == self.table.mtime_ns[i] and (st.st_mode & 0o7777) == self.table.mode[i]


def _plan_entries(
    plan: RestorePlan, existing: dict[str, os.stat_result], kind: _Links | _Files, sel: list[int], exact: bool
) -> tuple[list[int], list[int]]:
    """Compare the selected files (or symlinks) with the target: returns the indices to write and those
    whose metadata only is reset, and records each path as added, changed, metadata or unchanged."""
    write: list[int] = []
    meta: list[int] = []
    for i in sel:
        p = kind.table.path[i]
        st = existing.get(p)
        if st is None:
            plan.added.append(p)
            write.append(i)
        elif not kind.is_kind(st):
            if plan.replace(p, st, exact):
                write.append(i)
        elif not kind.same_content(i, st):
            plan.changed.append(p)
            write.append(i)
        elif not kind.same_meta(i, st):
            plan.metadata.append(p)
            meta.append(i)
        else:
            plan.unchanged += 1
    return write, meta


def _plan_dirs(plan: RestorePlan, existing: dict[str, os.stat_result]) -> None:
    for d in sorted(plan.need_dirs):
        st = existing.get(d)
        if st is None or not stat.S_ISDIR(st.st_mode):
            plan.added.append(d + "/")
            if st is not None:
                plan.changed.append(d)


@dataclass
class _Removal:
    """Exact mode: which of the target's entries go (the snapshot does not have them)."""

    existing: dict[str, os.stat_result]
    snapshot: set[str]  # the snapshot's files and symlinks in scope
    need_dirs: set[str]
    scope: Scope
    protected: str
    kept: set[str] = field(default_factory=set)  # paths the snapshot's backup excluded
    keep_dirs: set[str] = field(default_factory=set)  # directories holding such paths

    def keep_excluded(self, excludes: Excludes | None) -> None:
        """What the snapshot's backup excluded is not the snapshot's to remove, nor the directories
        holding it."""
        if not excludes:
            return
        self.kept = {p for p in self.existing if excludes(p)}
        for p in self.kept:
            for a in _ancestors(p):
                if a in self.keep_dirs:
                    break
                self.keep_dirs.add(a)

    def _goes_whole(self, path: str) -> bool:
        """True if ``path`` goes with its content: the snapshot has something else there, or it is a
        directory that is itself removed."""
        st = self.existing.get(path)
        return path in self.snapshot or (
            st is not None
            and stat.S_ISDIR(st.st_mode)
            and path not in self.need_dirs
            and path not in self.keep_dirs
            and self.scope.may_remove(path, True)
        )

    def removes(self, path: str, is_dir: bool) -> bool:
        """True if ``path`` is removed and listed (its top-most removed entry only)."""
        if path in self.snapshot or (is_dir and path in self.need_dirs):
            return False
        protected = self.protected
        if protected and (path == protected or protected.startswith(path + "/") or path.startswith(protected + "/")):
            return False
        if self.kept and (path in self.keep_dirs or _under(path, self.kept)):
            return False
        if not self.scope.may_remove(path, is_dir):
            return False
        # a removed directory takes its content with it: list only the top-most entry
        if any(self._goes_whole(a) for a in _ancestors(path)):
            return False
        return path not in self.need_dirs  # a non-directory where the snapshot has a directory: replaced


def _plan_removals(plan: RestorePlan, removal: _Removal) -> None:
    for p, st in removal.existing.items():
        is_dir = stat.S_ISDIR(st.st_mode)
        if removal.removes(p, is_dir):
            plan.removed.append(p + "/" if is_dir else p)
            plan.remove.append((p, is_dir))


def plan_restore(
    *,
    target: str,
    files: FileTable,
    dirs: DirTable,
    links: LinkTable,
    sel: Selection,
    scope: Scope,
    exact: bool,
    hasher: Callable[..., Any],
    protected: str = "",
    excludes: Excludes | None = None,
) -> RestorePlan:
    """Compare the selected snapshot entries with the target (absolute path) and plan the restore.

    Args:
        target: the absolute target directory (need not exist).
        files, dirs, links: the snapshot's tables (validated with :func:`validate_tables`).
        sel: the entries in scope (:func:`select`).
        scope: the restored scope (exact mode removes only inside it).
        exact: plan removals of what the snapshot does not have; without it a directory in the way of a
            file or symlink is an error.
        hasher: the content hash of the snapshot's ``sha256`` column (keyed in an encrypted repository).
        protected: a path relative to the target an exact restore never touches (see
            :func:`~aml.backup.restorer.check_target`).
        excludes: the snapshot's backup's exclude patterns (what matches is never removed).

    Raises:
        BackupError: the target exists and is not a directory.
    """
    if os.path.lexists(target) and not os.path.isdir(target):
        raise BackupError(f"restore target {target!r} exists and is not a directory")
    existing = lstat_target(target, scope.walk_roots, scope.walk_depth) if os.path.isdir(target) else {}
    plan = RestorePlan(need_dirs=_needed_dirs(files, dirs, links, sel), dirs=sel.dirs)
    plan.link, plan.link_meta = _plan_entries(plan, existing, _Links(links, target), sel.links, exact)
    plan.write, plan.meta = _plan_entries(plan, existing, _Files(files, target, hasher), sel.files, exact)
    _plan_dirs(plan, existing)
    if exact:
        snapshot = {files.path[i] for i in sel.files} | {links.path[i] for i in sel.links}
        removal = _Removal(existing, snapshot, plan.need_dirs, scope, protected)
        removal.keep_excluded(excludes)
        _plan_removals(plan, removal)
    plan.added.sort()
    plan.changed.sort()
    plan.removed.sort()
    return plan
