"""The record index: a SQLite database of every record of a store, with full-text search.

``optimize index`` writes ``<store>/.aml/index.sqlite`` (and the Bloom filter of record ids,
``<store>/.aml/index.bloom``, see :mod:`aml.optimize.bloom`). ``aml <store> query`` and the health
probe read it (:mod:`aml.optimize.query`). Tables:

``records``
    one row per record view (:class:`aml.store.Record`): ``key`` (``<document>#<pointer>``, unique),
    ``id``, ``agent``, ``collection``, ``kind``, ``tags`` (JSON list), ``confidence``,
    ``success_rate`` (ratios 0-1), ``execution_count``, ``value`` (0-1, :mod:`aml.optimize.value`),
    ``created_at``/``last_used_at`` (ISO 8601 UTC ``Z``), ``recency`` (epoch seconds of the last
    use, else creation), ``active``, ``version``, ``role``, ``size_bytes`` (compact JSON, bytes) and
    the location: ``document`` (store-relative path), ``pointer`` (RFC 6901), ``item_index``.
``records_fts``
    FTS5 (``porter unicode61``) over each record's text (every string value except ids and
    timestamps, plus kind, collection and tags); its rowid is ``records.rid``.
``tags``
    ``(tag, rid)`` pairs for tag filters.
``documents``
    every file of the store as last read: ``relpath``, ``kind``, ``agent``, ``collection``,
    ``encoding``, ``size_bytes``, ``mtime_ns``, ``ino``, ``ctime_ns``, ``record_count``, ``error`` (code),
    ``read_at_ns`` (wall clock just before the read); and for an agent's live Loom collection,
    ``prune_fields``: what prune's rules read of each item, its value inputs and size (MessagePack,
    :mod:`aml.prune.fields`), with its checksum ``prune_fields_digest``, from which a prune plan takes the
    document unread while it is unchanged (:mod:`aml.prune.indexed`).
``warm``
    the warm set written by ``optimize warm-cache`` (:mod:`aml.optimize.warm`).
``meta``
    ``format``, ``store_id``, ``built_at``, ``records``, ``documents``, ``loom_agents``, ``bloom_sha256``,
    ``prune_fields`` (:data:`aml.prune.fields.FIELDS_VERSION`), ``aml_version``.

Builds are **atomic**: the new index is written to a temporary file in ``.aml/`` and renamed over
the old one (readers holding the old file keep reading it). They are **incremental**: a build
starts from a copy of the current index (of the same format, made by the same aml and prune-fields
versions) and re-reads only the documents whose size, mtime, ctime or inode changed, or that changed (mtime or
ctime) less than :data:`~aml.optimize.files.CHANGE_TICK_NS` before it last read them (and drops the rows of
documents that are gone); ``full=True`` reads everything. Warm-set
entries of re-read documents are refreshed in the same build. Writers of the index (build,
warm-cache) are serialised by an ``flock`` on ``.aml/index.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import re
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any, Final

import aml
from aml import procpool
from aml.gcpause import gc_paused
from aml.optimize.bloom import DEFAULT_FALSE_POSITIVE_RATE, IdBloom
from aml.optimize.files import (
    AML_DIR,
    BLOOM_FILE,
    CHANGE_TICK_NS,
    INDEX_FILE,
    INDEX_LOCK_FILE,
    RECORD_INDEX_FORMAT,
    iter_store_files,
)
from aml.optimize.value import record_value
from aml.procpool import ordered_map
from aml.prune.fields import FIELDS_VERSION, LOOM_LIVE, ItemPacker, digest, indexed_item
from aml.store import accessors as acc
from aml.store.atomic import TMP_PREFIX, atomic_write, fsync_dir
from aml.store.documents import LAZY_ITEMS_BYTES, Document, LazyItems, read_document
from aml.store.extract import records_from_document
from aml.store.filestore import PARALLEL_DOCUMENT_BYTES, FileStore
from aml.store.names import text_name, text_names
from aml.store.records import Record
from aml.store.timestamps import now_utc, utc_iso_z

FORMAT: Final = RECORD_INDEX_FORMAT
"""Value of ``meta.format``; an index of another format is rebuilt from scratch."""

TEXT_LIMIT: Final = 32 * 1024
"""At most this many characters of a record's text are indexed for full-text search."""

