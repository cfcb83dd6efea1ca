"""Wrong JSON types are reported, not interpreted (issue 12, part 4).

A Loom store from the shared data gets fields of a type Loom never writes: 17 patterns whose
``evolution.lastUsed`` is the integer ``12345`` (read before as 1970-01-01 and pruned as unused),
records whose ``timestamp`` is ``null`` (removed before by ``optimize gc``), and string confidences
and success rates (``"0.05"``: not a low confidence, an unreadable one). Health names every one of
them; prune (every strategy, aggressive too, applied for real) and gc (planned and applied) leave
them byte for byte as they were.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import tarfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aml.health.monitor import run_health
from aml.optimize.gc import apply_gc, plan_gc, plan_items
from aml.prune import MIB, PruneConfig, build_plan
from aml.prune import strategies as strat
from aml.prune.apply import apply_plan
from aml.prune.plan import _candidate
from aml.store import FileStore
from aml.store import accessors as acc
from aml.store.records import WrongType
from aml.store.timestamps import iso_timestamp_form, json_type, parse_iso_timestamp, parse_timestamp
from tests.realdata import extract_loom, loom_tarball

NOW = datetime(2026, 11, 23, tzinfo=UTC)
AGENT = "frontend-developer"
STRATEGY_SETS = (["time_based"], ["performance_based"], ["space_based"],
                 ["time_based", "performance_based", "space_based"])


def _load(path: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _dump(path: Path, data: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")  # Loom's style


def inject(root: Path) -> dict[tuple[str, str], set[str]]:
    """Put wrong types into the store; returns ``{(file, record id): {fields}}`` of what was injected."""
    injected: dict[tuple[str, str], set[str]] = {}

    def mark(rel: str, item: dict[str, Any], field: str) -> None:
        injected.setdefault((rel, item["id"]), set()).add(field)

    rel = f"{AGENT}/patterns.json"
    patterns = _load(root / rel)
    for item in patterns[:17]:
        item["evolution"]["lastUsed"] = 12345
        mark(rel, item, "evolution.lastUsed")
    for item in patterns[17:19]:
        item["timestamp"] = None
        mark(rel, item, "timestamp")
    used = [p for p in patterns[19:] if p["metrics"]["executionCount"] >= 5]
    used[0]["evolution"]["confidenceScore"] = "0.05"
    mark(rel, used[0], "evolution.confidenceScore")
    used[1]["metrics"]["successRate"] = "0.0"
    mark(rel, used[1], "metrics.successRate")
    _dump(root / rel, patterns)

    for name, count in (("solutions", 3), ("decisions", 2)):
        rel = f"{AGENT}/{name}.json"
        items = _load(root / rel)
        for item in items[:count]:
            item["timestamp"] = None
            mark(rel, item, "timestamp")
        _dump(root / rel, items)
    return injected


@pytest.fixture()
def odd_store(tmp_path: Path) -> tuple[Path, dict[tuple[str, str], set[str]]]:
    root = extract_loom("loom-plain-v1.0", tmp_path)
    return root, inject(root)


def items_by_id(root: Path, rel: str) -> dict[str, bytes]:
    """Each record of a document as canonical JSON, by id."""
    return {i["id"]: json.dumps(i, sort_keys=True).encode() for i in _load(root / rel)}


def test_accessors_read_wrong_types_as_none_and_name_them(odd_store) -> None:
    root, injected = odd_store
    records = FileStore(root).scan().records
    found = {(r.location.document, r.id): {w.field for w in r.wrong_types} for r in records if r.wrong_types}
    assert found == injected
    by_key = {(r.location.document, r.id): r for r in records}
    for key, fields in injected.items():
        r = by_key[key]
        if "evolution.lastUsed" in fields:
            assert r.last_used_at is None  # not 1970-01-01T03:25:45Z
        if "evolution.confidenceScore" in fields:
            assert r.confidence is None
        if "metrics.successRate" in fields:
            assert r.success_rate is None
    (finding,) = [f for r in records for f in r.wrong_type_findings() if f["field"] == "evolution.confidenceScore"]
    assert finding["found"] == "string" and finding["expected"] == "number"
    assert finding["file"] == f"{AGENT}/patterns.json" and finding["record_id"]


def test_health_names_each_wrong_type_without_failing_the_store(odd_store) -> None:
    root, injected = odd_store
    run = run_health(root, now=NOW, lookup_sample=5)
    (integrity,) = [r for r in run.results if r.check == "file_integrity"]
    assert integrity.severity.label == "warning"  # named, not an unreadable store
    assert integrity.details["failures"] == []
    named: dict[tuple[str, str], set[str]] = {}
    for w in integrity.details["wrong_type"]:
        named.setdefault((w["file"], w["record_id"]), set()).add(w["field"])
    assert named == injected
    lastused = [w for w in integrity.details["wrong_type"] if w["field"] == "evolution.lastUsed"]
    assert len(lastused) == 17 and {w["found"] for w in lastused} == {"integer"}
    nulls = [w for w in integrity.details["wrong_type"] if w["field"] == "timestamp"]
    assert {w["found"] for w in nulls} == {"null"}
    assert "evolution.lastUsed is integer" in integrity.message
    assert json.dumps(integrity.to_dict())  # JSON-ready for the report


@pytest.mark.parametrize("aggressive", [False, True], ids=["default", "aggressive"])
@pytest.mark.parametrize("strategies", STRATEGY_SETS, ids=lambda s: "+".join(s))
def test_prune_leaves_wrong_types_alone(odd_store, strategies: list[str], aggressive: bool) -> None:
    root, injected = odd_store
    # a limit every agent exceeds, so that space pruning reaches every record of the agent
    config = PruneConfig(now=NOW, agent_limit_mib=1024 / MIB, store_limit_mib=4096 / MIB,
                         preserve_high_value=False)
    config = config.aggressive() if aggressive else config
    plan = build_plan(root, config, strategies)
    assert plan.actions, "the rules still prune the store's other records"
    touched = {(a.document, a.record_id) for a in plan.actions}
    assert not touched & set(injected)
    held = {(w["file"], w["record_id"]): set(w["fields"]) for w in plan.wrong_type}
    assert held == injected
    assert plan.to_dict()["wrong_type"] == plan.wrong_type


def test_prune_applied_keeps_every_injected_record_unchanged(odd_store, tmp_path: Path) -> None:
    root, injected = odd_store
    docs = {rel for rel, _ in injected}
    before = {rel: items_by_id(root, rel) for rel in docs}
    plan = build_plan(root, PruneConfig(now=NOW).aggressive(), ["time_based", "performance_based"])
    assert plan.counts()["by_reason"].get("unused_too_long", 0) > 0
    apply_plan(plan, run_id="wrong-types", archive_root=tmp_path / "archives")
    for rel, rid in injected:
        assert items_by_id(root, rel)[rid] == before[rel][rid]
    assert len(items_by_id(root, f"{AGENT}/patterns.json")) < len(before[f"{AGENT}/patterns.json"])


def test_gc_keeps_null_timestamps_and_integer_last_use(odd_store) -> None:
    root, injected = odd_store
    docs = {rel for rel, _ in injected}
    before = {rel: items_by_id(root, rel) for rel in docs}
    # an absent timestamp is still gc's to remove: the rule changed for values, not for missing fields
    rel = f"{AGENT}/solutions.json"
    items = _load(root / rel)
    absent = items[-1]
    del absent["timestamp"]
    _dump(root / rel, items)

    plan = plan_gc(root)
    assert [(r.document, r.id, r.reason) for r in plan.removals] == [(rel, absent["id"], "missing_timestamp")]
    named: dict[tuple[str, str], set[str]] = {}
    for w in plan.wrong_type:
        named.setdefault((w["file"], w["record_id"]), set()).add(w["field"])
    assert named == injected
    assert sum(1 for b in plan.bad_timestamps if b["timestamp"] is None) == 7
    assert plan.as_dict()["wrong_type"] == plan.wrong_type

    apply_gc(root, plan, fsync=False)
    for rel_, rid in injected:
        assert items_by_id(root, rel_)[rid] == before[rel_][rid]
    assert absent["id"] not in items_by_id(root, rel)


def test_epoch_forms_still_read_where_writers_use_them() -> None:
    # parse_timestamp keeps reading epochs (Redis keyspaces, RDB idle times); only Loom item fields refuse them
    assert parse_timestamp(1_700_000_000) == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert parse_iso_timestamp(1_700_000_000) is None
    assert parse_iso_timestamp("1700000000") is None
    assert parse_iso_timestamp("2026-03-24T03:18:32.025Z") == datetime(2026, 3, 24, 3, 18, 32, 25000, tzinfo=UTC)
    assert iso_timestamp_form(12345) == "integer"
    assert iso_timestamp_form(None) == "null"
    assert iso_timestamp_form("12345") == "string (epoch number)"
    assert iso_timestamp_form("yesterday") == "string (not a timestamp)"
    assert iso_timestamp_form("2025-12-06T22:58:25.942000+00:00") is None


def test_real_loom_data_has_no_wrong_types(loom_store) -> None:
    for name in ("loom-gzip-v1.0", "loom-plain-v1.0", "loom-plain-v1.2.0", "loom-plain-v2.0.0"):
        assert not [r for r in FileStore(loom_store(name)).scan().records if r.wrong_types], name


def test_integers_beyond_a_double_are_wrong_types_not_crashes(tmp_path: Path) -> None:
    """A number field holding an integer no float can carry (``1e400`` written out) is named in health and
    left alone by prune; it used to raise OverflowError and fail the whole scan."""
    root = extract_loom("loom-plain-v1.0", tmp_path)
    rel = f"{AGENT}/patterns.json"
    patterns = _load(root / rel)
    patterns[0]["metrics"]["successRate"] = 10**400
    patterns[1]["metrics"]["executionCount"] = -(10**309)
    _dump(root / rel, patterns)
    before = items_by_id(root, rel)
    report = run_health(root, now=NOW).report()
    integrity = next(r for r in report["results"] if r["check"] == "file_integrity")
    found = {(w["record_id"], w["field"], w["found"]) for w in integrity["details"]["wrong_type"]}
    assert (patterns[0]["id"], "metrics.successRate", "integer (beyond a double)") in found
    assert (patterns[1]["id"], "metrics.executionCount", "integer (beyond a double)") in found
    assert acc.success_rate(patterns[0]) is None and acc.execution_count(patterns[1]) is None
    plan = build_plan(root, PruneConfig(now=NOW).aggressive(), ["time_based", "performance_based", "space_based"])
    assert not {a.record_id for a in plan.actions} & {patterns[0]["id"], patterns[1]["id"]}
    apply_plan(plan, run_id="huge-integers", archive_root=tmp_path / "archives")
    after = items_by_id(root, rel)
    for item in patterns[:2]:
        assert after[item["id"]] == before[item["id"]]


# ------------------------------------------------------------------------------ property

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=12), st.sampled_from(["12345", "0.05", "", "yesterday"]),
                         st.sampled_from([10**400, -(10**309), 2**1024]))  # valid JSON no double holds
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=5)
FIELDS = {
    "patterns": [("timestamp",), ("evolution", "lastUsed"), ("evolution", "created"),
                 ("evolution", "confidenceScore"), ("metrics", "successRate"), ("metrics", "executionCount")],
    "solutions": [("timestamp",), ("effectiveness", "worked")],
    "decisions": [("timestamp",), ("reviewedAt",), ("outcome", "wouldRepeat")],
}
CASES = [(c, path) for c, paths in FIELDS.items() for path in paths]


@functools.cache
def real_items() -> dict[str, list[dict[str, Any]]]:
    """The agent's live items of the shared plain v1.0 store, read from the tarball (decisions: with outcome)."""
    out: dict[str, list[dict[str, Any]]] = {}
    with tarfile.open(loom_tarball("loom-plain-v1.0"), "r:gz") as tar:
        for collection in FIELDS:
            member = tar.extractfile(f".loom/memory/{AGENT}/{collection}.json")
            assert member is not None
            out[collection] = json.load(member)
    out["decisions"] = [d for d in out["decisions"] if "outcome" in d]
    return out


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(CASES), index=st.integers(0, 100), value=JSON_VALUES, aggressive=st.booleans())
def test_random_json_types_never_cause_a_removal(case: tuple[str, tuple[str, ...]], index: int, value: Any,
                                                 aggressive: bool) -> None:
    collection, path = case
    pool = real_items()[collection]
    index %= len(pool)
    item = json.loads(json.dumps(pool[index]))
    parent = item
    for key in path[:-1]:
        parent = parent.setdefault(key, {})
    parent[path[-1]] = value
    wrong = acc.wrong_types(item, collection)
    config = PruneConfig(now=NOW, agent_limit_mib=1 / MIB, preserve_high_value=False)
    config = config.aggressive() if aggressive else config
    c = _candidate(AGENT, collection, f"{AGENT}/{collection}.json", index, item, config, NOW)
    matched = [*strat.time_based([c], config, NOW), *strat.performance_based([c], config),
               *strat.space_based([c], projected=10**9, limit=1, target_ratio=0.7, preserved=lambda _: False)]
    removals, _, _ = plan_items([item], document="d.json", collection=collection)
    if wrong:
        assert ".".join(path) in {w.field for w in wrong}
        assert matched == [] and removals == []
    # whatever the value, a present field never makes gc drop the record
    assert removals == []


