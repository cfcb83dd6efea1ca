"""optimize index + query: real stores, FTS, filters, Bloom filter, incremental and atomic builds, warm set."""

from __future__ import annotations

import gc
import json
import os
import re
import sqlite3
import uuid
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aml.health.probe import LookupProbe
from aml.optimize import IdBloom, IndexMissingError, Query, QueryEngine, build_index, measure_lookups, warm_cache
from aml.optimize.files import BLOOM_FILE, INDEX_FILE
from aml.optimize.index import record_text, resolve_pointer
from aml.optimize.value import record_value
from aml.prune.value import (
    WEIGHTS,
    ValueInputs,
    base_score,
    base_score_of,
    loom_base_score,
    loom_value_inputs,
    outcome_metric_average,
    pattern_inputs,
)
from aml.store import FileStore, Record
from aml.store import accessors as acc
from aml.store.atomic import atomic_write
from aml.store.codec import decode
from aml.store.names import text_name
from aml.store.records import RecordLocation
from tests.realdata import extract_loom


def items_by_key(root: Path) -> dict[str, tuple[Record, Any]]:
    """Oracle: every record of a scan with its JSON value, by ``document#pointer``."""
    store = FileStore(root)
    docs = {d.relpath: d.data for d in store.iter_documents()}
    out = {}
    for r in store.scan().records:
        out[f"{r.location.document}#{r.location.pointer}"] = (r, resolve_pointer(docs[r.location.document],
                                                                                   r.location.pointer))
    return out


