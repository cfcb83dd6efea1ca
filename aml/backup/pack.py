"""Pack files: many zstd-compressed objects in one file, written once and never modified.

Format (all integers little-endian)::

    offset 0        magic  b"AMLPACK\\x02"                                    8 bytes
    offset 8        dictionary length D (u32; 0 = objects compressed without dictionary)   4 bytes
    offset 12       sha256 of the raw dictionary (32 bytes; zeros when D = 0)
    offset 44       the zstd dictionary, itself zstd-compressed (D bytes)
    44 + D          object 0: one complete zstd frame (content size in the frame header)
                    object 1 ... object N-1, back to back, no padding
    trailer         N entries of 56 bytes: sha256 of the uncompressed object (32 bytes raw),
                    offset (u64), compressed length (u64), uncompressed length (u64)
    last 16 bytes   entry count N (u64), magic b"AMLPEND\\x01"

* An object is the content of one file (or one chunk of a file above the chunk size), compressed with
  zstd at the repository's level; its id is the sha256 (hex) of the *uncompressed* bytes, so identical
  contents are stored once however many files and snapshots share them.
* Small JSON documents compress poorly one by one, so objects are compressed with a zstd dictionary
  trained on the store's own files (see :func:`train_dictionary`): ~35 % smaller and faster than
  without. Each pack carries the dictionary it was written with, so a pack is self-contained (no
  single dictionary file whose loss would take every object with it) and the index can be rebuilt from
  the packs alone.
* The pack file is named by the sha256 (hex) of its own bytes and stored as ``packs/<first 2 hex>/<id>``,
  so any flipped bit anywhere in a pack (header, dictionary, frames, trailer) is detected by re-hashing.
* The trailer repeats the index entries of the pack (:func:`aml.backup.index.rebuild_index`).
* A pack is written with one ``write`` to a temporary file, fsynced, renamed into place and its directory
  fsynced: one fsync per pack (~16 MiB), never one per object.
* In an encrypted repository the whole pack (exactly the bytes above) is sealed at once
  (:mod:`aml.backup.crypto`, associated data ``pack``); the file's name is the sha256 of the sealed bytes,
  its size in the index is the sealed size, and offsets are offsets in the decrypted pack. Object ids are
  then keyed (HMAC-SHA256) instead of plain sha256.
* :class:`PackWriter` compresses in background threads and writes packs in another, so reading and
  hashing files overlaps with compression when a second core is available (zstd and sha256 release
  the GIL); on one core it costs nothing measurable.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from aml.store.atomic import atomic_write

from . import crypto, remote
from .errors import CorruptionError

PACK_MAGIC = b"AMLPACK\x02"
TRAILER_MAGIC = b"AMLPEND\x01"
PREFIX = struct.Struct("<8sI32s")
ENTRY = struct.Struct("<32sQQQ")
FOOTER = struct.Struct("<Q8s")
NO_DICT = b"\x00" * 32
BATCH_BYTES = 1 << 20
"""Uncompressed bytes handed to a compression thread at a time."""
MAX_PENDING = 4
"""Batches queued for compression before the reader waits (bounds memory to ~5 MiB)."""
COMPRESS_THREADS = 2
"""Compression threads at most (fewer when fewer CPUs are available to the process)."""

__all__ = [
    "ENTRY",
    "FOOTER",
    "PACK_MAGIC",
    "TRAILER_MAGIC",
    "Dictionary",
    "PackEntry",
    "PackInfo",
    "PackReader",
    "PackWriter",
    "compressor_for",
    "open_pack",
    "pack_path",
    "parse_trailer",
    "read_pack",
    "train_dictionary",
]


@dataclass(frozen=True, slots=True)
class PackEntry:
    """One object inside a pack.

    Attributes:
        id: sha256 (hex) of the uncompressed object.
        offset: byte offset of the zstd frame in the pack file.
        length: compressed length in bytes.
        size: uncompressed length in bytes.
    """

    id: str
    offset: int
    length: int
    size: int


@dataclass(slots=True)
class PackInfo:
    """A pack file that has been written and fsynced.

    Attributes:
        id: sha256 (hex) of the pack file's bytes (= its file name).
        size: pack file size in bytes.
        entries: its objects, in file order.
    """

    id: str
    size: int
    entries: list[PackEntry] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (``id``, ``size``, ``objects``)."""
        return {"id": self.id, "size": self.size, "objects": len(self.entries)}


