"""optimize gc: invalid and duplicate records, never across agents; bad documents quarantined, not touched."""

from __future__ import annotations

import copy
import json
import os
import shutil
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aml.optimize import apply_gc, plan_gc, quarantine_unparseable
from aml.optimize.gc import GcPlan, canonical
from aml.prune import DocumentState, PlannedAction, PruneConfig, PrunePlan, apply_plan
from aml.store import item_size
from aml.store.codec import decode, encode, sniff
from tests.realdata import LOOM_COUNTS, extract_loom, snapshot_tree


def item(agent: str, n: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"{agent}-{n:04d}", "agent": agent, "timestamp": f"2026-03-{n % 28 + 1:02d}T10:00:00.000Z",
            "pattern": {"type": "retry", "approach": {"technique": f"technique {n}"}},
            "metrics": {"successRate": 0.5, "executionCount": n}, **extra}


def write(path: Path, items: list[Any], *, gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(items, indent=2, ensure_ascii=False).encode()  # Loom's JSON.stringify(x, null, 2)
    path.write_bytes(encode(data, "gzip") if gz else data)


def read(path: Path) -> Any:
    return json.loads(decode(path.read_bytes())[0])


def crafted_store(root: Path) -> dict[str, list[Any]]:
    """A Loom-shaped store with known garbage; returns the items each collection must keep."""
    a = [item("alpha", i) for i in range(6)]
    dup = copy.deepcopy(a[1])
    reordered = {k: a[2][k] for k in reversed(list(a[2]))}  # same value, other key order: a duplicate
    conflict = {**a[3], "pattern": {"type": "other"}}  # same id, other content: reported, kept
    no_id = {k: v for k, v in item("alpha", 90).items() if k != "id"}
    empty_id = {**item("alpha", 91), "id": ""}
    no_agent = {k: v for k, v in item("alpha", 92).items() if k != "agent"}
    null_id = {**item("alpha", 96), "id": None}  # present but null: a wrong type, reported and kept
    null_agent = {**item("alpha", 97), "agent": None}
    no_ts = {k: v for k, v in item("alpha", 93).items() if k != "timestamp"}
    v2 = {k: v for k, v in item("alpha", 94).items() if k != "timestamp"}
    v2 |= {"version": "2.0.0", "lifecycle": {"created_at": "2026-01-01T00:00:00+00:00"}}  # v2: kept
    bad_ts = {**item("alpha", 95), "timestamp": "yesterday"}  # present but unparseable: reported, kept
    alpha = [a[0], a[1], dup, a[2], reordered, no_id, a[3], conflict, empty_id, no_agent, no_ts, a[4], v2, bad_ts,
             dup, null_id, null_agent]
    write(root / "alpha" / "patterns.json", alpha)
    # another agent holds exact copies of alpha's records: never deduplicated across agents
    beta = [copy.deepcopy(a[0]), copy.deepcopy(a[1]), item("beta", 1), item("beta", 1)]
    write(root / "beta" / "patterns.json", beta, gz=True)
    write(root / "beta" / "solutions.json", [item("beta", 7)])
    archive = [item("alpha", 50), item("beta", 50), item("alpha", 50)]
    write(root / "global" / "archived-decisions.json", archive)
    # backup copies are never touched, even with duplicates
    write(root / "backup" / "alpha-2026-01-01T00-00-00-000Z" / "patterns.json", [a[0], a[0]])
    (root / "config.json").write_text('{"version": "1.0.0"}')
    return {
        "alpha/patterns.json": [a[0], a[1], a[2], a[3], conflict, a[4], v2, bad_ts, null_id, null_agent],
        "beta/patterns.json": [beta[0], beta[1], beta[2]],
        "global/archived-decisions.json": [archive[0], archive[1]],
    }


@pytest.mark.parametrize("lazy", [False, True])
def test_plan_and_apply_on_crafted_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lazy: bool) -> None:
    """The same plan whether the collections are parsed whole or read item by item (LazyItems, as a document
    over ``LAZY_ITEMS_BYTES`` is)."""
    import aml.optimize.gc as gc_mod

    if lazy:
        monkeypatch.setattr(gc_mod, "LAZY_ITEMS_BYTES", 0)
    root = tmp_path / ".loom" / "memory"
    expected = crafted_store(root)
    plan = plan_gc(root)
    assert plan.counts() == {"duplicate": 5, "missing_agent": 1, "missing_id": 2, "missing_timestamp": 1}
    by_doc = {d.relpath: d for d in plan.documents}
    assert set(by_doc) == set(expected)
    assert [(r.index, r.reason) for r in by_doc["alpha/patterns.json"].removals] == [
        (2, "duplicate"), (4, "duplicate"), (5, "missing_id"), (8, "missing_id"), (9, "missing_agent"),
        (10, "missing_timestamp"), (14, "duplicate")]
    assert by_doc["alpha/patterns.json"].removals[0].duplicate_of == "/1"
    assert [c["id"] for c in plan.id_conflicts] == ["alpha-0003"]
    assert [b["timestamp"] for b in plan.bad_timestamps] == ["yesterday"]
    assert [(w["pointer"], w["field"], w["found"]) for w in plan.wrong_type] == [
        ("/13", "timestamp", "string (not a timestamp)"), ("/15", "id", "null"), ("/16", "agent", "null")]
    untouched = {rel: (root / rel).read_bytes() for rel in ("beta/solutions.json", "config.json",
                                                           "backup/alpha-2026-01-01T00-00-00-000Z/patterns.json")}
    result = apply_gc(root, plan)
    assert len(result.removed) == 9 and not result.skipped
    for rel, keep in expected.items():
        assert read(root / rel) == keep, rel
        # the rest of the document is written the way Loom wrote it (JSON.stringify(x, null, 2))
        assert decode((root / rel).read_bytes())[0] == json.dumps(keep, indent=2, ensure_ascii=False).encode()
    assert sniff((root / "beta" / "patterns.json").read_bytes()) == "gzip"  # encoding kept
    assert {rel: (root / rel).read_bytes() for rel in untouched} == untouched
    # applying again (or planning again) finds nothing: idempotent
    assert apply_gc(root, plan).removed == [] and plan_gc(root).removals == []