@pytest.fixture(scope="module")
def indexed_v12(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = extract_loom("loom-plain-v1.2.0", tmp_path_factory.mktemp("v12"))
    build_index(root)
    return root


def test_index_holds_every_record_of_the_scan(indexed_v12: Path) -> None:
    oracle = items_by_key(indexed_v12)
    conn = sqlite3.connect(indexed_v12 / INDEX_FILE)
    rows = {r[0]: r[1:] for r in conn.execute("SELECT key, id, agent, collection, kind, value, document, pointer "
                                              "FROM records")}
    conn.close()
    assert len(rows) == len(oracle) == 649
    for key, (rec, item) in oracle.items():
        assert rows[key] == (rec.id, rec.agent, rec.collection, rec.kind, record_value(rec, item),
                             rec.location.document, rec.location.pointer)


def test_filters_match_an_independent_oracle(indexed_v12: Path) -> None:
    oracle = items_by_key(indexed_v12)
    with QueryEngine(indexed_v12) as engine:
        res = engine.search(Query(agent="debugger", kind="pattern", limit=1000))
        assert {h.key for h in res.hits} == {k for k, (r, _) in oracle.items()
                                             if r.agent == "debugger" and r.collection == "patterns"}
        values = [h.value for h in res.hits]
        assert values == sorted(values, reverse=True)  # best value first
        res = engine.search(Query(min_confidence=0.8, limit=1000))
        assert {h.key for h in res.hits} == {k for k, (r, _) in oracle.items()
                                             if r.confidence is not None and r.confidence >= 0.8}
        res = engine.search(Query(collection="decisions", min_success_rate=1.0, limit=1000))
        assert {h.key for h in res.hits} == {k for k, (r, _) in oracle.items()
                                             if r.collection == "decisions" and r.success_rate == 1.0}
        some = next(r for r, _ in oracle.values() if r.collection == "solutions")
        res = engine.search(Query(kind=some.kind, agent=some.agent, limit=1000))
        assert {h.key for h in res.hits} == {k for k, (r, _) in oracle.items()
                                             if r.kind == some.kind and r.agent == some.agent}
        # results carry their location and their record
        hit = res.hits[0]
        assert hit.path == str(indexed_v12 / hit.document)
        assert hit.item == oracle[hit.key][1]
        limited = engine.search(Query(limit=5))
        assert len(limited.hits) == 5 and limited.truncated


@pytest.mark.parametrize("word", ["eslint", "codeowners", "rubber"])
def test_full_text_search(indexed_v12: Path, word: str) -> None:
    oracle = items_by_key(indexed_v12)
    pattern = re.compile(rf"(?<![a-z0-9]){word}(?![a-z0-9])")
    expected = {k for k, (_, item) in oracle.items() if pattern.search(json.dumps(item).lower())}
    assert expected
    with QueryEngine(indexed_v12) as engine:
        res = engine.search(Query(text=word, limit=10_000))
        assert {h.key for h in res.hits} == expected
        scores = [h.score for h in res.hits if h.score is not None]
        assert len(scores) == len(res.hits) and scores == sorted(scores)  # bm25: best (lowest) first
        both = engine.search(Query(text=f"{word} debugger", agent="debugger", limit=10_000))
        assert all(h.agent == "debugger" for h in both.hits)
        prefix = engine.search(Query(text=word[:4] + "*", limit=10_000))
        assert expected <= {h.key for h in prefix.hits}
        with pytest.raises(ValueError):
            engine.search(Query(text="  ***  "))


def test_tags_filter_and_quoted_fts_input(tmp_path: Path) -> None:
    root = tmp_path / "m"
    (root / "a").mkdir(parents=True)
    base = {"agent": "a", "timestamp": "2026-01-01T00:00:00.000Z", "active": True}
    items = [{**base, "id": "1", "tags": ["react", "perf"], "pattern": {"type": "memo", "note": 'say "AND" OR NOT'}},
             {**base, "id": "2", "tags": ["react"], "pattern": {"type": "memo"}},
             {**base, "id": "3", "tags": [], "pattern": {"type": "memo"}}]
    (root / "a" / "patterns.json").write_text(json.dumps(items, indent=2))
    build_index(root)
    with QueryEngine(root) as engine:
        assert [h.id for h in engine.search(Query(tags=("react",))).hits] == ["1", "2"]
        assert [h.id for h in engine.search(Query(tags=("react", "perf"))).hits] == ["1"]
        assert [h.id for h in engine.search(Query(text='"AND" OR NOT(')).hits] == ["1"]  # FTS syntax is inert
        assert engine.search(Query(tags=("react",))).hits[0].tags == ("react", "perf")


@settings(max_examples=25, deadline=None)
@given(ids=st.sets(st.text(min_size=1, max_size=40), max_size=300),
       rate=st.sampled_from([0.001, 0.01, 0.1]))
def test_bloom_has_no_false_negatives(ids: set[str], rate: float) -> None:
    bloom = IdBloom.build(ids, false_positive_rate=rate)
    again = IdBloom.from_bytes(bloom.to_bytes())  # and survives a save/load (stable hash)
    for x in ids:
        assert x in bloom and x in again


def test_bloom_false_positive_rate_is_near_target(tmp_path: Path) -> None:
    members = [str(uuid.uuid4()) for _ in range(20_000)]
    bloom = IdBloom.build(members, false_positive_rate=0.01)
    bloom.save(tmp_path / "b")
    loaded = IdBloom.load(tmp_path / "b")
    assert all(m in loaded for m in members)
    others = [str(uuid.uuid4()) for _ in range(20_000)]
    fp = sum(o in loaded for o in others) / len(others)
    assert fp < 0.02


def test_exists_uses_the_bloom_filter_of_the_index(indexed_v12: Path) -> None:
    oracle = items_by_key(indexed_v12)
    with QueryEngine(indexed_v12) as engine:
        assert engine.bloom() is not None
        for rec, _ in oracle.values():
            assert engine.might_contain(rec.id) and engine.exists(rec.id)
        assert not engine.exists("00000000-0000-0000-0000-000000000000")
        found = engine.lookup(next(iter(oracle.values()))[0].id)
        assert found is not None and found.item is not None
        assert engine.lookup("no-such-id") is None


def _index_names_and_plan(root: Path) -> tuple[set[str], str]:
    conn = sqlite3.connect(root / INDEX_FILE)
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        plan = " ".join(str(r[-1]) for r in conn.execute("EXPLAIN QUERY PLAN SELECT * FROM records WHERE id = 'x'"))
        return names, plan
    finally:
        conn.close()


def test_secondary_indexes_after_a_build_from_scratch_and_an_update(tmp_path: Path) -> None:
    """A build from scratch creates the secondary indexes once its rows are in; an update keeps them."""
    from aml.optimize.index import SECONDARY_INDEXES

    wanted = {re.search(r"EXISTS (\w+) ON", s)[1] for s in SECONDARY_INDEXES}  # type: ignore[index]
    root = extract_loom("loom-plain-v1.0", tmp_path)
    assert build_index(root, full=True).full
    names, plan = _index_names_and_plan(root)
    assert wanted <= names and "USING INDEX records_id" in plan
    path = root / "debugger" / "patterns.json"
    data = json.loads(path.read_bytes())
    atomic_write(path, json.dumps(data[1:], indent=2).encode())
    update = build_index(root)
    assert not update.full and update.documents_read == 1
    assert _index_names_and_plan(root) == (names, plan)
    engine = QueryEngine(root)
    try:
        assert not engine.exists(data[0]["id"]) and engine.exists(data[1]["id"])
    finally:
        engine.close()


def test_incremental_and_atomic_rebuilds(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path)
    with pytest.raises(IndexMissingError):
        QueryEngine(root)
    first = build_index(root)
    assert first.full and first.documents_read == first.documents == 18 and first.records == 649
    unchanged = build_index(root)
    assert not unchanged.full and unchanged.documents_read == 0 and unchanged.documents_reused == 18
    # one document changes, one disappears
    path = root / "debugger" / "patterns.json"
    data = json.loads(path.read_bytes())
    new = {**data[0], "id": "new-pattern-id", "pattern": {"type": "zeppelin-navigation"}}
    atomic_write(path, json.dumps([*data, new], indent=2).encode())
    (root / "code-reviewer" / "decisions.json").unlink()
    old_engine = QueryEngine(root)
    second = build_index(root)
    assert (second.documents_read, second.documents_removed, second.records) == (1, 1, 649 + 1 - 4)
    assert old_engine.exists("new-pattern-id")  # an open engine notices the replaced index
    assert [h.id for h in old_engine.search(Query(text="zeppelin")).hits] == ["new-pattern-id"]
    old_engine.close()
    # compress changes sizes but keeps mtimes: the index re-reads exactly those documents
    from aml.optimize import compress_store

    comp = compress_store(root, age_days=0, now=2e9)
    third = build_index(root)
    assert third.documents_read == len(comp.changed) and third.records == second.records
    # a build that fails leaves the previous index in place and no temporary file behind
    before = (root / INDEX_FILE).read_bytes()
    with pytest.raises(ValueError):
        build_index(root, full=True, false_positive_rate=2.0)
    assert (root / INDEX_FILE).read_bytes() == before
    assert [p.name for p in (root / ".aml").iterdir() if p.name.startswith(".aml-tmp-")] == []
    # the index and the filter are aml's own: scans skip them
    assert all(not d.relpath.startswith(".aml") for d in FileStore(root).scan().documents)
    assert (root / BLOOM_FILE).is_file()


def test_warm_set_serves_records_without_reading_documents(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v2.0.0", tmp_path)
    build_index(root)
    cold = measure_lookups(root, sample=40)
    assert cold.cache.hits == 0 and cold.cache.misses == 40
    result = warm_cache(root, limit=100)
    assert result.records == 100 and result.bytes > 0
    with QueryEngine(root) as engine:
        top = engine.search(Query(active_only=True, limit=100), with_items=False).hits
        assert {h.key for h in top} == {r[0] for r in sqlite3.connect(root / INDEX_FILE).execute(
            "SELECT key FROM warm")}
    with QueryEngine(root) as engine:  # a new process' engine: the warm set is in the index
        res = engine.search(Query(active_only=True, limit=10))
        assert res.cache.hits == 10 and res.cache.misses == 0
        oracle = items_by_key(root)
        assert all(h.item == oracle[h.key][1] for h in res.hits)
        # repeat: served by the LRU
        assert engine.search(Query(active_only=True, limit=10)).cache.hits == 10
        # the document changes: its cached values are stale, the next lookup reads it again
        doc = root / res.hits[0].document
        raw = doc.read_bytes()
        atomic_write(doc, raw + b"\n")
        again = engine.search(Query(active_only=True, limit=10))
        stale = sum(1 for h in res.hits if h.document == res.hits[0].document)
        assert again.cache.misses == stale and again.cache.stale >= stale
        assert [h.item for h in again.hits] == [h.item for h in res.hits]
    # an incremental build refreshes the warm entries of the document it re-reads
    built = build_index(root)
    assert built.warm_refreshed == sum(1 for h in top if h.document == res.hits[0].document)
    with QueryEngine(root) as engine:
        assert engine.search(Query(active_only=True, limit=10)).cache.hits == 10


def test_health_probe_uses_the_index(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path)

    def probe(sample: int) -> LookupProbe:
        with LookupProbe(root, sample=sample) as p:
            FileStore(root).scan(visit=p.visit)
        return p

    # without an index, lookups are made in the scan's parsed documents
    plain = probe(20)
    assert plain.source == "documents" and len(plain.times_ms) == 20
    # with one, through the index (by id, the value from the scan's own parse of the document)
    build_index(root)
    indexed = probe(20)
    assert indexed.source == "index" and len(indexed.times_ms) == 20 and all(t >= 0 for t in indexed.times_ms)
    # an unusable index falls back to the documents
    (root / INDEX_FILE).write_bytes(b"not a database")
    fallback = probe(20)
    assert fallback.source == "documents" and len(fallback.times_ms) == 20


def test_decoded_documents_are_what_the_engine_serves(tmp_path: Path) -> None:
    root = extract_loom("loom-gzip-v1.0", tmp_path)  # gzip under .json names
    build_index(root)
    with QueryEngine(root) as engine:
        res = engine.search(Query(agent="test-automator", kind="decisions", limit=100))
        data = json.loads(decode((root / "test-automator" / "decisions.json").read_bytes())[0])
        assert [h.item for h in res.hits] == [data[h.index] for h in res.hits]
        assert len(res.hits) == 15 and res.cache.misses == 15
        assert os.path.isabs(res.hits[0].path)


# ------------------------------------------------------------------ value: fast paths against the plain formulas


def reference_base_score(inputs: ValueInputs) -> float:
    """base_score as first written (a list of terms, then two sums)."""
    def clamp(x: float) -> float:
        return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x

    terms: list[tuple[float, float]] = []
    if inputs.success is not None:
        terms.append((WEIGHTS["success"], clamp(inputs.success)))
    if inputs.confidence is not None:
        terms.append((WEIGHTS["confidence"], clamp(inputs.confidence)))
    if inputs.executions is not None:
        terms.append((WEIGHTS["usage"], min(max(inputs.executions, 0.0) / 50, 1.0)))
    if inputs.time_saved_ms is not None:
        terms.append((WEIGHTS["time_saved"], min(max(inputs.time_saved_ms, 0.0) / 1000.0, 1.0)))
    total_weight = sum(w for w, _ in terms)
    return sum(w * x for w, x in terms) / total_weight if total_weight else 0.0


def reference_value_inputs(collection: str, item: Any) -> ValueInputs:
    """loom_value_inputs as first written, through the accessors only."""
    if collection == "patterns":
        return pattern_inputs(acc.success_rate(item), acc.confidence(item), acc.execution_count(item),
                              acc.avg_time_saved_ms(item),
                              acc.last_used_at(item) or acc.item_timestamp(item) or acc.created_at(item))
    if collection == "solutions":
        worked = acc.solution_worked(item)
        minutes = acc.time_to_fix_minutes(item)
        base = 0.7 if worked else 0.3
        verified, prevented = acc.verified_count(item) or 0, acc.prevented_recurrence(item) or 0
        confidence = min(base + min(0.05 * max(verified, 0), 0.2) + min(0.02 * max(prevented, 0), 0.1), 1.0)
        return ValueInputs(0.5 if worked is None else float(worked), confidence,
                           float(acc.verified_count(item) or 0), (minutes or 0.0) * 60_000.0 if worked else 0.0,
                           acc.item_timestamp(item) or acc.created_at(item))
    if collection in ("decisions", "archived_decisions"):
        repeat = acc.would_repeat(item) if acc.has_outcome(item) else None
        if not acc.has_outcome(item):
            confidence = 0.5
        else:
            average = outcome_metric_average(item)
            confidence = max(0.1, min((0.5 if average is None else average)
                                      + (0.1 if acc.would_repeat(item) else -0.1), 1.0))
        return ValueInputs(0.5 if repeat is None else float(repeat), confidence, None, None,
                           acc.reviewed_at(item) or acc.item_timestamp(item))
    return ValueInputs(None, None, None, None, None)


NUMBERS = st.one_of(st.none(), st.booleans(), st.integers(-100, 10**6), st.floats(allow_nan=True),
                    st.sampled_from([0, 1, 0.5, -0.0, 1.5, 50, 51, 1000.0, "0.5", [], {}]))


def fields(*names: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(names), NUMBERS, max_size=len(names))


PARENT = st.one_of(st.none(), st.just("x"), st.just([1]))
LOOM_ITEMS = st.fixed_dictionaries({}, optional={
    "performance": st.one_of(PARENT, fields("success_rate", "execution_count", "avg_time_saved_ms")),
    "metrics": st.one_of(PARENT, fields("successRate", "success_rate", "executionCount", "execution_count",
                                        "avgTimeSavedMs", "avg_time_saved_ms")),
    "lifecycle": st.one_of(PARENT, fields("confidence", "last_used_at", "created_at")),
    "evolution": st.one_of(PARENT, fields("confidenceScore", "confidence_score", "lastUsed")),
    "effectiveness": st.one_of(PARENT, fields("worked", "timeToFixMinutes", "time_to_fix_minutes",
                                              "preventedRecurrence", "prevented_recurrence")),
    "verifiedCount": NUMBERS, "verified_count": NUMBERS,
    "outcome": st.one_of(PARENT, st.fixed_dictionaries({}, optional={
        "wouldRepeat": NUMBERS, "would_repeat": NUMBERS,
        "successMetrics": st.one_of(PARENT, fields("developmentSpeed", "apiPerformance", "clientSatisfaction",
                                                   "maintainability"))})),
    "timestamp": st.sampled_from(["2026-01-01T00:00:00.000Z", 5, "x"]),
    "reviewedAt": st.sampled_from(["2026-02-01T00:00:00.000Z", None]),
})


def same(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)  # NaN equals NaN here


@settings(max_examples=400, deadline=None)
@given(item=LOOM_ITEMS, collection=st.sampled_from(["patterns", "solutions", "decisions", "archived_decisions",
                                                    "sessions.messages"]))
def test_value_fast_paths_match_the_plain_formulas(item: dict[str, Any], collection: str) -> None:
    expected_inputs = reference_value_inputs(collection, item)
    expected = reference_base_score(expected_inputs)
    assert loom_value_inputs(collection, item) == expected_inputs
    assert same(base_score(expected_inputs), expected)
    assert same(loom_base_score(collection, item), expected)
    assert same(loom_base_score(collection, MappingProxyType(item)), expected)
    record = Record(store="s", agent="a", collection=collection, id="x", kind="k", created_at=None,
                    last_used_at=None, success_rate=None, confidence=None, execution_count=None, importance=None,
                    size_bytes=0, role=None, location=RecordLocation("a/x.json", "/0", 0))
    if collection != "sessions.messages":
        assert same(record_value(record, item), round(expected, 6))


@settings(max_examples=200, deadline=None)
@given(success=NUMBERS.filter(lambda v: v is None or type(v) in (int, float)),
       confidence=NUMBERS.filter(lambda v: v is None or type(v) in (int, float)),
       executions=NUMBERS.filter(lambda v: v is None or type(v) in (int, float)),
       time_saved=NUMBERS.filter(lambda v: v is None or type(v) in (int, float)))
def test_base_score_matches_the_plain_formula(success: float | None, confidence: float | None,
                                              executions: float | None, time_saved: float | None) -> None:
    inputs = ValueInputs(success, confidence, executions, time_saved, None)
    assert same(base_score(inputs), reference_base_score(inputs))
    assert same(base_score_of(success, confidence, executions, time_saved), reference_base_score(inputs))


# ------------------------------------------------------------------ rows written per document


def test_rids_are_the_ones_sqlite_gives_row_by_row(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path)
    build_index(root)
    conn = sqlite3.connect(root / INDEX_FILE)
    by_doc = dict(conn.execute("SELECT document, max(rid) FROM records GROUP BY document").fetchall())
    conn.close()
    last = max(by_doc, key=lambda d: by_doc[d])  # the document holding the largest rids
    path = root / last
    data = json.loads(path.read_bytes())
    atomic_write(path, json.dumps([*data, {**data[0], "id": "one-more"}]).encode())
    assert build_index(root).documents_read == 1
    conn = sqlite3.connect(root / INDEX_FILE)
    rids = [r[0] for r in conn.execute("SELECT rid FROM records WHERE document = ? ORDER BY rid", (last,))]
    others = max(v for d, v in by_doc.items() if d != last)
    # SQLite gives a row without a rid the largest rid + 1: the re-read document starts after the others
    assert rids == list(range(others + 1, others + 1 + len(data) + 1))
    records = {r[0] for r in conn.execute("SELECT rid FROM records")}
    assert {r[0] for r in conn.execute("SELECT rowid FROM records_fts")} == records
    assert {r[0] for r in conn.execute("SELECT rid FROM tags")} <= records
    oracle = items_by_key(root)
    for key, rid, tags, value in conn.execute("SELECT key, rid, tags, value FROM records"):
        record, item = oracle[key]
        text = conn.execute("SELECT text FROM records_fts WHERE rowid = ?", (rid,)).fetchone()[0]
        assert text == record_text(record, item, json.loads(tags))
        assert value == record_value(record, item)
    conn.close()


def test_build_leaves_the_garbage_collector_as_it_was(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path)
    assert gc.isenabled()
    build_index(root)
    assert gc.isenabled()
    gc.disable()
    try:
        build_index(root, full=True)
        assert not gc.isenabled()
    finally:
        gc.enable()


def _index_tables(root: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(root / INDEX_FILE)
    try:
        return {
            "documents": conn.execute("SELECT * FROM documents ORDER BY relpath").fetchall(),
            "records": conn.execute("SELECT * FROM records ORDER BY rid").fetchall(),
            "fts": conn.execute("SELECT rowid, text FROM records_fts ORDER BY rowid").fetchall(),
            "tags": conn.execute("SELECT * FROM tags ORDER BY tag, rid").fetchall(),
            "warm": conn.execute("SELECT key, id, document, pointer, value, item, size_bytes, doc_size, "
                                 "doc_mtime_ns, doc_ino FROM warm ORDER BY key").fetchall(),
        }
    finally:
        conn.close()


def test_documents_read_by_workers_and_here_index_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes (documents up to PARALLEL_DOCUMENT_BYTES) and this process (larger ones, rows written
    in batches) build the same index, warm entries refreshed and dropped alike on an incremental build."""
    from aml import procpool
    from aml.optimize import index as index_mod

    monkeypatch.setattr(procpool, "PARALLEL_MIN_BYTES", 0)  # a small store: its documents to the processes
    built: dict[str, dict[str, list[tuple[Any, ...]]]] = {}
    for mode, limit, batch in (("workers", index_mod.PARALLEL_DOCUMENT_BYTES, index_mod.ROW_BATCH), ("here", -1, 7)):
        monkeypatch.setattr(index_mod, "PARALLEL_DOCUMENT_BYTES", limit)
        monkeypatch.setattr(index_mod, "ROW_BATCH", batch)
        root = extract_loom("loom-plain-v2.0.0", tmp_path / mode)
        build_index(root)
        warm_cache(root, limit=60)
        warmed = _index_tables(root)["warm"]
        # one warm document changes (its first item removed, one item's text changed); another is deleted
        docs = sorted({w[2] for w in warmed})
        assert len(docs) >= 2
        changed, deleted = root / docs[0], root / docs[1]
        data = json.loads(changed.read_bytes())
        data = data[1:]
        data[0] = {**data[0], "description": "changed text"}
        atomic_write(changed, json.dumps(data, indent=2).encode())
        os.utime(changed, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
        deleted.unlink()
        again = build_index(root)
        assert again.documents_read == 1 and again.documents_removed == 1
        assert again.warm_dropped >= 1 and again.warm_refreshed >= 1
        built[mode] = _index_tables(root)
    workers, here = built["workers"], built["here"]
    for table in ("documents", "records", "warm"):  # inodes, ctimes and read times differ between the two copies
        strip = {"documents": {7, 10, 11}, "warm": {9}}.get(table, set())
        w = [tuple(v for n, v in enumerate(r) if n not in strip) for r in workers[table]]
        h = [tuple(v for n, v in enumerate(r) if n not in strip) for r in here[table]]
        assert w == h, table
    assert workers["fts"] == here["fts"] and workers["tags"] == here["tags"]
    assert len(workers["records"]) > 100


def test_names_and_strings_that_are_not_utf8_are_indexed_escaped(tmp_path: Path) -> None:
    """A file name with a byte that is not UTF-8, and a record id holding a lone surrogate (a JSON "\\udcff"),
    used to fail the whole build (SQLite takes text only): both are indexed, escaped as text is elsewhere
    (aml.store.names.text_name), and the next build takes them as unchanged."""
    root = extract_loom("loom-plain-v1.0", tmp_path)
    path = root / "frontend-developer" / "patterns.json"
    first = json.loads(path.read_text(encoding="utf-8"))[0]
    path.write_text(path.read_text(encoding="utf-8").replace(first["id"], "\\udcff-odd-id", 1), encoding="utf-8")
    odd = os.fsencode(root) + b"/frontend-developer/notes-\xff.json"
    with open(odd, "wb") as fh:
        fh.write(b'[{"id": "n1", "text": "zebracorn"}]')
    for name in (path, Path(os.fsdecode(odd))):  # changed an hour ago: not read again as racily clean
        st = os.stat(name)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns - 3600 * 10**9))
    result = build_index(root)
    assert result.errors == 0 and result.records > 600
    with QueryEngine(root) as engine:
        hits = engine.search(Query(agent="frontend-developer", limit=10_000)).hits
        assert text_name("\udcff-odd-id") in {h.id for h in hits}
    conn = sqlite3.connect(root / INDEX_FILE)
    try:
        names = {r[0] for r in conn.execute("SELECT relpath FROM documents")}
    finally:
        conn.close()
    assert "frontend-developer/notes-\\xff.json" in names
    again = build_index(root)
    assert again.documents_read == 0 and again.documents_removed == 0 and again.records == result.records


def test_a_racily_clean_document_that_is_deleted_is_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A document changed within a timestamp step of its read is read again by later builds; deleted, its rows
    go too (they used to stay in the index for good)."""
    from aml.optimize import index as index_mod

    monkeypatch.setattr(index_mod, "CHANGE_TICK_NS", 3600 * 10**9)  # every document is racily clean
    root = extract_loom("loom-plain-v1.0", tmp_path)
    first = build_index(root)
    gone = root / "frontend-developer" / "patterns.json"
    gone.unlink()
    again = build_index(root)
    assert again.documents_removed == 1 and again.documents_read == first.documents - 1
    with QueryEngine(root) as engine:
        assert not [h for h in engine.search(Query(agent="frontend-developer", collection="patterns")).hits]


def test_an_index_made_by_other_code_is_made_again(tmp_path: Path) -> None:
    """An index recorded with another prune-fields or aml version is rebuilt whole, not updated (its unchanged
    rows would keep fields the current code computes otherwise)."""
    root = extract_loom("loom-plain-v1.0", tmp_path)
    build_index(root)
    for key in ("prune_fields", "aml_version"):
        conn = sqlite3.connect(root / INDEX_FILE)
        conn.execute("UPDATE meta SET value = 'older' WHERE key = ?", (key,))
        conn.commit()
        conn.close()
        result = build_index(root)
        assert result.full and result.documents_reused == 0
        conn = sqlite3.connect(root / INDEX_FILE)
        assert dict(conn.execute("SELECT key, value FROM meta").fetchall())[key] != "older"
        conn.close()
        assert not build_index(root).full


def test_a_name_that_escapes_to_another_files_name_is_left_out(tmp_path: Path) -> None:
    """Byte 0xff in a name is indexed as the text \\xff; a file whose name is that very text keeps it, and the
    other is left out and counted (it used to fail the whole build on records.key, or drop rows)."""
    root = extract_loom("loom-plain-v1.0", tmp_path)
    literal, raw = root / "notes\\xff.json", Path(os.fsdecode(os.fsencode(root) + b"/notes\xff.json"))
    literal.write_text('{"literal": true}', encoding="utf-8")
    raw.write_text('{"raw": true}', encoding="utf-8")
    result = build_index(root)
    assert result.names_skipped == 1
    again = build_index(root)
    assert again.names_skipped == 1 and again.documents_removed == 0 and again.documents == result.documents
