"""Symlink-safe directory access below a root, by file descriptors.

Every directory below the root is opened one component at a time with ``O_NOFOLLOW | O_DIRECTORY``
relative to its parent's descriptor (``openat``), so a symlink anywhere below the root, even one
swapped in while aml runs, is never followed. Readers (backup) and writers (restore) both use it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict

from .errors import BackupError, UnsafePathError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

__all__ = ["DirFds", "open_root"]


def open_root(path: str | os.PathLike[str], *, create: bool = False) -> int:
    """Open the root directory (following symlinks: the root itself is the caller's choice).

    Args:
        path: directory path.
        create: create it (and parents) when missing.

    Returns:
        A directory file descriptor (the caller closes it).

    Raises:
        OSError: if it cannot be opened (NotADirectoryError, FileNotFoundError...).
    """
    if create:
        os.makedirs(path, exist_ok=True)
    return os.open(os.fspath(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


class DirFds:
    """Cache of directory descriptors below a root descriptor, opened without following symlinks.

    Args:
        root_fd: descriptor of the root directory (not closed by :meth:`close`).
        create: create missing directories (mode 0o755 until the restorer fixes it).
        replace: when a component exists but is not a directory (a symlink, a file), remove it (only
            the link or file itself, nothing it points to) and create a directory in its place.
        max_open: descriptors kept open at most (least recently used are closed).

    Attributes:
        created: relative paths of the directories created.
        replaced: relative paths of the non-directories removed to make room for a directory.
    """

    def __init__(self, root_fd: int, *, create: bool = False, replace: bool = False, max_open: int = 64) -> None:
        self.root_fd = root_fd
        self.create = create
        self.replace = replace
        self.max_open = max_open
        self._cache: OrderedDict[str, int] = OrderedDict()
        self.created: list[str] = []
        self.replaced: list[str] = []

    def get(self, rel_dir: str) -> int:
        """Return a descriptor for ``rel_dir`` (``""`` is the root; components joined by ``/``).

        Raises:
            UnsafePathError: a component is a symlink (and ``replace`` is off).
            BackupError: a component is not a directory (and ``replace`` is off).
            FileNotFoundError: a component is missing (and ``create`` is off).
        """
        if not rel_dir:
            return self.root_fd
        cache = self._cache
        fd = cache.get(rel_dir)
        if fd is not None:
            cache.move_to_end(rel_dir)
            return fd
        parent, _, name = rel_dir.rpartition("/")
        pfd = self.get(parent)
        fd = self._open_child(pfd, name, rel_dir)
        cache[rel_dir] = fd
        if len(cache) > self.max_open:
            _, old = cache.popitem(last=False)
            os.close(old)
        return fd

    def open_file(self, rel: str, flags: int) -> int:
        """``os.open`` of the file ``rel`` (``/``-separated, relative to the root) with ``flags``, through its
        directory's cached descriptor (no component followed if it is a symlink; add ``O_NOFOLLOW`` to
        ``flags`` for the file itself).

        Raises:
            UnsafePathError, BackupError, FileNotFoundError: as :meth:`get`, for the directory.
            OSError: the file cannot be opened.
        """
        dname, _, fname = rel.rpartition("/")
        return os.open(fname, flags, dir_fd=self.get(dname))

    def _open_child(self, pfd: int, name: str, rel_dir: str) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=pfd)
        except FileNotFoundError:
            if not self.create:
                raise
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            if not self.replace:
                try:
                    is_link = stat.S_ISLNK(os.stat(name, dir_fd=pfd, follow_symlinks=False).st_mode)
                except OSError:
                    is_link = exc.errno == errno.ELOOP
                if is_link:
                    raise UnsafePathError(f"{rel_dir}: is a symlink; not followed") from exc
                raise BackupError(f"{rel_dir}: exists and is not a directory") from exc
            os.unlink(name, dir_fd=pfd)
            self.replaced.append(rel_dir)
        try:
            os.mkdir(name, 0o755, dir_fd=pfd)
            self.created.append(rel_dir)
        except FileExistsError:  # created concurrently: open it, still without following
            pass
        return os.open(name, _DIR_FLAGS, dir_fd=pfd)

    def forget(self, rel_dir: str) -> None:
        """Close and drop cached descriptors for ``rel_dir`` and everything below it (after removal)."""
        prefix = rel_dir + "/"
        for key in [k for k in self._cache if k == rel_dir or k.startswith(prefix)]:
            os.close(self._cache.pop(key))

    def close(self) -> None:
        """Close every cached descriptor (not the root)."""
        while self._cache:
            _, fd = self._cache.popitem()
            os.close(fd)

    def __enter__(self) -> DirFds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
