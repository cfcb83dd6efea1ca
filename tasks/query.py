"""Celery task ``aml.trace.query``: record queries served from a store's index (queue ``fast``).

Queries are read-only and short, so the task lives on the ``fast`` queue: its name is under
``aml.trace.*`` because the app routes tasks by their ``aml.<operation>.`` prefix and queries belong
with the other read-only, frequent measurements (trace, health), not with the ``heavy`` compress
jobs. Queries are not recorded as ``task_runs`` (like ``aml.health.alerts``, they change nothing);
each one records two store-wide metric samples that health's ``performance_ok`` reads:

* ``query_time``: wall time of the query including the record values it returned, seconds;
* ``query_cache_hit_rate``: hits / (hits + misses) of the record cache during that query, ratio
  (only when the query fetched record values).

On a worker, the engine (and its LRU record cache) lives as long as the worker process
(:func:`aml.optimize.shared_engine`); inline, as long as the CLI process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aml.optimize import Query, shared_engine
from aml.optimize.query import DEFAULT_LIMIT
from models import queries
from tasks.base import normalize_store, store_path
from tasks.registry import operation_task
from workers.app import get_settings
from workers.catalog import session_scope

if TYPE_CHECKING:
    from celery import Task


@operation_task("aml.trace.query")
def query(
    self: Task,
    store: str,
    agent: str | None = None,
    kind: str | None = None,
    collection: str | None = None,
    tags: Sequence[str] = (),
    min_confidence: float | None = None,
    min_success_rate: float | None = None,
    text: str | None = None,
    record_id: str | None = None,
    active_only: bool = False,
    limit: int = DEFAULT_LIMIT,
    with_items: bool = True,
    record_metrics: bool = True,
) -> dict[str, Any]:
    """Query a store's records through its index (``aml <store> query``).

    Args:
        store: path of the file store (it must have an index: ``optimize index``).
        agent, kind, collection, tags, min_confidence, min_success_rate, text, record_id, active_only,
            limit: the filters of :class:`aml.optimize.Query` (ratios 0-1; tags all required).
        with_items: include each record's JSON value (through the record cache).
        record_metrics: record ``query_time`` and ``query_cache_hit_rate`` samples in the catalog.

    Returns:
        :meth:`aml.optimize.QueryResult.as_dict`: ``{"query", "count", "truncated", "elapsed_s",
        "cache", "hits"}`` plus ``"store"`` and ``"recorded"`` (samples written).

    Raises:
        aml.optimize.IndexMissingError: the store has no index.
        ValueError: bad filter (limit below 1, text without a word, ratio outside 0-1).
    """
    store_id = normalize_store(store)
    for name, ratio in (("min_confidence", min_confidence), ("min_success_rate", min_success_rate)):
        if ratio is not None and not 0.0 <= ratio <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1")
    q = Query(agent=agent, kind=kind, collection=collection, tags=tuple(tags), min_confidence=min_confidence,
              min_success_rate=min_success_rate, text=text, record_id=record_id, active_only=active_only,
              limit=limit)
    engine = shared_engine(store_path(store_id))
    result = engine.search(q, with_items=with_items)
    recorded = 0
    if record_metrics:
        samples = [queries.Sample(store_id, "query_time", result.elapsed_s, "seconds")]
        rate = result.cache.hit_rate
        if rate is not None:
            samples.append(queries.Sample(store_id, "query_cache_hit_rate", rate, "ratio"))
        with session_scope(get_settings().catalog_url) as session:
            recorded = queries.add_metric_samples(session, samples)
    out = result.as_dict(with_items=with_items)
    out.update({"store": store_id, "recorded": recorded})
    return out
