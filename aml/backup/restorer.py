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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fnmatch
import hashlib
import itertools
import mmap
import os
import queue
import shutil
import stat
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from aml.store.guard import check_write
from aml.store.names import text_names

from . import crypto
from ._common import TMP_PREFIX
from ._fs import DirFds, open_root
from .errors import BackupError, CorruptionError, SnapshotNotFound, UnsafePathError
from .excludes import Excludes
from .index import Index, load_index
from .manifest import DirTable, FileTable, LinkTable, check_relpath, load_manifest
from .pack import PackReader, open_pack, pack_path, read_pack
from .progress import ProgressCallback, Reporter
from .repository import Repository, as_repository

__all__ = ["RestoreResult", "check_target", "resolve_at", "restore", "sync_filesystem", "validate_tables"]


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
# validation and scope


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
class _Scope:
    """Which paths a restore covers (for selecting snapshot entries and for exact removal)."""

    agent: str | None
    globs: tuple[str, ...]
    removal: Callable[[str, bool], bool] | None = None  # legacy: (path, is_dir) -> removable
    walk_roots: tuple[str, ...] = ("",)
    walk_depth: int | None = None  # legacy: only entries directly inside walk roots

    def covers(self, path: str) -> bool:
        if self.agent is not None and path != self.agent and not path.startswith(self.agent + "/"):
            return False
        return not self.globs or _glob_match(path, self.globs)


def _select(files: FileTable, dirs: DirTable, scope: _Scope) -> tuple[list[int], list[int]]:
    fsel = [i for i, p in enumerate(files.path) if scope.covers(p)]
    dsel = [i for i, p in enumerate(dirs.path) if scope.covers(p)]
    return fsel, dsel


def _under(path: str, paths: set[str]) -> bool:
    """True if ``path`` or one of its ancestors is in ``paths``."""
    while path:
        if path in paths:
            return True
        path = path.rpartition("/")[0]
    return False


# ----------------------------------------------------------------------------------------------------
# target inspection


def _lstat_target(target: str, roots: Iterable[str], depth: int | None) -> dict[str, os.stat_result]:
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
# content sources


ContentSource = Callable[[list[int]], Iterator[tuple[list[int], bytes | None, str]]]
"""Given file indices to write, yields ``(file indices, content or None, error)`` groups."""


def _native_source(repo: Repository, index: Index, files: FileTable, verify: bool) -> ContentSource:
    root = repo.path
    key = crypto.key_for(root)
    hasher = crypto.id_hasher(root)

    def source(wanted: list[int]) -> Iterator[tuple[list[int], bytes | None, str]]:
        by_obj: dict[str, list[int]] = {}
        big: list[int] = []
        for i in wanted:
            if i in files.chunks:
                big.append(i)
            else:
                by_obj.setdefault(files.sha256[i], []).append(i)
        located = []
        for oid, idxs in by_obj.items():
            loc = index.objects.get(oid)
            if loc is None:
                yield idxs, None, f"object {oid} is not in the index"
                continue
            located.append((loc[0], loc[1], loc[2], loc[3], oid, idxs))
        located.sort()
        for pack_id, group in itertools.groupby(located, key=lambda t: t[0]):
            items = list(group)
            try:
                with open(pack_path(root, pack_id), "rb") as fh:
                    mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as exc:
                for it in items:
                    yield it[5], None, f"pack {pack_id} unreadable: {exc}"
                continue
            try:
                try:
                    reader = PackReader(open_pack(key, pack_id, mm), pack_id, hasher)
                except CorruptionError as exc:
                    for it in items:
                        yield it[5], None, f"pack {pack_id} unreadable: {exc}"
                    continue
                for _, off, ln, sz, oid, idxs in items:
                    try:
                        yield idxs, reader.decompress(oid, off, ln, sz, verify=verify), ""
                    except CorruptionError as exc:
                        yield idxs, None, f"pack {pack_id}: {exc}"
                del reader
            finally:
                mm.close()
        for i in big:
            parts = []
            err = ""
            for cid in files.chunks[i]:
                loc = index.objects.get(cid)
                if loc is None:
                    err = f"object {cid} is not in the index"
                    break
                try:
                    preader = PackReader(read_pack(root, loc[0]), loc[0], hasher)
                    parts.append(preader.decompress(cid, loc[1], loc[2], loc[3], verify=verify))
                except (OSError, CorruptionError) as exc:
                    err = f"pack {loc[0]}: {exc}"
                    break
            if err:
                yield [i], None, err
                continue
            data = b"".join(parts)
            if verify and hasher(data).hexdigest() != files.sha256[i]:
                yield [i], None, "reassembled file does not match its sha256"
                continue
            yield [i], data, ""

    return source


