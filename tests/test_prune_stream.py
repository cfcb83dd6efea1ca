"""Prune and undo work one document at a time: the paths that keep memory to one document (undo fed per
document, apply without kept payloads, element filters, plans without unsized candidates) and the check
that a spliced document parses without parsing it again, each against the plain path it replaces."""

from __future__ import annotations

import functools
import gc
import gzip
import json
import os
import pickle
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aml.store.rewrite as rewrite
from aml.gcpause import gc_paused
from aml.prune import (
    AppliedRecord,
    PruneConfig,
    UndoEntry,
    apply_plan,
    build_plan,
    lean_payload,
    read_archive,
    undo_documents,
    undo_entries,
)
from aml.prune.archive import add_to_archive, remove_from_archive, remove_records_from_archive
from aml.store import TMP_PREFIX
from aml.store.records import item_size
from aml.store.rewrite import (
    Layout,
    SpliceError,
    check_rebuilt,
    element_key,
    find_list,
    key_only,
    rebuild,
    remove_elements,
    spans_whole_document,
)
from tests.realdata import extract_loom, snapshot_tree

NOW = datetime(2026, 11, 23, tzinfo=UTC)
RULES = ["time_based", "performance_based"]


def files(root: Path) -> dict[str, bytes]:
    return {k: v[0] for k, v in snapshot_tree(root).items() if (root / k).is_file()}


def entries_of(applied: Sequence[AppliedRecord]) -> list[UndoEntry]:
    return [UndoEntry(n, a.action.document, a.action.record_id, json.loads(json.dumps(a.payload)))
            for n, a in enumerate(applied)]


# ------------------------------------------------------------------------------------------ apply


def test_apply_with_a_hook_keeps_no_payloads_but_counts(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path / "s")
    plan = build_plan(root, PruneConfig(now=NOW), RULES)
    seen: list[AppliedRecord] = []
    result = apply_plan(plan, run_id="r", archive_root=tmp_path / "archives",
                        before_publish=lambda document, records: seen.extend(records))
    assert result.applied == [], "the hook had them; the result holds none"
    assert len(seen) == len(plan.actions) > 0
    removed = sum(1 for a in plan.actions if a.action == "removed")
    assert (result.removed, result.archived) == (removed, len(plan.actions) - removed)
    summary = result.to_dict()
    assert (summary["removed"], summary["archived"]) == (result.removed, result.archived)
    assert gc.isenabled(), "the collector is back on"


def test_apply_can_keep_payloads_with_a_hook(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path / "s")
    plan = build_plan(root, PruneConfig(now=NOW), RULES)
    result = apply_plan(plan, run_id="r", archive_root=tmp_path / "archives",
                        before_publish=lambda document, records: None, keep_applied=True)
    assert len(result.applied) == len(plan.actions) == result.removed + result.archived > 0


def test_the_write_ahead_runs_beside_the_write_and_before_the_rename(tmp_path: Path) -> None:
    """The hook runs in a thread of its own while the new bytes are written (one thread for the run, started once),
    and always sees the document as it was: the file is replaced only once the hook has returned."""
    root = extract_loom("loom-plain-v1.0", tmp_path / "s")
    before = files(root)
    plan = build_plan(root, PruneConfig(now=NOW), RULES)
    calls: list[tuple[str, bool, bool]] = []
    threads: set[threading.Thread] = set()

    def hook(document: str, records: list[AppliedRecord]) -> None:
        time.sleep(0.05)  # the write is done by now; the file must still be the old one
        threads.add(threading.current_thread())
        calls.append((document, threading.current_thread() is not threading.main_thread(),
                      (root / document).read_bytes() == before[document]))

    result = apply_plan(plan, run_id="r", archive_root=tmp_path / "archives", before_publish=hook)
    assert calls and [c[0] for c in calls] == result.documents and len(calls) > 1
    assert all(in_thread and unchanged for _, in_thread, unchanged in calls)
    assert len(threads) == 1, "one write-ahead thread for the whole run"
    assert all(files(root)[d] != before[d] for d in result.documents)
    assert not [p for p in root.rglob("*") if p.name.startswith(TMP_PREFIX)], "no temporary file left"


def test_a_failed_write_ahead_leaves_its_document_as_it_was(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path / "s")
    before = files(root)
    plan = build_plan(root, PruneConfig(now=NOW), RULES)
    documents = sorted({a.document for a in plan.actions})
    assert len(documents) >= 2

    def hook(document: str, records: list[AppliedRecord]) -> None:
        if document == documents[1]:
            raise RuntimeError("catalog down")

    with pytest.raises(RuntimeError, match="catalog down"):
        apply_plan(plan, run_id="r", archive_root=tmp_path / "archives", before_publish=hook)
    after = files(root)
    assert after[documents[0]] != before[documents[0]], "the document before it was rewritten"
    assert all(after[d] == before[d] for d in documents[1:]), "that document and the later ones untouched"
    assert not [p for p in root.rglob("*") if p.name.startswith(TMP_PREFIX)], "no temporary file left"


@pytest.mark.parametrize("hook_fails", [False, True])
def test_a_failed_write_waits_for_its_write_ahead_and_stops_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture,
                                                                    hook_fails: bool) -> None:
    """A disk that fills while a document's new bytes are written (a fault made here: ENOSPC cannot be caused
    for real in a test) stops the run with the error; its write-ahead, still running, has ended (its rows
    committed, for the caller to reconcile) before apply returns, and the document is left as it was. A
    write-ahead that failed as well is logged, not lost."""
    import aml.prune.apply as apply_module

    root = extract_loom("loom-plain-v1.0", tmp_path / "s")
    before = files(root)
    plan = build_plan(root, PruneConfig(now=NOW), RULES)
    first = sorted({a.document for a in plan.actions})[0]
    finished: list[str] = []

    def hook(document: str, records: list[AppliedRecord]) -> None:
        time.sleep(0.2)  # still running when the write fails
        finished.append(document)
        if hook_fails:
            raise RuntimeError("catalog down")

    def full_disk(fh: Any, pieces: Any, encoding: Any, level: Any) -> int:
        fh.write(b"[")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(apply_module, "write_text", full_disk)
    result = apply_plan(plan, run_id="r", archive_root=tmp_path / "archives", before_publish=hook)
    assert result.error is not None and "No space left" in result.error and first in result.error
    assert finished == [first], "the write-ahead ended before apply returned"
    assert result.documents == [] and files(root) == before
    assert not [p for p in root.rglob("*") if p.name.startswith(TMP_PREFIX)], "no temporary file left"
    assert ("write-ahead failed as well: RuntimeError: catalog down" in caplog.text) == hook_fails


