"""accessors: version detection and camelCase/snake_case field access."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aml.store import accessors as acc
from aml.store.codec import decode
from aml.store.documents import load_json
from aml.store.records import item_size
from tests.loom_strategies import DECISIONS
from tests.loom_strategies import LOOM_ITEMS as _ITEMS
from tests.loom_strategies import VALUES as _VALUES
from tests.realdata import LOOM_SCHEMA

V10 = {
    "id": "p1",
    "agent": "debugger",
    "timestamp": "2025-11-24T09:32:50.159Z",
    "pattern": {"type": "css-layout"},
    "metrics": {"successRate": 0.25, "executionCount": 8, "avgTimeSavedMs": 120.5, "errorPreventionCount": 0},
    "evolution": {
        "created": "2025-11-24T09:32:50.160Z",
        "lastUsed": "2026-01-15T21:18:21.789Z",
        "refinements": 7,
        "confidenceScore": 0.4,
    },
    "active": True,
}
V11 = {**V10, "tags": []}
V12 = {
    **V11,
    "metadata": {
        "created_by": "migration",
        "last_modified": "2026-11-22T10:48:18.758935",
        "version": "1.2.0",
    },
    "variations": [],
}
V20 = {
    "id": "p1",
    "agent": "debugger",
    "timestamp": "2025-11-24T09:32:50.159000+00:00",
    "version": "2.0.0",
    "pattern": {"type": "css-layout"},
    "tags": [],
    "active": True,
    "performance": {
        "success_rate": 0.25,
        "execution_count": 8,
        "avg_time_saved_ms": 120.5,
        "error_prevention_count": 0,
    },
    "lifecycle": {
        "created_at": "2025-11-24T09:32:50.160000+00:00",
        "last_used_at": "2026-01-15T21:18:21.789000+00:00",
        "refinement_count": 7,
        "confidence": 0.4,
    },
    "metadata": {
        "created_by": "migration",
        "last_modified": "2026-11-22T10:48:19.065904",
        "version": "1.2.0",
    },
}


@pytest.mark.parametrize(
    ("item", "version"), [(V10, "1.0.0"), (V11, "1.1.0"), (V12, "1.2.0"), (V20, "2.0.0")]
)
def test_detect_and_read_every_version(item: dict, version: str) -> None:
    assert acc.detect_item_version(item) == version
    assert acc.success_rate(item) == 0.25
    assert acc.execution_count(item) == 8
    assert acc.avg_time_saved_ms(item) == 120.5
    assert acc.confidence(item) == 0.4
    assert acc.refinement_count(item) == 7
    assert acc.created_at(item) == datetime(2025, 11, 24, 9, 32, 50, 160000, tzinfo=UTC)
    assert acc.last_used_at(item) == datetime(2026, 1, 15, 21, 18, 21, 789000, tzinfo=UTC)
    assert acc.item_timestamp(item) == datetime(2025, 11, 24, 9, 32, 50, 159000, tzinfo=UTC)
    assert acc.pattern_type(item) == "css-layout"
    assert acc.is_active(item)


def test_v2_metadata_version_does_not_decide() -> None:
    # v2.0 items keep metadata.version "1.2.0"; the top-level version wins
    assert acc.detect_item_version({"version": "2.0.0", "metadata": {"version": "1.2.0"}}) == "2.0.0"
    assert acc.detect_item_version({"tags": []}) == "1.0.0"  # tags alone is not 1.1.0
    assert acc.detect_item_version({"version": "9.9.9"}) == "1.0.0"


def test_missing_or_wrong_types_are_none() -> None:
    bad = {"metrics": {"successRate": "high", "executionCount": True}, "evolution": "x", "active": "no"}
    assert acc.success_rate(bad) is None
    assert acc.execution_count(bad) is None
    assert acc.confidence(bad) is None
    assert acc.last_used_at(bad) is None
    assert acc.created_at(bad) is None
    assert acc.is_active(bad)  # only an explicit false deactivates
    assert acc.is_active({"active": False}) is False
    assert acc.execution_count({"metrics": {"executionCount": 3.0}}) == 3


def test_solution_and_decision_fields() -> None:
    solution = {
        "effectiveness": {"worked": False, "timeToFixMinutes": 7},
        "verifiedCount": 6,
        "problem": {"errorType": "HydrationError"},
    }
    assert acc.solution_worked(solution) is False
    assert acc.verified_count(solution) == 6
    assert acc.time_to_fix_minutes(solution) == 7.0
    assert acc.error_type(solution) == "HydrationError"

    decision = {
        "decision": {"type": "fix-strategy"},
        "outcome": {
            "successMetrics": {
                "developmentSpeed": 1.77,
                "maintainability": 0.66,
                "customMetrics": {"incidentsPerMonth": 2, "leadTimeDays": 10.8},
            },
            "wouldRepeat": False,
        },
        "reviewedAt": "2026-02-08T01:10:51.568Z",
    }
    assert acc.has_outcome(decision)
    assert acc.would_repeat(decision) is False
    assert acc.success_metrics(decision) == {"developmentSpeed": 1.77, "maintainability": 0.66}
    assert acc.custom_metrics(decision) == {"incidentsPerMonth": 2.0, "leadTimeDays": 10.8}
    assert acc.reviewed_at(decision) == datetime(2026, 2, 8, 1, 10, 51, 568000, tzinfo=UTC)
    # Loom's Python tools spell it snake_case; read both
    assert acc.would_repeat({"outcome": {"would_repeat": True}}) is True
    no_outcome = {"decision": {"type": "x"}}
    assert not acc.has_outcome(no_outcome)
    assert acc.would_repeat(no_outcome) is None
    assert acc.success_metrics(no_outcome) == {} == acc.custom_metrics(no_outcome)


@pytest.mark.parametrize("name", sorted(LOOM_SCHEMA))
def test_real_items_detect_as_their_store_version(name: str, loom_store: Callable[[str], Path]) -> None:
    root = loom_store(name)
    seen = set()
    for path in sorted(root.glob("*/*.json")):
        if path.parent.name in ("global", "config", "monitoring"):
            continue
        items = load_json(decode(path.read_bytes())[0], path)
        seen |= {acc.detect_item_version(item) for item in items}
        assert all(acc.item_id(i) and acc.item_agent(i) == path.parent.name for i in items)
    assert seen == {LOOM_SCHEMA[name]}
    # DATA.md: about 40 % of decisions have no outcome; some outcomes nest customMetrics
    decisions = load_json(decode((root / "backend-architect" / "decisions.json").read_bytes())[0], root)
    without = sum(1 for d in decisions if not acc.has_outcome(d))
    assert 0.2 < without / len(decisions) < 0.6
    assert any(acc.custom_metrics(d) for d in decisions)


# ---------------------------------------------------------------- one-pass readers and item_size

@settings(max_examples=400, deadline=None)
@given(item=st.one_of(_ITEMS, _VALUES))
def test_one_pass_readers_equal_the_accessors(item: Any) -> None:
    """pattern_fields, solution_fields and decision_fields (record extraction) return exactly what the
    single-field accessors return, wrong types and missing parents included."""
    if isinstance(item, dict):
        assert acc.pattern_fields(item) == (acc.pattern_type(item), acc.success_rate(item), acc.confidence(item),
                                            acc.execution_count(item), acc.created_at(item), acc.last_used_at(item))
        assert acc.solution_fields(item) == (acc.error_type(item), acc.solution_worked(item),
                                             acc.verified_count(item), acc.created_at(item))
        assert acc.decision_fields(item) == (acc.decision_type(item), acc.would_repeat(item), acc.reviewed_at(item),
                                             acc.created_at(item))
        for view in (item, MappingProxyType(item)):  # a dict, and a Mapping that is not one (the general path)
            assert acc.pattern_score_fields(view) == (acc.success_rate(item), acc.confidence(item),
                                                      acc.execution_count(item), acc.avg_time_saved_ms(item))
            assert acc.solution_score_fields(view) == (acc.solution_worked(item), acc.time_to_fix_minutes(item),
                                                       acc.verified_count(item), acc.prevented_recurrence(item))
    for collection in ("patterns", "solutions", "decisions"):
        if isinstance(item, dict):  # a Mapping that is not a dict takes wrong_types' general path
            assert acc.wrong_types(item, collection) == acc.wrong_types(MappingProxyType(item), collection)
        else:
            assert acc.wrong_types(item, collection) == ()


@settings(max_examples=400, deadline=None)
@given(item=st.one_of(_ITEMS, _VALUES))
def test_rule_fields_equal_the_accessors(item: Any) -> None:
    """pattern_rule_fields, solution_rule_fields and decision_rule_fields (prune's plan) return exactly what the
    single-field accessors return, for a dict and for a Mapping that is not one."""
    if isinstance(item, dict):
        _check_rule_fields(item)


@settings(max_examples=300, deadline=None)
@given(item=DECISIONS)
def test_decision_rule_fields_equal_the_accessors(item: dict[str, Any]) -> None:
    """The same, on decisions whose outcome holds its fields in every spelling and type."""
    _check_rule_fields(item)


def _check_rule_fields(item: dict[str, Any]) -> None:
    created = acc.item_timestamp(item) or acc.created_at(item)
    for view in (item, MappingProxyType(item)):
        assert acc.pattern_rule_fields(view) == (acc.item_id(item), acc.pattern_type(item), created,
                                                 acc.last_used_at(item), acc.success_rate(item),
                                                 acc.confidence(item), acc.execution_count(item))
        assert acc.solution_rule_fields(view) == (acc.item_id(item), acc.error_type(item), created,
                                                  acc.solution_worked(item))
        assert acc.decision_rule_fields(view) == (acc.item_id(item), acc.decision_type(item), created,
                                                  acc.has_outcome(item), acc.would_repeat(item))


@settings(max_examples=400, deadline=None)
@given(item=DECISIONS)
def test_outcome_scores_one_pass_equals_the_general_path(item: dict[str, Any]) -> None:
    """outcome_scores of a dict (one lookup per parent) reads each named metric's first spelling holding a value,
    as a number, exactly as its general path (any Mapping) does."""
    metrics = acc._first(item, ("outcome", "successMetrics"), ("outcome", "success_metrics"))
    expected = {}
    if isinstance(metrics, Mapping):  # the oracle: each name's first spelling holding a value, read as a number
        for name, spellings in acc.OUTCOME_SCORES.items():
            value = next((metrics[s] for s in spellings if metrics.get(s) is not None), None)
            if value is not None and acc.finite_number(value):
                expected[name] = float(value)
    assert acc.outcome_scores(item) == expected == acc.outcome_scores(MappingProxyType(item))


_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
              st.text(alphabet=st.characters(codec="utf-8"), max_size=5)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


def _float_text(value: float) -> str:
    """A float as item_size counts it: msgspec's text for that float alone (shortest round-trip digits in its
    own notation), non-finite as null."""
    return "null" if not math.isfinite(value) else msgspec.json.encode(value).decode()


def _reference_size(value: Any) -> int:
    """What item_size must give for a JSON value, written out by hand from json.dumps' rules (a scalar:
    json.dumps' own bytes)."""
    if not isinstance(value, dict | list):
        return len(json.dumps(value, ensure_ascii=False).encode("utf-8"))

    def dump(v: Any) -> str:
        if isinstance(v, float):
            return _float_text(v)
        if isinstance(v, dict):
            return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + dump(x) for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ",".join(dump(x) for x in v) + "]"
        return json.dumps(v, ensure_ascii=False)
    return len(dump(value).encode("utf-8"))


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(value=_JSON)
def test_item_size_is_compact_utf8_json(value: Any) -> None:
    """item_size (msgspec's encoder for trees) gives the compact UTF-8 JSON size: json.dumps' bytes (keys,
    strings, escapes, non-ASCII, structure), each float as msgspec writes it, non-finite floats as null."""
    assert item_size(value) == _reference_size(value)
    if not any(c in json.dumps(value) for c in "eEIN"):  # no float exponent, NaN or Infinity: json.dumps exactly
        assert item_size(value) == len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def test_item_size_of_exponent_floats_and_other_types() -> None:
    assert item_size([1e300, 1.5e16, 6.103515625e-05, float("nan"), -float("inf")]) == len(
        "[1e300,1.5e16,0.00006103515625,null,null]")
    assert item_size({"when": datetime(2026, 1, 2, tzinfo=UTC)}) == len('{"when":"2026-01-02T00:00:00Z"}')
    odd = {"o": object(), "s": {1}}  # msgspec does not encode object(): json with default=str measures it
    assert item_size(odd) == len(json.dumps(odd, ensure_ascii=False, separators=(",", ":"), default=str))
    assert item_size("é") == 4 and item_size(None) == 4 and item_size(12) == 2
    # a lone surrogate (json.loads reads a "\ud800" escape as one) has no UTF-8 form: it counts as its escape
    assert item_size({"a": "x\ud800"}) == len('{"a":"x\\ud800"}') == 15
    assert item_size(["\udcff"]) == len('["\\udcff"]')


def test_item_size_of_cycles_and_deep_nesting_raises_as_json_dumps_does() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="Circular reference"):
        item_size({"a": cycle})
    deep: dict[str, Any] = {}
    cur = deep
    for _ in range(5000):
        cur["k"] = {}
        cur = cur["k"]
    with pytest.raises(RecursionError):
        item_size(deep)
