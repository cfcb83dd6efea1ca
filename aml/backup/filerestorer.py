"""Reading a restore's file contents (restic's ``filerestorer``, reading side).

A :data:`ContentSource` is given the indices of the files to write and yields their contents in groups
``(file indices, content or None, error)``: one group per object, however many files share it. The
native source reads the repository pack by pack, in pack order (each pack opened once, memory-mapped),
decompresses each object once and re-hashes it (``verify``); a file stored in chunks is reassembled and
its whole content re-hashed. A missing or damaged object or pack fails only the files that need it (the
group carries the reason). :func:`prefetch` runs a source in a background thread, ahead of the writers
(:mod:`~aml.backup.fileswriter`).

:func:`missing_objects` is the check a restore runs before writing anything: every object the selected
files need must be in the index, in a pack that exists with its indexed size.
"""

from __future__ import annotations

import collections
import itertools
import mmap
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from . import crypto, remote
from .errors import CorruptionError
from .index import Index
from .manifest import FileTable
from .pack import PackReader, open_pack, pack_path, read_pack
from .repository import Repository
from .storage import StorageError

__all__ = ["ContentSource", "memory_source", "missing_objects", "native_source", "prefetch"]

Group = tuple[list[int], bytes | None, str]
"""``(file indices, content or None, error)``: one object's content and the files that have it."""

ContentSource = Callable[[list[int]], Iterator[Group]]
"""Given file indices to write, yields ``(file indices, content or None, error)`` groups."""

_Located = tuple[str, int, int, int, str, list[int]]  # pack, offset, length, size, object id, file indices


def missing_objects(root: Path, index: Index, files: FileTable, sel: list[int]) -> list[str]:
    """Objects the selected files need that cannot be read: not in the index, or in a pack that is
    missing or not of its indexed size (sorted)."""
    needed_packs = {index.objects[o][0] for i in sel for o in files.objects_of(i) if o in index.objects}
    lost = set()
    for pack_id in needed_packs:
        stat = remote.pack_stat(root, pack_id)
        if stat is None or stat[0] != index.packs[pack_id]:
            lost.add(pack_id)
    needed = {o for i in sel for o in files.objects_of(i)}
    return sorted(o for o in needed if o not in index.objects or index.objects[o][0] in lost)


def memory_source(data: list[bytes]) -> ContentSource:
    """A source over contents already in memory (a legacy backup's files, by index)."""

    def source(wanted: list[int]) -> Iterator[Group]:
        for i in wanted:
            yield [i], data[i], ""

    return source


def native_source(repo: Repository, index: Index, files: FileTable, verify: bool) -> ContentSource:
    """A source reading the repository's packs (see the module docstring)."""
    root = repo.path
    key = crypto.key_for(root)
    hasher = crypto.id_hasher(root)

    def source(wanted: list[int]) -> Iterator[Group]:
        whole = [i for i in wanted if i not in files.chunks]
        located, unknown = _locate(index, files, whole)
        yield from unknown
        groups = [(pack_id, list(group)) for pack_id, group in itertools.groupby(located, key=lambda t: t[0])]
        if remote.mirror_for(root) is None:
            for pack_id, items in groups:
                yield from _read_pack(root, key, hasher, pack_id, items, verify)
        else:
            downloads = _downloads(root, [pack_id for pack_id, _ in groups])
            for (pack_id, items), data in zip(groups, downloads, strict=True):
                yield from _read_pack(root, key, hasher, pack_id, items, verify, data)
        for i in wanted:
            if i in files.chunks:
                yield _read_chunked(root, index, hasher, files, i, verify)

    return source


def _locate(index: Index, files: FileTable, wanted: list[int]) -> tuple[list[_Located], list[Group]]:
    """Group the files by object and sort the objects by pack and offset; the groups of objects the
    index does not have come back as errors."""
    by_obj: dict[str, list[int]] = {}
    for i in wanted:
        by_obj.setdefault(files.sha256[i], []).append(i)
    located: list[_Located] = []
    unknown: list[Group] = []
    for oid, idxs in by_obj.items():
        loc = index.objects.get(oid)
        if loc is None:
            unknown.append((idxs, None, f"object {oid} is not in the index"))
            continue
        located.append((loc[0], loc[1], loc[2], loc[3], oid, idxs))
    located.sort()
    return located, unknown


