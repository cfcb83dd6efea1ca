"""Compress and optimize: the engine of ``aml <store> optimize ...`` and ``aml <store> query``.

Modules, one concern each (DESIGN.md, "Compress and optimize"):

* :mod:`aml.optimize.files`: which files the operations walk; where aml keeps its own (``.aml/``);
* :mod:`aml.optimize.compress`: cold documents compressed in place (gzip via isal, or zstd), or back;
* :mod:`aml.optimize.gc`: invalid and duplicate records removed; unparseable documents quarantined;
* :mod:`aml.optimize.value`: the value score of a record (Loom's weighting);
* :mod:`aml.optimize.index`: the SQLite + FTS5 record index, rebuilt atomically and incrementally;
* :mod:`aml.optimize.bloom`: the Bloom filter of record ids (rbloom) saved next to the index;
* :mod:`aml.optimize.cache`: the LRU record cache and its hit/miss counters;
* :mod:`aml.optimize.query`: queries served from the index, record values through the cache;
* :mod:`aml.optimize.warm`: warm-cache, the highest-value records preloaded into the index.

No Celery and no catalog here: ``tasks/compress.py`` and ``tasks/query.py`` record runs and metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aml.lazy import lazy_exports

if TYPE_CHECKING:
    from aml.optimize.bloom import IdBloom
    from aml.optimize.cache import CacheStats, LRUCache
    from aml.optimize.compress import CODECS, SCOPES, CompressResult, compress_store
    from aml.optimize.files import BLOOM_FILE, INDEX_FILE, QUARANTINE_DIR
    from aml.optimize.gc import GcPlan, GcResult, apply_gc, plan_gc, quarantine_unparseable
    from aml.optimize.index import IndexMissingError, IndexResult, build_index
    from aml.optimize.query import Query, QueryEngine, QueryHit, QueryResult, measure_lookups, shared_engine
    from aml.optimize.value import record_value
    from aml.optimize.warm import WarmResult, warm_cache

_SOURCES = {
    "IdBloom": "bloom",
    "CacheStats": "cache", "LRUCache": "cache",
    "CODECS": "compress", "SCOPES": "compress", "CompressResult": "compress", "compress_store": "compress",
    "BLOOM_FILE": "files", "INDEX_FILE": "files", "QUARANTINE_DIR": "files",
    "GcPlan": "gc", "GcResult": "gc", "apply_gc": "gc", "plan_gc": "gc", "quarantine_unparseable": "gc",
    "IndexMissingError": "index", "IndexResult": "index", "build_index": "index",
    "Query": "query", "QueryEngine": "query", "QueryHit": "query", "QueryResult": "query",
    "measure_lookups": "query", "shared_engine": "query",
    "record_value": "value",
    "WarmResult": "warm", "warm_cache": "warm",
}
"""Where each public name lives: the package imports a submodule on first use of one of its names (PEP 562),
so ``aml.health``'s lookup probe (``aml.optimize.cache``, ``.query``) does not import compress, gc, warm..."""


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES, globals())


__all__ = [
    "BLOOM_FILE",
    "CODECS",
    "INDEX_FILE",
    "QUARANTINE_DIR",
    "SCOPES",
    "CacheStats",
    "CompressResult",
    "GcPlan",
    "GcResult",
    "IdBloom",
    "IndexMissingError",
    "IndexResult",
    "LRUCache",
    "Query",
    "QueryEngine",
    "QueryHit",
    "QueryResult",
    "WarmResult",
    "apply_gc",
    "build_index",
    "compress_store",
    "measure_lookups",
    "plan_gc",
    "quarantine_unparseable",
    "record_value",
    "shared_engine",
    "warm_cache",
]
