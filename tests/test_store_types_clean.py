"""``accessors.types_clean``: one C pass that proves a Loom collection has no field of a wrong type.

The rule it must keep: ``types_clean(document) is True`` implies ``wrong_types(item) == ()`` for every item
(a ``False`` only costs the per-item check). Checked on random items, on timestamp-like strings around every
edge of RFC 3339 and ISO 8601, and on the real data sets (where it must say ``True``: a check that always
says ``False`` would be useless).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aml.health.monitor import run_health
from aml.optimize.gc import plan_gc
from aml.prune import MIB, PruneConfig, build_plan
from aml.store import FileStore
from aml.store import accessors as acc
from aml.store.codec import decode
from aml.store.timestamps import iso_timestamp_form, parse_iso_timestamp
from tests.realdata import LOOM_COUNTS, extract_loom
from tests.test_store_wrong_types import inject

COLLECTIONS = ("patterns", "solutions", "decisions", "archived_decisions")

_STAMP = st.from_regex(
    r"\A[ ]?[0-9+-]?[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt _][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]{0,10})?)?)?"
    r"([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)?[ ]?\Z")
_EDGES = ["2026-01-02T03:04:05Z", "2026-01-02t03:04:05z", "2026-01-02 03:04:05+05:30", "0001-01-01T00:00:00+01:00",
          "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00Z", "2026-02-29T00:00:00Z", "2024-02-29T00:00:00Z",
          "2026-01-02T24:00:00Z", "2026-01-02T23:59:60Z", "2026-01-02T00:00:00.1234567891Z", "2026-01-02",
          "12345", " 2026-01-02T03:04:05Z", "2026-01-02T03:04:05+24:00", "2026-01-02T03:04:05-00:00",
          "2026-01-02T03:04:05", "20260102T030405Z", "", "z", "0"]
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300, max_value=10**320),
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=4), st.sampled_from(_EDGES),
                     _STAMP)
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=2) | st.dictionaries(
    st.text(max_size=3), inner, max_size=2), max_leaves=4)
_KEYS = sorted({path[-1] for fields in acc._TYPED_FIELDS.values() for path, _ in fields})
_PARENTS = sorted({path[0] for fields in acc._TYPED_FIELDS.values() for path, _ in fields if len(path) > 1})
_INNER = st.dictionaries(st.sampled_from(_KEYS), _SCALARS, max_size=4)
_ITEM = st.dictionaries(st.sampled_from([*_KEYS, *_PARENTS, "other"]),
                        st.one_of(_SCALARS, _INNER, _VALUES), max_size=6)


def _implies_clean(items: list[Any], collection: str) -> bool:
    clean = acc.types_clean(json.dumps(items).encode(), collection)
    if clean:
        found = [acc.wrong_types(item, collection) for item in items]
        assert found == [()] * len(items), (collection, items, found)
    return clean


@settings(max_examples=600, deadline=None)
@given(items=st.lists(_ITEM, max_size=4), collection=st.sampled_from(COLLECTIONS))
@pytest.mark.slow
def test_clean_implies_no_wrong_types(items: list[Any], collection: str) -> None:
    _implies_clean(items, collection)


def _escaped(text: str, which: list[bool]) -> str:
    """``text`` as a JSON string with the characters ``which`` marks written as ``\\uXXXX`` escapes."""
    return '"' + "".join(f"\\u{ord(c):04x}" if esc else json.dumps(c)[1:-1]
                         for c, esc in zip(text, which + [False] * len(text), strict=False)) + '"'


@pytest.mark.slow
@settings(max_examples=600, deadline=None)
@given(stamp=st.one_of(_STAMP, st.sampled_from(_EDGES)), collection=st.sampled_from(COLLECTIONS),
       escapes=st.lists(st.booleans(), max_size=40))
def test_timestamps_msgspec_reads_are_timestamps_aml_reads(stamp: str, collection: str, escapes: list[bool]) -> None:
    where = {"patterns": {"evolution": {"lastUsed": stamp}}, "decisions": {"reviewedAt": stamp}}
    item = where.get(collection, {"timestamp": stamp})
    clean = _implies_clean([item], collection)
    if iso_timestamp_form(stamp) is not None:
        assert not clean
    # the same string with some characters escaped, as a JSON writer may: msgspec reads the date unescaped
    key = {"patterns": '"evolution": {"lastUsed": %s}', "decisions": '"reviewedAt": %s'}.get(
        collection, '"timestamp": %s')
    body = ("[{" + key % _escaped(stamp, escapes) + "}]").encode()
    if acc.types_clean(body, collection):
        assert acc.wrong_types(json.loads(body)[0], collection) == (), body


def test_escaped_edge_days_and_integers_at_the_edge_of_a_double_are_not_clean() -> None:
    """Two ways around a check of the bytes or a bound, found in review: an escaped digit spelling year 9999's last
    day, and an integer just beyond a double (msgspec rounds it to the largest double before comparing)."""
    body = b'[{"id": "p", "evolution": {"lastUsed": "9999-12-3\\u0031T23:00:00-01:00"}}]'
    assert acc.wrong_types(json.loads(body)[0], "patterns")
    assert not acc.types_clean(body, "patterns")
    for number in (int(sys.float_info.max) + 1, -(int(sys.float_info.max) + 1), int(sys.float_info.max) * 2):
        body = json.dumps([{"id": "p", "metrics": {"successRate": number}}]).encode()
        assert acc.wrong_types(json.loads(body)[0], "patterns")
        assert not acc.types_clean(body, "patterns")
    assert acc.types_clean(json.dumps([{"metrics": {"successRate": 1e308}}]).encode(), "patterns")


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "12345",
                                   "2026-02-29T00:00:00Z", "2026-01-02T03:04:05Zz", None])
def test_timestamps_aml_cannot_read_are_not_clean(stamp: str | None) -> None:
    assert acc.wrong_types({"timestamp": stamp}, "patterns")
    assert not acc.types_clean(json.dumps([{"id": "a", "timestamp": stamp}]).encode(), "patterns")


def test_edge_days_are_looked_for_in_the_typed_fields_only() -> None:
    """The edge days make a document unsure only where a typed field holds them (read after unescaping): the same
    text in a field no accessor reads, or as a plain day, costs no per-item check; in an id (a typed string) it
    does, to no harm."""
    assert acc.types_clean(json.dumps([{"id": "a", "note": "0001-01-01T00:00:00+01:00",
                                        "timestamp": "9999-12-30T23:59:59-01:00"}]).encode(), "patterns")
    assert acc.types_clean(b'[{"id": "a", "note": "\\u0030001-01-01"}]', "patterns")
    assert not acc.types_clean(b'[{"reviewedAt": "\\u0030001-01-01T00:00:00+01:00"}]', "decisions")
    assert not acc.types_clean(json.dumps([{"id": "9999-12-31"}]).encode(), "solutions")
    assert acc.types_clean(json.dumps([{"id": "9999-12-30"}]).encode(), "solutions")


@pytest.mark.parametrize("item", [{"id": 5}, {"agent": None}, {"active": "true"}, {"verifiedCount": "3"},
                                  {"metrics": {"successRate": "0.9"}}, {"evolution": {"confidenceScore": True}},
                                  {"outcome": {"wouldRepeat": 1}}, {"metrics": {"executionCount": 10**400}}])
def test_each_kind_of_wrong_type_is_not_clean(item: dict[str, Any]) -> None:
    collection = "solutions" if "verifiedCount" in item else "decisions" if "outcome" in item else "patterns"
    assert acc.wrong_types(item, collection)
    assert not acc.types_clean(json.dumps([item]).encode(), collection)


def test_a_lowercase_zone_is_utc_as_rfc_3339_allows() -> None:
    """RFC 3339 section 5.6: "T" and "Z" may be lower case; aml reads them as msgspec does."""
    assert parse_iso_timestamp("2026-01-02t03:04:05.5z") == datetime(2026, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)
    assert acc.types_clean(b'[{"timestamp": "2026-01-02t03:04:05z"}]', "patterns")
    assert acc.wrong_types({"timestamp": "2026-01-02t03:04:05z"}, "patterns") == ()
    assert acc.wrong_types({"timestamp": "2026-01-02T03:04:05+01:00z"}, "patterns")


def test_clean_documents_and_other_collections() -> None:
    good = [{"id": "a", "agent": "b", "timestamp": "2026-01-02T03:04:05.123Z", "active": True,
             "evolution": {"lastUsed": "2026-01-02 03:04:05+05:30", "confidenceScore": 1},
             "metrics": {"successRate": 0.5}, "extra": {"anything": [None, "12345"]}}]
    assert acc.types_clean(json.dumps(good).encode(), "patterns")
    assert acc.types_clean(memoryview(json.dumps(good).encode()), "patterns")
    assert acc.types_clean(b"[]", "decisions")
    assert not acc.types_clean(json.dumps(good).encode(), "sessions.messages")  # not a Loom collection
    assert not acc.types_clean(b'{"id": "a"}', "patterns")  # not a list
    assert not acc.types_clean(b'[{"id": "a"', "patterns")  # truncated


@pytest.mark.parametrize("name", sorted(LOOM_COUNTS))
def test_real_collections_are_clean(name: str, loom_store: Callable[[str], Path]) -> None:
    """Loom's own files prove clean (the fast path is taken on real data) and have no wrong types."""
    root = loom_store(name)
    seen = 0
    for path in sorted(root.glob("*/*.json*")):
        stem = path.name.split(".")[0]
        collection = {"archived-decisions": "archived_decisions"}.get(stem, stem)
        if collection not in COLLECTIONS:
            continue
        body = decode(path.read_bytes())[0]  # plain or gzip
        items = json.loads(body)
        assert acc.types_clean(body, collection), path
        assert all(acc.wrong_types(item, collection) == () for item in items)
        seen += 1
    assert seen >= 12


def _readers(root: Path) -> dict[str, Any]:
    """What each reader that skips wrong_types on a clean document reports about ``root``."""
    now = datetime(2026, 11, 23, tzinfo=UTC)
    scan = FileStore(root).scan()
    config = PruneConfig(now=now, agent_limit_mib=1024 / MIB, store_limit_mib=4096 / MIB, preserve_high_value=False)
    plan = build_plan(root, config, ["time_based", "performance_based", "space_based"])
    return {"records": scan.records, "tally": scan.tally, "documents": scan.documents,
            "health": sorted(map(str, run_health(root, now=now).scan.wrong_type_findings)),
            "prune": (plan.wrong_type, [a.record_id for a in plan.actions]),
            "gc": plan_gc(root).wrong_type}


def test_readers_report_the_same_with_and_without_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a real store with wrong types in one agent's files (the others clean), health, the scan, prune's plan
    and gc's plan say the same whether clean documents skip the per-item check or not."""
    root = extract_loom("loom-plain-v1.0", tmp_path)
    inject(root)
    fast = _readers(root)
    assert fast["health"] and fast["prune"][0] and fast["gc"]
    monkeypatch.setattr(acc, "types_clean", lambda body, collection: False)
    assert _readers(root) == fast
