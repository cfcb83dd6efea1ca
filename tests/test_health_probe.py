"""The health probe's lookups (issue 12): taken on health's one read of each document, through the index
when there is one, never by re-reading or re-parsing a document per lookup."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import aml.optimize.query as query_mod
import aml.store.documents as documents_mod
from aml.health.monitor import run_health
from aml.health.probe import PROBE_DOCUMENTS, LookupProbe
from aml.optimize.files import INDEX_FILE
from aml.optimize.index import build_index
from aml.sample import SampleSpec, generate_loom_store
from aml.store import FileStore


def _store(tmp_path: Path, **spec: Any) -> Path:
    root = tmp_path / ".loom" / "memory"
    generate_loom_store(root, SampleSpec(**{"agents": 2, "gzip_every": 0, **spec}))
    return root


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts every parse of a document by the store reader (per path) and every document the query
    engine reads on its own (key ``"engine"``)."""
    counts: Counter[str] = Counter()
    load_json, read_document = documents_mod.load_json, query_mod.read_document

    def counting_load_json(data: bytes, path: Any, *, relpath: str | None = None) -> Any:
        counts[str(path)] += 1
        return load_json(data, path, relpath=relpath)

    def counting_read_document(*args: Any, **kw: Any) -> Any:
        counts["engine"] += 1
        return read_document(*args, **kw)

    monkeypatch.setattr(documents_mod, "load_json", counting_load_json)
    monkeypatch.setattr(query_mod, "read_document", counting_read_document)
    return counts


def test_without_index_lookups_run_on_the_scans_own_parse(tmp_path: Path, parses: Counter[str]) -> None:
    root = _store(tmp_path, agents=1, patterns=3000, solutions=5, decisions=5)  # one large document
    run = run_health(root, lookup_sample=50)
    perf = run.report()["performance"]
    assert perf["probe"] == "documents" and perf["lookups"] == 50
    assert perf["avg_query_time_ms"] > 0 and perf["p95_query_time_ms"] >= perf["avg_query_time_ms"] * 0.5
    # every document parsed exactly once, however many lookups were made in it
    assert parses and set(parses.values()) == {1} and "engine" not in parses
    details = next(r.details for r in run.results if r.check == "performance_ok")
    assert details["probe"] == "documents" and details["lookups"] == 50


def test_with_index_lookups_go_through_it_without_reading_documents_again(tmp_path: Path,
                                                                          parses: Counter[str]) -> None:
    root = _store(tmp_path, patterns=400, solutions=50, decisions=50)
    build_index(root)
    parses.clear()
    run = run_health(root, lookup_sample=30)
    perf = run.report()["performance"]
    assert perf["probe"] == "index" and perf["lookups"] == 30
    assert set(parses.values()) == {1} and "engine" not in parses


def test_index_lookups_find_the_sampled_records(tmp_path: Path) -> None:
    root = _store(tmp_path)
    build_index(root)
    from aml.store import FileStore

    with LookupProbe(root, sample=20) as probe:
        assert probe.source == "index"
        FileStore(root).scan(visit=probe.visit)
        assert len(probe.times_ms) == 20 and all(t >= 0 for t in probe.times_ms)


def test_an_unusable_index_falls_back_to_the_documents(tmp_path: Path) -> None:
    root = _store(tmp_path)
    (root / INDEX_FILE).parent.mkdir(parents=True, exist_ok=True)
    (root / INDEX_FILE).write_bytes(b"not a database")
    perf = run_health(root, lookup_sample=20).report()["performance"]
    assert perf["probe"] == "documents" and perf["lookups"] == 20


def test_the_sample_is_bounded_by_documents(tmp_path: Path) -> None:
    root = _store(tmp_path, agents=3)  # 9 collection documents, 50 lookups spread over them
    perf = run_health(root, lookup_sample=50).report()["performance"]
    assert perf["probe"] == "documents" and perf["lookups"] == 50
    assert run_health(root, lookup_sample=4).report()["performance"]["lookups"] == 4
    empty = tmp_path / "empty"
    empty.mkdir()
    perf = run_health(empty, lookup_sample=50).report()["performance"]
    assert perf["probe"] == "none" and perf["lookups"] == 0


