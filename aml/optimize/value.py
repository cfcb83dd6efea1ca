"""The value of a record, used to rank query results and choose what ``warm-cache`` preloads.

It is prune's value score without its recency term: :func:`aml.prune.value.base_score`, Loom's
weighting (``0.4·success + 0.3·confidence + 0.2·min(executions/50, 1) + 0.1·min(time_saved_ms/1000,
1)``, renormalised over the terms a record has) of the inputs :func:`aml.prune.value.loom_value_inputs`
reads from a Loom item. One formula, so ``query`` ranks and ``prune`` values records alike. Recency
is left out because the index stores the value: a stored value must not go stale as time passes
(callers break ties by the most recent use, ``last_used_at`` else ``created_at``). Records that are
not Loom items (Aitor sessions, TinyTroupe memory) use the record view's success rate, confidence and
execution count, when they have any.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aml.prune.value import base_score_of, loom_base_score
from aml.store.records import Record

LOOM_COLLECTIONS = frozenset({"patterns", "solutions", "decisions", "archived_decisions"})
"""Collections whose items :func:`aml.prune.value.loom_value_inputs` reads."""


def record_value(record: Record, item: Any = None) -> float:
    """Value 0-1 of a record (see the module docstring for the formula and its source).

    Args:
        record: the record view.
        item: the record's JSON value (``None``: computed from the record view alone).

    Returns:
        A float in ``[0, 1]``, rounded to 6 decimals.
    """
    if (type(item) is dict or isinstance(item, Mapping)) and record.collection in LOOM_COLLECTIONS:
        # = base_score(loom_value_inputs(...)), without the last use the base leaves out
        return round(loom_base_score(str(record.collection), item), 6)
    executions = record.execution_count
    return round(base_score_of(record.success_rate, record.confidence,
                               None if executions is None else float(executions), None), 6)
