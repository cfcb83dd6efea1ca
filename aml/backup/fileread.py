"""A full backup's reading, hashing and compressing, done by worker processes ahead of the archiver.

The archiver's loop (:func:`aml.backup.archiver.create_snapshot`) takes one file after the other: open,
read, ``fstat``, close, hash, compress. On a store of many small files each step is a short call, and
one process does them all: its own work bounds the backup while the second core waits. Here the files
to read are cut into batches (:data:`BATCH_FILES` files or :data:`BATCH_BYTES` bytes at most, in scan
order) that :func:`~aml.procpool.ordered_map` hands to :data:`READ_WORKERS` forked processes. A worker
does the archiver's hot path for every file of its batch, and gives back, per file, the object id, the
compressed frame (the pack writer's own compressor: same dictionary, same level) and the size. The
archiver takes the results in scan order, so packs hold the same objects in the same order as a serial
backup, and keeps everything else: deduplication against the index and this backup, the manifest rows,
the packs, progress and the lock.

A worker never decides anything the archiver would decide differently. For a file that is not exactly
as scanned (size, mtime, inode, type), larger than the repository's chunk size, or that cannot be
opened or read, it returns ``None``, and the archiver reads that file itself with its careful path
(re-read from offset 0, chunking, "changed while being read" warnings, errors naming the file). A worker
that dies loses nothing (the archiver computes the rest of the batches itself, :mod:`aml.procpool`).

Where worker processes cannot be forked (a prefork Celery pool child, one usable CPU) or the backup
reads little (under :data:`~aml.procpool.PARALLEL_MIN_BYTES`), :func:`read_ahead` gives nothing, and
the archiver does the work in its own process as before.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import zstandard

from aml.procpool import PARALLEL_MIN_BYTES, ordered_map, worker_processes

from ._fs import DirFds
from .errors import BackupError
from .pack import Dictionary, compressor_for

__all__ = ["BATCH_BYTES", "BATCH_FILES", "READ_FLAGS", "READ_WORKERS", "Prepared", "read_ahead"]

READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
"""How a backup opens a file: never through a symlink, never blocking on a fifo swapped in."""

READ_WORKERS = 2
"""Worker processes that read, hash and compress a full backup's files (``procpool`` caps it at the
usable CPUs)."""

BATCH_FILES = 256
"""Files per batch at most: small enough that results stream back while the archiver writes packs."""

BATCH_BYTES = 4 * 1024 * 1024
"""Bytes (as scanned) per batch at most, so a batch's frames take a few megabytes in flight."""

Prepared = tuple[str, bytes | None, int] | None
"""One file's result: ``(object id, zstd frame, size in bytes)``; the frame is ``None`` when the object is
already in the repository's index or earlier in the same batch; ``None`` for a file the archiver must
read itself."""


@dataclass(frozen=True)
class _Job:
    """What a worker needs, inherited at fork time (never pickled: the index's object set can be large)."""

    root_fd: int
    files: list[tuple[str, int, int, int, int]]
    todo: list[int]
    known: Any  # the index's objects: a set-like of ids (``in`` only)
    object_id: Callable[[bytes], str]
    dictionary: Dictionary | None
    level: int
    chunk_size: int


_JOBS: dict[int, _Job] = {}
_job_ids = itertools.count(1)
_local = threading.local()


def _batches(files: list[tuple[str, int, int, int, int]], todo: list[int]) -> list[tuple[int, int]]:
    """``todo`` cut into ``(start, stop)`` spans of at most :data:`BATCH_FILES` files and (one file excepted)
    :data:`BATCH_BYTES` bytes."""
    spans: list[tuple[int, int]] = []
    start = size = 0
    for k, n in enumerate(todo):
        fsize = files[n][1]
        if k > start and (k - start >= BATCH_FILES or size + fsize > BATCH_BYTES):
            spans.append((start, k))
            start, size = k, 0
        size += fsize
    if start < len(todo):
        spans.append((start, len(todo)))
    return spans


