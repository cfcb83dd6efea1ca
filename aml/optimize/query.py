"""Queries served from the record index, with a record cache in front of the documents.

:class:`QueryEngine` answers ``aml <store> query`` and the health probe's lookups:

* filters (agent, kind or collection, tags, minimum confidence / success rate, active only, id) and
  FTS5 full-text search run on ``.aml/index.sqlite`` alone: no document is opened to *find* records;
* each result's JSON value (``with_items``) comes from the LRU record cache, then from the warm set
  (``optimize warm-cache``), and only on a miss from its document (decoded and parsed; the parsed
  document is kept for the next miss in it). Values are served only while their document still has
  the size, mtime and inode it had when read;
* ``exists(id)`` asks the Bloom filter first: a "no" needs no SQL and no file.

Each search returns its wall time (seconds) and the cache hits and misses it caused: the
``query_time`` and ``query_cache_hit_rate`` samples that ``tasks/query.py`` records for health's
``performance_ok``.

Ranking: with ``text``, FTS5's bm25 (best first), then value; without, value (0-1, highest first),
then the most recent use.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from aml.optimize.bloom import BloomFormatError, IdBloom
from aml.optimize.cache import DEFAULT_CACHE_BYTES, CacheStats, DocStamp, LRUCache
from aml.optimize.index import FORMAT, IndexMissingError, bloom_path, connect, index_path, read_meta, resolve_pointer
from aml.store.documents import LAZY_ITEMS_BYTES, LazyItems, read_document
from aml.store.filestore import FileStore
from aml.store.storeid import normalise_store_id

DEFAULT_LIMIT: Final = 20
"""Results returned when no limit is given."""
DOC_CACHE_ENTRIES: Final = 8
"""Parsed documents kept for misses (a handful: a query's results cluster in few documents)."""

COLLECTION_ALIASES: Final = {
    "pattern": "patterns",
    "solution": "solutions",
    "decision": "decisions",
    "archived_decision": "archived_decisions",
    "message": "sessions.messages",
    "tool_execution": "sessions.tool_executions",
    "reasoning_step": "sessions.reasoning_steps",
    "todo": "sessions.todos",
}
"""Singular names (the seeds' ``item_type``) accepted for ``kind``/``collection``."""

_WORD: Final = re.compile(r"\w+\*?", re.UNICODE)


@dataclass(frozen=True)
class Query:
    """One query. ``None``/empty filters match everything.

    Attributes:
        agent: the record's agent.
        kind: the record's own type (``css-layout``, ``HydrationError``, ``think``...) or its
            collection (``patterns``/``pattern``...).
        collection: the collection exactly (``patterns``, ``sessions.messages``...; singular accepted).
        tags: every one of these tags (AND).
        min_confidence: confidence at least this, ratio 0-1 (records without confidence excluded).
        min_success_rate: success rate at least this, ratio 0-1.
        text: full-text search: every word must match (``word*`` for a prefix); stemmed (porter).
        record_id: the record's ``id``.
        active_only: leave out deactivated Loom records.
        limit: maximum results.
    """

    agent: str | None = None
    kind: str | None = None
    collection: str | None = None
    tags: tuple[str, ...] = ()
    min_confidence: float | None = None
    min_success_rate: float | None = None
    text: str | None = None
    record_id: str | None = None
    active_only: bool = False
    limit: int = DEFAULT_LIMIT

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (filters that are set)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()
                if k == "limit" or not (v is None or v is False or v == ())}


@dataclass(frozen=True)
class QueryHit:
    """One result.

    Attributes:
        key: ``<document>#<pointer>``, unique in the store.
        id, agent, collection, kind, tags, confidence, success_rate, execution_count, value,
            created_at, last_used_at, active, version, role, size_bytes: from the index (ratios 0-1,
            ISO 8601 UTC ``Z``, bytes).
        document: store-relative path of the record's document.
        pointer: RFC 6901 pointer to the record inside the decoded document.
        index: the record's position in its list.
        path: absolute path of the document.
        score: bm25 relevance for text queries (lower is better), else ``None``.
        item: the record's JSON value when asked for (``None`` if its document no longer has it).
    """

    key: str
    id: str
    agent: str
    collection: str
    kind: str
    tags: tuple[str, ...]
    confidence: float | None
    success_rate: float | None
    execution_count: int | None
    value: float
    created_at: str | None
    last_used_at: str | None
    active: bool
    version: str | None
    role: str | None
    size_bytes: int
    document: str
    pointer: str
    index: int
    path: str
    score: float | None = None
    item: Any = None

    def as_dict(self, *, with_item: bool = True) -> dict[str, Any]:
        """JSON-ready form (``item`` left out unless ``with_item``)."""
        out = asdict(self)
        out["tags"] = list(self.tags)
        if not with_item:
            out.pop("item")
        return out