def test_oracle_never_removes_across_agents(tmp_path: Path) -> None:
    """Independent oracle: within each document, the first copy of each canonical value survives."""
    root = tmp_path / "m"
    expected = crafted_store(root)
    plan = plan_gc(root)
    apply_gc(root, plan)
    for rel in expected:
        values = [canonical(x) for x in read(root / rel)]
        assert len(values) == len(set(values)), rel
    # beta still holds its copies of alpha's records
    assert [x["id"] for x in read(root / "beta" / "patterns.json")][:2] == ["alpha-0000", "alpha-0001"]


HAND_WRITTEN = (  # a writer that is neither Python's json.dumps nor JSON.stringify: four spaces, odd number
    # forms, an escape, a trailing newline. gc used to re-serialise the whole document (guessing dumps settings)
    '[\n    {"id": "d-1", "agent": "delta", "timestamp": "2026-01-01T00:00:00Z", "n": 1.50, "s": "caf\\u00e9"},\n'
    '    {"id": "d-1", "agent": "delta", "timestamp": "2026-01-01T00:00:00Z", "n": 1.50, "s": "caf\\u00e9"},\n'
    '    {"agent": "delta", "timestamp": "2026-01-01T00:00:00Z"},\n'
    '    {"id": "d-2", "agent": "delta", "timestamp": "2026-01-02T00:00:00Z", "n": 1E3}\n]\n')


def prune_plan_removing(root: Path, plan: GcPlan) -> PrunePlan:
    """A prune plan that removes exactly the records of a gc plan (as prune's strategies would name them)."""
    out = PrunePlan(str(root), root, PruneConfig(), datetime.now(UTC), (), None)
    for gdoc in plan.documents:
        out.documents[gdoc.relpath] = DocumentState(gdoc.size_bytes, gdoc.mtime_ns, "loom_collection")
        items = read(root / gdoc.relpath)
        for r in gdoc.removals:
            rid = r.id or f"{r.document}#{r.pointer}"
            out.actions.append(PlannedAction("gc", r.reason, "removed", r.agent or "", r.collection, rid, "pattern",
                                             r.document, "", r.index, None, item_size(items[r.index])))
    return out


