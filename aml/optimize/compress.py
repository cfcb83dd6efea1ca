"""Compress cold documents in place, under their own names, readable by the agents that own them.

``optimize compress`` (DESIGN.md, "Compress and optimize"): every JSON document not modified for
``age_days`` is re-encoded with the chosen codec and written back **under the same name**
atomically (:func:`aml.store.atomic.atomic_write`: temp file, fsync, rename), with its mtime kept.
Loom's runtime reads a ``.json`` file by its magic bytes (``FileStorage.read`` checks ``1f 8b`` and
inflates with pako), so gzip bytes under a ``.json`` name stay readable by the agent; gzip is
therefore the default codec. zstd (RFC 8878, smaller and faster) is only for stores that aml alone
reads: Loom's runtime cannot read it. ``--decompress`` turns every compressed document back into
plain bytes.

What is never touched:

* a document that does not read, decode or parse (reported; see ``optimize gc`` for quarantine).
  Building a document in Python would be most of the cost, and compress never looks inside: a
  document the current index (``optimize index``) parsed at exactly the same size, mtime and inode
  is not checked again (cold files have not changed since); any other is checked by SQLite's JSON
  parser (:mod:`aml.store.jsoncheck`: valid JSON of the shape its place requires, no Python
  objects), and parsed fully only when that check cannot vouch for it;
* files that are not JSON documents (``README.md``, tarballs);
* Loom's ``backup/`` copies and any list of Loom items outside a live collection (``loom_item_copy``);
* aml's own files (``.aml*``) and names that already say they are compressed (``*.gz``, ``*.zst``);
* a file Loom's runtime holds its lock on, or that changed while it was being compressed.

Scope: by default only the documents Loom's runtime reads through its sniffing ``FileStorage``
(``<agent>/{patterns,solutions,decisions,metrics,context,index}.json`` and ``global/*.json``): the
root ``config.json``, ``config/schema_version.json`` and ``monitoring/*.json`` are read by plain
``JSON.parse``/``json.load`` in Loom's code, and Aitor/TinyTroupe files by their own loaders, so
compressing those would break their readers. ``scope="all"`` compresses every JSON document (for
stores only aml reads).

The gzip encoder is ``isal.igzip`` (Intel ISA-L), through :func:`aml.store.codec.encode`: on this
machine it compresses Loom JSON about 7 times faster than zlib at level 6 (``benchmarks/compress.py``
measures it against ``gzip -6`` and ``zstd -3`` in the same run). The new bytes are checked by
decoding them whole (one-shot decoders; gzip's CRC-32 and length checked) before they are written,
and the atomic writes (fsync per file) run on a few threads while the next files are read and
encoded.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal, cast, get_args

import zstandard
from isal import isal_zlib

from aml.optimize.files import INDEX_FILE, WRITER_SKIP_TOP, StoreFile, iter_store_files, unchanged
from aml.optimize.index import FORMAT as INDEX_FORMAT
from aml.optimize.index import connect, read_meta
from aml.store.atomic import atomic_write, fsync_dir
from aml.store.codec import Encoding, encode, sniff
from aml.store.documents import (
    DocumentError,
    DocumentKind,
    base_name,
    classify,
    decode_bytes,
    load_json,
    place,
    read_file_bytes,
)
from aml.store.filestore import FileStore
from aml.store.jsoncheck import QuickCheck
from aml.store.loomlock import loom_lock_held

Codec = Literal["gzip", "zstd"]
"""Codecs ``optimize compress`` writes."""
CODECS: Final[tuple[Codec, ...]] = get_args(Codec)

Scope = Literal["loom", "all"]
"""Which documents are compressed: ``loom`` (read by Loom's sniffing runtime) or ``all`` JSON documents."""
SCOPES: Final[tuple[Scope, ...]] = get_args(Scope)

DEFAULT_AGE_DAYS: Final = 30.0
"""Files not modified for this many days are cold (the seeds' ``compress_directory(age_days=30)``)."""

LOOM_RUNTIME_KINDS: Final[frozenset[DocumentKind]] = frozenset(
    {"loom_collection", "loom_archive", "loom_agent_file", "loom_global"}
)
"""Document kinds Loom's runtime reads through ``FileStorage.read`` (which sniffs gzip)."""

NEVER_KINDS: Final[frozenset[DocumentKind]] = frozenset({"loom_item_copy", "opaque", "symlink", "special", "unknown"})
"""Kinds never rewritten in any scope: backup copies and anything that is not a parsed JSON document."""

_COMPRESSED_SUFFIXES: Final = (".gz", ".zst", ".zstd")
_DAY_S: Final = 86400.0

WRITER_THREADS: Final = 4
"""Threads that write (temp file, fsync, rename) while the main thread reads and encodes."""
MAX_IN_FLIGHT: Final = 32
"""Files at most waiting to be written."""
MAX_IN_FLIGHT_BYTES: Final = 64 * 1024 * 1024
"""Encoded bytes at most waiting to be written (64 MiB; one larger file still goes alone)."""

ProgressCallback = Callable[[int, str], None]
"""Called after each file with ``(files seen so far, relpath)``."""


@dataclass(frozen=True, slots=True)
class FileChange:
    """One document rewritten (or, in a dry run, that would be).

    Attributes:
        relpath: store-relative path.
        kind: the document's kind.
        encoding_before, encoding_after: ``plain``/``gzip``/``zstd``.
        bytes_before, bytes_after: size on disk before and after, bytes.
        mtime_ns: the mtime the file had and keeps, nanoseconds since the epoch.
    """

    relpath: str
    kind: str
    encoding_before: Encoding
    encoding_after: Encoding
    bytes_before: int
    bytes_after: int
    mtime_ns: int


@dataclass
class CompressResult:
    """What one ``optimize compress`` (or ``--decompress``) run did.

    Attributes:
        store_id: the store.
        mode: ``compress`` or ``decompress``.
        codec: target codec (``plain`` when decompressing).
        age_days: the cold threshold used, days (``None`` when decompressing: age is ignored).
        scope: ``loom`` or ``all``.
        dry_run: nothing was written.
        files_seen: regular files walked (aml's own and ``backup/`` excluded).
        changed: the documents rewritten (or that would be, in a dry run).
        skipped: count of files left alone, by reason (``recent``, ``already_gzip``, ``scope``,
            ``not_json``, ``unparseable``, ``no_gain`` (a plain file that would not shrink), ``locked``,
            ``changed``, ``backup_copy``, ``compressed_name``, ``already_plain``).
        errors: every unparseable document (:meth:`DocumentError.as_dict`), left untouched.
        parsed_by_index: documents whose JSON parse was vouched for by the current index (see
            ``use_index``) instead of being parsed again.
        checked_quickly: documents SQLite's JSON parser vouched for (see ``quick_check``) instead of
            a full parse.
        duration_s: wall time, seconds.
    """

    store_id: str
    mode: Literal["compress", "decompress"]
    codec: Encoding
    age_days: float | None
    scope: Scope
    dry_run: bool
    files_seen: int = 0
    changed: list[FileChange] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    errors: list[dict[str, Any]] = field(default_factory=list)
    parsed_by_index: int = 0
    checked_quickly: int = 0
    duration_s: float = 0.0

    @property
    def bytes_before(self) -> int:
        """Bytes on disk of the changed documents before, bytes."""
        return sum(c.bytes_before for c in self.changed)

    @property
    def bytes_after(self) -> int:
        """Bytes on disk of the changed documents after, bytes."""
        return sum(c.bytes_after for c in self.changed)

    @property
    def ratio(self) -> float | None:
        """``bytes_after / bytes_before`` of the changed documents (0-1 when compressing), or ``None``."""
        return self.bytes_after / self.bytes_before if self.bytes_before else None

    def as_dict(self, *, max_files: int = 200) -> dict[str, Any]:
        """JSON-ready summary; ``files`` lists at most ``max_files`` changes (``files_truncated`` says so)."""
        return {
            "store": self.store_id,
            "mode": self.mode,
            "codec": self.codec,
            "age_days": self.age_days,
            "scope": self.scope,
            "dry_run": self.dry_run,
            "files_seen": self.files_seen,
            "files_changed": len(self.changed),
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "bytes_saved": self.bytes_before - self.bytes_after,
            "ratio": None if self.ratio is None else round(self.ratio, 4),
            "skipped": dict(sorted(self.skipped.items())),
            "errors": self.errors,
            "parsed_by_index": self.parsed_by_index,
            "checked_quickly": self.checked_quickly,
            "files": [asdict(c) for c in self.changed[:max_files]],
            "files_truncated": len(self.changed) > max_files,
            "duration_s": round(self.duration_s, 6),
        }


def compress_store(
    root: str | os.PathLike[str],
    *,
    codec: Codec = "gzip",
    level: int | None = None,
    age_days: float = DEFAULT_AGE_DAYS,
    decompress: bool = False,
    scope: Scope = "loom",
    dry_run: bool = False,
    now: float | None = None,
    fsync: bool = True,
    max_bytes: int | None = None,
    use_index: bool = True,
    quick_check: bool = True,
    progress: ProgressCallback | None = None,
) -> CompressResult:
    """Compress (or decompress) the cold documents of a file store in place.

    Each document is read once, checked to parse (a document that does not parse is never written), encoded,
    checked by decoding the new bytes back to the identical content, and written atomically under
    its own name with its original mtime (and mode). Running it twice changes nothing the second
    time (files already in the target codec are skipped by their magic bytes).

    Args:
        root: the store directory.
        codec: ``gzip`` (default; readable by Loom's runtime) or ``zstd`` (aml-only stores).
        level: codec level (gzip: isal 0-3, default 2; zstd: default 3).
        age_days: only files whose mtime is at least this many days old, days; ignored when
            decompressing (everything in scope is decompressed).
        decompress: write plain bytes instead (undo).
        scope: ``loom`` (default) or ``all`` (see the module docstring).
        dry_run: decide and measure (the new sizes are computed in memory) but write nothing.
        now: current time, seconds since the epoch (default: now; tests pin it).
        fsync: fsync each new file before its rename (turn off only for benchmarks of the codec);
            directories are fsynced once each at the end.
        max_bytes: files larger than this on disk are skipped as unreadable, bytes (default
            ``AML_MAX_DOCUMENT_MB``, :func:`aml.store.documents.max_document_bytes`).
        use_index: skip the JSON parse of a document that the store's index (``optimize index``)
            parsed without error at exactly its current size, mtime and inode (an atomic rewrite
            always changes the inode, an edit the mtime). Cold files are by definition unchanged
            since the last index, so this saves most of the parsing, which dominates the run.
        quick_check: for a document the index does not vouch for, first ask SQLite's JSON parser
            (:class:`aml.store.jsoncheck.QuickCheck`: valid JSON of the shape its place requires,
            about 7 times faster than building it in Python); parse it fully only when that cannot
            vouch for it (which also gives the exact error of a document that does not parse).
        progress: called after each file.

    Returns:
        A :class:`CompressResult`.

    Raises:
        ValueError: unknown codec or scope.
        FileNotFoundError, NotADirectoryError: ``root`` is not a directory.
        OSError: a write failed (files done so far stay done; the failing file is unchanged).
    """
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}: expected one of {', '.join(CODECS)}")
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}: expected one of {', '.join(SCOPES)}")
    started = time.perf_counter()
    store = FileStore(root)
    target: Encoding = "plain" if decompress else codec
    result = CompressResult(store.store_id, "decompress" if decompress else "compress", target,
                            None if decompress else age_days, scope, dry_run)
    now_s = time.time() if now is None else now
    check = QuickCheck(enabled=quick_check)
    limit = store.max_bytes if max_bytes is None else max_bytes
    run = _Compressor(result, target, level, decompress, scope, dry_run, int((now_s - age_days * _DAY_S) * 1e9),
                      frozenset(store.agents()), limit, indexed_documents(store.root) if use_index else {}, check)
    writes = _Writes(result, fsync)
    try:
        for f in iter_store_files(store.root, skip_top=WRITER_SKIP_TOP):
            result.files_seen += 1
            outcome = run.process(f)
            if isinstance(outcome, _Write):
                writes.submit(outcome)
            elif outcome is not None:
                result.skipped[outcome] += 1
            if progress is not None:
                progress(result.files_seen, f.relpath)
    except BaseException:
        writes.finish(raise_error=False)  # the writes in flight still complete (or not) atomically
        raise
    else:
        writes.finish()  # waits for every write in flight; raises the first write error
    finally:
        check.close()
    result.duration_s = time.perf_counter() - started
    return result