class Dictionary:
    """A zstd dictionary (raw content) with cached compressors and decompressors.

    Args:
        raw: the dictionary bytes as produced by zstd's trainer.
    """

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256(raw).hexdigest()
        self._zdict = zstandard.ZstdCompressionDict(raw)
        self._packed: bytes | None = None

    def compressor(self, level: int) -> zstandard.ZstdCompressor:
        """A compressor using this dictionary (not thread-safe: one per thread)."""
        return zstandard.ZstdCompressor(level=level, dict_data=self._zdict, write_content_size=True)

    def decompressor(self) -> zstandard.ZstdDecompressor:
        """A decompressor using this dictionary."""
        return zstandard.ZstdDecompressor(dict_data=self._zdict)

    def packed(self) -> bytes:
        """The dictionary as stored in a pack header (zstd-compressed)."""
        if self._packed is None:
            self._packed = zstandard.ZstdCompressor(level=19).compress(self.raw)
        return self._packed


def train_dictionary(samples: list[bytes], *, max_size: int = 64 * 1024) -> Dictionary | None:
    """Train a zstd dictionary on sample objects.

    Args:
        samples: representative object contents (e.g. ~200 files spread over the store).
        max_size: dictionary size in bytes at most (64 KiB: the best speed/ratio trade-off measured on
            Loom-like 8 KB JSON documents).

    Returns:
        The dictionary, or None when the samples are too few or too small to be worth one.
    """
    total = sum(len(s) for s in samples)
    size = min(max_size, total // 8)
    if len(samples) < 32 or size < 4096:
        return None
    try:
        d = zstandard.train_dictionary(size, list[bytes | bytearray | memoryview](samples))
    except zstandard.ZstdError:
        return None
    return Dictionary(d.as_bytes())


def compressor_for(dictionary: Dictionary | None, level: int) -> zstandard.ZstdCompressor:
    """A compressor making the frames of a pack written with ``dictionary`` (or none) at zstd ``level``:
    content size in every frame header (not thread-safe: one per thread)."""
    if dictionary is not None:
        return dictionary.compressor(level)
    return zstandard.ZstdCompressor(level=level, write_content_size=True)


def pack_path(root: Path, pack_id: str) -> Path:
    """Return the path of pack ``pack_id`` under repository root ``root`` (``packs/<aa>/<id>``)."""
    return root / "packs" / pack_id[:2] / pack_id


def _workers() -> int:
    try:
        return max(1, min(COMPRESS_THREADS, len(os.sched_getaffinity(0))))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, min(COMPRESS_THREADS, os.cpu_count() or 1))