DOWNLOAD_AHEAD = 3
"""Packs of a remote repository downloaded ahead of the one being decoded (two connections' worth of
requests in flight, as restic keeps several): the network's latency overlaps the decoding."""


def _downloads(root: Path, pack_ids: list[str]) -> Iterator[bytes | BaseException]:
    """The stored bytes of each pack of a remote repository, in order, fetched up to :data:`DOWNLOAD_AHEAD`
    ahead by two threads; a failed download comes as its exception (raised by :func:`_read_pack`)."""
    with ThreadPoolExecutor(2, thread_name_prefix="aml-restore-fetch") as pool:
        pending: collections.deque[Future[bytes]] = collections.deque()
        ids = iter(pack_ids)
        for pack_id in itertools.islice(ids, DOWNLOAD_AHEAD):
            pending.append(pool.submit(remote.stored_pack, root, pack_id))
        while pending:
            fut = pending.popleft()
            nxt = next(ids, None)
            if nxt is not None:
                pending.append(pool.submit(remote.stored_pack, root, nxt))
            try:
                yield fut.result()
            except Exception as exc:  # handed to the reader, which decides
                yield exc


def _read_pack(
    root: Path, key: crypto.MasterKey | None, hasher: Callable[..., Any], pack_id: str, items: list[_Located],
    verify: bool, data: bytes | BaseException | None = None,
) -> Iterator[Group]:
    """Read ``items`` (objects of one pack, in offset order) from one memory-mapped pack (or from ``data``,
    its bytes or the error of their download, for a remote repository)."""
    mm: Any
    try:
        if isinstance(data, BaseException):
            raise data
        if data is not None:
            mm = data
        elif remote.mirror_for(root) is None:
            with open(pack_path(root, pack_id), "rb") as fh:
                mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        else:
            mm = remote.stored_pack(root, pack_id)
    except StorageError:
        raise  # the storage did not answer: the restore fails as a whole, no file is called damaged
    except (OSError, ValueError) as exc:
        for it in items:
            yield it[5], None, f"pack {pack_id} unreadable: {exc}"
        return
    try:
        try:
            reader = PackReader(open_pack(key, pack_id, mm), pack_id, hasher)
        except CorruptionError as exc:
            for it in items:
                yield it[5], None, f"pack {pack_id} unreadable: {exc}"
            return
        for _, off, ln, sz, oid, idxs in items:
            try:
                yield idxs, reader.decompress(oid, off, ln, sz, verify=verify), ""
            except CorruptionError as exc:
                yield idxs, None, f"pack {pack_id}: {exc}"
        del reader
    finally:
        if isinstance(mm, mmap.mmap):
            mm.close()


def _read_chunked(
    root: Path, index: Index, hasher: Callable[..., Any], files: FileTable, i: int, verify: bool
) -> Group:
    """Reassemble a file stored in chunks, and re-hash the whole of it (``verify``)."""
    parts = []
    for cid in files.chunks[i]:
        loc = index.objects.get(cid)
        if loc is None:
            return [i], None, f"object {cid} is not in the index"
        try:
            preader = PackReader(read_pack(root, loc[0]), loc[0], hasher)
            parts.append(preader.decompress(cid, loc[1], loc[2], loc[3], verify=verify))
        except StorageError:
            raise
        except (OSError, CorruptionError) as exc:
            return [i], None, f"pack {loc[0]}: {exc}"
    data = b"".join(parts)
    if verify and hasher(data).hexdigest() != files.sha256[i]:
        return [i], None, "reassembled file does not match its sha256"
    return [i], data, ""


_T = TypeVar("_T")
_DONE = object()


def prefetch(items: Iterator[_T], depth: int = 8, batch: int = 256) -> Iterator[_T]:
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