@pytest.mark.parametrize("failures", [1, 10**6])
def test_without_a_thread_the_write_ahead_runs_after_the_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture, failures: int) -> None:
    """A process that may start no more threads (a container's pids.max: CPython raises RuntimeError, made here,
    once or every time) still prunes: the write-ahead runs in the task's thread, after the write and before the
    rename, for the rest of the run; each document's write-ahead runs once (the job a failed start left queued is
    never run by a thread started later)."""
    import concurrent.futures

    import aml.prune.writebehind as writebehind_module

    left = [failures]

    class FailingThreads(concurrent.futures.ThreadPoolExecutor):
        def _adjust_thread_count(self) -> None:
            if left[0] > 0:
                left[0] -= 1
                raise RuntimeError("can't start new thread")
            super()._adjust_thread_count()

    monkeypatch.setattr(writebehind_module, "ThreadPoolExecutor", FailingThreads)
    root = extract_loom("loom-plain-v1.0", tmp_path / "s")
    before = files(root)
    plan = build_plan(root, PruneConfig(now=NOW), RULES)
    calls: list[tuple[str, bool, bool]] = []

    def hook(document: str, records: list[AppliedRecord]) -> None:
        calls.append((document, threading.current_thread() is threading.main_thread(),
                      (root / document).read_bytes() == before[document]))

    result = apply_plan(plan, run_id="r", archive_root=tmp_path / "archives", before_publish=hook)
    assert result.error is None and len(result.documents) > 1
    assert [document for document, _, _ in calls] == result.documents, "each document's write-ahead once"
    assert all(here and unchanged for _, here, unchanged in calls)
    assert all(files(root)[d] != before[d] for d in result.documents)
    assert caplog.text.count("no thread for the write-ahead") == 1


def test_apply_payloads_hold_exact_texts_keys_and_neighbour_keys(tmp_path: Path) -> None:
    """Apply keeps only the planned elements' places: each payload's text parses to what the whole parse gives,
    its item is the record's key alone (payload version 2: no parsed copy)."""
    root = extract_loom("loom-plain-v2.0.0", tmp_path / "s")
    before = {rel: json.loads(data) for rel, data in files(root).items() if rel.endswith(".json")}
    plan = build_plan(root, PruneConfig(now=NOW), RULES)
    result = apply_plan(plan, run_id="r", archive_root=tmp_path / "archives")
    assert result.applied
    for applied in result.applied:
        items = before[applied.action.document]
        index = applied.payload["index"]
        payload = applied.payload
        assert payload["v"] == 2
        assert json.loads(payload["text"]) == items[index]
        assert payload["item"] == ({"id": items[index]["id"]} if isinstance(items[index].get("id"), str) else None)
        if index > 0 and isinstance(items[index - 1].get("id"), str):
            assert applied.payload["prev"] == {"id": items[index - 1]["id"]}


# ------------------------------------------------------------------------------------------- undo


@pytest.mark.parametrize("name", ["loom-gzip-v1.0", "loom-plain-v2.0.0"])
def test_undo_fed_per_document_reads_each_batch_after_the_previous_write(name: str, tmp_path: Path) -> None:
    root = extract_loom(name, tmp_path / "s")
    before = files(root)
    plan = build_plan(root, PruneConfig(now=NOW), RULES)
    entries = entries_of(apply_plan(plan, run_id="r", archive_root=tmp_path / "archives").applied)
    pruned = files(root)
    by_doc: dict[str, list[UndoEntry]] = {}
    for e in entries:
        by_doc.setdefault(e.document, []).append(e)
    order = sorted(by_doc)
    assert len(order) > 1
    handed: list[str] = []

    def batches() -> Iterator[tuple[str, list[UndoEntry]]]:
        for relpath in order:
            # at most one write in flight: every document but the previous one was written back before this batch
            # was asked for (the previous one may still be written while this one is worked out)
            for earlier in handed[:-1]:
                assert (root / earlier).read_bytes() == before[earlier]
            assert (root / relpath).read_bytes() == pruned[relpath], "not touched before its turn"
            handed.append(relpath)
            yield relpath, by_doc[relpath]

    undone = undo_documents(root, batches(), archive_root=tmp_path / "archives")
    assert handed == order
    assert not undone.failed and len(undone.restored) == len(entries)
    assert undone.documents == order
    assert files(root) == before, "byte-identical"
    assert gc.isenabled()


def _pruned_by_document(tmp_path: Path) -> tuple[Path, dict[str, bytes], dict[str, bytes], dict[str, list[UndoEntry]]]:
    """A pruned sample store: its root, its files before and after the prune, and the run's entries by document."""
    root = extract_loom("loom-plain-v2.0.0", tmp_path / "s")
    before = files(root)
    plan = build_plan(root, PruneConfig(now=NOW), RULES)
    by_doc: dict[str, list[UndoEntry]] = {}
    for e in entries_of(apply_plan(plan, run_id="r", archive_root=tmp_path / "archives").applied):
        by_doc.setdefault(e.document, []).append(e)
    assert len(by_doc) > 2
    return root, before, files(root), by_doc