SCHEMA: Final = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE documents (
    relpath TEXT PRIMARY KEY, kind TEXT NOT NULL, agent TEXT, collection TEXT, encoding TEXT,
    size_bytes INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ino INTEGER NOT NULL,
    record_count INTEGER NOT NULL, error TEXT, ctime_ns INTEGER NOT NULL, read_at_ns INTEGER NOT NULL,
    prune_fields BLOB, prune_fields_digest TEXT
);
CREATE TABLE records (
    rid INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    id TEXT NOT NULL, agent TEXT NOT NULL, collection TEXT NOT NULL, kind TEXT NOT NULL,
    tags TEXT NOT NULL,
    confidence REAL, success_rate REAL, execution_count INTEGER, value REAL NOT NULL,
    created_at TEXT, last_used_at TEXT, recency REAL,
    active INTEGER NOT NULL, version TEXT, role TEXT, size_bytes INTEGER NOT NULL,
    document TEXT NOT NULL, pointer TEXT NOT NULL, item_index INTEGER NOT NULL
);
CREATE TABLE tags (tag TEXT NOT NULL, rid INTEGER NOT NULL, PRIMARY KEY (tag, rid)) WITHOUT ROWID;
CREATE VIRTUAL TABLE records_fts USING fts5(text, tokenize = 'porter unicode61 remove_diacritics 2');
CREATE TABLE warm (
    key TEXT PRIMARY KEY, id TEXT NOT NULL, document TEXT NOT NULL, pointer TEXT NOT NULL,
    value REAL NOT NULL, item TEXT NOT NULL, size_bytes INTEGER NOT NULL,
    doc_size INTEGER NOT NULL, doc_mtime_ns INTEGER NOT NULL, doc_ino INTEGER NOT NULL,
    loaded_at TEXT NOT NULL
);
"""

WRITE_PRAGMAS: Final = ("PRAGMA journal_mode=OFF", "PRAGMA synchronous=OFF")
"""How a build writes its temporary database: no rollback journal and no syncs (a failed build's file is removed,
a finished one synced once before its rename)."""

SECONDARY_INDEXES: Final = (
    "CREATE INDEX IF NOT EXISTS records_id ON records(id)",
    "CREATE INDEX IF NOT EXISTS records_agent ON records(agent, collection)",
    "CREATE INDEX IF NOT EXISTS records_document ON records(document)",
    "CREATE INDEX IF NOT EXISTS records_value ON records(value DESC, recency DESC)",
    "CREATE INDEX IF NOT EXISTS warm_document ON warm(document)",
)
"""The index's secondary B-trees. A build from scratch creates them once its rows are in (SQLite then sorts
each column once, instead of inserting 75,000 random keys into four trees one row at a time: about half
the build's writing time); an incremental update finds them there."""