def test_null_ids_and_agents_are_wrong_types_kept_by_gc_and_read_safely_by_index_and_query(odd_store) -> None:
    """A null or numeric ``id`` or ``agent`` is a wrong type, like a null timestamp: gc reports and keeps the
    record (only an absent or empty one is missing), and the index and ``query`` read every odd field as
    unknown (never a 1970 date, never a confidence of a string) without failing."""
    from aml.optimize import build_index
    from aml.optimize.query import Query, QueryEngine

    root, injected = odd_store
    rel = f"{AGENT}/patterns.json"
    patterns = _load(root / rel)
    base = patterns[-1]
    odd = [{**base, "id": None}, {**base, "id": 42}, {**base, "id": "p-null-agent", "agent": None}]
    _dump(root / rel, [*patterns, *odd])
    first_odd = len(patterns)

    plan = plan_gc(root)
    assert plan.removals == []
    found = {(w["pointer"], w["field"], w["found"]) for w in plan.wrong_type if w["file"] == rel}
    assert {(f"/{first_odd}", "id", "null"), (f"/{first_odd + 1}", "id", "integer"),
            (f"/{first_odd + 2}", "agent", "null")} <= found

    build_index(root)
    with QueryEngine(root) as engine:
        hits = engine.search(Query(agent=AGENT, limit=100_000), with_items=False).hits
        assert len(hits) == sum(len(_load(root / f"{AGENT}/{c}.json")) for c in ("patterns", "solutions", "decisions"))
        assert not [h for h in hits if (h.created_at or "").startswith("1970")
                    or (h.last_used_at or "").startswith("1970")]
        by_id = {h.id: h for h in hits}
        for (_file, rid), fields in injected.items():
            hit = by_id[rid]
            if "evolution.lastUsed" in fields:
                assert hit.last_used_at is None
            if "evolution.confidenceScore" in fields:
                assert hit.confidence is None
                assert rid not in {h.id for h in engine.search(Query(min_confidence=0.0, limit=100_000),
                                                               with_items=False).hits}
        for n, item in enumerate(odd):
            positional = f"{rel}#/{first_odd + n}"
            hit = engine.lookup(item["id"] if isinstance(item["id"], str) else positional)
            assert hit is not None and hit.item == item and hit.agent == AGENT