@dataclass
class QueryResult:
    """A query's answer.

    Attributes:
        query: what was asked.
        hits: results, best first.
        truncated: more results exist beyond ``query.limit``.
        elapsed_s: wall time of the search and the item fetches, seconds.
        cache: cache hits/misses this query caused.
    """

    query: Query
    hits: list[QueryHit]
    truncated: bool
    elapsed_s: float
    cache: CacheStats = field(default_factory=CacheStats)

    def as_dict(self, *, with_items: bool = True) -> dict[str, Any]:
        """JSON-ready form: ``{"query", "count", "truncated", "elapsed_s", "cache", "hits"}``."""
        return {"query": self.query.as_dict(), "count": len(self.hits), "truncated": self.truncated,
                "elapsed_s": round(self.elapsed_s, 6), "cache": self.cache.as_dict(),
                "hits": [h.as_dict(with_item=with_items) for h in self.hits]}


@dataclass(frozen=True)
class _Cached:
    item: Any
    stamp: DocStamp


def fts_expression(text: str) -> str:
    """An FTS5 MATCH expression from free text: each word quoted (so FTS syntax in the input is
    inert), ``word*`` kept as a prefix search, all words required.

    Raises:
        ValueError: the text holds no word.
    """
    words = _WORD.findall(text)
    if not words:
        raise ValueError(f"no searchable word in {text!r}")
    out = []
    for w in words:
        prefix = w.endswith("*")
        core = w.rstrip("*").replace('"', '""')
        out.append(f'"{core}"' + ("*" if prefix else ""))
    return " ".join(out)


def _collection_name(name: str) -> str:
    return COLLECTION_ALIASES.get(name, name)