def test_gc_and_prune_removing_the_same_records_write_the_same_bytes(tmp_path: Path) -> None:
    """One splice for both (aml.store.rewrite): the same records removed give the same file, byte for byte,
    for Loom's JSON.stringify layout, pako gzip, isal gzip and a hand-written layout alike."""
    by_gc, by_prune = tmp_path / "gc" / "m", tmp_path / "prune" / "m"
    crafted_store(by_gc)
    items = read(by_gc / "alpha" / "patterns.json")
    loom_gz = json.dumps(items, indent=2, ensure_ascii=False).encode()
    (by_gc / "alpha" / "solutions.json").write_bytes(zlib.compress(loom_gz, 6, wbits=31))  # Loom's runtime: pako 6
    (by_gc / "delta").mkdir()
    (by_gc / "delta" / "patterns.json").write_text(HAND_WRITTEN, encoding="utf-8")
    shutil.copytree(by_gc, by_prune, copy_function=shutil.copy2)
    before = {p.relative_to(by_gc).as_posix(): p.read_bytes() for p in by_gc.rglob("*") if p.is_file()}

    plan = plan_gc(by_gc)
    assert {d.relpath for d in plan.documents} >= {"alpha/solutions.json", "delta/patterns.json"}
    gc_result = apply_gc(by_gc, plan)
    pruned = apply_plan(prune_plan_removing(by_prune, plan), run_id="same-records")
    assert not pruned.conflicts and pruned.error is None
    assert sorted(pruned.documents) == sorted(w["relpath"] for w in gc_result.written)
    after_gc = {p.relative_to(by_gc).as_posix(): p.read_bytes() for p in by_gc.rglob("*") if p.is_file()}
    after_prune = {p.relative_to(by_prune).as_posix(): p.read_bytes() for p in by_prune.rglob("*") if p.is_file()}
    assert after_gc == after_prune
    assert after_gc != before
    # the hand-written document keeps every byte of what stays (the old gc re-laid it out, 1E3 as 1000.0)
    lines = HAND_WRITTEN.split("\n")
    assert after_gc["delta/patterns.json"].decode() == "\n".join([lines[0], lines[1], *lines[4:]])
    # pako-written gzip stays what pako (zlib level 6) writes for the new text
    assert after_gc["alpha/solutions.json"] == zlib.compress(after_gc["alpha/patterns.json"], 6, wbits=31)


def test_apply_skips_documents_changed_since_the_plan(tmp_path: Path) -> None:
    root = tmp_path / "m"
    crafted_store(root)
    plan = plan_gc(root)
    changed = root / "alpha" / "patterns.json"
    data = read(changed)
    data.append(item("alpha", 77))
    write(changed, data)
    before = changed.read_bytes()
    result = apply_gc(root, plan)
    assert {"relpath": "alpha/patterns.json", "reason": "changed"} in result.skipped
    assert changed.read_bytes() == before