def _reference_wrong_types(item: object, collection: str) -> tuple[WrongType, ...]:
    """wrong_types' rule spelled out field by field (the collection's typed fields, in their order)."""
    if not isinstance(item, Mapping):
        return ()
    out = []
    for path, expected in acc._TYPED_FIELDS.get(collection, acc._ANY_ITEM):
        parent: Any = item
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, Mapping) else None
        if not isinstance(parent, Mapping) or path[-1] not in parent:
            continue
        value = parent[path[-1]]
        if expected == "timestamp":
            found = iso_timestamp_form(value)
        elif expected == "number":
            if isinstance(value, bool) or not isinstance(value, int | float):
                found = json_type(value)
            elif isinstance(value, int):  # exact: an integer no double holds is a wrong type too
                found = None if abs(value) <= sys.float_info.max else "integer (beyond a double)"
            else:
                found = None if math.isfinite(value) else json_type(value)
        elif expected == "string":
            found = None if isinstance(value, str) else json_type(value)
        else:
            found = None if isinstance(value, bool) else json_type(value)
        if found is not None:
            out.append(WrongType(".".join(path), found,
                                 acc.TIMESTAMP_EXPECTED if expected == "timestamp" else expected))
    return tuple(out)


_TYPED_PATHS = sorted({path for fields in acc._TYPED_FIELDS.values() for path, _ in fields})
_FIELD_VALUES = st.one_of(JSON_SCALARS, st.floats(), st.integers(-2, 2**70), st.lists(st.none(), max_size=1),
                          st.sampled_from(["2026-03-24T03:18:32.025Z", " 2026-03-24T03:18:32Z ", "20260324",
                                           "2026-11-22T10:48:19.384477", "2026-13-01T00:00:00Z"]))