@contextlib.contextmanager
def read_ahead(
    root_fd: int,
    files: list[tuple[str, int, int, int, int]],
    todo: list[int],
    *,
    known: Any,
    object_id: Callable[[bytes], str],
    dictionary: Dictionary | None,
    level: int,
    chunk_size: int,
) -> Iterator[Iterator[Prepared] | None]:
    """Read, hash and compress the files ``todo`` in worker processes, ahead of the archiver.

    Args:
        root_fd: descriptor of the store's root directory (inherited by the workers).
        files: the scan's files ``(path, size, mtime_ns, mode, inode)``.
        todo: indices into ``files`` of the files to read, in increasing order.
        known: object ids already in the repository (the index's): their frames are not made.
        object_id: the repository's id function (sha256, or keyed HMAC when encrypted).
        dictionary: the pack writer's compression dictionary, or None.
        level: the repository's zstd level.
        chunk_size: the repository's maximum object size in bytes (larger files are left to the archiver).

    Yields:
        ``None`` when the work stays in this process (no worker processes possible, or less than
        :data:`~aml.procpool.PARALLEL_MIN_BYTES` to read); else an iterator of one :data:`Prepared` per
        file of ``todo``, in order. Leaving the context stops the workers.
    """
    if not todo or sum(files[n][1] for n in todo) < PARALLEL_MIN_BYTES:
        yield None
        return
    spans = _batches(files, todo)
    if worker_processes(READ_WORKERS, len(spans)) < 2:
        yield None
        return
    job_id = next(_job_ids)
    _JOBS[job_id] = _Job(root_fd, files, todo, known, object_id, dictionary, level, chunk_size)
    try:
        with ordered_map(functools.partial(_read_batch, job_id=job_id), spans, workers=READ_WORKERS) as results:
            yield itertools.chain.from_iterable(results)
    finally:
        del _JOBS[job_id]
        if getattr(_local, "compressor", (None,))[0] == job_id:  # batches done here (a worker died): let it go
            del _local.compressor


def _compressor(job_id: int, job: _Job) -> zstandard.ZstdCompressor:
    """This thread's compressor for ``job`` (made once per worker, reused across its batches)."""
    cached: tuple[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressor", None)
    if cached is None or cached[0] != job_id:
        cached = _local.compressor = (job_id, compressor_for(job.dictionary, job.level))
    return cached[1]


def _read_batch(span: tuple[int, int], *, job_id: int) -> list[Prepared]:
    """The :data:`Prepared` results of the files ``todo[span[0]:span[1]]`` of job ``job_id`` (a worker's part)."""
    job = _JOBS[job_id]
    compress = _compressor(job_id, job).compress
    files, known, object_id, chunk_size = job.files, job.known, job.object_id, job.chunk_size
    os_read, os_close, os_fstat, s_isreg = os.read, os.close, os.fstat, stat.S_ISREG
    seen: set[str] = set()
    out: list[Prepared] = []
    put = out.append
    dirfds = DirFds(job.root_fd)
    open_file = dirfds.open_file
    try:
        for n in job.todo[span[0]:span[1]]:
            rel, size, mtime_ns, _mode, ino = files[n]
            if size > chunk_size:
                put(None)
                continue
            try:
                fd = open_file(rel, READ_FLAGS)
            except (OSError, BackupError):
                put(None)
                continue
            try:
                data = os_read(fd, size + 1)
                fst = os_fstat(fd)
            except OSError:
                put(None)
                continue
            finally:
                os_close(fd)
            if not (len(data) == size == fst.st_size and fst.st_mtime_ns == mtime_ns and fst.st_ino == ino
                    and s_isreg(fst.st_mode)):
                put(None)  # not as scanned: the archiver reads it again, with care
                continue
            oid = object_id(data)
            if oid in known or oid in seen:
                put((oid, None, size))
            else:
                seen.add(oid)
                put((oid, compress(data), size))
    finally:
        dirfds.close()
    return out