def test_undo_writes_each_document_in_another_thread_while_the_next_is_worked_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import aml.prune.undo as undo_module

    root, before, _, by_doc = _pruned_by_document(tmp_path)
    writers: list[str] = []
    real = undo_module.write_text

    def write_text(*args: Any) -> int:
        writers.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(undo_module, "write_text", write_text)
    undone = undo_documents(root, ((relpath, by_doc[relpath]) for relpath in sorted(by_doc)),
                            archive_root=tmp_path / "archives")
    assert undone.documents == sorted(by_doc) and files(root) == before
    assert len(writers) == len(by_doc) and all(name.startswith("aml-undo-write") for name in writers)


def test_a_failed_undo_write_stops_the_run_and_the_next_document_is_never_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that fills while a document is written back (ENOSPC, a fault made here) stops the run with the error
    once the next document has been worked out: documents before stay restored, that one and the next stay as they
    were (the next is never written), no temporary file is left, and nothing after it is asked for."""
    import aml.prune.undo as undo_module

    root, before, pruned, by_doc = _pruned_by_document(tmp_path)
    order = sorted(by_doc)
    real = undo_module.write_text

    def write_text(fh: Any, pieces: Any, encoding: Any, level: Any) -> int:
        written.append(fh.fileno())
        if len(written) == 2:  # the second document's
            fh.write(b"[")
            raise OSError(28, "No space left on device")
        return real(fh, pieces, encoding, level)

    written: list[int] = []
    asked: list[str] = []

    def batches() -> Iterator[tuple[str, list[UndoEntry]]]:
        for relpath in order:
            asked.append(relpath)
            yield relpath, by_doc[relpath]

    monkeypatch.setattr(undo_module, "write_text", write_text)
    with pytest.raises(OSError, match="No space left"):
        undo_documents(root, batches(), archive_root=tmp_path / "archives")
    now = files(root)
    assert now[order[0]] == before[order[0]], "restored before the failure"
    assert now[order[1]] == pruned[order[1]] and now[order[2]] == pruned[order[2]]
    assert asked == order[:3], "the run stopped at the document after the failed one"
    assert len(written) == 2
    assert not [p for p in root.rglob("*") if p.name.startswith(TMP_PREFIX)], "no temporary file left"


def test_an_error_while_working_out_a_document_lets_the_write_before_it_finish(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's rows fail to come (the catalog went away, say) while the previous document is being written: the
    error goes up only once that write is done, so nothing is written after undo has returned."""
    import aml.prune.undo as undo_module

    root, before, _, by_doc = _pruned_by_document(tmp_path)
    order = sorted(by_doc)
    real = undo_module.write_text
    ended: list[float] = []

    def slow_write(*args: Any) -> int:
        time.sleep(0.2)
        try:
            return real(*args)
        finally:
            ended.append(time.monotonic())

    def batches() -> Iterator[tuple[str, list[UndoEntry]]]:
        yield order[0], by_doc[order[0]]
        raise ConnectionError("catalog gone")

    monkeypatch.setattr(undo_module, "write_text", slow_write)
    with pytest.raises(ConnectionError):
        undo_documents(root, batches(), archive_root=tmp_path / "archives")
    assert ended, "the write in flight ended before the error reached the caller"
    assert files(root)[order[0]] == before[order[0]], "and its document was in place"


def test_a_splice_found_impossible_while_writing_fails_that_document_only(tmp_path: Path) -> None:
    """A record to put back beside the one element an agent left, from a list pruned down to none, has no separator
    to go by: that shows only as the document's new text is made, in the writing thread. That document's entries
    fail, it stays as it was, and the run goes on with the next document."""
    root = tmp_path / "s"
    (root / "a").mkdir(parents=True)
    alone, fine = root / "a" / "decisions.json", root / "a" / "patterns.json"
    alone.write_text('[\n  {"id": "b"}\n]\n')
    fine.write_text('[\n  {"id": "c"},\n  {"id": "e"}\n]\n')

    def entry(n: int, document: Path, text: str, prev: str | None, nxt: str | None, sep: str | None) -> UndoEntry:
        return UndoEntry(n, document.relative_to(root).as_posix(), "", {
            "v": 2, "item": {"id": json.loads(text)["id"]}, "text": text, "list": "", "index": 0 if prev is None else 1,
            "prev": None if prev is None else {"id": prev}, "next": None if nxt is None else {"id": nxt},
            "layout": {"lead": "\n  ", "sep": sep, "trail": "\n"}, "archive": None})

    undone = undo_entries(root, [entry(1, alone, '{"id": "a"}', None, None, None),
                                 entry(2, fine, '{"id": "d"}', "c", "e", ",\n  ")])
    assert [f["action_id"] for f in undone.failed] == [1] and "separator" in undone.failed[0]["reason"]
    assert undone.restored == [2] and undone.documents == ["a/patterns.json"]
    assert alone.read_text() == '[\n  {"id": "b"}\n]\n'
    assert json.loads(fine.read_text()) == [{"id": "c"}, {"id": "d"}, {"id": "e"}]
    assert not [p for p in root.rglob("*") if p.name.startswith(TMP_PREFIX)], "no temporary file left"