# ----------------------------------------------------------------------------------------------------
# the generic restore


_T = TypeVar("_T")
_DONE = object()


def _prefetch(items: Iterator[_T], depth: int = 8, batch: int = 256) -> Iterator[_T]:
    """Run ``items`` in a background thread, up to ``depth`` batches of ``batch`` items ahead.

    Decompression and hashing release the GIL, so they overlap with the caller's file creation when a
    second core is available. Items cross threads in batches: one queue hand-off per ``batch`` items.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def run() -> None:
        try:
            buf: list[_T] = []
            for item in items:
                buf.append(item)
                if len(buf) >= batch:
                    if stop.is_set():
                        return
                    q.put(buf)
                    buf = []
            q.put(buf)
            q.put(_DONE)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)

    t = threading.Thread(target=run, name="aml-restore-read", daemon=True)
    t.start()
    try:
        while True:
            got = q.get()
            if got is _DONE:
                return
            if isinstance(got, BaseException):
                raise got
            yield from got
    finally:
        stop.set()
        while t.is_alive():  # unblock the producer if it waits on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.01)


def sync_filesystem(fd: int) -> None:
    """Flush the file system holding ``fd`` to disk once (``syncfs``; falls back to ``sync``)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        try:
            libc = ctypes.CDLL(libc_name, use_errno=True)
            if libc.syncfs(fd) == 0:
                return
        except (OSError, AttributeError):
            pass
    os.sync()


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class _Writer:
    def __init__(self, dirfds: DirFds, suffix: str = "") -> None:
        self.dirfds = dirfds
        self.counter = 0
        self.prefix = f"{TMP_PREFIX}r{os.getpid()}.{suffix}-"
        self.umask = _current_umask()

    def write(self, rel: str, data: bytes, mode: int, mtime_ns: int) -> None:
        dname, _, fname = rel.rpartition("/")
        dfd = self.dirfds.get(dname)
        # created with its final permissions when the umask allows it (saves an fchmod per file)
        exact_mode = (mode & ~self.umask) == mode and not mode & 0o7000
        while True:
            self.counter += 1
            tmp = f"{self.prefix}{self.counter}"
            try:
                fd = os.open(tmp, _CREATE, mode if exact_mode else 0o600, dir_fd=dfd)
                break
            except FileExistsError:
                continue
        try:
            n = os.write(fd, data)
            if n < len(data):  # short write (huge file or signal): finish it
                view = memoryview(data)[n:]
                while view:
                    view = view[os.write(fd, view) :]
            if not exact_mode:
                os.fchmod(fd, mode)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        except BaseException:
            os.close(fd)
            os.unlink(tmp, dir_fd=dfd)
            raise
        os.close(fd)
        try:
            check_write()
            os.rename(tmp, fname, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError:
            os.unlink(tmp, dir_fd=dfd)
            raise

    def link(self, rel: str, target: str, mtime_ns: int) -> None:
        """Create symlink ``rel`` -> ``target`` under a temporary name, then rename it into place (replacing
        a file or link there, never following one). The target is never opened."""
        dname, _, fname = rel.rpartition("/")
        dfd = self.dirfds.get(dname)
        while True:
            self.counter += 1
            tmp = f"{self.prefix}{self.counter}"
            try:
                os.symlink(target, tmp, dir_fd=dfd)
                break
            except FileExistsError:
                continue
        try:
            os.utime(tmp, ns=(mtime_ns, mtime_ns), dir_fd=dfd, follow_symlinks=False)
            check_write()
            os.rename(tmp, fname, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            os.unlink(tmp, dir_fd=dfd)
            raise

    def set_link_mtime(self, rel: str, mtime_ns: int) -> None:
        """Reset a symlink's own mtime (not its target's)."""
        dname, _, fname = rel.rpartition("/")
        os.utime(fname, ns=(mtime_ns, mtime_ns), dir_fd=self.dirfds.get(dname), follow_symlinks=False)

    def set_meta(self, rel: str, mode: int, mtime_ns: int) -> None:
        dname, _, fname = rel.rpartition("/")
        fd = os.open(fname, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dirfds.get(dname))
        try:
            os.fchmod(fd, mode)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)

    def remove(self, rel: str, is_dir: bool) -> None:
        check_write()  # an exact restore's deletions stop too when the store's lock was lost
        dname, _, fname = rel.rpartition("/")
        dfd = self.dirfds.get(dname)
        if is_dir:
            self.dirfds.forget(rel)
            shutil.rmtree(fname, dir_fd=dfd)
        else:
            os.unlink(fname, dir_fd=dfd)


RESTORE_THREADS = 4
"""Threads creating files (file creation is kernel work that releases the GIL; one directory per thread
at a time, so they do not contend for the same directory lock)."""


def _write_files(
    files: FileTable,
    to_write: list[int],
    source: ContentSource,
    root_fd: int,
    exact: bool,
    res: RestoreResult,
    rep: Reporter,
) -> None:
    """Write the selected files: contents come from ``source`` (decompressed ahead in a thread) and are
    handed to :data:`RESTORE_THREADS` writer threads, each owning a share of the directories."""
    nthreads = RESTORE_THREADS if len(to_write) >= 256 else 1
    Item = tuple[str, bytes, int, int]
    queues: list[queue.Queue[list[Item] | None]] = [queue.Queue(maxsize=16) for _ in range(nthreads)]
    written = [0] * nthreads
    nbytes = [0] * nthreads
    errors: list[list[dict[str, str]]] = [[] for _ in range(nthreads)]

    def work(k: int) -> None:
        q = queues[k]
        with DirFds(root_fd, create=True, replace=exact) as fds:
            w = _Writer(fds, suffix=str(k))
            while True:
                items = q.get()
                if items is None:
                    return
                for p, data, mode, mtime_ns in items:
                    try:
                        w.write(p, data, mode, mtime_ns)
                    except (OSError, BackupError) as exc:
                        errors[k].append({"path": p, "reason": f"cannot write: {exc}"})
                        continue
                    written[k] += 1
                    nbytes[k] += len(data)

    threads = [threading.Thread(target=work, args=(k,), name=f"aml-restore-write-{k}") for k in range(nthreads)]
    for t in threads:
        t.start()
    pending: list[list[Item]] = [[] for _ in range(nthreads)]
    pending_bytes = [0] * nthreads
    try:
        last_dir, k = "", 0
        for idxs, data, err in _prefetch(source(to_write)):
            for i in idxs:
                p = files.path[i]
                if data is None:
                    res.errors.append({"path": p, "reason": err})
                    continue
                d = p.rpartition("/")[0]
                if d != last_dir:
                    last_dir, k = d, zlib.crc32(d.encode("utf-8", "surrogateescape")) % nthreads
                pending[k].append((p, data, files.mode[i], files.mtime_ns[i]))
                pending_bytes[k] += len(data)
                if len(pending[k]) >= 64 or pending_bytes[k] >= 1 << 20:
                    queues[k].put(pending[k])
                    pending[k], pending_bytes[k] = [], 0
                rep.state.files_done += 1
                rep.state.bytes_done += len(data)
                rep.state.current = p
                if not rep.state.files_done & 63:
                    rep.tick()
    finally:
        for k2, q in enumerate(queues):
            if pending[k2]:
                q.put(pending[k2])
            q.put(None)
        for t in threads:
            t.join()
    res.files_written += sum(written)
    res.bytes_written += sum(nbytes)
    for e in errors:
        res.errors.extend(e)


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


def _restore_tables(
    *,
    backup_id: str,
    files: FileTable,
    dirs: DirTable,
    source: ContentSource,
    target: str | os.PathLike[str],
    scope: _Scope,
    exact: bool,
    dry_run: bool,
    legacy: bool,
    progress: ProgressCallback | None,
    repository: Path,
    source_path: str | None,
    links: LinkTable | None = None,
    excludes: Excludes | None = None,
) -> RestoreResult:
    t0 = time.monotonic()
    links = links or LinkTable()
    validate_tables(files, dirs, links)
    target_abs = os.path.abspath(os.fspath(target))
    protected = check_target(target_abs, repository, source_path)  # never touched by an exact restore
    hasher = hashlib.sha256 if legacy else crypto.id_hasher(repository)
    res = RestoreResult(backup_id=backup_id, target=target_abs, dry_run=dry_run, exact=exact, legacy=legacy)
    fsel, dsel = _select(files, dirs, scope)
    lsel = [i for i, p in enumerate(links.path) if scope.covers(p)]
    if scope.agent is not None and not fsel and not dsel and not lsel:
        raise SnapshotNotFound(f"agent {scope.agent!r} is not in snapshot {backup_id}")

    # ---- plan
    if os.path.lexists(target_abs) and not os.path.isdir(target_abs):
        raise BackupError(f"restore target {target_abs!r} exists and is not a directory")
    existing = _lstat_target(target_abs, scope.walk_roots, scope.walk_depth) if os.path.isdir(target_abs) else {}
    need_dirs: set[str] = set()
    for i in fsel:
        p = files.path[i].rpartition("/")[0]
        while p and p not in need_dirs:
            need_dirs.add(p)
            p = p.rpartition("/")[0]
    for i in dsel:
        p = dirs.path[i]
        while p and p not in need_dirs:
            need_dirs.add(p)
            p = p.rpartition("/")[0]
    for i in lsel:
        p = links.path[i].rpartition("/")[0]
        while p and p not in need_dirs:
            need_dirs.add(p)
            p = p.rpartition("/")[0]
    to_write: list[int] = []
    to_meta: list[int] = []
    to_link: list[int] = []
    to_link_meta: list[int] = []
    to_remove: list[tuple[str, bool]] = []
    snap_files = {files.path[i] for i in fsel}
    snap_links = {links.path[i] for i in lsel}
    for i in lsel:
        p = links.path[i]
        st = existing.get(p)
        if st is None:
            res.added.append(p)
            to_link.append(i)
        elif stat.S_ISLNK(st.st_mode) and _readlink(target_abs, p) == links.target[i]:
            if st.st_mtime_ns != links.mtime_ns[i]:
                res.metadata.append(p)
                to_link_meta.append(i)
            else:
                res.unchanged += 1
        else:
            if stat.S_ISDIR(st.st_mode):
                if not exact:
                    res.errors.append({"path": p, "reason": "a directory is in the way (use exact mode to replace it)"})
                    continue
                to_remove.append((p, True))
            res.changed.append(p)
            to_link.append(i)
    for i in fsel:
        p = files.path[i]
        st = existing.get(p)
        if st is None:
            res.added.append(p)
            to_write.append(i)
        elif not stat.S_ISREG(st.st_mode):
            if stat.S_ISDIR(st.st_mode):
                if not exact:
                    res.errors.append({"path": p, "reason": "a directory is in the way (use exact mode to replace it)"})
                    continue
                to_remove.append((p, True))
            res.changed.append(p)
            to_write.append(i)
        elif st.st_size != files.size[i] or _hash_file(target_abs, p, hasher) != files.sha256[i]:
            res.changed.append(p)
            to_write.append(i)
        elif st.st_mtime_ns != files.mtime_ns[i] or (st.st_mode & 0o7777) != files.mode[i]:
            res.metadata.append(p)
            to_meta.append(i)
        else:
            res.unchanged += 1
    for d in sorted(need_dirs):
        st = existing.get(d)
        if st is None or not stat.S_ISDIR(st.st_mode):
            res.added.append(d + "/")
            if st is not None:
                res.changed.append(d)
    if exact:
        # what the snapshot's backup excluded is not the snapshot's to remove, nor the directories holding it
        kept: set[str] = set()
        keep_dirs: set[str] = set()
        if excludes:
            kept = {p for p in existing if excludes(p)}
            for p in kept:
                a = p.rpartition("/")[0]
                while a and a not in keep_dirs:
                    keep_dirs.add(a)
                    a = a.rpartition("/")[0]
        for p, st in existing.items():
            is_dir = stat.S_ISDIR(st.st_mode)
            if p in snap_files or p in snap_links or (is_dir and p in need_dirs):
                continue
            if protected and (p == protected or protected.startswith(p + "/") or p.startswith(protected + "/")):
                continue
            if kept and (p in keep_dirs or _under(p, kept)):
                continue
            if not scope.covers(p):
                continue
            if scope.removal is not None and not scope.removal(p, is_dir):
                continue
            # a removed directory takes its content with it: list only the top-most entry
            parent = p.rpartition("/")[0]
            skip = False
            while parent:
                pst = existing.get(parent)
                if parent in snap_files or parent in snap_links or (
                    pst is not None
                    and stat.S_ISDIR(pst.st_mode)
                    and parent not in need_dirs
                    and parent not in keep_dirs
                    and scope.covers(parent)
                    and (scope.removal is None or scope.removal(parent, True))
                ):
                    skip = True
                    break
                parent = parent.rpartition("/")[0]
            if skip:
                continue
            if p in need_dirs:  # a non-directory where the snapshot has a directory: replaced below
                continue
            res.removed.append(p + "/" if is_dir else p)
            to_remove.append((p, is_dir))
    res.added.sort()
    res.changed.sort()
    res.removed.sort()
    if dry_run:
        res.duration_seconds = round(time.monotonic() - t0, 6)
        return res

    # ---- apply
    rep = Reporter(progress, "restore")
    rep.state.files_total = len(to_write)
    rep.state.bytes_total = sum(files.size[i] for i in to_write)
    root_fd = open_root(target_abs, create=True)
    dirfds = DirFds(root_fd, create=True, replace=exact)
    writer = _Writer(dirfds)
    try:
        for p, is_dir in sorted(to_remove, key=lambda t: t[0].count("/"), reverse=True):
            try:
                writer.remove(p, is_dir)
            except FileNotFoundError:
                pass
            except (OSError, BackupError) as exc:
                res.errors.append({"path": p, "reason": f"cannot remove: {exc}"})
        for d in sorted(need_dirs):
            try:
                dirfds.get(d)
            except (OSError, BackupError) as exc:
                res.errors.append({"path": d, "reason": f"cannot create directory: {exc}"})
        _write_files(files, to_write, source, root_fd, exact, res, rep)
        for i in to_meta:
            try:
                writer.set_meta(files.path[i], files.mode[i], files.mtime_ns[i])
            except (OSError, BackupError) as exc:
                res.errors.append({"path": files.path[i], "reason": f"cannot set mode/mtime: {exc}"})
        for i in to_link:
            try:
                writer.link(links.path[i], links.target[i], links.mtime_ns[i])
            except (OSError, BackupError) as exc:
                res.errors.append({"path": links.path[i], "reason": f"cannot create symlink: {exc}"})
        for i in to_link_meta:
            try:
                writer.set_link_mtime(links.path[i], links.mtime_ns[i])
            except (OSError, BackupError) as exc:
                res.errors.append({"path": links.path[i], "reason": f"cannot set symlink mtime: {exc}"})
        for i in sorted(dsel, key=lambda k: dirs.path[k].count("/"), reverse=True):
            d = dirs.path[i]
            try:
                fd = dirfds.get(d)
                os.fchmod(fd, dirs.mode[i])
                os.utime(fd, ns=(dirs.mtime_ns[i], dirs.mtime_ns[i]))
            except (OSError, BackupError) as exc:
                res.errors.append({"path": d, "reason": f"cannot set directory mode/mtime: {exc}"})
        sync_filesystem(root_fd)
    finally:
        dirfds.close()
        os.close(root_fd)
    rep.done()
    res.duration_seconds = round(time.monotonic() - t0, 6)
    return res


# ----------------------------------------------------------------------------------------------------
# public API


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
    scope = _Scope(agent=agent, globs=globs, walk_roots=(agent,) if agent else ("",))
    native = (repo.snapshots_dir / f"{backup_id}.json").is_file() and repo.is_initialized()
    if not native:
        from .legacy import find_legacy, legacy_tables

        tables = legacy_tables(repo, backup_id)  # raises SnapshotNotFound
        lscope = _Scope(
            agent=agent,
            globs=globs,
            removal=tables.removable,
            walk_roots=tables.walk_roots if agent is None else tuple(r for r in tables.walk_roots if r == agent),
            walk_depth=1,
        )

        def lsource(wanted: list[int]) -> Iterator[tuple[list[int], bytes | None, str]]:
            for i in wanted:
                yield [i], tables.data[i], ""

        return _restore_tables(
            backup_id=backup_id,
            files=tables.files,
            dirs=tables.dirs,
            source=lsource,
            target=target,
            scope=lscope,
            exact=exact,
            dry_run=dry_run,
            legacy=True,
            progress=progress,
            repository=repo.path,
            source_path=next((b.source_path for b in find_legacy(repo) if b.backup_id == backup_id), None),
        )
    with repo.lock(exclusive=False, operation="restore", wait=lock_wait):
        m = load_manifest(repo.path, backup_id)
        assert m.files is not None and m.dirs is not None
        validate_tables(m.files, m.dirs, m.links)
        index = load_index(repo.path, strict=False, include_damaged=False)
        fsel, _ = _select(m.files, m.dirs, scope)
        needed_packs = {index.objects[o][0] for i in fsel for o in m.files.objects_of(i) if o in index.objects}
        lost = set()
        for pack_id in needed_packs:
            try:
                if os.stat(pack_path(repo.path, pack_id)).st_size != index.packs[pack_id]:
                    lost.add(pack_id)
            except FileNotFoundError:
                lost.add(pack_id)
        missing = sorted(
            {o for i in fsel for o in m.files.objects_of(i) if o not in index.objects or index.objects[o][0] in lost}
        )
        if missing:
            gone = set(missing)
            affected = [m.files.path[i] for i in fsel if any(o in gone for o in m.files.objects_of(i))]
            raise CorruptionError(
                f"snapshot {backup_id}: {len(missing)} objects are missing (not in the index, or pack missing or "
                "truncated) "
                f"({len(affected)} files, e.g. {affected[:3]}); nothing was written",
                objects=missing,
                snapshots=[backup_id],
                files=[f"{backup_id}:{p}" for p in affected],
            )
        return _restore_tables(
            backup_id=backup_id,
            files=m.files,
            dirs=m.dirs,
            source=_native_source(repo, index, m.files, verify),
            target=target,
            scope=scope,
            exact=exact,
            dry_run=dry_run,
            legacy=False,
            progress=progress,
            repository=repo.path,
            source_path=m.source_path,
            links=m.links,
            excludes=Excludes(m.excludes, defaults=False),
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
