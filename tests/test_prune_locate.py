"""Prune's documents located ahead by worker processes (aml.prune.locate): the same rewrite as
without them, and a worker's finding used only for the very text it was made from."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import aml.prune.apply as apply_mod
import aml.prune.locate as locate_mod
from aml.procpool import worker_processes
from aml.prune import AppliedRecord, PruneConfig, apply_plan, build_plan
from aml.prune.plan import PrunePlan
from tests.realdata import extract_loom, snapshot_tree

NOW = datetime(2026, 11, 23, tzinfo=UTC)
RULES = ["time_based", "performance_based"]


def _files(root: Path) -> dict[str, bytes]:
    return {k: v[0] for k, v in snapshot_tree(root).items() if (root / k).is_file()}


def _count_local_locates(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Texts apply located in the task's own process (workers' calls are not seen: they run in other processes)."""
    calls: list[str] = []
    real = apply_mod.locate

    def counting(text: str, lists: Any) -> Any:
        calls.append(text)
        return real(text, lists)

    monkeypatch.setattr(apply_mod, "locate", counting)
    return calls


def _apply(plan: PrunePlan, tmp_path: Path) -> tuple[Any, list[dict[str, Any]]]:
    payloads: list[dict[str, Any]] = []

    def hook(document: str, records: list[AppliedRecord]) -> None:
        payloads.extend({"document": document, **r.payload} for r in records)

    result = apply_plan(plan, run_id="r", archive_root=tmp_path / "archives", before_publish=hook)
    return result, payloads


def _store(tmp_path: Path, name: str) -> tuple[Path, PrunePlan]:
    root = extract_loom("loom-plain-v2.0.0", tmp_path / name)
    plan = build_plan(root, PruneConfig(now=NOW), RULES)
    assert len({a.document for a in plan.actions}) >= 2, "the case needs several documents to prune"
    return root, plan


needs_workers = pytest.mark.skipif(worker_processes(2, 2) < 2, reason="no two worker processes on this machine")


