"""Writing a restore into its target (restic's ``fileswriter``, and the writing half of its
``filerestorer``).

Everything goes through directory descriptors opened with ``O_NOFOLLOW`` one component at a time
(:class:`~aml.backup._fs.DirFds`), so a symlink in the target is never followed:

* a file is written under a temporary name with its mode and mtime, then renamed into place (no per-file
  fsync), so that a file the target already uses is never seen torn; into a *fresh* target (a directory
  that did not exist or was empty when the restore started, as a restore to ``--target`` or a drill's
  scratch directory) a new file is created under its own name directly (``O_EXCL``: never over anything),
  as restic does: the rename costs more than the rest of the file's creation on common file systems,
  and nothing but this restore can be reading there (a killed restore may leave a torn file, which the
  next restore, comparing size and content hash, writes again);
* a symlink is created with ``symlinkat`` under a temporary name and renamed the same way (its
  target is never opened);
* directories are created on demand; their modes and mtimes are set last, deepest first;
* removals (exact mode) go deepest first, a directory with its content;
* :func:`write_files` spreads the files over :data:`RESTORE_THREADS` threads, each owning a share of the
  directories, fed from a content source (:mod:`~aml.backup.filerestorer`);
* :func:`sync_filesystem` flushes the target's file system once at the end (``syncfs``).

Every write checks the store's lock first (:func:`~aml.store.guard.check_write`): a restore over a live
store stops when the lock was lost.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import queue
import shutil
import threading
import zlib
from collections.abc import Callable, Iterable

from aml.store.guard import check_write

from ._common import TMP_PREFIX
from ._fs import DirFds
from .errors import BackupError
from .manifest import FileTable
from .progress import Reporter

__all__ = ["RESTORE_THREADS", "FilesWriter", "attempt", "sync_filesystem", "write_files"]

Errors = list[dict[str, str]]
"""``[{"path", "reason"}]``: the entries that could not be restored."""


def attempt(errors: Errors, path: str, what: str, action: Callable[[], object]) -> None:
    """Run ``action``; an ``OSError`` or :class:`BackupError` is recorded for ``path`` as ``what: error``."""
    try:
        action()
    except (OSError, BackupError) as exc:
        errors.append({"path": path, "reason": f"{what}: {exc}"})


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


class FilesWriter:
    """Writes entries below a target's directory descriptors (one writer per thread)."""

    def __init__(self, dirfds: DirFds, suffix: str = "", *, direct: bool = False) -> None:
        self.dirfds = dirfds
        self.counter = 0
        self.prefix = f"{TMP_PREFIX}r{os.getpid()}.{suffix}-"
        self.umask = _current_umask()
        self.direct = direct

    def write(self, rel: str, data: bytes, mode: int, mtime_ns: int) -> None:
        """Write file ``rel`` with its mode and mtime: under a temporary name renamed into place, or (``direct``,
        a fresh target) under its own name when nothing has that name yet."""
        dname, _, fname = rel.rpartition("/")
        dfd = self.dirfds.get(dname)
        # created with its final permissions when the umask allows it (saves an fchmod per file)
        exact_mode = (mode & ~self.umask) == mode and not mode & 0o7000
        if self.direct:
            check_write()
            try:
                fd = os.open(fname, _CREATE, mode if exact_mode else 0o600, dir_fd=dfd)
            except FileExistsError:
                pass  # something has that name: the safe way below replaces it whole
            else:
                self._fill(fd, data, mode, exact_mode, mtime_ns, fname, dfd)
                return
        while True:
            self.counter += 1
            tmp = f"{self.prefix}{self.counter}"
            try:
                fd = os.open(tmp, _CREATE, mode if exact_mode else 0o600, dir_fd=dfd)
                break
            except FileExistsError:
                continue
        self._fill(fd, data, mode, exact_mode, mtime_ns, tmp, dfd)
        try:
            check_write()
            os.rename(tmp, fname, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError:
            os.unlink(tmp, dir_fd=dfd)
            raise

    @staticmethod
    def _fill(fd: int, data: bytes, mode: int, exact_mode: bool, mtime_ns: int, name: str, dfd: int) -> None:
        """Write ``data`` to the new file ``fd`` (``name`` in ``dfd``), set its mode and mtime, close it; on
        failure the file is closed and removed."""
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
            os.unlink(name, dir_fd=dfd)
            raise
        os.close(fd)

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
        """Reset a file's mode and mtime."""
        dname, _, fname = rel.rpartition("/")
        fd = os.open(fname, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dirfds.get(dname))
        try:
            os.fchmod(fd, mode)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)

    def make_dir(self, rel: str) -> None:
        """Create directory ``rel`` (and its parents) if missing (a non-directory there is replaced when
        the descriptors were opened with ``replace``)."""
        self.dirfds.get(rel)

    def set_dir_meta(self, rel: str, mode: int, mtime_ns: int) -> None:
        """Set a directory's mode and mtime."""
        fd = self.dirfds.get(rel)
        os.fchmod(fd, mode)
        os.utime(fd, ns=(mtime_ns, mtime_ns))

    def remove(self, rel: str, is_dir: bool) -> None:
        """Remove ``rel`` (a directory with its content); nothing there is not an error."""
        check_write()  # an exact restore's deletions stop too when the store's lock was lost
        with contextlib.suppress(FileNotFoundError):
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