class QueryEngine:
    """Read-only access to a store's index, with a record cache.

    Args:
        root: the store directory.
        cache_bytes: LRU budget for record values, bytes (default 10 MiB).

    Attributes:
        root: the store root (absolute).
        stats: cumulative cache counters of this engine.

    Raises:
        IndexMissingError: the store has no index of the current format.
    """

    def __init__(self, root: str | os.PathLike[str], *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.root = Path(normalise_store_id(root))
        self.stats = CacheStats()
        self._cache: LRUCache[_Cached] = LRUCache(cache_bytes)
        self._docs: OrderedDict[str, tuple[DocStamp, Any]] = OrderedDict()
        self._conn: sqlite3.Connection | None = None
        self._index_stamp: DocStamp | None = None
        self._meta: dict[str, str] = {}
        self._bloom: IdBloom | None = None
        self._bloom_loaded = False
        self._lock = threading.RLock()
        self._open()

    # ------------------------------------------------------------------ lifecycle

    def _open(self) -> None:
        path = index_path(self.root)
        stamp = DocStamp.of(path)
        if stamp is None:
            raise IndexMissingError(f"no index at {path}: run `aml {self.root} optimize index`")
        try:
            conn = connect(path, readonly=True)
            meta = read_meta(conn)
        except sqlite3.Error as exc:
            raise IndexMissingError(f"unreadable index {path}: {exc}") from exc
        if meta.get("format") != FORMAT:
            conn.close()
            raise IndexMissingError(f"index {path} has format {meta.get('format')!r}, expected {FORMAT!r}: rebuild it")
        if self._conn is not None:
            self._conn.close()
        self._conn, self._index_stamp, self._meta = conn, stamp, meta
        self._bloom, self._bloom_loaded = None, False

    def _db(self) -> sqlite3.Connection:
        """The connection, reopened when the index file was replaced by a newer build."""
        if DocStamp.of(index_path(self.root)) != self._index_stamp:
            self._open()
        assert self._conn is not None
        return self._conn

    def close(self) -> None:
        """Close the index connection (the engine cannot be used afterwards)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> QueryEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def meta(self) -> dict[str, str]:
        """The index's ``meta`` table (format, store_id, built_at, records, documents...)."""
        self._db()
        return dict(self._meta)

    # ------------------------------------------------------------------ bloom

    def bloom(self) -> IdBloom | None:
        """The Bloom filter of record ids, or ``None`` when it is missing, unreadable or does not
        belong to the current index (its sha256 differs from ``meta.bloom_sha256``)."""
        self._db()
        if not self._bloom_loaded:
            self._bloom_loaded = True
            try:
                data = bloom_path(self.root).read_bytes()
                if hashlib.sha256(data).hexdigest() == self._meta.get("bloom_sha256"):
                    self._bloom = IdBloom.from_bytes(data)
            except (OSError, BloomFormatError):
                self._bloom = None
        return self._bloom

    def might_contain(self, record_id: str) -> bool:
        """The Bloom filter's answer: ``False`` means certainly absent; ``True`` means probably
        present (or no filter available)."""
        bloom = self.bloom()
        return True if bloom is None else record_id in bloom

    def exists(self, record_id: str) -> bool:
        """Whether any record of the store (as indexed) has this id: the Bloom filter first, the
        index to confirm a "maybe"."""
        if not self.might_contain(record_id):
            return False
        with self._lock:
            row = self._db().execute("SELECT 1 FROM records WHERE id = ? LIMIT 1", (record_id,)).fetchone()
        return row is not None

    # ------------------------------------------------------------------ search

    def search(self, query: Query, *, with_items: bool = True) -> QueryResult:
        """Run a query.

        Args:
            query: the filters.
            with_items: also fetch each result's JSON value (through the cache).

        Returns:
            A :class:`QueryResult` with its time and cache counters.

        Raises:
            ValueError: ``limit`` below 1, or a ``text`` with no word.
            sqlite3.Error: the index cannot be read.
        """
        if query.limit < 1:
            raise ValueError("limit must be at least 1")
        started = time.perf_counter()
        before = self.stats.copy()
        if query.record_id is not None and not self.might_contain(query.record_id):
            return QueryResult(query, [], False, time.perf_counter() - started, self.stats.since(before))
        sql, params = self._sql(query)
        with self._lock:
            rows = self._db().execute(sql, params).fetchall()
        truncated = len(rows) > query.limit
        hits = [self._hit(row) for row in rows[: query.limit]]
        if with_items:
            hits = [replace(h, item=self.item(h)) for h in hits]
        return QueryResult(query, hits, truncated, time.perf_counter() - started, self.stats.since(before))

    def lookup(self, record_id: str) -> QueryHit | None:
        """The best record with this id, with its JSON value (through the cache), or ``None``."""
        result = self.search(Query(record_id=record_id, limit=1))
        return result.hits[0] if result.hits else None

    def _sql(self, q: Query) -> tuple[str, list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if q.text:
            base = ("SELECT r.*, bm25(records_fts) AS score FROM records_fts JOIN records r "
                    "ON r.rid = records_fts.rowid")
            where.append("records_fts MATCH ?")
            params.append(fts_expression(q.text))
            order = "score, r.value DESC, r.rid"
        else:
            base = "SELECT r.*, NULL AS score FROM records r"
            order = "r.value DESC, r.recency DESC, r.rid"
        if q.record_id is not None:
            where.append("r.id = ?")
            params.append(q.record_id)
        if q.agent:
            where.append("r.agent = ?")
            params.append(q.agent)
        if q.kind:
            where.append("(r.kind = ? OR r.collection = ?)")
            params += [q.kind, _collection_name(q.kind)]
        if q.collection:
            where.append("r.collection = ?")
            params.append(_collection_name(q.collection))
        for tag in q.tags:
            where.append("EXISTS (SELECT 1 FROM tags t WHERE t.tag = ? AND t.rid = r.rid)")
            params.append(tag)
        if q.min_confidence is not None:
            where.append("r.confidence >= ?")
            params.append(q.min_confidence)
        if q.min_success_rate is not None:
            where.append("r.success_rate >= ?")
            params.append(q.min_success_rate)
        if q.active_only:
            where.append("r.active = 1")
        sql = base + (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY {order} LIMIT ?"
        params.append(q.limit + 1)
        return sql, params

    def _hit(self, row: sqlite3.Row) -> QueryHit:
        return QueryHit(
            key=row["key"], id=row["id"], agent=row["agent"], collection=row["collection"], kind=row["kind"],
            tags=tuple(json.loads(row["tags"])), confidence=row["confidence"], success_rate=row["success_rate"],
            execution_count=row["execution_count"], value=row["value"], created_at=row["created_at"],
            last_used_at=row["last_used_at"], active=bool(row["active"]), version=row["version"], role=row["role"],
            size_bytes=row["size_bytes"], document=row["document"], pointer=row["pointer"],
            index=row["item_index"], path=str(self.root / row["document"]),
            score=None if row["score"] is None else round(float(row["score"]), 6),
        )

    # ------------------------------------------------------------------ record values

    def item(self, hit: QueryHit) -> Any:
        """The JSON value of a result: LRU, then warm set, then its document. Counts a hit or a miss.

        Returns:
            The value, or ``None`` when the document is gone or no longer holds the record.
        """
        stamp = DocStamp.of(self.root / hit.document)
        with self._lock:
            cached = self._cache.get(hit.key)
            if cached is not None:
                if cached.stamp == stamp:
                    self.stats.hits += 1
                    return cached.item
                self._cache.pop(hit.key)
                self.stats.stale += 1
            warm = self._warm(hit.key, stamp) if stamp is not None else None
            if warm is not None and stamp is not None:
                self.stats.hits += 1
                self._remember(hit.key, warm, stamp)
                return warm
            self.stats.misses += 1
            if stamp is None:
                return None
            item = self._from_document(hit, stamp)
            if item is not None:
                self._remember(hit.key, item, stamp)
            return item

    def _remember(self, key: str, item: Any, stamp: DocStamp) -> None:
        size = len(json.dumps(item, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8"))
        before = self._cache.evictions
        self._cache.put(key, _Cached(item, stamp), size)
        self.stats.evictions += self._cache.evictions - before

    def _warm(self, key: str, stamp: DocStamp) -> Any:
        row = self._db().execute("SELECT item, doc_size, doc_mtime_ns, doc_ino FROM warm WHERE key = ?",
                                 (key,)).fetchone()
        if row is None:
            return None
        if DocStamp(row["doc_size"], row["doc_mtime_ns"], row["doc_ino"]) != stamp:
            self.stats.stale += 1
            return None
        return json.loads(row["item"])

    def _from_document(self, hit: QueryHit, stamp: DocStamp) -> Any:
        entry = self._docs.get(hit.document)
        if entry is not None and entry[0] == stamp:
            self._docs.move_to_end(hit.document)
            data = entry[1]
        else:
            try:  # a large Loom collection comes as LazyItems: its bytes, each item decoded when read
                agents = frozenset(FileStore(self.root).agents())
            except OSError:
                return None
            doc = read_document(self.root / hit.document, hit.document, loom_agents=agents,
                                lazy_items=LAZY_ITEMS_BYTES)
            if doc.error is not None:
                return None
            data = doc.data
            self._docs[hit.document] = (stamp, data)
            while len(self._docs) > DOC_CACHE_ENTRIES:
                self._docs.popitem(last=False)
        try:
            item = resolve_pointer(data, hit.pointer)
        except KeyError:
            item = None
        if not _positional(hit) and not (isinstance(item, dict) and item.get("id") == hit.id):
            # the document changed since the index was built: find the record by its id instead
            if isinstance(data, LazyItems):  # its ids read once, then one item decoded per lookup
                item = data.find_id(hit.id)
            else:
                items = data if isinstance(data, list) else []
                item = next((x for x in items if isinstance(x, dict) and x.get("id") == hit.id), None)
        return item

    # ------------------------------------------------------------------ measurement

    def sample_ids(self, n: int, *, seed: int = 0, collections: Sequence[str] = ("patterns", "solutions",
                                                                                     "decisions")) -> list[str]:
        """A deterministic sample of ``n`` record ids (fewer if the store has fewer) from
        ``collections``, for lookup measurements."""
        marks = ",".join("?" for _ in collections)
        with self._lock:
            rows = self._db().execute(f"SELECT id FROM records WHERE collection IN ({marks}) ORDER BY rid",
                                      list(collections)).fetchall()
        ids = [r[0] for r in rows]
        return random.Random(seed).sample(ids, min(n, len(ids)))

    def sample_records(self, n: int, *, seed: int = 0, collections: Sequence[str] = ("patterns", "solutions",
                                                                                         "decisions"),
                       documents: int | None = None) -> list[tuple[str, str]]:
        """Like :meth:`sample_ids`, with each record's document: ``[(id, document relpath)]``.

        ``documents``: the records come from this many documents (more while these hold fewer than ``n`` records),
        those of the first records a sample of the whole index draws (so a document is chosen in proportion to its
        records), then ``n`` records are drawn among theirs. ``None``: from any document."""
        marks = ",".join("?" for _ in collections)
        rng = random.Random(seed)
        with self._lock:
            db = self._db()
            # row ids only (the covering index on (agent, collection) answers it), then the chosen rows
            rids = [r[0] for r in db.execute(f"SELECT rid FROM records INDEXED BY records_agent "
                                             f"WHERE collection IN ({marks}) ORDER BY rid", list(collections))]
            chosen = rng.sample(rids, min(n, len(rids)))
            found = self._rows_of(db, chosen)
            if documents is not None:
                drawn = list(dict.fromkeys(found[rid][1] for rid in chosen if rid in found))
                kept = drawn[:documents]
                if len(kept) < len(drawn):  # more documents while these hold fewer records than lookups
                    sizes = dict(db.execute(
                        f"SELECT document, count(*) FROM records INDEXED BY records_document WHERE document IN "
                        f"({','.join('?' for _ in drawn)}) GROUP BY document", drawn).fetchall())
                    while len(kept) < len(drawn) and sum(sizes.get(d, 0) for d in kept) < n:
                        kept.append(drawn[len(kept)])
                rids = [r[0] for r in db.execute(
                    f"SELECT rid FROM records INDEXED BY records_document WHERE document IN "
                    f"({','.join('?' for _ in kept)}) AND collection IN ({marks}) ORDER BY rid",
                    [*kept, *collections])]
                chosen = rng.sample(rids, min(n, len(rids)))
                found = self._rows_of(db, chosen)
        return [found[rid] for rid in chosen if rid in found]

    @staticmethod
    def _rows_of(db: sqlite3.Connection, rids: list[int]) -> dict[int, tuple[str, str]]:
        """``{rid: (id, document)}`` of the records ``rids`` (500 per query: SQLite's variable limit)."""
        found: dict[int, tuple[str, str]] = {}
        for start in range(0, len(rids), 500):
            part = rids[start:start + 500]
            found.update((r[0], (r[1], r[2])) for r in db.execute(
                f"SELECT rid, id, document FROM records WHERE rid IN ({','.join('?' for _ in part)})", part))
        return found

    def adopt_document(self, relpath: str, stamp: DocStamp, data: Any) -> None:
        """Serve misses in ``relpath`` from ``data``, its document already parsed by the caller (health's
        scan), while the file keeps ``stamp``: no second read or parse of it."""
        with self._lock:
            self._docs[relpath] = (stamp, data)
            self._docs.move_to_end(relpath)
            while len(self._docs) > DOC_CACHE_ENTRIES:
                self._docs.popitem(last=False)

    def forget_document(self, relpath: str) -> None:
        """Drop ``relpath``'s parsed document from the engine (its cached record values stay)."""
        with self._lock:
            self._docs.pop(relpath, None)

    def count(self) -> int:
        """Records in the index."""
        with self._lock:
            return int(self._db().execute("SELECT count(*) FROM records").fetchone()[0])


def _positional(hit: QueryHit) -> bool:
    return hit.id == hit.key


@dataclass
class LookupMeasurement:
    """Timed id lookups through a fresh engine (empty LRU; the warm set counts).

    Attributes:
        times_s: one duration per lookup, seconds.
        cache: hits and misses of those lookups.
    """

    times_s: list[float]
    cache: CacheStats

    @property
    def mean_s(self) -> float | None:
        """Mean lookup time, seconds (``None`` without lookups)."""
        return sum(self.times_s) / len(self.times_s) if self.times_s else None

    def as_dict(self) -> dict[str, Any]:
        """``{"lookups", "mean_s", "max_s", "cache"}``."""
        return {"lookups": len(self.times_s), "mean_s": self.mean_s, "max_s": max(self.times_s, default=None),
                "cache": self.cache.as_dict()}


def measure_lookups(root: str | os.PathLike[str], *, sample: int = 50, seed: int = 0) -> LookupMeasurement:
    """Time ``sample`` id lookups (value included) of Loom collection records, each through the index
    and the cache of a new engine, as an agent process that just started would see them.

    Raises:
        IndexMissingError: no index.
    """
    with QueryEngine(root) as engine:
        ids = engine.sample_ids(sample, seed=seed)
        times: list[float] = []
        for rid in ids:
            start = time.perf_counter()
            engine.lookup(rid)
            times.append(time.perf_counter() - start)
        return LookupMeasurement(times, engine.stats.copy())


_SHARED: dict[str, QueryEngine] = {}
_SHARED_LOCK = threading.Lock()


def shared_engine(root: str | os.PathLike[str]) -> QueryEngine:
    """One engine per store and process, so that a worker's record cache lasts across its query tasks
    (a replaced index is reopened; cached values are checked against their documents on each use).

    Raises:
        IndexMissingError: no index.
    """
    key = normalise_store_id(root)
    with _SHARED_LOCK:
        engine = _SHARED.get(key)
        if engine is None or engine._conn is None:
            engine = QueryEngine(key)
            _SHARED[key] = engine
        return engine


def forget_shared_engines() -> None:
    """Close and forget every shared engine (tests; a worker shutting down)."""
    with _SHARED_LOCK:
        for engine in _SHARED.values():
            engine.close()
        _SHARED.clear()