class PackWriter:
    """Compresses objects and writes a pack whenever the target size is reached.

    With ``threaded=True`` (the default), batches of objects are compressed by up to
    :data:`COMPRESS_THREADS` threads while the caller goes on reading and hashing files (zstd and
    sha256 release the GIL), and full packs are hashed, written and fsynced by one more thread.
    Objects keep their submission order inside packs. Call :meth:`flush` at the end: it waits for the
    threads and writes the last, partial pack; :attr:`packs` then lists every pack written, in order.
    Not thread-safe for callers.

    Args:
        root: repository root directory.
        target_size: start a new pack once the current one holds this many bytes of objects.
        level: zstd compression level.
        dictionary: compress with this dictionary (stored in each pack header), or None.
        threaded: compress and write in background threads.
    """

    def __init__(
        self,
        root: Path,
        *,
        target_size: int,
        level: int,
        dictionary: Dictionary | None = None,
        threaded: bool = True,
    ) -> None:
        self.root = root
        self.target_size = target_size
        self.dictionary = dictionary
        self._level = level
        self._key = crypto.key_for(root)
        if dictionary is not None:
            self._header = PREFIX.pack(PACK_MAGIC, len(dictionary.packed()), bytes.fromhex(dictionary.sha256))
            self._header += dictionary.packed()
        else:
            self._header = PREFIX.pack(PACK_MAGIC, 0, NO_DICT)
        self._frames: list[bytes] = []
        self._entries: list[tuple[str, int, int, int]] = []
        self._offset = len(self._header)
        self._batch: list[tuple[str, bytes]] = []
        self._batch_bytes = 0
        self._local = threading.local()
        workers = _workers() if threaded else 0
        self._cpool = ThreadPoolExecutor(workers, thread_name_prefix="aml-zstd") if workers else None
        self._wpool = ThreadPoolExecutor(1, thread_name_prefix="aml-pack") if threaded else None
        self._pending: deque[Future[list[tuple[str, bytes, int]]]] = deque()
        self._writes: deque[Future[PackInfo]] = deque()
        self.packs: list[PackInfo] = []
        self.bytes_written = 0
        self.compressed_bytes = 0

    def add(self, oid: str, data: bytes) -> None:
        """Queue one object for compression; packs are written as they fill.

        Args:
            oid: sha256 (hex) of ``data``; the caller computed it and guarantees it.
            data: the uncompressed object.

        Raises:
            OSError: if writing an earlier pack failed (raised here or by :meth:`flush`).
        """
        self._batch.append((oid, data))
        self._batch_bytes += len(data)
        if self._batch_bytes >= BATCH_BYTES:
            self._dispatch()

    def add_frame(self, oid: str, frame: bytes, size: int) -> None:
        """Append an already-compressed frame (prune's repack; same dictionary as this writer's).

        Args:
            oid: sha256 (hex) of the uncompressed object.
            frame: the zstd frame, as read from an old pack written with the same dictionary.
            size: uncompressed length in bytes.
        """
        self._dispatch()
        self._drain(0)
        self._append(oid, frame, size)

    def _compressor(self) -> zstandard.ZstdCompressor:
        c: zstandard.ZstdCompressor | None = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = compressor_for(self.dictionary, self._level)
        return c

    def _compress(self, batch: list[tuple[str, bytes]]) -> list[tuple[str, bytes, int]]:
        compress = self._compressor().compress
        return [(oid, compress(data), len(data)) for oid, data in batch]

    def _dispatch(self) -> None:
        batch = self._batch
        self._batch = []
        self._batch_bytes = 0
        if not batch:
            return
        if self._cpool is None:
            for oid, frame, size in self._compress(batch):
                self._append(oid, frame, size)
            return
        self._pending.append(self._cpool.submit(self._compress, batch))
        self._drain(MAX_PENDING)

    def _drain(self, keep: int) -> None:
        while len(self._pending) > keep or (self._pending and self._pending[0].done()):
            for oid, frame, size in self._pending.popleft().result():
                self._append(oid, frame, size)

    def _append(self, oid: str, frame: bytes, size: int) -> None:
        n = len(frame)
        self._frames.append(frame)
        self._entries.append((oid, self._offset, n, size))
        self._offset += n
        self.compressed_bytes += n
        if self._offset - len(self._header) >= self.target_size:
            self._seal()

    def _seal(self) -> None:
        if not self._entries:
            return
        frames, entries = self._frames, self._entries
        self._frames = []
        self._entries = []
        self._offset = len(self._header)
        if self._wpool is None:
            self._record(self._write(frames, entries))
            return
        self._writes.append(self._wpool.submit(self._write, frames, entries))
        while len(self._writes) > 2 or (self._writes and self._writes[0].done()):
            self._record(self._writes.popleft().result())

    def _record(self, info: PackInfo) -> None:
        self.packs.append(info)
        self.bytes_written += info.size

    def _write(self, frames: list[bytes], entries: list[tuple[str, int, int, int]]) -> PackInfo:
        trailer = b"".join(ENTRY.pack(bytes.fromhex(o), off, ln, sz) for o, off, ln, sz in entries)
        body = b"".join([self._header, *frames, trailer, FOOTER.pack(len(entries), TRAILER_MAGIC)])
        body = crypto.seal_for(self._key, body, b"pack")
        pack_id = hashlib.sha256(body).hexdigest()
        path = pack_path(self.root, pack_id)
        if not _intact(path, pack_id):  # an identical pack may exist (repack); a damaged copy is replaced
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, body, mode=0o444)
            remote.published(self.root, path, body)
        return PackInfo(pack_id, len(body), [PackEntry(*e) for e in entries])

    def flush(self) -> list[PackInfo]:
        """Compress what is queued, write the last pack, and wait for the background threads.

        Returns:
            Every pack written by this writer so far (each durable: fsynced, renamed, dir fsynced).

        Raises:
            OSError: on write failure (nothing is then visible under a pack name).
        """
        self._dispatch()
        self._drain(0)
        self._seal()
        while self._writes:
            self._record(self._writes.popleft().result())
        return self.packs

    def close(self) -> None:
        """Stop the background threads (pending work is abandoned if :meth:`flush` was not called)."""
        for pool in (self._cpool, self._wpool):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._cpool = self._wpool = None

    def __enter__(self) -> PackWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _intact(path: Path, pack_id: str) -> bool:
    try:
        with open(path, "rb", buffering=0) as fh:
            return hashlib.sha256(fh.read()).hexdigest() == pack_id
    except FileNotFoundError:
        return False