def _nest(fields: list[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    """An item holding each ``(path, value)``; a later value may replace a whole parent object."""
    item: dict[str, Any] = {}
    for path, value in fields:
        parent = item
        for key in path[:-1]:
            parent = parent[key] if isinstance(parent.get(key), dict) else parent.setdefault(key, {})
            if not isinstance(parent, dict):
                break
        else:
            parent[path[-1]] = value
    return item


def _items_of(collection: str) -> st.SearchStrategy[Any]:
    """Random items holding the collection's typed fields (and their parents) with random values."""
    paths = sorted({path for path, _ in acc._TYPED_FIELDS.get(collection, acc._ANY_ITEM)})
    paths += sorted({path[:1] for path in paths if len(path) > 1})
    return st.one_of(st.lists(st.tuples(st.sampled_from(paths), _FIELD_VALUES), max_size=12).map(_nest), JSON_SCALARS)


_COLLECTION_ITEMS = st.sampled_from(["patterns", "solutions", "decisions", "archived_decisions", "other"]).flatmap(
    lambda collection: st.tuples(st.just(collection), _items_of(collection)))


@settings(max_examples=500, deadline=None)
@given(case=_COLLECTION_ITEMS)
def test_wrong_types_follow_the_rule_field_by_field(case: tuple[str, Any]) -> None:
    """wrong_types (grouped by parent and kind, usual types checked inline) finds exactly what checking
    each typed field in turn finds, in the same order."""
    collection, item = case
    assert acc.wrong_types(item, collection) == _reference_wrong_types(item, collection)