def test_failures_are_listed_in_document_order_when_a_write_is_in_flight(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A document whose write fails in the writing thread (no separator known) is listed before the next document,
    which is missing, though that one's failure is known while the write is still in flight."""
    import aml.prune.undo as undo_module

    root = tmp_path / "s"
    (root / "a").mkdir(parents=True)
    alone = root / "a" / "decisions.json"
    alone.write_text('[\n  {"id": "b"}\n]\n')
    real = undo_module.write_text

    def slow_write(*args: Any) -> int:
        time.sleep(0.3)
        return real(*args)

    def entry(n: int, relpath: str) -> UndoEntry:
        return UndoEntry(n, relpath, "", {
            "v": 2, "item": {"id": "a"}, "text": '{"id": "a"}', "list": "", "index": 0, "prev": None, "next": None,
            "layout": {"lead": "\n  ", "sep": None, "trail": "\n"}, "archive": None})

    monkeypatch.setattr(undo_module, "write_text", slow_write)
    undone = undo_documents(root, iter([("a/decisions.json", [entry(1, "a/decisions.json")]),
                                        ("a/patterns.json", [entry(2, "a/patterns.json")])]))
    assert [(f["action_id"], f["document"]) for f in undone.failed] == [(1, "a/decisions.json"),
                                                                         (2, "a/patterns.json")]
    assert "separator" in undone.failed[0]["reason"] and undone.failed[1]["reason"] == "document is missing"
    assert alone.read_text() == '[\n  {"id": "b"}\n]\n'


def test_a_large_document_is_written_before_the_next_one_is_asked_for(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory never holds a large document's text beside the next document's: its write is waited for."""
    import aml.prune.undo as undo_module

    root, before, _, by_doc = _pruned_by_document(tmp_path)
    order = sorted(by_doc)
    monkeypatch.setattr(undo_module, "PARALLEL_DOCUMENT_BYTES", 0)  # every document is "large"
    handed: list[str] = []

    def batches() -> Iterator[tuple[str, list[UndoEntry]]]:
        for relpath in order:
            for earlier in handed:
                assert (root / earlier).read_bytes() == before[earlier], "written before the next was asked for"
            handed.append(relpath)
            yield relpath, by_doc[relpath]

    undone = undo_documents(root, batches(), archive_root=tmp_path / "archives")
    assert undone.documents == order and files(root) == before


def test_a_gzip_document_is_large_by_its_text_not_its_size_on_disk(tmp_path: Path) -> None:
    """What memory holds of a document is its text: the large-document wait measures that, a gzip file included."""
    import aml.prune.undo as undo_module

    root = extract_loom("loom-gzip-v1.0", tmp_path / "s")
    plan = build_plan(root, PruneConfig(now=NOW), RULES)
    entries = entries_of(apply_plan(plan, run_id="r", archive_root=tmp_path / "archives").applied)
    relpath = next(e.document for e in entries if (root / e.document).read_bytes()[:2] == b"\x1f\x8b")
    undone = undo_module._undo_document(root, relpath, [e for e in entries if e.document == relpath])
    text = rewrite.read_text(root / relpath).text
    assert undone.size == len(text) > (root / relpath).stat().st_size


def test_without_a_thread_undo_writes_in_the_task_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    import concurrent.futures

    import aml.prune.writebehind as writebehind_module

    class NoThreads(concurrent.futures.ThreadPoolExecutor):
        def _adjust_thread_count(self) -> None:
            raise RuntimeError("can't start new thread")

    monkeypatch.setattr(writebehind_module, "ThreadPoolExecutor", NoThreads)
    root, before, _, by_doc = _pruned_by_document(tmp_path)
    undone = undo_entries(root, [e for entries in by_doc.values() for e in entries], archive_root=tmp_path / "archives")
    assert undone.documents == sorted(by_doc) and files(root) == before
    assert "no thread for the writes" in caplog.text


def test_undo_documents_matches_undo_entries(tmp_path: Path) -> None:
    results = []
    for n in range(2):
        root = extract_loom("loom-plain-v1.0", tmp_path / f"s{n}")
        archives = tmp_path / f"archives{n}"
        plan = build_plan(root, PruneConfig(now=NOW), RULES)
        entries = entries_of(apply_plan(plan, run_id="r", archive_root=archives).applied)
        if n == 0:
            undone = undo_entries(root, entries, archive_root=archives)
        else:
            grouped: dict[str, list[UndoEntry]] = {}
            for e in entries:
                grouped.setdefault(e.document, []).append(e)
            undone = undo_documents(root, ((d, grouped[d]) for d in sorted(grouped)), archive_root=archives)
        results.append((undone.restored, undone.already_present, undone.failed, undone.documents,
                        [Path(p).relative_to(archives).as_posix() for p in undone.archives_updated], files(root)))
    assert results[0] == results[1]
    assert results[0][4], "decisions were taken back out of an archive"


def test_undo_with_lean_payloads_is_the_same(tmp_path: Path) -> None:
    """The task hands undo lean payloads (the record's key unless it goes back out of an archive)."""
    outcomes = []
    for lean in (False, True):
        root = extract_loom("loom-plain-v1.0", tmp_path / f"s{lean}")
        archives = tmp_path / f"archives{lean}"
        before = files(root)
        plan = build_plan(root, PruneConfig(now=NOW), RULES)
        entries = entries_of(apply_plan(plan, run_id="r", archive_root=archives).applied)
        if lean:
            shared: dict[Any, Any] = {}
            entries = [UndoEntry(e.action_id, e.document, e.record_id, lean_payload(e.payload, shared))
                       for e in entries]
            assert any(e.payload["item"] == {"id": e.record_id} for e in entries)
            layouts = [e.payload["layout"] for e in entries if e.payload["archive"] is None and e.payload["layout"]]
            assert layouts and len({id(x) for x in layouts}) < len(layouts)  # equal layouts held once
            assert all(e.payload["item"] == {"id": e.record_id} for e in entries)
        undone = undo_entries(root, entries, archive_root=archives)
        assert files(root) == before
        outcomes.append((undone.restored, undone.failed, len(undone.archives_updated)))
        assert not any(archives.rglob("*.gz")), "restored decisions left their archive"
    assert outcomes[0] == outcomes[1]
    assert lean_payload({"item": [1], "archive": None}) == {"item": None, "archive": None}
    payload = {"item": {"id": "x", "v": 1}, "archive": "a/decisions_r.json.gz"}
    assert lean_payload(payload) is payload


def test_undo_documents_reports_a_missing_document_and_goes_on(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path / "s")
    plan = build_plan(root, PruneConfig(now=NOW), RULES)
    entries = entries_of(apply_plan(plan, run_id="r", archive_root=tmp_path / "archives").applied)
    gone = entries[0].document
    (root / gone).unlink()
    grouped: dict[str, list[UndoEntry]] = {}
    for e in entries:
        grouped.setdefault(e.document, []).append(e)
    undone = undo_documents(root, iter(sorted(grouped.items())), archive_root=tmp_path / "archives")
    assert {f["document"] for f in undone.failed} == {gone}
    assert all(f["reason"] == "document is missing" for f in undone.failed)
    assert len(undone.restored) == len(entries) - len(grouped[gone])
    assert gc.isenabled()


# ---------------------------------------------------------------------------------------- archives


_json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
                 | st.text(max_size=4) | st.sampled_from(["\udcff", "a\ud800b"]))  # lone surrogates, often
_json_items = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(archive=st.lists(_json_items, max_size=6), picks=st.lists(st.tuples(st.integers(0, 7), st.booleans()),
                                                                 max_size=6),
       extra=st.lists(_json_items, max_size=2), indent=st.sampled_from([None, 2]))
def test_removing_records_by_text_matches_canonical_json(archive: list[Any], picks: list[tuple[int, bool]],
                                                          extra: list[Any], indent: int | None, tmp_path: Path) -> None:
    """Whether the archive and the texts are strict JSON (msgspec's comparison) or not (NaN, Infinity, numbers
    beyond a double, lone surrogates: json.dumps's), the items removed are those whose canonical JSON
    (:func:`canonical_item`) is that of a record given, however its text is laid out."""
    from aml.prune.archive import _write, canonical_item, read_archive

    path = tmp_path / "decisions_r.json.gz"
    path.unlink(missing_ok=True)
    _write(path, archive)
    current = read_archive(path)  # as the archive holds them (a JSON round trip)
    chosen = [current[i] for i, _ in picks if i < len(current)] + extra
    texts = [json.dumps(x, indent=indent, sort_keys=flip) for x, (_, flip) in zip(chosen, picks + [(0, False)] * 2,
                                                                                strict=False)]
    drop = {canonical_item(json.loads(t)) for t in texts}
    expected = [x for x in current if canonical_item(x) not in drop]
    removed = remove_records_from_archive(path, texts=texts)
    assert removed == len(current) - len(expected)
    if removed and not expected:
        assert not path.exists(), "an emptied archive is deleted"
    else:  # compared as canonical JSON: NaN is not equal to itself
        assert [canonical_item(x) for x in read_archive(path)] == [canonical_item(x) for x in expected]


@pytest.mark.parametrize(("archive", "texts", "fast"), [
    ([{"id": "a", "n": 1.5}, {"id": "b"}], ['{"n": 1.5, "id": "a"}'], True),
    ([{"id": "a", "n": float("nan")}, {"id": "b"}], ['{"id": "b"}'], False),  # NaN in the archive
    ([{"id": "a"}, {"id": "b"}], ['{"id": "b", "n": 1e400}', '{"id": "a"}'], False),  # beyond a double
    ([{"id": "a\udcff"}, {"id": "b"}], ['{"id": "b"}'], False),  # a lone surrogate
])
def test_strict_json_is_compared_by_msgspec_and_the_rest_by_json(archive: list[Any], texts: list[str], fast: bool,
                                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    import aml.prune.archive as arch

    path = tmp_path / "decisions_r.json.gz"
    arch._write(path, archive)
    used: list[str] = []
    sorted_json, canonical = arch._sorted_json, arch._canonical
    monkeypatch.setattr(arch, "_sorted_json", lambda v: used.append("msgspec") or sorted_json(v))
    monkeypatch.setattr(arch, "_canonical", lambda v: used.append("json") or canonical(v))
    assert arch.remove_records_from_archive(path, texts=texts) == 1
    assert set(used) == ({"msgspec"} if fast else {"json"})


def test_archive_by_canonical_keys(tmp_path: Path) -> None:
    path = tmp_path / "a" / "decisions_r.json.gz"
    items = [{"id": "a", "n": 1}, {"n": 2, "id": "b"}, {"id": "c"}]
    assert add_to_archive(path, items) == 3
    assert add_to_archive(path, [{"n": 1, "id": "a"}, {"id": "d"}]) == 1, "known items are skipped"
    assert read_archive(path) == [*items, {"id": "d"}]
    assert remove_records_from_archive(path, texts=['{"id":"b",  "n": 2.0}', '{"id": "b", "n": 2}']) == 1
    assert [x["id"] for x in read_archive(path)] == ["a", "c", "d"]
    assert remove_from_archive(path, [{"id": "a", "n": 1}, {"id": "c"}, {"id": "d"}]) == 3
    assert not path.exists(), "an emptied archive is deleted"
    assert remove_records_from_archive(path, texts=['"x"']) == 0


# ---------------------------------------------------------------------------------------- the plan


@pytest.mark.parametrize("name", ["loom-gzip-v1.0", "loom-plain-v1.0", "loom-plain-v2.0.0"])
def test_plan_without_space_equals_the_plan_with_every_candidate(name: str, tmp_path: Path) -> None:
    """Without space_based, only the candidates a rule matches are kept (and sized): the plan is the one
    made with every candidate sized (space_based with limits it never reaches adds nothing)."""
    root = extract_loom(name, tmp_path / "s")
    for aggressive in (False, True):
        config = PruneConfig(now=NOW, agent_limit_mib=1e6, store_limit_mib=1e6)
        if aggressive:
            config = config.aggressive()
        lean = build_plan(root, config, RULES)
        full = build_plan(root, config, [*RULES, "space_based"])
        assert lean.actions == full.actions and lean.actions
        assert lean.preserved == full.preserved
        assert lean.wrong_type == full.wrong_type
        assert lean.records_scanned == full.records_scanned
        data = {rel: json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
                for rel, raw in files(root).items() if rel.endswith(".json")}
        for a in lean.actions:
            assert a.size_bytes == item_size(data[a.document][a.index])
    # every match kept for its value: the preserved records of both rules and several documents, in the order
    # a run meets them (time rule first, then the performance rule, each in document order)
    keep_all = PruneConfig(now=NOW, agent_limit_mib=1e6, store_limit_mib=1e6, high_value_threshold=0.0)
    lean = build_plan(root, keep_all, RULES)
    full = build_plan(root, keep_all, [*RULES, "space_based"])
    assert not lean.actions and not full.actions
    assert lean.preserved == full.preserved
    reasons = [p["reason"] for p in lean.preserved]
    assert {"unused_too_long", "outdated_solution"} <= set(reasons)
    assert len({p["document"] for p in lean.preserved}) > 1
    first_performance = reasons.index("outdated_solution")
    assert "unused_too_long" not in reasons[first_performance:], "time rule's records first"


def test_a_compacted_plan_is_the_same_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large plan is made anew (pickled and unpickled, to pack it in memory): every field comes back equal, and
    applying it removes what the plan as made would have."""
    import aml.prune.plan as plan_mod

    root = extract_loom("loom-plain-v1.0", tmp_path / "s")
    config = PruneConfig(now=NOW, agent_limit_mib=0.05, store_limit_mib=0.2)
    made = plan_mod._build_plan(root, config, [*RULES, "space_based"], agents=None)
    monkeypatch.setattr(plan_mod, "_COMPACT_FROM", 1)
    packed = build_plan(root, config, [*RULES, "space_based"])
    assert packed is not made and len(packed.actions) > 100
    assert packed.to_dict() == made.to_dict()
    assert packed.actions == made.actions and packed.documents == made.documents and packed.root == made.root
    assert pickle.loads(pickle.dumps(made.actions)) == made.actions  # PlannedAction pickles as the call that makes it
    # the plan as made is gone when it is made anew (else both are in memory and the compaction gains nothing)
    alive_at_load: list[bool] = []
    made_refs: list[weakref.ref[Any]] = []
    real_build, real_loads = plan_mod._build_plan, pickle.loads

    def build(*args: Any, **kwargs: Any) -> Any:
        plan = real_build(*args, **kwargs)
        made_refs.append(weakref.ref(plan))
        return plan

    def loads(data: bytes) -> Any:
        alive_at_load.append(made_refs[-1]() is not None)
        return real_loads(data)

    with monkeypatch.context() as patched:
        patched.setattr(plan_mod, "_build_plan", build)
        patched.setattr(plan_mod.pickle, "loads", loads)
        assert build_plan(root, config, [*RULES, "space_based"]).to_dict() == made.to_dict()
    assert alive_at_load == [False]
    loose = build_plan(root, config, [*RULES, "space_based"], compact=False)  # a dry run's plan
    assert loose.to_dict() == made.to_dict()
    monkeypatch.setattr(plan_mod, "_COMPACT_FROM", 10**9)
    assert plan_mod._compacted(made) is made  # a small plan is kept as it is


def test_a_plan_made_document_by_document_is_compacted_only_after_a_large_document(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without space_based, planning holds one document's candidates at a time: the plan is compacted only when one
    document alone held enough of them for their freed arenas to matter; with space_based, all of them count."""
    import aml.prune.plan as plan_mod

    root = extract_loom("loom-plain-v1.0", tmp_path / "s")
    config = PruneConfig(now=NOW, agent_limit_mib=0.05, store_limit_mib=0.2)
    lean = plan_mod._build_plan(root, config, RULES, agents=None)
    spaced = plan_mod._build_plan(root, config, [*RULES, "space_based"], agents=None)
    assert 0 < lean.candidates_held < spaced.candidates_held == spaced.records_scanned
    assert len(lean.actions) > 1
    monkeypatch.setattr(plan_mod, "_COMPACT_FROM", lean.candidates_held + 1)  # no document held that many
    assert len(spaced.actions) >= plan_mod._COMPACT_FROM
    assert plan_mod._compacted(lean) is lean
    assert plan_mod._compacted(spaced) is not spaced
    monkeypatch.setattr(plan_mod, "_COMPACT_FROM", min(lean.candidates_held, len(lean.actions)))
    assert plan_mod._compacted(lean) is not lean


# --------------------------------------------------------------------------------- rewrite helpers


LOOM = '[\n  {\n    "id": "a",\n    "v": 1\n  },\n  {\n    "id": "b"\n  },\n  3,\n  "x"\n]\n'


def test_find_list_keep_filters_what_items_hold() -> None:
    whole = find_list(LOOM, "")
    keys = find_list(LOOM, "", keep=key_only)
    assert (keys.starts, keys.ends, keys.open, keys.close) == (whole.starts, whole.ends, whole.open, whole.close)
    assert keys.items == [{"id": "a"}, {"id": "b"}, None, None]
    for i in range(len(whole)):
        text = whole.element_text(LOOM, i)
        assert element_key(keys.items[i], text) == element_key(whole.items[i], text)
    some = find_list(LOOM, "", keep=lambda i, item: item if i == 1 else None)
    assert some.items == [None, {"id": "b"}, None, None]
    nested = '{"a": [[1, 2], [3, {"id": "z"}]]}'
    assert find_list(nested, "/a/1", keep=key_only).items == [None, {"id": "z"}]
    with pytest.raises(SpliceError):
        find_list('[1, 2,]', "", keep=key_only)


def test_gc_paused_restores_the_collector() -> None:
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        assert not gc.isenabled()
        raise RuntimeError
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled(), "left off when it was off"
    finally:
        gc.enable()


def _count_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = rewrite.check_parses

    def counting(text: str, what: str) -> None:
        calls.append(what)
        real(text, what)

    monkeypatch.setattr(rewrite, "check_parses", counting)
    return calls


def test_check_rebuilt_skips_the_parse_of_a_whole_document_list(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_parses(monkeypatch)
    for text in (LOOM, "\ufeff" + LOOM, " " + LOOM.rstrip("\n")):
        span = find_list(text, "")
        assert spans_whole_document(text, span)
        new = remove_elements(text, span, {1, 3})
        check_rebuilt(new, "doc", text, span)
        json.loads(new.lstrip("\ufeff"))
        emptied = remove_elements(text, span, set(range(len(span))))
        check_rebuilt(emptied, "doc", text, span)
    assert calls == []


def test_check_rebuilt_parses_when_a_piece_is_not_known_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_parses(monkeypatch)
    # something after the list: not the whole document, parsed (and refused)
    bad = LOOM + "x"
    span = find_list(bad, "")
    assert not spans_whole_document(bad, span)
    with pytest.raises(SpliceError):
        check_rebuilt(remove_elements(bad, span, {0}), "doc", bad, span)
    # a list inside a larger document: parsed
    doc = '{"a": [1, 2, 3], "b": true}'
    inner = find_list(doc, "/a")
    check_rebuilt(remove_elements(doc, inner, {1}), "doc", doc, inner)
    assert calls == ["doc", "doc"]
    # an inserted text that is not exactly one JSON value: parsed, refused
    span = find_list(LOOM, "")
    for inserted in ('{"id": "c"', '{"id": "c"} 1'):
        elements = [(inserted, None), *[(span.element_text(LOOM, i), span.sep_after(LOOM, i)) for i in range(4)]]
        with pytest.raises(SpliceError):
            check_rebuilt(rebuild(LOOM, span, elements), "doc", LOOM, span, inserted=[inserted])
    calls.clear()
    spaced = ' {"id": "c"}'  # valid once spliced, but not an element's exact text: parsed, accepted
    elements = [(spaced, None), *[(span.element_text(LOOM, i), span.sep_after(LOOM, i)) for i in range(4)]]
    check_rebuilt(rebuild(LOOM, span, elements), "doc", LOOM, span, inserted=[spaced])
    assert calls == ["doc"]
    good = '{"id": "c"}'
    elements = [(good, None), *[(span.element_text(LOOM, i), span.sep_after(LOOM, i)) for i in range(4)]]
    calls.clear()
    check_rebuilt(rebuild(LOOM, span, elements), "doc", LOOM, span, inserted=[good])
    assert calls == []
    # a recorded layout that is not whitespace and a comma: parsed, refused
    empty = "[]"
    span = find_list(empty, "")
    for layout in (Layout("\n  ", "\n  ", "\n"), Layout("x", ",", ""), Layout("", ",", "]")):
        text = rebuild(empty, span, [("1", None), ("2", None)], layout=layout)
        with pytest.raises(SpliceError):
            check_rebuilt(text, "doc", empty, span, inserted=["1", "2"], layout=layout)
    calls.clear()
    layout = Layout("\n  ", ",\n  ", "\n")
    check_rebuilt(rebuild(empty, span, [("1", None), ("2", None)], layout=layout), "doc", empty, span,
                  inserted=["1", "2"], layout=layout)
    assert calls == []


# ------------------------------------------------------------------------------------ the task


def test_undo_task_reads_rows_per_document(tmp_path: Path, aml_settings: Any) -> None:
    """``prune undo`` reads the run's rows document by document: counts, rows undone earlier, rows of
    a missing document and the rows' order are as when it read them all at once."""
    from models import queries
    from tasks import prune
    from workers.catalog import session_scope

    store = extract_loom("loom-plain-v1.0", tmp_path)
    before = files(store)
    result = prune.run.apply(kwargs={"store": str(store), "strategies": RULES, "now": "2026-11-23T00:00:00Z"},
                             throw=True).get()
    total = result["plan"]["counts"]["total"]
    documents = result["applied"]["documents"]
    assert total > 0 and len(documents) > 2
    run_id = result["run_id"]
    with session_scope(aml_settings.catalog_url) as session:
        rows = queries.prune_actions_for_run(session, run_id)
        first = [r.id for r in rows if r.document_path == documents[0]]
        queries.mark_prune_actions_undone(session, run_id, ids=first)  # as if undone earlier
    missing = documents[1]
    (store / missing).unlink()
    undone = prune.undo.apply(kwargs={"store": str(store), "run_id": run_id}, throw=True).get()
    assert undone["records"] == total
    assert undone["already_undone"] == len(first)
    assert {f["document"] for f in undone["failed"]} == {missing}
    assert undone["restored"] == total - len(first) - len(undone["failed"])
    assert undone["documents"] == documents[2:]
    assert undone["status"] == "warning"
    now = files(store)
    assert {k for k in before if now.get(k) != before[k]} == {documents[0], missing}


def test_undo_task_with_a_damaged_undo_log_restores_the_other_documents(tmp_path: Path, aml_settings: Any) -> None:
    """A document whose undo log in the catalog no longer decodes is reported (the log named, the pre-prune
    snapshot given) and left as the run left it; every other document comes back byte-identical, and the rows of
    the damaged log stay not undone."""
    import sqlalchemy as sa

    from models import PruneUndoLog, queries
    from tasks import prune
    from workers.catalog import session_scope

    store = extract_loom("loom-plain-v1.0", tmp_path)
    before = files(store)
    result = prune.run.apply(kwargs={"store": str(store), "strategies": RULES, "now": "2026-11-23T00:00:00Z"},
                             throw=True).get()
    run_id, documents = result["run_id"], result["applied"]["documents"]
    assert len(documents) > 1
    damaged = documents[0]
    pruned = files(store)
    with session_scope(aml_settings.catalog_url) as session:
        log = session.scalars(sa.select(PruneUndoLog).where(PruneUndoLog.document_path == damaged)).one()
        log.payloads = log.payloads[:-8]
        log_id = log.id
        rows = [r.id for r in queries.prune_actions_for_run(session, run_id) if r.document_path == damaged]
    undone = prune.undo.apply(kwargs={"store": str(store), "run_id": run_id}, throw=True).get()
    assert undone["status"] == "warning"
    assert sorted(f["action_id"] for f in undone["failed"]) == sorted(rows)
    assert all(f["document"] == damaged and f"prune undo log {log_id}" in f["reason"] for f in undone["failed"])
    assert result["backup_id"] in undone["restore_hint"]
    assert undone["restored"] == result["plan"]["counts"]["total"] - len(rows)
    now = files(store)
    assert now[damaged] == pruned[damaged]
    assert {k for k in before if now.get(k) != before[k]} == {damaged}
    with session_scope(aml_settings.catalog_url, write=False) as session:
        assert sorted(r.id for r in queries.prune_actions_for_run(session, run_id)) == sorted(rows)


def test_undo_task_with_a_damaged_archive_restores_and_marks_the_rows(tmp_path: Path, aml_settings: Any) -> None:
    """A damaged archive file (cut short) does not undo the undo: the documents come back byte-identical, the rows
    are marked undone, and the archive is named in ``archive_errors`` (status warning), left as it was."""
    from models import queries
    from tasks import prune
    from workers.catalog import session_scope

    store = extract_loom("loom-plain-v1.0", tmp_path)
    before = files(store)
    result = prune.run.apply(kwargs={"store": str(store), "strategies": RULES, "now": "2026-11-23T00:00:00Z",
                                     "overrides": {"agent_limit_mib": 0.02}}, throw=True).get()
    archives = sorted((store.parent / "memory-backup" / "archives").rglob("decisions_*.json.gz"))
    assert result["applied"]["archived"] > 0 and archives
    damaged = archives[0]
    damaged.write_bytes(damaged.read_bytes()[:-6])
    cut = damaged.read_bytes()
    undone = prune.undo.apply(kwargs={"store": str(store), "run_id": result["run_id"]}, throw=True).get()
    assert undone["status"] == "warning" and undone["failed"] == []
    assert [a["archive"] for a in undone["archive_errors"]] == [str(damaged)]
    assert files(store) == before
    assert damaged.read_bytes() == cut
    assert all(not p.exists() for p in archives[1:]), "the other archives are emptied and deleted"
    with session_scope(aml_settings.catalog_url, write=False) as session:
        assert queries.prune_actions_for_run(session, result["run_id"]) == []


def test_a_resumed_run_keeps_the_rows_of_a_damaged_undo_log(tmp_path: Path, aml_settings: Any) -> None:
    """drop_unpublished (a redelivered run's first step) cannot tell which records of a document whose undo log does
    not decode were removed: it keeps every one of its rows (none deleted, no error), and checks the others."""
    import sqlalchemy as sa

    from models import PruneUndoLog, queries
    from tasks import prune
    from workers.catalog import session_scope

    store = extract_loom("loom-plain-v1.0", tmp_path)
    result = prune.run.apply(kwargs={"store": str(store), "strategies": RULES, "now": "2026-11-23T00:00:00Z"},
                             throw=True).get()
    run_id, documents = result["run_id"], result["applied"]["documents"]
    with session_scope(aml_settings.catalog_url) as session:
        log = session.scalars(sa.select(PruneUndoLog).where(PruneUndoLog.document_path == documents[0])).one()
        log.payloads = log.payloads[:-8]
        total = len(queries.prune_actions_for_run(session, run_id))
    opener = functools.partial(session_scope, aml_settings.catalog_url)
    kept = prune.drop_unpublished(opener, store, os.path.realpath(store), run_id)
    assert kept == {"kept": total, "dropped": 0}
    with session_scope(aml_settings.catalog_url, write=False) as session:
        assert len(queries.prune_actions_for_run(session, run_id)) == total


def test_prune_and_undo_remove_the_temporary_files_a_killed_run_left(tmp_path: Path, aml_settings: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``kill -9`` during a write leaves its temporary file beside the document (the document itself whole): the
    next prune, and the next undo, remove those beside the documents they change, once stale, and say so; one
    elsewhere is left."""
    import aml.store.atomic as atomic_mod
    from tasks import prune

    store = extract_loom("loom-plain-v1.0", tmp_path)
    before = files(store)
    monkeypatch.setattr(atomic_mod, "STALE_TEMP_S", 0.0)  # as if left long enough ago
    kwargs = {"store": str(store), "strategies": RULES, "now": "2026-11-23T00:00:00Z"}
    plan = prune.run.apply(kwargs={**kwargs, "dry_run": True}, throw=True).get()
    agent = plan["plan"]["actions"][0]["document"].split("/")[0]
    (store / agent / f"{TMP_PREFIX}killed").write_bytes(b'[\n  {"id": "half')
    elsewhere = store / "not-an-agent-dir"
    elsewhere.mkdir()
    (elsewhere / f"{TMP_PREFIX}other").write_bytes(b"x")
    result = prune.run.apply(kwargs=kwargs, throw=True).get()
    assert result["temp_files_removed"] == [f"{agent}/{TMP_PREFIX}killed"]
    assert not (store / agent / f"{TMP_PREFIX}killed").exists() and (elsewhere / f"{TMP_PREFIX}other").exists()
    (store / agent / f"{TMP_PREFIX}killed-undo").write_bytes(b"[")
    undone = prune.undo.apply(kwargs={"store": str(store), "run_id": result["run_id"]}, throw=True).get()
    assert undone["temp_files_removed"] == [f"{agent}/{TMP_PREFIX}killed-undo"]
    assert files(store) == before | {f"not-an-agent-dir/{TMP_PREFIX}other": b"x"}
