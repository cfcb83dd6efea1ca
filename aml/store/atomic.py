"""Atomic file writes: the one helper every writer of a memory store uses.

The rule (DESIGN.md, "Every write is atomic"): write a temporary file in the same directory,
fsync it, rename it over the target, then fsync the directory. A crash at any moment leaves either
the old file or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Final

from aml.store.guard import check_write

TMP_PREFIX = ".aml-tmp-"
"""Prefix of aml's temporary files; readers skip them and cleanup removes stale ones."""

STALE_TEMP_S: Final = 600.0
"""Seconds a temporary file must have been left unchanged (its ctime: a write, ``chmod`` or ``utime`` of it moves
it) before :func:`remove_stale_temp` takes it for a killed writer's: a live write touches its file far more often,
including writers outside the store lock (an agent's session files)."""


def remove_stale_temp(directories: Iterable[Path], *, older_than_s: float | None = None,
                      now: float | None = None) -> list[Path]:
    """Remove the temporary files (:data:`TMP_PREFIX`) a killed writer left in ``directories``: regular files whose
    ctime is at least ``older_than_s`` seconds before ``now``. A killed process cannot remove its own temporary
    file (``kill -9`` mid-write); the target itself is whole, old or new, whatever the moment of the kill.

    Args:
        directories: where to look (not recursively); one that cannot be listed is skipped.
        older_than_s: seconds (default :data:`STALE_TEMP_S`; 0: every one, for a caller that knows the writer is
            gone).
        now: the reference instant, seconds since the epoch (default: the current time).

    Returns:
        The paths removed. Symbolic links, directories and files that vanish or cannot be removed are left.
    """
    cutoff = (time.time() if now is None else now) - (STALE_TEMP_S if older_than_s is None else older_than_s)
    removed: list[Path] = []
    for directory in sorted(set(directories)):
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if not entry.name.startswith(TMP_PREFIX):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and st.st_ctime <= cutoff:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except OSError:
                continue
    return removed


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