def parse_trailer(data: bytes | memoryview, *, location: str = "pack") -> list[PackEntry]:
    """Parse the object table at the end of a pack's bytes.

    Args:
        data: the whole pack file.
        location: name used in error messages.

    Returns:
        The entries in file order.

    Raises:
        CorruptionError: if the header, footer or table is malformed.
    """
    if len(data) < PREFIX.size + FOOTER.size or bytes(data[:8]) != PACK_MAGIC:
        raise CorruptionError(f"{location}: bad pack header", location=location)
    _, dlen, _ = PREFIX.unpack_from(data, 0)
    start = PREFIX.size + dlen
    count, magic = FOOTER.unpack_from(data, len(data) - FOOTER.size)
    table_start = len(data) - FOOTER.size - count * ENTRY.size
    if magic != TRAILER_MAGIC or table_start < start:
        raise CorruptionError(f"{location}: bad pack trailer", location=location)
    entries = []
    for i in range(count):
        raw, off, ln, sz = ENTRY.unpack_from(data, table_start + i * ENTRY.size)
        if off < start or off + ln > table_start:
            raise CorruptionError(f"{location}: trailer entry {i} out of range", location=location)
        entries.append(PackEntry(raw.hex(), off, ln, sz))
    return entries


def read_pack(root: Path, pack_id: str) -> bytes:
    """Read a whole pack file (decrypted, in an encrypted repository).

    Raises:
        FileNotFoundError: if the pack is missing.
        CorruptionError: an encrypted pack does not authenticate.
    """
    return open_pack(crypto.key_for(root), pack_id, remote.stored_pack(root, pack_id))


def open_pack(key: crypto.MasterKey | None, pack_id: str, data: Any) -> Any:
    """The plaintext of stored pack bytes: ``data`` itself in a plain repository, else decrypted.

    Raises:
        CorruptionError: an encrypted pack does not authenticate (naming the pack file).
    """
    return crypto.unseal_for(key, data, b"pack", f"packs/{pack_id[:2]}/{pack_id}")


