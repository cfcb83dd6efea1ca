"""optimize gc: invalid and duplicate records, never across agents; bad documents quarantined, not touched."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from aml.optimize import apply_gc, plan_gc, quarantine_unparseable
from aml.optimize.gc import canonical
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
    no_agent = {**item("alpha", 92), "agent": None}
    no_ts = {k: v for k, v in item("alpha", 93).items() if k != "timestamp"}
    v2 = {k: v for k, v in item("alpha", 94).items() if k != "timestamp"}
    v2 |= {"version": "2.0.0", "lifecycle": {"created_at": "2026-01-01T00:00:00+00:00"}}  # v2: kept
    bad_ts = {**item("alpha", 95), "timestamp": "yesterday"}  # present but unparseable: reported, kept
    alpha = [a[0], a[1], dup, a[2], reordered, no_id, a[3], conflict, empty_id, no_agent, no_ts, a[4], v2, bad_ts,
             dup]
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
        "alpha/patterns.json": [a[0], a[1], a[2], a[3], conflict, a[4], v2, bad_ts],
        "beta/patterns.json": [beta[0], beta[1], beta[2]],
        "global/archived-decisions.json": [archive[0], archive[1]],
    }


def test_plan_and_apply_on_crafted_store(tmp_path: Path) -> None:
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
