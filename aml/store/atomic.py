"""Atomic file writes: the one helper every writer of a memory store uses.

The rule (DESIGN.md, "Every write is atomic"): write a temporary file in the same directory,
fsync it, rename it over the target, then fsync the directory. A crash at any moment leaves either
the old file or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from aml.store.guard import check_write

TMP_PREFIX = ".aml-tmp-"
"""Prefix of aml's temporary files; readers skip them and cleanup removes stale ones."""


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that a rename inside it is durable.

    Args:
        path: the directory.

    Raises:
        OSError: if the directory cannot be opened (platforms without directory fds are ignored).
    """
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (IsADirectoryError, PermissionError):  # pragma: no cover - non-POSIX
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str],
    *,
    mode: int | None = None,
    mtime_ns: int | None = None,
    fsync: bool = True,
    sync_dir: bool = True,
) -> Iterator[BinaryIO]:
    """Open a temporary file next to ``path`` for binary writing; on success it replaces ``path``.

    Args:
        path: final file path. Its directory must exist.
        mode: permission bits for the new file (default: the old file's mode, or 0o644).
        mtime_ns: if given, the new file's access and modification time, in nanoseconds since the
            epoch (used to keep a file's mtime when aml rewrites it).
        fsync: fsync the file before the rename (turn off only when the caller syncs in bulk).
        sync_dir: fsync the directory after the rename.

    Yields:
        A writable binary file object. If the block raises, the temporary file is removed and the
        target is untouched.

    Raises:
        OSError: on any I/O error; the target is then unchanged.
        aml.store.guard.WriteRevoked: the operation's store lock was lost; the target is unchanged.
    """
    target = Path(path)
    directory = target.parent
    if mode is None:
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if mtime_ns is not None:
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
        check_write()
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if sync_dir:
        fsync_dir(directory)


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int | None = None,
    mtime_ns: int | None = None,
    fsync: bool = True,
    sync_dir: bool = True,
) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename, fsync directory).

    Args:
        path: final file path; its directory must exist.
        data: the complete new content.
        mode, mtime_ns, fsync, sync_dir: as for :func:`atomic_open`.

    Raises:
        OSError: on any I/O error; the target is then unchanged.
    """
    with atomic_open(path, mode=mode, mtime_ns=mtime_ns, fsync=fsync, sync_dir=sync_dir) as fh:
        fh.write(data)
