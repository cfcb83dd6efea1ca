"""The prune plan's candidates: each Loom item's rule fields, read in one pass (``acc.pattern_rule_fields`` and
its kin), are what the single-field accessors read, on random items and on every real Loom data set."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aml.prune.config import PruneConfig
from aml.prune.plan import LOOM_LIVE, _candidate
from aml.prune.strategies import Candidate
from aml.prune.value import outcome_metric_average
from aml.store import FileStore
from aml.store import accessors as acc
from aml.store.records import json_pointer
from tests.loom_strategies import DECISIONS, LOOM_ITEMS
from tests.realdata import LOOM_SCHEMA

CONFIG = PruneConfig()
NOW = datetime(2026, 6, 1, tzinfo=UTC)
KINDS = {"patterns": acc.pattern_type, "solutions": acc.error_type, "decisions": acc.decision_type}


def oracle(collection: str, document: str, index: int, item: Mapping[str, Any], *, clean: bool) -> Candidate:
    """The candidate as the plan made it field by field, with the single-field accessors (lean)."""
    created = acc.item_timestamp(item) or acc.created_at(item)
    success = confidence = None
    executions = None
    last_used = created
    if collection == "patterns":
        success, confidence, executions = acc.success_rate(item), acc.confidence(item), acc.execution_count(item)
        last_used = None if not clean and acc.last_used_unreadable(item) else (acc.last_used_at(item) or created)
    c = Candidate(
        agent="a", collection=collection, record_id=acc.item_id(item) or f"{document}#{json_pointer(index)}",
        kind=KINDS[collection](item) or collection, document=document, index=index, size_bytes=0, cost_bytes=0.0,
        value=0.0, last_used=last_used, created=created, success=success, confidence=confidence,
        executions=executions,
        wrong_types=() if clean else tuple(w.field for w in acc.wrong_types(item, collection)))
    if collection == "solutions":
        c.worked = acc.solution_worked(item)
    elif collection == "decisions" and acc.has_outcome(item):
        average = outcome_metric_average(item)
        c.negative = acc.would_repeat(item) is False or (
            average is not None and average < CONFIG.negative_metric_average)
    return c


def _check(item: Mapping[str, Any]) -> None:
    for collection in sorted(LOOM_LIVE):
        # "clean" only where the document would prove it: no item with a wrong type
        for clean in (False, True) if not acc.wrong_types(item, collection) else (False,):
            made = _candidate("a", collection, "a/x.json", 7, item, CONFIG, NOW, lean=True, clean=clean)
            assert made == oracle(collection, "a/x.json", 7, item, clean=clean), (collection, clean)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(item=st.one_of(LOOM_ITEMS, DECISIONS))
def test_candidate_equals_the_field_by_field_reading(item: dict[str, Any]) -> None:
    _check(item)


def test_negative_decisions_are_read_in_either_spelling() -> None:
    # a decision its outcome says not to repeat, or whose named metrics average under the threshold
    assert _candidate("a", "decisions", "d", 0, {"outcome": {"would_repeat": False}}, CONFIG, NOW).negative
    low = {"outcome": {"success_metrics": {"api_performance": 0.1, "maintainability": 0.2}}}
    assert _candidate("a", "decisions", "d", 0, low, CONFIG, NOW).negative
    high = {"outcome": {"successMetrics": {"apiPerformance": 0.9}, "wouldRepeat": True}}
    assert not _candidate("a", "decisions", "d", 0, high, CONFIG, NOW).negative
    assert not _candidate("a", "decisions", "d", 0, {"outcome": None}, CONFIG, NOW).negative


@pytest.mark.parametrize("name", sorted(LOOM_SCHEMA))
def test_real_items_make_the_same_candidates(name: str, loom_store: Callable[[str], Path]) -> None:
    seen = 0
    for doc in FileStore(loom_store(name)).iter_documents(check_types=True):
        if doc.kind != "loom_collection" or doc.collection not in LOOM_LIVE or doc.error is not None:
            continue
        for index, item in enumerate(doc.data):
            made = _candidate("a", doc.collection, doc.relpath, index, item, CONFIG, NOW, lean=True,
                              clean=doc.types_clean)
            assert made == oracle(doc.collection, doc.relpath, index, item, clean=doc.types_clean)
            seen += 1
    assert seen > 500