_DICT_CACHE: OrderedDict[str, Dictionary] = OrderedDict()
_DICT_LOCK = threading.Lock()


def _dictionary_from(packed: bytes | memoryview, sha: str) -> Dictionary:
    with _DICT_LOCK:
        d = _DICT_CACHE.get(sha)
        if d is not None:
            _DICT_CACHE.move_to_end(sha)
            return d
    raw = zstandard.ZstdDecompressor().decompress(packed)
    d = Dictionary(raw)
    if d.sha256 != sha:
        raise ValueError("dictionary does not match its sha256")
    with _DICT_LOCK:
        _DICT_CACHE[sha] = d
        if len(_DICT_CACHE) > 16:
            _DICT_CACHE.popitem(last=False)
    return d


class PackReader:
    """Decodes objects of one pack held in memory (bytes or mmap). One instance per thread.

    Attributes:
        dictionary: the pack's compression dictionary, or None.
        objects_start: offset of the first frame.

    Args:
        data: the pack file's (decrypted) bytes.
        pack_id: its id (for error messages).
        hasher: makes object ids (``hashlib.sha256``, or the keyed hash of an encrypted repository).

    Raises:
        CorruptionError: the header or its dictionary is damaged (every object is then unreadable).
    """

    def __init__(self, data: bytes | memoryview | Any, pack_id: str = "", hasher: Any = hashlib.sha256) -> None:
        self.data = data
        self.pack_id = pack_id
        self.hasher = hasher
        loc = f"packs/{pack_id[:2]}/{pack_id}"
        if len(data) < PREFIX.size or bytes(data[:8]) != PACK_MAGIC:
            raise CorruptionError(f"pack {pack_id}: bad header", location=loc)
        _, dlen, dsha = PREFIX.unpack_from(data, 0)
        self.objects_start = PREFIX.size + dlen
        self.dictionary: Dictionary | None = None
        if dlen == 0:
            self._dctx = zstandard.ZstdDecompressor()
        else:
            try:
                self.dictionary = _dictionary_from(data[PREFIX.size : PREFIX.size + dlen], dsha.hex())
                self._dctx = self.dictionary.decompressor()
            except (zstandard.ZstdError, ValueError) as exc:
                raise CorruptionError(f"pack {pack_id}: compression dictionary damaged: {exc}", location=loc) from exc

    def decompressor(self) -> zstandard.ZstdDecompressor:
        """The decompressor for this pack's frames (with its dictionary, if any); not thread-safe."""
        return self._dctx

    def frame(self, offset: int, length: int) -> bytes | memoryview | Any:
        """The raw zstd frame at ``offset``."""
        return self.data[offset : offset + length]

    def decompress(self, oid: str, offset: int, length: int, size: int, *, verify: bool = True) -> bytes:
        """Decompress one object and check its length and (optionally) sha256.

        Args:
            oid: expected sha256 (hex) of the result.
            offset, length: the frame's position and compressed length in bytes.
            size: expected uncompressed length in bytes.
            verify: re-hash the result (default True).

        Returns:
            The uncompressed bytes.

        Raises:
            CorruptionError: the frame is out of range, does not decode, or the length or hash differs.
        """
        if offset < self.objects_start or offset + length > len(self.data):
            raise CorruptionError(f"object {oid}: outside pack {self.pack_id}", objects=[oid])
        try:
            data = self._dctx.decompress(self.data[offset : offset + length], max_output_size=size)
        except zstandard.ZstdError as exc:
            raise CorruptionError(f"object {oid}: zstd frame does not decode: {exc}", objects=[oid]) from exc
        if len(data) != size:
            raise CorruptionError(f"object {oid}: decoded {len(data)} bytes, expected {size}", objects=[oid])
        if verify and self.hasher(data).hexdigest() != oid:
            raise CorruptionError(f"object {oid}: sha256 mismatch", objects=[oid])
        return data
