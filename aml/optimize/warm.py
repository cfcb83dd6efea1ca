"""``optimize warm-cache``: preload the highest-value records into the index's warm set.

The seeds' ``LazyMemoryLoader.warm_cache`` loaded high-value items into one process's LRU, which
vanished with the process (and reported a 0 % hit rate forever). aml keeps the warm set in the index
(``warm`` table of ``.aml/index.sqlite``): the JSON value of each chosen record with the size, mtime
and inode its document had when it was read. Every :class:`~aml.optimize.query.QueryEngine`, in any
process, serves those records without opening their documents for as long as the documents are
unchanged; ``optimize index`` refreshes the entries of documents it re-reads.

Choice: active records by value (:mod:`aml.optimize.value`, highest first; ties: most recent use),
optionally of one agent, until ``limit`` records or ``max_bytes`` of compact JSON. Each document is
read once; a document that changes while it is read is skipped. The warm set is replaced atomically
(a copy of the index is updated and renamed over it, under the index writers' lock).
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aml.optimize.cache import DEFAULT_CACHE_BYTES, DocStamp
from aml.optimize.index import (
    IndexMissingError,
    connect,
    index_path,
    replace_index,
    resolve_pointer,
    writer_lock,
)
from aml.store.codec import decode
from aml.store.filestore import FileStore
from aml.store.timestamps import now_utc, utc_iso_z

DEFAULT_WARM_LIMIT: Final = 5000
"""Records preloaded at most (count)."""
DEFAULT_WARM_BYTES: Final = DEFAULT_CACHE_BYTES
"""Budget of the warm set: 10 MiB (10 x 1024² bytes) of compact record JSON, the seeds' cache size."""


@dataclass
class WarmResult:
    """What one warm-cache run stored.

    Attributes:
        store_id: the store.
        records: records in the new warm set.
        bytes: their compact JSON size, bytes.
        candidates: records considered (top by value, up to ``limit``).
        documents_read: documents opened.
        skipped: candidates left out (document gone, changed while read, or record not found).
        min_value: lowest value in the warm set (0-1), ``None`` when empty.
        limit, max_bytes: the budget used (count, bytes).
        duration_s: wall time, seconds.
    """

    store_id: str
    records: int = 0
    bytes: int = 0
    candidates: int = 0
    documents_read: int = 0
    skipped: int = 0
    min_value: float | None = None
    limit: int = DEFAULT_WARM_LIMIT
    max_bytes: int = DEFAULT_WARM_BYTES
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (every attribute)."""
        out = dict(self.__dict__)
        out["duration_s"] = round(self.duration_s, 6)
        return out


def warm_cache(
    root: str | os.PathLike[str],
    *,
    limit: int = DEFAULT_WARM_LIMIT,
    max_bytes: int = DEFAULT_WARM_BYTES,
    agent: str | None = None,
) -> WarmResult:
    """Replace the warm set of a store's index with its highest-value records.

    Args:
        root: the store directory (it must have an index).
        limit: at most this many records.
        max_bytes: at most this many bytes of compact record JSON.
        agent: only this agent's records (``None``: all agents).

    Returns:
        A :class:`WarmResult`.

    Raises:
        IndexMissingError: the store has no index.
        ValueError: ``limit`` or ``max_bytes`` below 0.
        OSError, sqlite3.Error: the index could not be rewritten (it is unchanged).
    """
    if limit < 0 or max_bytes < 0:
        raise ValueError("limit and max_bytes must be at least 0")
    started = time.perf_counter()
    store = FileStore(root)
    base = store.root
    path = index_path(base)
    result = WarmResult(store.store_id, limit=limit, max_bytes=max_bytes)
    with writer_lock(base):
        if not path.is_file():
            raise IndexMissingError(f"no index at {path}: run `aml {base} optimize index` first")
        conn = connect(path, readonly=True)
        try:
            sql = "SELECT key, id, document, pointer, value FROM records WHERE active = 1"
            params: list[Any] = []
            if agent is not None:
                sql += " AND agent = ?"
                params.append(agent)
            sql += " ORDER BY value DESC, recency DESC, rid LIMIT ?"
            params.append(limit)
            candidates = conn.execute(sql, params).fetchall()
        finally:
            conn.close()
        result.candidates = len(candidates)
        chosen = _load(base, candidates, max_bytes, result)
        loaded_at = utc_iso_z(now_utc())
        with replace_index(base, start_from_current=True) as out:
            out.execute("DELETE FROM warm")
            out.executemany(
                "INSERT OR REPLACE INTO warm(key, id, document, pointer, value, item, size_bytes, doc_size, "
                "doc_mtime_ns, doc_ino, loaded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*row, loaded_at) for row in chosen],
            )
    result.records = len(chosen)
    result.bytes = sum(row[6] for row in chosen)
    result.min_value = min((row[4] for row in chosen), default=None)
    result.duration_s = time.perf_counter() - started
    return result


def _load(base: Path, candidates: list[Any], max_bytes: int, result: WarmResult) -> list[tuple[Any, ...]]:
    """Read the candidates' values, one read per document, in value order, within ``max_bytes``."""
    by_doc: dict[str, list[Any]] = defaultdict(list)
    for row in candidates:
        by_doc[row["document"]].append(row)
    values: dict[str, tuple[Any, ...]] = {}
    for document, rows in by_doc.items():
        file = base / document
        before = DocStamp.of(file)
        try:
            data = json.loads(decode(file.read_bytes())[0])
        except (OSError, ValueError):
            result.skipped += len(rows)
            continue
        result.documents_read += 1
        if before is None or DocStamp.of(file) != before:
            result.skipped += len(rows)
            continue
        for row in rows:
            try:
                item = resolve_pointer(data, row["pointer"])
            except KeyError:
                result.skipped += 1
                continue
            if row["id"] != row["key"] and not (isinstance(item, dict) and item.get("id") == row["id"]):
                result.skipped += 1  # the index is older than the document: rebuild it first
                continue
            payload = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
            values[row["key"]] = (row["key"], row["id"], document, row["pointer"], row["value"], payload,
                                  len(payload.encode("utf-8")), before.size, before.mtime_ns, before.ino)
    chosen: list[tuple[Any, ...]] = []
    used = 0
    for row in candidates:  # value order
        entry = values.get(row["key"])
        if entry is None:
            continue
        if used + entry[6] > max_bytes:
            result.skipped += 1
            continue
        used += entry[6]
        chosen.append(entry)
    return chosen
