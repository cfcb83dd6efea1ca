"""Large list documents read item by item (``LazyItems``): the same items, records, errors and health report
as a full parse, with memory for the document's bytes and one item (issue 12, part 2)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aml.health.monitor as monitor
from aml.store import FileStore
from aml.store.documents import LazyItems, read_document
from tests.test_store_load_json import _same

_ITEM_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | st.floats()
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12)
_ITEMS = st.lists(st.dictionaries(st.sampled_from(["id", "agent", "timestamp", "x", "nested"]), _ITEM_VALUES,
                                  max_size=4), max_size=6)


def _write_collection(root: Path, payload: bytes) -> Path:
    path = root / "coder" / "patterns.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(_ITEMS, st.booleans(), st.sampled_from([None, 2]))
def test_lazy_items_read_as_the_full_parse(tmp_path_factory: pytest.TempPathFactory, items: list[dict[str, Any]],
                                           ensure_ascii: bool, indent: int | None) -> None:
    root = tmp_path_factory.mktemp("lazy")
    payload = json.dumps(items, ensure_ascii=ensure_ascii, indent=indent).encode("utf-8", "surrogatepass")
    path = _write_collection(root, payload)
    eager = read_document(path, "coder/patterns.json", loom_agents=frozenset({"coder"}))
    lazy = read_document(path, "coder/patterns.json", loom_agents=frozenset({"coder"}), lazy_items=0)
    assert (eager.error is None) == (lazy.error is None)
    if eager.error is not None:  # not UTF-8 (a lone surrogate written raw): the same error either way
        assert lazy.error is not None and (lazy.error.code, lazy.error.offset) == (eager.error.code,
                                                                                   eager.error.offset)
        return
    assert (lazy.kind, lazy.agent, lazy.collection) == (eager.kind, eager.agent, eager.collection)
    if isinstance(lazy.data, list):  # the fast reader refused it (NaN, Infinity): fully parsed instead
        assert _same(lazy.data, eager.data)
        return
    assert isinstance(lazy.data, LazyItems)
    data = lazy.data
    assert len(data) == len(eager.data)
    assert _same(list(data), eager.data)
    assert all(_same(data[i], eager.data[i]) for i in range(-len(data), len(data)))
    assert _same(data[1:3], eager.data[1:3])


def test_documents_the_fast_reader_refuses_fall_back_to_a_full_parse(tmp_path: Path) -> None:
    path = _write_collection(tmp_path, b'[{"id": "a", "score": NaN}]')
    doc = read_document(path, "coder/patterns.json", loom_agents=frozenset({"coder"}), lazy_items=0)
    assert doc.error is None and isinstance(doc.data, list) and math.isnan(doc.data[0]["score"])
    # a number beyond a double inside an item: the split takes it, the item reads as json.loads reads it
    path.write_bytes(b'[{"id": "a", "big": 1e999}, {"id": "b"}]')
    doc = read_document(path, "coder/patterns.json", loom_agents=frozenset({"coder"}), lazy_items=0)
    assert isinstance(doc.data, LazyItems)
    assert list(doc.data) == [{"id": "a", "big": math.inf}, {"id": "b"}]
    path.write_bytes(b'[{"id": "a", "s": "\\ud800"}]')  # a lone surrogate escape: the split refuses it
    doc = read_document(path, "coder/patterns.json", loom_agents=frozenset({"coder"}), lazy_items=0)
    assert doc.data == [{"id": "a", "s": "\ud800"}]


@pytest.mark.parametrize(("payload", "code", "message"), [
    (b'[{"id": "a"}, 3]', "wrong_type", "item 1 is a number, expected an object"),
    (b'[{"id": "a"}, ["x"]]', "wrong_type", "item 1 is a list, expected an object"),
    (b'[{"id": "a"},\n null]', "wrong_type", "item 1 is null, expected an object"),
    (b'{"id": "a"}', "wrong_type", "expected a JSON list of objects, got an object"),
    (b'[{"id": "a"}, {"id": "b"', "truncated_json", None),
    (b'[{"id": "\xff"}]', "not_utf8", None),
])
def test_bad_documents_fail_as_with_a_full_parse(tmp_path: Path, payload: bytes, code: str,
                                                 message: str | None) -> None:
    path = _write_collection(tmp_path, payload)
    eager = read_document(path, "coder/patterns.json", loom_agents=frozenset({"coder"}))
    lazy = read_document(path, "coder/patterns.json", loom_agents=frozenset({"coder"}), lazy_items=0)
    assert eager.error is not None and lazy.error is not None
    assert (lazy.error.code, lazy.error.offset, lazy.error.reason) == (eager.error.code, eager.error.offset,
                                                                       eager.error.reason)
    assert lazy.error.code == code
    assert message is None or message in lazy.error.reason
    assert lazy.data is None


def test_small_documents_and_other_kinds_stay_fully_parsed(loom_store: Callable[[str], Path]) -> None:
    root = loom_store("loom-plain-v1.0")
    docs = list(FileStore(root).iter_documents(lazy_items=10**9))
    assert not any(isinstance(d.data, LazyItems) for d in docs)
    lazy = {d.relpath: d for d in FileStore(root).iter_documents(lazy_items=0)}
    assert any(isinstance(d.data, LazyItems) for d in lazy.values())
    assert all(d.kind in ("loom_collection", "loom_archive") for d in lazy.values()
               if isinstance(d.data, LazyItems))


@pytest.mark.parametrize("name", ["loom-plain-v1.0", "loom-gzip-v1.0", "loom-plain-v2.0.0"])
def test_scan_records_identical_when_read_item_by_item(loom_store: Callable[[str], Path], name: str) -> None:
    root = loom_store(name)
    eager, lazy = FileStore(root).scan(), FileStore(root).scan(lazy_items=0)
    assert lazy.records == eager.records
    assert [(e.relpath, e.code, e.offset) for e in lazy.errors] == [(e.relpath, e.code, e.offset)
                                                                    for e in eager.errors]
    assert lazy.documents == eager.documents


def test_health_report_identical_apart_from_the_probe(loom_store: Callable[[str], Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root = loom_store("loom-plain-v1.0")
    now = datetime(2026, 12, 1, tzinfo=UTC)
    eager = monitor.run_health(root, now=now).report()
    monkeypatch.setattr(monitor, "LAZY_ITEMS_BYTES", 0)
    run = monitor.run_health(root, now=now)
    lazy = run.report()
    assert run.performance.unprobed and run.performance.lookups == 0
    perf = next(r for r in lazy["results"] if r["check"] == "performance_ok")
    assert perf["passed"] and "lookups not timed" in perf["message"] and "optimize index" in perf["message"]
    for key in ("status", "memory", "agents", "integrity_failures", "links", "sessions"):
        assert lazy[key] == eager[key], key
    without = [{k: v for k, v in r.items() if k != "duration_s"} for r in lazy["results"]
               if r["check"] != "performance_ok"]
    assert without == [{k: v for k, v in r.items() if k != "duration_s"} for r in eager["results"]
                       if r["check"] != "performance_ok"]


def _index_rows(root: Path) -> dict[str, list[tuple[Any, ...]]]:
    import sqlite3

    from aml.optimize.files import INDEX_FILE

    conn = sqlite3.connect(root / INDEX_FILE)
    try:
        return {table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                for table in ("records", "tags")} | {
            # every column but the time of the read (prune fields included: the same when read item by item)
            "documents": conn.execute(
                "SELECT relpath, kind, agent, collection, encoding, size_bytes, mtime_ns, ino, record_count, error, "
                "ctime_ns, prune_fields, prune_fields_digest FROM documents ORDER BY 1, 2").fetchall()} | {
            "fts": conn.execute("SELECT rowid, text FROM records_fts ORDER BY rowid").fetchall()}
    finally:
        conn.close()


def test_index_identical_when_read_item_by_item_in_batches_and_health_probes_through_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import aml.optimize.index as index_mod
    from tests.realdata import extract_loom

    root = extract_loom("loom-plain-v1.0", tmp_path)
    index_mod.build_index(root, full=True)
    eager = _index_rows(root)
    monkeypatch.setattr(index_mod, "LAZY_ITEMS_BYTES", 0)
    monkeypatch.setattr(index_mod, "ROW_BATCH", 7)  # and rows written a few at a time
    index_mod.build_index(root, full=True)
    assert _index_rows(root) == eager and eager["records"]
    monkeypatch.setattr(monitor, "LAZY_ITEMS_BYTES", 0)
    run = monitor.run_health(root)
    assert run.performance.probe == "index" and run.performance.lookups > 0 and not run.performance.unprobed


def test_prune_plan_identical_when_read_item_by_item(loom_store: Callable[[str], Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import aml.prune.plan as plan_mod
    from aml.prune import PruneConfig

    root = loom_store("loom-plain-v1.0")
    config = PruneConfig(now=datetime(2026, 12, 1, tzinfo=UTC))
    for strategies in (None, ["time_based", "performance_based", "space_based"]):
        eager = plan_mod.build_plan(root, config, strategies).to_dict()
        monkeypatch.setattr(plan_mod, "LAZY_ITEMS_BYTES", 0)
        lazy = plan_mod.build_plan(root, config, strategies).to_dict()
        monkeypatch.undo()
        assert lazy == eager and eager["actions"]


@pytest.mark.parametrize("payload", [
    '[{"id": "é€😀", "x": "ü"}, {"id": "b"}]'.encode(),
    b'[{"id": "\xc3"}]',  # a multi-byte character cut short
    b'[{"id": "a\xff"}, {"id": "b"}]',
    b'[{"id": "ok"}]' + b"\xe2\x82",  # trailing garbage that is not UTF-8
])
def test_utf8_checked_piecewise_as_the_full_parse_checks_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             payload: bytes) -> None:
    import aml.store.documents as documents_mod

    monkeypatch.setattr(documents_mod, "_UTF8_CHUNK", 3)  # characters split across every chunk boundary
    path = _write_collection(tmp_path, payload)
    eager = read_document(path, "coder/patterns.json", loom_agents=frozenset({"coder"}))
    lazy = read_document(path, "coder/patterns.json", loom_agents=frozenset({"coder"}), lazy_items=0)
    if eager.error is None:
        assert lazy.error is None and isinstance(lazy.data, LazyItems) and list(lazy.data) == eager.data
    else:
        assert lazy.error is not None and (lazy.error.code, lazy.error.offset) == (eager.error.code,
                                                                                   eager.error.offset)


def test_query_fetches_records_from_a_large_document_item_by_item(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The query engine reads a document over the limit as LazyItems (its bytes, not every item's objects)
    and fetches the same records from it, found by pointer or, after the document moved its items, by id."""
    import aml.optimize.query as query_mod
    from aml.optimize.index import build_index
    from tests.realdata import extract_loom

    root = extract_loom("loom-plain-v1.0", tmp_path)
    build_index(root, full=True)
    monkeypatch.setattr(query_mod, "LAZY_ITEMS_BYTES", 0)
    path = max(root.rglob("patterns.json"), key=lambda p: p.stat().st_size)
    items = json.loads(path.read_bytes())
    engine = query_mod.QueryEngine(root)
    try:
        for item in items[:5]:
            hit = engine.lookup(item["id"])
            assert hit is not None and engine.item(hit) == item
        assert any(type(data) is LazyItems for _, data in engine._docs.values())
        path.write_text(json.dumps(items[::-1], indent=2))  # an agent rewrote it: the index's pointers are stale
        for item in items[:5]:
            hit = engine.lookup(item["id"])
            assert hit is not None and engine.item(hit) == item
    finally:
        engine.close()



