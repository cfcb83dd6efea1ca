"""The value of a record, used to rank query results and choose what ``warm-cache`` preloads.

Formula (Loom's value weighting, as quoted in the prune/compress issue)::

    value = 0.4 * success_rate
          + 0.3 * confidence
          + 0.2 * min(execution_count / 50, 1)
          + 0.1 * min(avg_time_saved_ms / 1000, 1)

Every term is 0-1, so ``value`` is 0-1. A term the record does not have counts 0 (solutions have no
confidence; decisions without an outcome have no success rate; session and TinyTroupe entries have
none of them and rank by recency alone). Success rate, confidence and execution count come from the
record view (:class:`aml.store.Record`: ``successRate``/``success_rate``, ``confidenceScore``/
``confidence``, ``executionCount``/``verifiedCount``); time saved from ``metrics.avgTimeSavedMs`` /
``performance.avg_time_saved_ms``. Ties are broken by the most recent use (``last_used_at``, else
``created_at``) by the callers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from aml.store import accessors as acc
from aml.store.records import Record

W_SUCCESS: Final = 0.4
W_CONFIDENCE: Final = 0.3
W_EXECUTIONS: Final = 0.2
W_TIME_SAVED: Final = 0.1
EXECUTIONS_FULL: Final = 50
"""Executions at which the execution term saturates (count)."""
TIME_SAVED_FULL_MS: Final = 1000.0
"""Average time saved at which the time term saturates, milliseconds."""


def _unit(x: float | None) -> float:
    if x is None:
        return 0.0
    return max(0.0, min(1.0, float(x)))


def record_value(record: Record, item: Any = None) -> float:
    """Value 0-1 of a record (see the module docstring for the formula and its source).

    Args:
        record: the record view.
        item: the record's JSON value, for the time-saved term (``None``: the term counts 0).

    Returns:
        A float in ``[0, 1]``, rounded to 6 decimals.
    """
    executions = record.execution_count
    saved = acc.avg_time_saved_ms(item) if isinstance(item, Mapping) else None
    value = (
        W_SUCCESS * _unit(record.success_rate)
        + W_CONFIDENCE * _unit(record.confidence)
        + W_EXECUTIONS * (min(max(executions, 0) / EXECUTIONS_FULL, 1.0) if executions is not None else 0.0)
        + W_TIME_SAVED * (min(max(saved, 0.0) / TIME_SAVED_FULL_MS, 1.0) if saved is not None else 0.0)
    )
    return round(value, 6)