_SKIP_KEY: Final = re.compile(r"^(id|agent|timestamp|created|lastUsed|version|hash)$|(Id|_id|At|_at|Timestamp)$")
_SKIP_VALUE: Final = re.compile(
    r"^(\d{4}-\d{2}-\d{2}T[\d:.]+(Z|[+-]\d{2}:?\d{2})?|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    r"[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
)


class IndexMissingError(FileNotFoundError):
    """The store has no usable index (run ``aml <store> optimize index``)."""


@dataclass
class IndexResult:
    """What one build did.

    Attributes:
        store_id: the store.
        path: the index file.
        full: every document was read (no usable previous index, or ``full=True``).
        records: records in the new index.
        documents: files in the new index.
        documents_read: files read in this build (new or changed).
        documents_reused: files whose rows were kept (size, mtime and inode unchanged).
        documents_removed: files that disappeared since the previous build.
        errors: files that failed to read or parse (indexed without records).
        names_skipped: files left out because their name, not valid UTF-8, escapes (``\\xNN``) to another
            file's name.
        warm_refreshed, warm_dropped: warm-set entries refreshed from re-read documents, or dropped
            because their record is gone.
        bloom_items: ids in the Bloom filter; bloom_bytes: its file size, bytes.
        index_bytes: size of the index file, bytes.
        duration_s: wall time, seconds.
    """

    store_id: str
    path: str
    full: bool
    records: int = 0
    documents: int = 0
    documents_read: int = 0
    documents_reused: int = 0
    documents_removed: int = 0
    errors: int = 0
    names_skipped: int = 0
    warm_refreshed: int = 0
    warm_dropped: int = 0
    bloom_items: int = 0
    bloom_bytes: int = 0
    index_bytes: int = 0
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (every attribute)."""
        out = dict(self.__dict__)
        out["duration_s"] = round(self.duration_s, 6)
        return out


# --------------------------------------------------------------------------------- helpers


def index_path(root: str | os.PathLike[str]) -> Path:
    """``<root>/.aml/index.sqlite``."""
    return Path(root) / INDEX_FILE


def bloom_path(root: str | os.PathLike[str]) -> Path:
    """``<root>/.aml/index.bloom``."""
    return Path(root) / BLOOM_FILE


def resolve_pointer(data: Any, pointer: str) -> Any:
    """The value at an RFC 6901 JSON pointer.

    Raises:
        KeyError: the pointer does not lead to a value.
    """
    if pointer == "":
        return data
    cur = data
    for raw in pointer.split("/")[1:]:
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(cur, list | LazyItems):
            try:
                cur = cur[int(token)]
            except (ValueError, IndexError) as exc:
                raise KeyError(pointer) from exc
        elif isinstance(cur, Mapping):
            if token not in cur:
                raise KeyError(pointer)
            cur = cur[token]
        else:
            raise KeyError(pointer)
    return cur


def record_text(record: Record, item: Any, tags: list[str]) -> str:
    """The text indexed for full-text search: kind, collection, tags, then every string value of the
    record except ids, agent names, timestamps and UUIDs (depth first), cut at :data:`TEXT_LIMIT`.

    A string value is kept unless its key (or, inside a list, the key of the list) matches
    :data:`_SKIP_KEY`, it is empty or it matches :data:`_SKIP_VALUE`; values under a skipped key are
    not walked. Strings are taken until they add up to :data:`TEXT_LIMIT` characters."""
    parts: list[str] = [record.kind, record.collection.replace(".", " "), *tags]
    _collect_text(item, parts, TEXT_LIMIT)
    return " ".join(parts)[:TEXT_LIMIT]


_SKIP_KEY_MEMO: dict[str, bool] = {}
"""``_SKIP_KEY.search(key) is not None`` by key: keys repeat across items, the search costs more than a
lookup. Bounded by :data:`_SKIP_KEY_MEMO_SIZE`."""
_SKIP_KEY_MEMO_SIZE: Final = 4096


def _skip_key(key: object) -> bool:
    """Whether the values under ``key`` are left out of the text (:data:`_SKIP_KEY`), memoised."""
    text = key if type(key) is str else str(key)
    skip = _SKIP_KEY_MEMO.get(text)
    if skip is None:
        skip = _SKIP_KEY.search(text) is not None
        if len(_SKIP_KEY_MEMO) >= _SKIP_KEY_MEMO_SIZE:
            _SKIP_KEY_MEMO.clear()
        _SKIP_KEY_MEMO[text] = skip
    return skip


def _text_value(value: str) -> bool:
    """Whether a string value goes into the text: not empty and not a timestamp or UUID
    (:data:`_SKIP_VALUE`). The pattern is tried only where it can match: a timestamp starts with a
    digit (every ``\\d`` is ``isdigit``), a UUID has 36 characters (37 with the newline ``$`` allows).
    :func:`_collect_text` has this test inline."""
    if not value:
        return False
    if value[0].isdigit() or len(value) in (36, 37):
        return _SKIP_VALUE.match(value) is None
    return True


def _collect_text(value: Any, parts: list[str], budget: int) -> int:
    """Append the text strings of ``value`` (depth first) to ``parts`` while ``budget`` (characters,
    each string counting one more for its separator) is positive; returns what is left of it."""
    kind = type(value)
    if kind is dict or kind is list:
        skip_memo = _SKIP_KEY_MEMO  # keys are str in JSON; another key misses (its memo entry is str(key))
        # a list's values come with no key (None), never skipped
        for k, v in value.items() if kind is dict else zip(repeat(None), value):
            if k is not None:
                skip = skip_memo.get(k)
                if skip is None:
                    skip = _skip_key(k)
                if skip:
                    continue
            sub = type(v)
            if sub is str:
                if v and (not (v[0].isdigit() or len(v) in (36, 37)) or _SKIP_VALUE.match(v) is None):
                    parts.append(v)  # _text_value(v), inline
                    budget -= len(v) + 1
                    if budget <= 0:
                        return budget
            elif sub is dict or sub is list or not (sub is int or sub is float or sub is bool or v is None):
                budget = _collect_text(v, parts, budget)
                if budget <= 0:
                    return budget
        return budget
    # anything else: what ``json`` does not produce (subclasses, other mappings), checked as before
    if isinstance(value, str):
        if _text_value(value):
            parts.append(value)
            budget -= len(value) + 1
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if not _skip_key(k):
                budget = _collect_text(v, parts, budget)
                if budget <= 0:
                    return budget
    elif isinstance(value, list):
        for v in value:
            budget = _collect_text(v, parts, budget)
            if budget <= 0:
                return budget
    return budget


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open an index database (``readonly`` opens it with ``mode=ro``)."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    """The ``meta`` table as a dict (empty if the table is missing)."""
    try:
        return {row[0]: row[1] for row in conn.execute("SELECT key, value FROM meta")}
    except sqlite3.DatabaseError:
        return {}


@contextlib.contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """Hold the exclusive ``flock`` that serialises writers of the index (blocks until free)."""
    directory = root / AML_DIR
    directory.mkdir(exist_ok=True)
    fd = os.open(root / INDEX_LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def replace_index(root: Path, *, start_from_current: bool) -> Iterator[sqlite3.Connection]:
    """A writable copy of the index (or an empty one) in a temporary file of ``.aml/``; on success it
    is synced and renamed over ``.aml/index.sqlite``; on failure it is removed and the index is
    unchanged. Hold :func:`writer_lock` around it.

    Args:
        root: the store root.
        start_from_current: copy the current index first (it must exist and be of :data:`FORMAT`).

    Yields:
        A connection to the temporary database (the caller fills it; commit happens here).
    """
    directory = root / AML_DIR
    directory.mkdir(exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".sqlite", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        conn = connect(tmp)
        try:
            if start_from_current:
                src = connect(index_path(root), readonly=True)
                try:
                    src.backup(conn)
                finally:
                    src.close()
            else:
                conn.executescript(SCHEMA)  # secondary indexes: create_secondary_indexes, once the rows are in
            for pragma in WRITE_PRAGMAS:
                conn.execute(pragma)
            yield conn
            conn.commit()
        finally:
            conn.close()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, index_path(root))
        fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _current_index_usable(root: Path) -> bool:
    path = index_path(root)
    if not path.is_file():
        return False
    try:
        conn = connect(path, readonly=True)
    except sqlite3.Error:
        return False
    try:
        meta = read_meta(conn)
        # made by other code: every row is made again (its prune fields may differ)
        return (meta.get("format") == FORMAT and meta.get("prune_fields") == FIELDS_VERSION
                and meta.get("aml_version") == aml.__version__)
    finally:
        conn.close()


# --------------------------------------------------------------------------------- build


def build_index(
    root: str | os.PathLike[str],
    *,
    full: bool = False,
    false_positive_rate: float = DEFAULT_FALSE_POSITIVE_RATE,
) -> IndexResult:
    """Build (or update) the index and the Bloom filter of a file store. Reads the store only.

    Documents of up to :data:`~aml.store.filestore.PARALLEL_DOCUMENT_BYTES` are read, and their rows made,
    by :data:`INDEX_WORKERS` forked worker processes (:func:`aml.procpool.ordered_map`; threads when they
    add up to less than :data:`aml.procpool.PARALLEL_MIN_BYTES`), each sending back a document's rows at
    once, while this process writes the rows of the ones before; larger documents are read here, item by
    item, and written :data:`ROW_BATCH` records at a time.

    Args:
        root: the store directory.
        full: read every document even when the current index could be updated incrementally.
        false_positive_rate: target false positive rate of the Bloom filter (ratio).

    Returns:
        An :class:`IndexResult`.

    Raises:
        FileNotFoundError, NotADirectoryError: ``root`` is not a directory.
        OSError, sqlite3.Error: writing the index failed (the previous index is unchanged).
    """
    started = time.perf_counter()
    store = FileStore(root)
    base = store.root
    if not base.is_dir():
        raise NotADirectoryError(f"not a directory: {base}")
    loom_agents = frozenset(store.agents())
    agents_json = json.dumps(sorted(loom_agents))
    with writer_lock(base), gc_paused():
        incremental = not full and _current_index_usable(base)
        result = IndexResult(store.store_id, str(index_path(base)), full=not incremental)
        with replace_index(base, start_from_current=incremental) as conn:
            known: dict[str, tuple[int, int, int, int]] = {}
            indexed: set[str] = set()  # every document the current index holds (the gone ones are dropped)
            if incremental:
                meta = read_meta(conn)
                if meta.get("loom_agents") != agents_json:  # agent set changed: placements may differ
                    _clear(conn)
                    result.full = True
                else:
                    indexed = {r[0] for r in conn.execute("SELECT relpath FROM documents")}
                    # a document changed (mtime or ctime) within a timestamp step of its read is read again
                    known = {r[0]: (r[1], r[2], r[3], r[4]) for r in conn.execute(
                        "SELECT relpath, size_bytes, mtime_ns, ino, ctime_ns FROM documents "
                        "WHERE max(mtime_ns, ctime_ns) < read_at_ns - ?", (CHANGE_TICK_NS,))}
            warm: dict[str, list[tuple[str, str]]] = {}
            for key, wid, document in conn.execute("SELECT key, id, document FROM warm"):
                warm.setdefault(document, []).append((key, wid))
            seen: set[str] = set()
            jobs: list[_Job] = []
            files = list(iter_store_files(base))
            names = {f.relpath for f in files}
            for f in files:
                name = text_name(f.relpath)  # as the index keeps it
                if name != f.relpath and name in names:  # escapes to another file's very name: left out
                    result.names_skipped += 1
                    continue
                seen.add(name)
                if known.get(name) == (f.size, f.mtime_ns, f.ino, f.ctime_ns):
                    result.documents_reused += 1
                    continue
                jobs.append(_Job(f.path, f.relpath, f.ino, f.size, store.store_id, loom_agents,
                                 warm.get(name, [])))
            small = [j for j in jobs if j.size <= PARALLEL_DOCUMENT_BYTES]
            with ordered_map(_document_rows, small, workers=INDEX_WORKERS,
                             processes=sum(j.size for j in small) >= procpool.PARALLEL_MIN_BYTES) as computed:
                done = iter(computed)
                for job in jobs:  # in the store's order, as before: rids follow it
                    rows = next(done) if job.size <= PARALLEL_DOCUMENT_BYTES else None
                    refreshed, dropped = _replace_document(conn, job, rows, fresh=not incremental)
                    result.documents_read += 1
                    result.warm_refreshed += refreshed
                    result.warm_dropped += dropped
            create_secondary_indexes(conn)
            for gone in sorted(indexed - seen):
                result.warm_dropped += _drop_document(conn, gone)
                result.documents_removed += 1
            result.records = conn.execute("SELECT count(*) FROM records").fetchone()[0]
            result.documents = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
            result.errors = conn.execute("SELECT count(*) FROM documents WHERE error IS NOT NULL").fetchone()[0]
            bloom = IdBloom.build((r[0] for r in conn.execute("SELECT DISTINCT id FROM records")),
                                  false_positive_rate=false_positive_rate)
            bloom_bytes = bloom.to_bytes()
            meta_rows = {"format": FORMAT, "store_id": store.store_id, "built_at": utc_iso_z(now_utc()),
                         "records": str(result.records), "documents": str(result.documents),
                         "loom_agents": agents_json, "bloom_sha256": _sha256(bloom_bytes),
                         "prune_fields": FIELDS_VERSION, "aml_version": aml.__version__}
            conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", meta_rows.items())
            result.bloom_items = bloom.items
            result.bloom_bytes = len(bloom_bytes)
            # The filter goes first: a crash before the rename leaves a filter whose checksum the old
            # index does not name, which readers then ignore (they fall back to the index).
            atomic_write(bloom_path(base), bloom_bytes)
        result.index_bytes = index_path(base).stat().st_size
    result.duration_s = time.perf_counter() - started
    return result


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _clear(conn: sqlite3.Connection) -> None:
    for table in ("documents", "records", "tags", "records_fts"):
        conn.execute(f"DELETE FROM {table}")


def _drop_document(conn: sqlite3.Connection, relpath: str) -> int:
    """Remove a document's rows; returns the warm entries dropped with it."""
    conn.execute("DELETE FROM records_fts WHERE rowid IN (SELECT rid FROM records WHERE document = ?)", (relpath,))
    conn.execute("DELETE FROM tags WHERE rid IN (SELECT rid FROM records WHERE document = ?)", (relpath,))
    conn.execute("DELETE FROM records WHERE document = ?", (relpath,))
    conn.execute("DELETE FROM documents WHERE relpath = ?", (relpath,))
    return conn.execute("DELETE FROM warm WHERE document = ?", (relpath,)).rowcount


ROW_BATCH: Final = 10_000
"""Records whose rows are held before they are written (one ``executemany`` per table), for a document
read here."""

INDEX_WORKERS: Final = 2
"""Worker processes reading documents during a build."""


@dataclass(frozen=True)
class _Job:
    """A document to (re-)read: where it is, and the warm-set entries ``(key, id)`` placed in it."""

    path: Path
    relpath: str
    ino: int
    size: int
    store_id: str
    loom_agents: frozenset[str]
    warm: list[tuple[str, str]]


_Row = tuple[tuple[Any, ...], str, list[str]]
"""One record's ``records`` row without its rid, its full-text, and its tags."""

_WarmRow = tuple[str, str, str, str, float, str]
"""A refreshed warm-set entry: ``(key, id, document, pointer, value, item JSON)``."""


@dataclass
class _DocumentRows:
    """What a build writes for one document: its ``documents`` row (but the inode), its records' rows, and
    for each of its warm-set entries the refreshed entry or ``None`` (dropped), by the entry's old key."""

    document: tuple[Any, ...]
    rows: Iterable[_Row]
    warm: dict[str, _WarmRow | None]
    prune_fields: bytes | None = None


def _document_rows(job: _Job, *, materialise: bool = True) -> _DocumentRows:
    """Read one document and make its rows (in a worker process, or here for a large one). A very large Loom
    collection is read item by item (:data:`~aml.store.documents.LAZY_ITEMS_BYTES`).

    Args:
        job: the document.
        materialise: rows as a list (to send back from a worker), else a generator (written in batches).
    """
    read_at_ns = time.time_ns()  # before the read: what was modified since may not show in what is read
    doc = read_document(job.path, job.relpath, loom_agents=job.loom_agents, lazy_items=LAZY_ITEMS_BYTES,
                        check_types=True)
    records = records_from_document(job.store_id, doc)
    # SQLite takes text only: a name or string that is not valid UTF-8 is written escaped (text_names)
    document = text_names((doc.relpath, doc.kind, doc.agent, doc.collection, doc.encoding, doc.size_bytes,
                           doc.mtime_ns, len(records), doc.error.code if doc.error else None, doc.ctime_ns,
                           read_at_ns))
    # only the items the warm set may need are kept (a large document is never held whole)
    warm_keys, warm_ids = {key for key, _ in job.warm}, {wid for _, wid in job.warm}
    by_key: dict[str, tuple[Record, Any]] = {}
    by_id: dict[str, str] = {}
    # an agent's live Loom collection: its items' prune fields (a plan then takes the document unread)
    packed: ItemPacker | None = (
        ItemPacker() if doc.kind == "loom_collection" and doc.collection in LOOM_LIVE and doc.agent is not None
        and doc.error is None else None)
    made = _record_rows(doc, records, warm_keys, warm_ids, by_key, by_id, packed)
    out = _DocumentRows(document, (), {})

    def finish() -> None:
        out.warm.update(text_names(_warm_entries(job, doc, by_key, by_id)))
        out.prune_fields = None if packed is None else packed.encode()

    if materialise:
        out.rows = text_names(list(made))  # one C pass when every string is text (about 1 µs a row)
        finish()
    else:  # the warm entries and prune fields once every row has been read (they need its item)
        out.rows = _then(made, finish)
    return out


def _then(rows: Iterator[_Row], after: Callable[[], None]) -> Iterator[_Row]:
    yield from rows
    after()


def _warm_entries(job: _Job, doc: Document, by_key: dict[str, tuple[Record, Any]],
                  by_id: dict[str, str]) -> dict[str, _WarmRow | None]:
    """Each warm-set entry of the document, refreshed (the record of the same key and id, else of the same
    id) or ``None`` (dropped: the record is gone, or the document no longer reads)."""
    warm: dict[str, _WarmRow | None] = {}
    for key, wid in job.warm:
        new_key = key if key in by_key and by_key[key][0].id == wid else by_id.get(wid)
        if new_key is None or doc.error is not None:
            warm[key] = None
            continue
        record, item = by_key[new_key]
        payload = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
        warm[key] = (new_key, record.id, record.location.document, record.location.pointer,
                     record_value(record, item), payload)
    return warm


def _record_rows(doc: Document, records: list[Record], warm_keys: set[str], warm_ids: set[str],
                 by_key: dict[str, tuple[Record, Any]], by_id: dict[str, str],
                 packed: ItemPacker | None) -> Iterator[_Row]:
    """Each record's row (no rid), text and tags; the records the warm set may need go to ``by_key`` and
    ``by_id`` as they pass; an agent's live Loom collection's items to ``packed`` (when not ``None``)."""
    data = doc.data
    data_is_list = type(data) is list or type(data) is LazyItems
    collection, clean = doc.collection or "", doc.types_clean
    for record in records:
        location = record.location
        pointer = location.pointer
        token = pointer[1:]
        if data_is_list and pointer[:1] == "/" and token.isdecimal():  # "/<index>": a Loom item
            index = int(token)
            item = data[index] if index < len(data) else None  # as resolve_pointer, without the parsing
        else:
            try:
                item = resolve_pointer(data, pointer)
            except KeyError:
                item = None
        if type(item) is dict and item.get("tags") is None:  # no tags (Loom's TS runtime never writes them)
            tags, tags_json = [], "[]"
        elif isinstance(item, Mapping):
            tags = acc.item_tags(item)
            tags_json = json.dumps(tags) if tags else "[]"
        else:
            tags, tags_json = [], "[]"
        recency_dt = record.last_used_at or record.created_at
        created_at, last_used_at = record.created_at, record.last_used_at
        key = f"{location.document}#{pointer}"
        count = record.execution_count
        if count is not None and not _SQLITE_MIN_INT <= count <= _SQLITE_MAX_INT:
            count = None  # a count no SQLite INTEGER holds (2**70 written out) is not indexed as one
        if packed is not None:
            fields = indexed_item(collection, item, clean=clean, size_bytes=record.size_bytes,
                                  wrong_types=tuple(w.field for w in record.wrong_types))
            packed.add(fields)
            # an object's value is its B, already computed (record_value's Loom branch: the same inputs)
            value = round(fields.base, 6) if type(item) is dict else record_value(record, item)
        else:
            value = record_value(record, item)
        yield ((key, record.id, record.agent, record.collection, record.kind, tags_json, record.confidence,
                record.success_rate, count, value,
                None if created_at is None else utc_iso_z(created_at),
                None if last_used_at is None else utc_iso_z(last_used_at),
                recency_dt.timestamp() if recency_dt else None, int(record.active), record.version, record.role,
                record.size_bytes, location.document, pointer, location.index),
               record_text(record, item, tags), tags)
        if key in warm_keys or record.id in warm_ids:
            by_key[key] = (record, item)
            by_id.setdefault(record.id, key)


_SQLITE_MIN_INT: Final = -(2**63)
_SQLITE_MAX_INT: Final = 2**63 - 1


def _insert_rows(conn: sqlite3.Connection, first_rid: int, rows: list[_Row]) -> None:
    """Write rows of ``records``, ``records_fts`` and ``tags``, with rids from ``first_rid`` on."""
    conn.executemany(
        "INSERT INTO records(rid, key, id, agent, collection, kind, tags, confidence, success_rate, execution_count, "
        "value, created_at, last_used_at, recency, active, version, role, size_bytes, document, pointer, "
        "item_index) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(rid, *row) for rid, (row, _, _) in enumerate(rows, first_rid)],
    )
    conn.executemany("INSERT INTO records_fts(rowid, text) VALUES (?, ?)",
                     [(rid, text) for rid, (_, text, _) in enumerate(rows, first_rid)])
    tag_rows = [(t, rid) for rid, (_, _, tags) in enumerate(rows, first_rid) for t in tags]
    if tag_rows:
        conn.executemany("INSERT OR IGNORE INTO tags(tag, rid) VALUES (?, ?)", tag_rows)


def create_secondary_indexes(conn: sqlite3.Connection) -> None:
    """Create the :data:`SECONDARY_INDEXES` that do not exist yet (all of them after a build from scratch)."""
    for statement in SECONDARY_INDEXES:
        conn.execute(statement)


def _replace_document(conn: sqlite3.Connection, job: _Job, computed: _DocumentRows | None, *,
                      fresh: bool = False) -> tuple[int, int]:
    """Replace the rows of one document (read here when not ``computed`` by a worker); refresh its warm
    entries. ``fresh``: a build from scratch, where the document has no rows yet (and the table no index on
    ``document`` to find them by). Returns ``(refreshed, dropped)``."""
    lazy = computed is None
    if computed is None:
        computed = _document_rows(job, materialise=False)
    relpath = text_name(job.relpath)
    if not fresh:
        conn.execute("DELETE FROM records_fts WHERE rowid IN (SELECT rid FROM records WHERE document = ?)",
                     (relpath,))
        conn.execute("DELETE FROM tags WHERE rid IN (SELECT rid FROM records WHERE document = ?)", (relpath,))
        conn.execute("DELETE FROM records WHERE document = ?", (relpath,))
    conn.execute(
        "INSERT OR REPLACE INTO documents(relpath, kind, agent, collection, encoding, size_bytes, mtime_ns, "
        "record_count, error, ctime_ns, read_at_ns, ino) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (*computed.document, job.ino))
    # Rows are written with executemany, ROW_BATCH records at a time. Their rids are the ones SQLite would
    # have given row by row: one more than the largest rid in the table, then counting up.
    rid = (conn.execute("SELECT max(rid) FROM records").fetchone()[0] or 0) + 1
    rows = iter(computed.rows)
    while batch := list(itertools.islice(rows, ROW_BATCH)):
        _insert_rows(conn, rid, text_names(batch) if lazy else batch)
        rid += len(batch)
    if computed.prune_fields is not None:  # made once every row was read
        conn.execute("UPDATE documents SET prune_fields = ?, prune_fields_digest = ? WHERE relpath = ?",
                     (computed.prune_fields, digest(computed.prune_fields), relpath))
    refreshed = dropped = 0
    for key, entry in computed.warm.items():
        conn.execute("DELETE FROM warm WHERE key = ?", (key,))
        if entry is None:
            dropped += 1
            continue
        conn.execute(
            "INSERT OR REPLACE INTO warm(key, id, document, pointer, value, item, size_bytes, doc_size, doc_mtime_ns, "
            "doc_ino, loaded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*entry, len(entry[5].encode("utf-8")), computed.document[5], computed.document[6], job.ino,
             utc_iso_z(now_utc())),
        )
        refreshed += 1
    return refreshed, dropped