@pytest.mark.parametrize("fault", ["one more removed", "one changed", "cut short"])
def test_a_rewrite_that_does_not_read_back_is_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             fault: str) -> None:
    """The read-back check compares the new document with the old one element by element (exact texts, in
    order): a splice that removed too much, changed an element or cut the text is refused, the file untouched."""
    import aml.optimize.gc as gc_mod
    from aml.store.rewrite import SpliceError, removal_pieces

    root = tmp_path / "m"
    crafted_store(root)
    plan = plan_gc(root)

    def faulty(text: str, edits: Any) -> Iterator[str]:
        ((span, removed),) = edits
        if fault == "one more removed":
            yield from removal_pieces(text, [(span, {*removed, 0})])
            return
        new = "".join(removal_pieces(text, edits))
        yield new.replace('"alpha-0000"', '"alpha-000X"', 1) if fault == "one changed" else new[: len(new) // 2]

    monkeypatch.setattr(gc_mod, "removal_pieces", faulty)
    before = {p: p.read_bytes() for p in root.rglob("*.json")}
    with pytest.raises((RuntimeError, SpliceError)):
        apply_gc(root, plan)
    assert {p: p.read_bytes() for p in root.rglob("*.json")} == before
    assert not [p for p in root.rglob("*") if p.name.startswith(".aml-tmp-")]


def test_dry_run_and_truncated_document_via_task(tmp_path: Path, aml_settings) -> None:
    from models import queries
    from tasks.compress import gc
    from workers.catalog import session_scope

    root = tmp_path / "proj" / ".loom" / "memory"
    expected = crafted_store(root)
    broken = root / "gamma" / "patterns.json"
    broken.parent.mkdir()
    full = json.dumps([item("gamma", 1), item("gamma", 2)], indent=2).encode()
    broken.write_bytes(full[: len(full) // 2])  # truncated mid-record
    os.utime(broken, ns=(10**18, 10**18))
    broken_state = (broken.read_bytes(), broken.stat().st_mtime_ns)

    before = snapshot_tree(root.parent)
    dry = gc.apply(kwargs={"store": str(root), "dry_run": True}, throw=True).get()
    assert snapshot_tree(root.parent) == before  # dry run: not a byte, not an mtime
    assert dry["status"] == "warning" and dry["plan"]["records_to_remove"] == 9
    assert dry["snapshot_id"] is None and dry["quarantined"] == []
    assert [e["relpath"] for e in dry["plan"]["unparseable"]] == ["gamma/patterns.json"]
    assert dry["plan"]["unparseable"][0]["code"] == "truncated_json"

    out = gc.apply(kwargs={"store": str(root)}, throw=True).get()
    assert out["records_removed"] == 9 and out["status"] == "warning"
    assert out["snapshot_id"]  # the safety snapshot came first
    for rel, keep in expected.items():
        assert read(root / rel) == keep
    # the truncated document: reported, copied to quarantine, original untouched
    assert (broken.read_bytes(), broken.stat().st_mtime_ns) == broken_state
    [q] = out["quarantined"]
    assert q["relpath"] == "gamma/patterns.json" and q["copy"].startswith(".aml/quarantine/gamma/patterns.json.")
    assert (root / q["copy"]).read_bytes() == broken_state[0]
    note = json.loads((root / (q["copy"] + ".error.json")).read_text())
    assert note["code"] == "truncated_json" and note["offset"] is not None
    # the snapshot holds the store as it was before gc: restoring it gives the garbage back
    from aml.backup import Repository, restore

    repo = Repository(root.parent / "memory-backup")
    target = tmp_path / "restored"
    restore(repo, out["snapshot_id"], target)
    assert read(target / "alpha" / "patterns.json") == read_json_bytes(before["memory/alpha/patterns.json"][0])
    with session_scope(aml_settings.catalog_url) as session:
        runs = queries.recent_task_runs(session, store=out["store"])
        assert [(r.operation, r.status) for r in runs][:2] == [("gc", "warning"), ("gc", "warning")]
        assert queries.get_backup(session, out["snapshot_id"]) is not None


def read_json_bytes(raw: bytes) -> Any:
    return json.loads(decode(raw)[0])


@pytest.mark.parametrize("name", sorted(LOOM_COUNTS))
def test_real_stores_have_no_garbage(name: str, tmp_path: Path) -> None:
    root = extract_loom(name, tmp_path)
    before = snapshot_tree(root.parent)
    plan = plan_gc(root)
    assert plan.removals == [] and plan.unparseable == [] and plan.id_conflicts == []
    assert plan.documents_checked == 13  # 4 agents x 3 collections + the archive
    assert quarantine_unparseable(root, plan) == []
    assert apply_gc(root, plan).written == []
    assert snapshot_tree(root.parent) == before
