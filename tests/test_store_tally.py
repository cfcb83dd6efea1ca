"""A scan that keeps no record views (``FileStore.scan(views=False)``; ``monitor health`` adds the same per
document, ``scan_tallies``) tallies exactly what the record views say: counts and bytes per agent and collection,
the number of records, every wrong-type finding, the agents and each document's record count. Checked on every real
data set, on odd collections (global archive items with and without an agent, non-object items, wrong types, gzip,
items read one by one) and on random collections (hypothesis)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aml.store import FileStore
from aml.store.filestore import ScanResult
from tests.realdata import AITOR_DIR, AMAOS_DIR, LOOM_COUNTS, TINYTROUPE_DIR

LoomStore = Callable[[str], Path]


def _summary(scan: ScanResult) -> dict[str, Any]:
    return {"counts": scan.counts(), "bytes": scan.collection_bytes(), "records": scan.record_count,
            "wrong_types": scan.wrong_type_findings, "agents": scan.agents(), "documents": scan.documents,
            "errors": [(e.relpath, e.code) for e in scan.errors], "sizes": scan.agent_sizes()}


def _assert_same_tally(root: Path, lazy_items: int | None = None) -> ScanResult:
    """Both kinds of scan of ``root`` agree; returns the one with views."""
    store = FileStore(root)
    with_views = store.scan(lazy_items=lazy_items)
    without = store.scan(lazy_items=lazy_items, views=False)
    assert without.records == []
    assert _summary(without) == _summary(with_views)
    assert with_views.record_count == len(with_views.records)
    assert with_views.wrong_type_findings == [f for r in with_views.records for f in r.wrong_type_findings()]
    return with_views


@pytest.mark.parametrize("name", sorted(LOOM_COUNTS))
def test_real_loom_stores(name: str, loom_store: LoomStore) -> None:
    scan = _assert_same_tally(loom_store(name))
    assert scan.record_count >= 400
    _assert_same_tally(loom_store(name), lazy_items=0)  # every collection read item by item


@pytest.mark.parametrize("root", [AITOR_DIR, TINYTROUPE_DIR, AMAOS_DIR], ids=["aitor", "tinytroupe", "amaos"])
def test_real_aitor_tinytroupe_and_amaos_data(root: Path) -> None:
    if not root.is_dir():
        pytest.skip(f"{root} is not here")
    _assert_same_tally(root)


def _pattern(i: int, **overrides: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"id": f"p{i}", "agent": "a", "timestamp": "2026-01-02T03:04:05.000Z",
                            "pattern": {"type": "t", "description": "é" * i},
                            "evolution": {"created": "2026-01-02T03:04:05.000Z", "lastUsed": "2026-02-01T00:00:00Z",
                                          "confidenceScore": 0.5 + i / 100},
                            "metrics": {"successRate": 0.25, "executionCount": i}}
    item.update(overrides)
    return item


def _write(path: Path, value: Any, *, gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(value, indent=2).encode()
    path.write_bytes(gzip.compress(text) if gz else text)


def test_odd_collections(tmp_path: Path) -> None:
    root = tmp_path / "memory"
    _write(root / "a" / "patterns.json", [_pattern(1), _pattern(2, evolution={"lastUsed": 12345}),
                                          _pattern(3, timestamp=None, id=None),
                                          _pattern(4, metrics={"successRate": "0.9"})])
    _write(root / "a" / "solutions.json", [])
    _write(root / "b" / "patterns.json.gz", [_pattern(5), _pattern(6, timestamp=7)], gz=True)
    _write(root / "c" / "patterns.json", [_pattern(7, x=[1e16, 1.5e-7, {"k": 1e300}]), _pattern(8, y=-0.0)])
    _write(root / "d" / "patterns.json", [1, "x", None, _pattern(9)])  # not a list of objects: a document error
    # a lone surrogate escape: json.loads reads it (msgspec does not), and the record is measured, not a crash
    (root / "e").mkdir()
    (root / "e" / "patterns.json").write_text('[{"id": "s\\ud800", "note": "x\\udcff"}]', encoding="utf-8")
    _write(root / "global" / "archived-decisions.json",
           [{"id": "d1", "agent": "a", "timestamp": "2026-01-01T00:00:00Z"},
            {"id": "d2", "timestamp": None}, {"id": "d3", "agent": 5}, {"agent": "b", "reviewedAt": 12}])
    (root / "a" / "decisions.json").write_text('[{"id": "x"', encoding="utf-8")  # truncated: no records
    (root / "z").mkdir()
    (root / "z" / "notes.txt").write_text("opaque")
    for lazy in (None, 0):
        scan = _assert_same_tally(root, lazy_items=lazy)
        assert scan.counts()["global"] == {"archived_decisions": 2}  # d2 and d3 have no agent string
        assert {f["field"] for f in scan.wrong_type_findings} >= {"evolution.lastUsed", "timestamp",
                                                                  "metrics.successRate", "agent", "reviewedAt"}
        assert [e.code for e in scan.errors] == ["truncated_json", "wrong_type"]
        assert scan.counts()["c"] == {"patterns": 2}
        assert scan.collection_bytes()["e"] == {"patterns": len('{"id":"s\\ud800","note":"x\\udcff"}')}


_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=6),
              st.sampled_from(["2026-01-02T03:04:05Z", "12345", "2026-13-01T00:00:00Z", " 2026-01-02 "])),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)
_FIELDS = ("id", "agent", "timestamp", "evolution", "metrics", "lifecycle", "performance", "active", "version")
_ITEMS = st.one_of(_VALUES, st.dictionaries(st.sampled_from(_FIELDS), _VALUES | st.dictionaries(
    st.sampled_from(("lastUsed", "created", "confidenceScore", "successRate", "executionCount", "created_at")),
    _VALUES, max_size=4), max_size=6))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(_ITEMS, max_size=8), archived=st.lists(_ITEMS, max_size=5))
def test_random_collections(tmp_path: Path, items: list[Any], archived: list[Any]) -> None:
    root = tmp_path / "random" / "memory"
    _write(root / "a" / "patterns.json", items)
    _write(root / "a" / "decisions.json", items[::-1])
    _write(root / "global" / "archived-decisions.json", archived)
    for lazy in (None, 0):
        _assert_same_tally(root, lazy_items=lazy)
