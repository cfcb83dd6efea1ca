"""Which files of a store the optimize operations look at, and where aml keeps its own files.

Every optimize module walks the store the same way: regular files below the root in sorted path
order, never following symlinks, skipping aml's own entries (``.aml*``: the index, the quarantine,
temporary files) exactly as :class:`aml.store.FileStore` does. Writers also skip Loom's ``backup/``
copies (they are history, not live memory) and any file Loom's runtime is writing at that moment
(its ``proper-lockfile`` lock directory ``<file>.lock`` exists and is fresh).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aml.store.atomic import TMP_PREFIX
from aml.store.filestore import AML_PREFIX

AML_DIR: Final = ".aml"
"""aml's folder inside a file store (skipped by every scan)."""
INDEX_FILE: Final = f"{AML_DIR}/index.sqlite"
"""The record index written by ``optimize index`` (store-relative)."""
RECORD_INDEX_FORMAT: Final = "aml-index/2"
"""The record index's format (its ``meta.format``); an index of another format is rebuilt from scratch, and
never read as this one (aml-index/2 added ``documents.prune_fields`` and what tells a document unchanged since
it was read: ``ctime_ns``, ``read_at_ns``)."""
CHANGE_TICK_NS: Final = 2_000_000_000
"""The coarsest file timestamp step the record index allows for, nanoseconds (FAT's 2 s; ext3 and HFS+ have
1 s). A document changed (mtime or ctime) less than this before the index read it may be rewritten again
within the same step, leaving its size, mtime and ctime as they were: the index reads it again at its next
build, and prune never takes it from the index (git's "racily clean" entries, handled the same way)."""
BLOOM_FILE: Final = f"{AML_DIR}/index.bloom"
"""The Bloom filter over record ids, saved next to the index (store-relative)."""
INDEX_LOCK_FILE: Final = f"{AML_DIR}/index.lock"
"""``flock`` file that serialises the writers of the index (build, warm-cache)."""
QUARANTINE_DIR: Final = f"{AML_DIR}/quarantine"
"""Where ``optimize gc`` copies documents that do not parse (store-relative)."""

WRITER_SKIP_TOP: Final = frozenset({"backup"})
"""Top-level directories that writers (compress, gc) never touch: Loom's reset copies."""

@dataclass(frozen=True, slots=True)
class StoreFile:
    """One regular file of a store, as seen by ``lstat`` during the walk.

    Attributes:
        path: absolute path.
        relpath: store-relative POSIX path.
        size: bytes on disk.
        mtime_ns: modification time, nanoseconds since the epoch.
        ino: inode number (an atomic rewrite always changes it).
        ctime_ns: status change time, nanoseconds since the epoch (any write, ``utime`` or ``chmod`` sets it).
    """

    path: Path
    relpath: str
    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int = 0

    @property
    def top(self) -> str | None:
        """The first path component when the file is inside a directory, else ``None``."""
        head, sep, _ = self.relpath.partition("/")
        return head if sep else None


def iter_store_files(root: Path, *, skip_top: frozenset[str] = frozenset()) -> Iterator[StoreFile]:
    """Walk the regular files of a store in sorted path order.

    Args:
        root: the store directory.
        skip_top: top-level directory names not to descend into (e.g. :data:`WRITER_SKIP_TOP`).

    Yields:
        One :class:`StoreFile` per regular file. Symlinks, FIFOs, sockets and devices are skipped
        (the scan reports them); entries named ``.aml*`` (aml's own) are skipped; unreadable
        directories below the root are skipped.

    Raises:
        FileNotFoundError, NotADirectoryError: ``root`` is not a directory.
    """
    yield from _walk(root, "", skip_top)


def _walk(directory: Path, prefix: str, skip_top: frozenset[str]) -> Iterator[StoreFile]:
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        if not prefix:
            raise
        return
    for entry in entries:
        name = entry.name
        if name.startswith((TMP_PREFIX, AML_PREFIX)):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            if not prefix and name in skip_top:
                continue
            yield from _walk(Path(entry.path), f"{prefix}{name}/", skip_top)
        elif stat.S_ISREG(st.st_mode):
            yield StoreFile(Path(entry.path), prefix + name, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def unchanged(path: Path, before: os.stat_result | StoreFile) -> bool:
    """True if ``path`` still has the size, mtime and inode it had in ``before``."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if isinstance(before, StoreFile):
        return (st.st_size, st.st_mtime_ns, st.st_ino) == (before.size, before.mtime_ns, before.ino)
    return (st.st_size, st.st_mtime_ns, st.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