_Item = tuple[str, bytes, int, int]  # path, content, mode, mtime_ns


class _WriterThreads:
    """:data:`RESTORE_THREADS` threads writing files, each owning the directories hashed to it."""

    def __init__(self, root_fd: int, exact: bool, nthreads: int, direct: bool = False) -> None:
        self.root_fd, self.exact, self.nthreads, self.direct = root_fd, exact, nthreads, direct
        self.queues: list[queue.Queue[list[_Item] | None]] = [queue.Queue(maxsize=16) for _ in range(nthreads)]
        self.written = [0] * nthreads
        self.nbytes = [0] * nthreads
        self.errors: list[Errors] = [[] for _ in range(nthreads)]
        self.pending: list[list[_Item]] = [[] for _ in range(nthreads)]
        self.pending_bytes = [0] * nthreads
        self.threads = [
            threading.Thread(target=self._work, args=(k,), name=f"aml-restore-write-{k}") for k in range(nthreads)
        ]
        for t in self.threads:
            t.start()

    def _work(self, k: int) -> None:
        q = self.queues[k]
        with DirFds(self.root_fd, create=True, replace=self.exact) as fds:
            w = FilesWriter(fds, suffix=str(k), direct=self.direct)
            while True:
                items = q.get()
                if items is None:
                    return
                for p, data, mode, mtime_ns in items:
                    try:
                        w.write(p, data, mode, mtime_ns)
                    except (OSError, BackupError) as exc:
                        self.errors[k].append({"path": p, "reason": f"cannot write: {exc}"})
                        continue
                    self.written[k] += 1
                    self.nbytes[k] += len(data)

    def add(self, k: int, item: _Item) -> None:
        """Queue a file for thread ``k`` (handed over in batches of 64 files or 1 MiB)."""
        self.pending[k].append(item)
        self.pending_bytes[k] += len(item[1])
        if len(self.pending[k]) >= 64 or self.pending_bytes[k] >= 1 << 20:
            self.queues[k].put(self.pending[k])
            self.pending[k], self.pending_bytes[k] = [], 0

    def close(self) -> None:
        """Hand over what is pending, stop the threads and wait for them."""
        for k, q in enumerate(self.queues):
            if self.pending[k]:
                q.put(self.pending[k])
            q.put(None)
        for t in self.threads:
            t.join()


def write_files(
    files: FileTable,
    to_write: list[int],
    contents: Iterable[tuple[list[int], bytes | None, str]],
    root_fd: int,
    exact: bool,
    rep: Reporter,
    errors: Errors,
    *,
    direct: bool = False,
) -> tuple[int, int]:
    """Write the files ``to_write``, their contents coming from ``contents`` (groups ``(file indices,
    content or None, error)``, see :data:`~aml.backup.filerestorer.ContentSource`), on
    :data:`RESTORE_THREADS` threads (one when there are few files), each owning a share of the directories.

    Files whose content could not be read, then files that could not be written, are added to ``errors``.
    ``direct``: the target is fresh (see the module docstring): new files are created under their own names.

    Returns:
        ``(files written, bytes written)``.
    """
    nthreads = RESTORE_THREADS if len(to_write) >= 256 else 1
    pool = _WriterThreads(root_fd, exact, nthreads, direct)
    try:
        last_dir, k = "", 0
        for idxs, data, err in contents:
            for i in idxs:
                p = files.path[i]
                if data is None:
                    errors.append({"path": p, "reason": err})
                    continue
                d = p.rpartition("/")[0]
                if d != last_dir:
                    last_dir, k = d, zlib.crc32(d.encode("utf-8", "surrogateescape")) % nthreads
                pool.add(k, (p, data, files.mode[i], files.mtime_ns[i]))
                rep.state.files_done += 1
                rep.state.bytes_done += len(data)
                rep.state.current = p
                if not rep.state.files_done & 63:
                    rep.tick()
    finally:
        pool.close()
    for e in pool.errors:
        errors.extend(e)
    return sum(pool.written), sum(pool.nbytes)