@dataclass(frozen=True, slots=True)
class _Write:
    """A document's new bytes, ready to replace it (if it is still the file that was read)."""

    path: Path
    st: os.stat_result
    data: bytes
    change: FileChange


class _Writes:
    """The atomic rewrites of one run, done by :data:`WRITER_THREADS` threads while the next documents
    are read, checked and encoded: the fsync of each file (which releases the GIL) overlaps with that
    work and with the other fsyncs (ext4 commits concurrent fsyncs together). Results are recorded in
    submission order; at most :data:`MAX_IN_FLIGHT` files (and :data:`MAX_IN_FLIGHT_BYTES`) wait.
    Each directory is fsynced once, at the end."""

    def __init__(self, result: CompressResult, fsync: bool) -> None:
        self.result, self.fsync = result, fsync
        self.pool: ThreadPoolExecutor | None = None
        self.pending: deque[tuple[Future[bool], _Write]] = deque()
        self.pending_bytes = 0
        self.error: BaseException | None = None
        self.dirs: set[Path] = set()

    def submit(self, write: _Write) -> None:
        if self.error is not None:
            raise self.error
        if self.pool is None:
            self.pool = ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="aml-compress-write")
        while self.pending and (len(self.pending) >= MAX_IN_FLIGHT
                                or self.pending_bytes + len(write.data) > MAX_IN_FLIGHT_BYTES):
            self._settle_oldest()
            if self.error is not None:
                raise self.error
        self.pending.append((self.pool.submit(self._write, write), write))
        self.pending_bytes += len(write.data)

    def _write(self, write: _Write) -> bool:
        if not unchanged(write.path, write.st):
            return False  # it changed since it was read: left alone
        atomic_write(write.path, write.data, mtime_ns=write.st.st_mtime_ns, fsync=self.fsync, sync_dir=False)
        return True

    def _settle_oldest(self) -> None:
        future, write = self.pending.popleft()
        self.pending_bytes -= len(write.data)
        try:
            written = future.result()
        except BaseException as exc:  # OSError, WriteRevoked: this file is unchanged
            if self.error is None:
                self.error = exc
            return
        if written:
            self.result.changed.append(write.change)
            self.dirs.add(write.path.parent)
        else:
            self.result.skipped["changed"] += 1

    def finish(self, *, raise_error: bool = True) -> None:
        """Wait for every write in flight, fsync the touched directories, then raise the first write
        error (unless ``raise_error`` is false: the caller is already raising)."""
        while self.pending:
            self._settle_oldest()
        if self.pool is not None:
            self.pool.shutdown()
        for directory in sorted(self.dirs):
            fsync_dir(directory)
        if self.error is not None and raise_error:
            raise self.error