@needs_workers
def test_located_by_workers_the_documents_and_undo_rows_are_the_same(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    serial_root, serial_plan = _store(tmp_path, "serial")
    serial, serial_rows = _apply(serial_plan, tmp_path / "a1")

    monkeypatch.setattr(locate_mod, "PARALLEL_MIN_BYTES", 0)
    local = _count_local_locates(monkeypatch)
    root, plan = _store(tmp_path, "workers")
    result, rows = _apply(plan, tmp_path / "a2")

    assert local == [], "every document was located by a worker"
    assert _files(root) == _files(serial_root)
    assert rows == serial_rows and len(rows) == len(plan.actions)
    assert (result.removed, result.archived, result.documents, result.conflicts) == (
        serial.removed, serial.archived, serial.documents, serial.conflicts)


def _shift_layout(path: Path) -> None:
    """Rewrite ``path`` with the same size and mtime but its elements at other offsets: two spaces of
    indentation moved from the first record to the last."""
    st = path.stat()
    text = path.read_text("utf-8")
    first = text.index('\n    "id"')
    last = text.rindex('\n    "id"')
    assert first < last
    shifted = text[:first] + '\n  "id"' + text[first + len('\n    "id"'):last] + '\n      "id"' + text[
        last + len('\n    "id"'):]
    assert len(shifted) == len(text) and json.loads(shifted) == json.loads(text)
    path.write_text(shifted, "utf-8")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@contextlib.contextmanager
def _stale_findings(plan: PrunePlan, changed: str) -> Iterator[Iterator[Any]]:
    """What workers would have found before ``changed`` was rewritten (the others are found as they are)."""
    yield iter([locate_mod._locate_file((str(plan.root / rel), apply_mod._planned_lists(
        [a for a in plan.actions if a.document == rel]))) for rel in sorted({a.document for a in plan.actions})])


def test_a_finding_for_another_text_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A document rewritten after a worker located it (same size and mtime, so the plan's check passes) is
    located again by apply itself: its elements moved, and the worker's offsets would cut the wrong bytes."""
    serial_root, serial_plan = _store(tmp_path, "serial")
    changed = sorted({a.document for a in serial_plan.actions})[0]
    _shift_layout(serial_root / changed)
    _apply(serial_plan, tmp_path / "a1")

    root, plan = _store(tmp_path, "stale")
    findings = _stale_findings(plan, changed)
    stale = findings.__enter__()
    _shift_layout(root / changed)
    shifted = (root / changed).read_text("utf-8")
    monkeypatch.setattr(apply_mod, "located_ahead", lambda *args: contextlib.nullcontext(stale))
    local = _count_local_locates(monkeypatch)
    result, _ = _apply(plan, tmp_path / "a2")

    assert local == [shifted], "only the rewritten document was located again, in its new text"
    assert result.conflicts == []
    assert _files(root) == _files(serial_root)
    for rel, data in _files(root).items():
        if rel.endswith(".json"):
            json.loads(data)


@needs_workers
def test_a_document_a_worker_could_not_read_is_reported_as_without_workers(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that fails (here: a document in the middle no longer parses) returns nothing; apply reads that
    document itself and reports the same conflict as without workers, and the findings of the documents after
    it are still used, each for its own document."""
    results = []
    for name, parallel in (("serial", False), ("workers", True)):
        root, plan = _store(tmp_path, name)
        broken = sorted({a.document for a in plan.actions})[1]
        st = (root / broken).stat()
        data = (root / broken).read_bytes()
        (root / broken).write_bytes(data[:-2] + b"}}")  # same size, no longer JSON
        os.utime(root / broken, ns=(st.st_atime_ns, st.st_mtime_ns))
        with monkeypatch.context() as patched:
            local = _count_local_locates(patched)
            if parallel:
                patched.setattr(locate_mod, "PARALLEL_MIN_BYTES", 0)
                assert locate_mod._locate_file((str(root / broken), {"": frozenset({0})})) is None
            result, rows = _apply(plan, tmp_path / f"a-{name}")
        if parallel:
            assert local == [(root / broken).read_text("utf-8")], "only the broken one was located here"
        assert [c["document"] for c in result.conflicts] == [broken]
        assert (root / broken).read_bytes()[:-2] == data[:-2], "left as it was"
        results.append((result.conflicts, result.documents, rows, _files(root)))
    assert results[0] == results[1]


_FAILING = ""
"""The document whose finding does not come back (set by the test before the workers fork)."""
_REAL_LOCATE_FILE = locate_mod._locate_file


def _failing_for_one(job: Any) -> Any:
    """A worker's part that raises for :data:`_FAILING` (module level: the pool pickles it by name)."""
    if job[0] == _FAILING:
        raise RecursionError("maximum recursion depth exceeded while pickling an object")
    return _REAL_LOCATE_FILE(job)


@needs_workers
def test_a_finding_that_does_not_come_back_leaves_the_rest_to_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A worker's result that cannot come back (its call raised in the worker, as an unpicklable result would)
    stops the findings: that document and the later ones are located by apply itself, with a warning, and the
    run prunes exactly what it prunes without workers."""
    serial_root, serial_plan = _store(tmp_path, "serial")
    serial, serial_rows = _apply(serial_plan, tmp_path / "a1")
    root, plan = _store(tmp_path, "workers")
    documents = sorted({a.document for a in plan.actions})
    monkeypatch.setattr(sys.modules[__name__], "_FAILING", str(root / documents[1]))
    monkeypatch.setattr(locate_mod, "_locate_file", _failing_for_one)  # before the workers fork: they run it too
    monkeypatch.setattr(locate_mod, "PARALLEL_MIN_BYTES", 0)
    local = _count_local_locates(monkeypatch)
    result, rows = _apply(plan, tmp_path / "a2")
    assert len(local) == len(documents) - 1, "the first document's finding was used, none after the failure"
    assert "locating documents ahead stopped (RecursionError" in caplog.text
    assert rows == serial_rows and result.conflicts == serial.conflicts == []
    assert _files(root) == _files(serial_root)


@needs_workers
def test_a_document_of_more_elements_than_a_finding_holds_is_located_by_apply(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    serial_root, serial_plan = _store(tmp_path, "serial")
    _apply(serial_plan, tmp_path / "a1")
    root, plan = _store(tmp_path, "workers")
    monkeypatch.setattr(locate_mod, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(locate_mod, "LOCATE_MAX_ELEMENTS", 0)
    local = _count_local_locates(monkeypatch)
    _apply(plan, tmp_path / "a2")
    assert len(local) == len({a.document for a in plan.actions}), "no finding came back: all located here"
    assert _files(root) == _files(serial_root)


def test_an_id_that_is_not_a_string_is_not_kept() -> None:
    """Only string ids are compared with the plan's: a nested id (which may not even pickle) is kept as None."""
    deep: Any = "x"
    for _ in range(50):
        deep = [deep]
    text = json.dumps([{"id": deep, "n": 1}, {"id": "p1"}, {"id": 7}])
    spans, seen = locate_mod.locate(text, {"": {0, 1, 2}})
    assert [found for found, _ in (seen[""][i] for i in range(3))] == [None, "p1", None]
    assert spans[""].items == [None, {"id": "p1"}, None]


# ------------------------------------------------------------------------------------------- undo


@needs_workers
def test_a_document_above_the_worker_size_is_located_by_apply_itself(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers take documents of up to PARALLEL_DOCUMENT_BYTES only (one large text per process at a time);
    a larger one is located in the task's process, in its turn, and the result is the same."""
    serial_root, serial_plan = _store(tmp_path, "serial")
    _apply(serial_plan, tmp_path / "a1")
    root, plan = _store(tmp_path, "workers")
    sizes = {rel: plan.documents[rel].size_bytes for rel in {a.document for a in plan.actions}}
    largest = max(sizes, key=lambda rel: sizes[rel])
    assert sum(1 for size in sizes.values() if size < sizes[largest]) >= 2
    assert list(sizes.values()).count(sizes[largest]) == 1
    large_text = (root / largest).read_text("utf-8")
    monkeypatch.setattr(locate_mod, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(locate_mod, "PARALLEL_DOCUMENT_BYTES", sizes[largest] - 1)
    local = _count_local_locates(monkeypatch)
    _apply(plan, tmp_path / "a2")
    assert local == [large_text]
    assert _files(root) == _files(serial_root)