_ids = st.sampled_from(["a", "b", "\u00e9", "x\\y", "", "\ud800"]) | st.integers(0, 3) | st.none()
_values = _ids | st.floats(allow_nan=False) | st.integers(2**70, 2**71) | st.lists(_ids, max_size=2)
_objects = st.fixed_dictionaries({}, optional={"id": _ids, "n": _values, "tags": st.lists(_ids, max_size=2)})


@settings(max_examples=150, deadline=None)
@given(items=st.lists(_objects, max_size=8), wanted=st.sampled_from(["a", "b", "\u00e9", "x\\y", "", "\ud800"]),
       duplicate=st.booleans())
def test_find_id_is_the_first_object_a_scan_finds(items: list[Any], wanted: str, duplicate: bool) -> None:
    """``LazyItems.find_id`` finds what a scan of the parsed list finds: the first object whose ``id`` equals, past
    non-string ids, numbers beyond a double and a repeated ``id`` key (the last one counts, as for ``json.loads``)."""
    items = [{**item, "at": i} for i, item in enumerate(items)]  # equal ids, told apart
    body = json.dumps(items)  # infinities written as Infinity: the whole list is then not split, as read_document
    if duplicate:  # an object with its "id" given twice
        body = body[:-1] + (", " if items else "") + '{"id": "z", "id": "a"}]'
    try:
        raws = msgspec.json.decode(body.encode(), type=list[msgspec.Raw])
    except msgspec.DecodeError:  # read_document reads such a document whole
        return
    lazy, parsed = LazyItems(raws), json.loads(body)
    scan = next((x for x in parsed if isinstance(x, dict) and x.get("id") == wanted), None)
    assert _same(lazy.find_id(wanted), scan)
    assert _same(lazy.find_id(wanted), scan)  # from the positions kept