def test_lookups_are_timed_in_a_few_documents_read_by_healths_own_process(tmp_path: Path) -> None:
    """Without an index, the lookups are shared by PROBE_DOCUMENTS documents that hold enough records (the scan
    reads them in the probe's process, the rest of the store in workers); each is visited once, every lookup made."""
    root = _store(tmp_path, agents=3, patterns=400, solutions=400, decisions=400)  # 9 documents of 0.4-1 MB
    with LookupProbe(root, sample=50) as probe:
        planned = probe.documents
        assert len(planned) == PROBE_DOCUMENTS and all(p.endswith(".json") for p in planned)
        visited = []
        for part in FileStore(root).scan_tallies(here=planned, visit=lambda doc: (visited.append(doc.relpath),
                                                                                  probe.visit(doc)),
                                                 min_bytes_for_processes=0):
            assert part.info.relpath
        assert sorted(visited) == sorted(planned) and probe.documents == frozenset()
        assert len(probe.times_ms) == 50


def test_drawn_ids_are_distinct_and_found_where_few_items_have_one(tmp_path: Path) -> None:
    probe = LookupProbe(tmp_path / "none", sample=5)
    items: list[Any] = [{"id": f"r{i}"} for i in range(100)]
    drawn = probe._draw_ids(items, 10)
    assert len(drawn) == 10 == len(set(drawn)) and all(d.startswith("r") for d in drawn)
    sparse: list[Any] = [{"x": 1}] * 500 + [{"id": "only"}, 7, None]  # draws keep missing: all ids, sampled
    assert probe._draw_ids(sparse, 3) == ["only"]
    assert probe._draw_ids([{"id": "a"}, {"id": "b"}], 5) in (["a", "b"], ["b", "a"])
    assert probe._draw_ids([], 3) == []


def test_the_index_sample_comes_from_a_few_documents(tmp_path: Path) -> None:
    """With an index the sampled records lie in at most PROBE_DOCUMENTS documents, the same ones for a seed, and
    the probe reads only those in its own process; without the bound they spread over the store."""
    from aml.optimize.query import QueryEngine

    root = _store(tmp_path, agents=4, patterns=60, solutions=60, decisions=60)  # 12 collection documents
    build_index(root)
    engine = QueryEngine(root)
    try:
        spread = engine.sample_records(50, seed=7)
        bounded = engine.sample_records(50, seed=7, documents=PROBE_DOCUMENTS)
        assert len({doc for _, doc in spread}) > PROBE_DOCUMENTS
        assert len(bounded) == 50 and len({doc for _, doc in bounded}) <= PROBE_DOCUMENTS
        assert len(set(bounded)) == 50 and bounded == engine.sample_records(50, seed=7, documents=PROBE_DOCUMENTS)
    finally:
        engine.close()
    with LookupProbe(root, sample=50) as probe:
        assert probe.source == "index" and 0 < len(probe.documents) <= PROBE_DOCUMENTS
        for _ in FileStore(root).scan_tallies(here=probe.documents, visit=probe.visit, min_bytes_for_processes=0):
            pass
        assert len(probe.times_ms) == 50


def test_small_documents_widen_the_sample_so_every_lookup_is_made(tmp_path: Path) -> None:
    """Documents of a few records each: more than PROBE_DOCUMENTS of them are sampled, so the 50 lookups are made
    (with or without an index) rather than as many as four documents hold."""
    root = _store(tmp_path, agents=12, patterns=5, solutions=5, decisions=5)  # 36 documents of 5 records
    with LookupProbe(root, sample=50) as probe:
        assert probe.source == "documents" and len(probe.documents) > PROBE_DOCUMENTS
    assert run_health(root, lookup_sample=50).report()["performance"]["lookups"] == 50
    build_index(root)
    perf = run_health(root, lookup_sample=50).report()["performance"]
    assert perf["probe"] == "index" and perf["lookups"] == 50