def indexed_documents(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Documents the store's index parsed without error: ``{relpath: (size, mtime_ns, inode, kind)}``.

    Empty when there is no index, it is of another format, or it cannot be read.
    """
    path = root / INDEX_FILE
    if not path.is_file():
        return {}
    try:
        conn = connect(path, readonly=True)
        try:
            if read_meta(conn).get("format") != INDEX_FORMAT:
                return {}
            return {r[0]: (r[1], r[2], r[3], r[4]) for r in conn.execute(
                "SELECT relpath, size_bytes, mtime_ns, ino, kind FROM documents WHERE error IS NULL")}
        finally:
            conn.close()
    except sqlite3.Error:
        return {}


@dataclass
class _Compressor:
    """One run's settings; :meth:`process` handles one file."""

    result: CompressResult
    target: Encoding
    level: int | None
    decompress: bool
    scope: Scope
    dry_run: bool
    cutoff_ns: int
    loom_agents: frozenset[str]
    max_bytes: int
    indexed: dict[str, tuple[int, int, int, str]]
    check: QuickCheck

    def process(self, f: StoreFile) -> str | _Write | None:
        """Handle one file: the skip reason, the :class:`_Write` to do, or ``None`` when a dry run
        counted it as changed."""
        name = PurePosixPath(f.relpath).name
        if name.endswith(_COMPRESSED_SUFFIXES):
            return "compressed_name"
        if not self.decompress and f.mtime_ns > self.cutoff_ns:
            return "recent"
        parts = PurePosixPath(f.relpath).parts
        placement = place(parts, self.loom_agents)
        if placement.kind is None and not base_name(name).endswith(".json"):
            return "not_json"
        head = _head(f.path)
        target = self.target
        if head is not None and sniff(head) == target:
            return f"already_{target}"
        try:
            raw, st = read_file_bytes(f.path, max_bytes=self.max_bytes, relpath=f.relpath)
            decoded, encoding = decode_bytes(raw, f.path, relpath=f.relpath)
            known = self.indexed.get(f.relpath)
            quick: DocumentKind | None = None
            if known is not None and known[:3] == (st.st_size, st.st_mtime_ns, st.st_ino):
                kind: str = known[3]  # parsed by the index at this very size, mtime and inode
                self.result.parsed_by_index += 1
            elif (quick := self.check.kind(decoded, placement)) is not None:
                kind = quick  # valid JSON of its place's shape, by SQLite's parser: nothing built in Python
                self.result.checked_quickly += 1
            else:
                data = load_json(decoded, f.path, relpath=f.relpath)
                kind, _agent = classify(data, parts, placement, f.path)
                del data
        except DocumentError as exc:
            self.result.errors.append(exc.as_dict())
            return "unparseable"
        if encoding == target:  # the file changed between the peek and the read
            return f"already_{target}"
        if kind in NEVER_KINDS:
            return "backup_copy" if kind == "loom_item_copy" else "not_json"
        if self.scope == "loom" and kind not in LOOM_RUNTIME_KINDS:
            return "scope"
        if loom_lock_held(f.path):
            return "locked"
        new = encode(decoded, target, level=self.level)
        if encoding == "plain" and len(new) >= len(raw):
            return "no_gain"  # tiny files grow when compressed; a transcode honours the requested codec
        if not _reads_back(new, target, decoded):  # never write bytes that do not read back to the same content
            raise RuntimeError(f"{f.relpath}: {target} output does not decode to the original content")
        change = FileChange(f.relpath, kind, encoding, target, len(raw), len(new), st.st_mtime_ns)
        if not self.dry_run:
            return _Write(f.path, st, new, change)
        self.result.changed.append(change)
        return None


def _reads_back(new: bytes, encoding: Encoding, decoded: bytes) -> bool:
    """Whether ``new`` (just encoded by :func:`aml.store.codec.encode`: one gzip member or one zstd
    frame with its content size) decodes to exactly ``decoded``, gzip's CRC-32 and length checked.
    One-shot decoders: 4 times faster than the streaming, bomb-guarded :func:`aml.store.codec.decode`
    that reading unknown files needs."""
    try:
        if encoding == "gzip":
            return bool(isal_zlib.decompress(new, wbits=31) == decoded)
        if encoding == "zstd":
            return bool(zstandard.ZstdDecompressor().decompress(new) == decoded)
    except (zstandard.ZstdError, ValueError, OSError, cast("type[Exception]", isal_zlib.error)):
        return False
    return new == decoded  # plain


def _head(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(4)
    except OSError:
        return None
