"""Migrations of the real Loom stores, checked against Loom's own migration output (the oracle).

``loom-plain-v1.0``, ``-v1.1.0``, ``-v1.2.0`` and ``-v2.0.0`` are one store migrated by Loom's
``MigrationManager`` (DATA.md §1). aml's migration of the v1.0 store must hold the same records as
Loom's output at each version (timestamps as instants, the migration's own ``last_modified`` /
``migrated_at`` ignored), in the same key order; every other file must be left byte for byte as Loom
left it (Loom skips ``global/archived-decisions.json`` and ``backup/`` copies).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from aml.migrate import LATEST, VERSIONS, detect, differences, migrate, rollback
from aml.migrate.files import SCHEMA_FILE, collection_files
from aml.store import FileStore
from aml.store.codec import decode, sniff
from tests.realdata import LOOM_COUNTS, extract_loom, snapshot_tree

ORACLE = {"1.0.0": "loom-plain-v1.0", "1.1.0": "loom-plain-v1.1.0", "1.2.0": "loom-plain-v1.2.0",
          "2.0.0": "loom-plain-v2.0.0"}


def collections(root: Path) -> dict[str, list[Any]]:
    """``{relpath: parsed items}`` of every per-agent collection file."""
    return {rel: json.loads(decode((root / rel).read_bytes())[0]) for rel, _, _ in collection_files(FileStore(root))}


def other_files(root: Path) -> dict[str, bytes]:
    """Bytes of every file outside the migrated collections and the schema file."""
    skip = {rel for rel, _, _ in collection_files(FileStore(root))} | {SCHEMA_FILE}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).as_posix() not in skip}


def assert_same_records(ours: dict[str, list[Any]], theirs: dict[str, list[Any]]) -> None:
    assert ours.keys() == theirs.keys()
    for rel in ours:
        assert len(ours[rel]) == len(theirs[rel]), rel
        assert differences(ours[rel], theirs[rel]) == [], rel
        assert [list(i) for i in ours[rel]] == [list(i) for i in theirs[rel]], f"{rel}: key order"


@pytest.mark.parametrize("target", ["1.1.0", "1.2.0", "2.0.0"])
def test_v10_to_each_version_equals_looms_output(tmp_path: Path, loom_store, target: str) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path)
    result = migrate(root, target)
    assert result.status == "success" and result.outcome == "migrated"
    assert len(result.files_written) == 12 and result.schema_written
    oracle = loom_store(ORACLE[target])
    assert_same_records(collections(root), collections(oracle))
    assert other_files(root) == other_files(oracle)  # archive, backup/ copies, config.json, README untouched
    ours, theirs = (json.loads((r / SCHEMA_FILE).read_bytes()) for r in (root, oracle))
    assert ours["version"] == theirs["version"] == target
    assert list(ours)[:3] == list(theirs) == ["version", "updated_at", "migration_history"]
    assert ours["migration_history"][-1]["from"] == "1.0.0"
    found = detect(root)
    assert found.version == target and found.claimed == target and found.consistent and found.journal is None
    assert not (root / ".aml").exists()


def test_v20_down_to_v10_and_back_is_identity(tmp_path: Path, loom_store) -> None:
    root = extract_loom("loom-plain-v2.0.0", tmp_path)
    original = {rel: (root / rel).read_bytes() for rel in collections(root)}
    down = migrate(root, "1.0.0")
    assert down.status == "success" and down.plan.lossy == []
    assert_same_records(collections(root), collections(loom_store("loom-plain-v1.0")))  # Loom's v1.0 again
    up = migrate(root, "2.0.0")
    assert up.status == "success"
    assert_same_records(collections(root), {rel: json.loads(b) for rel, b in original.items()})
    for rel, before in original.items():  # byte for byte, except the re-created last_modified values
        changed = [(a, b) for a, b in zip(before.decode().splitlines(), (root / rel).read_text().splitlines(),
                                          strict=True) if a != b]
        assert all('"last_modified":' in a and '"last_modified":' in b for a, b in changed), rel
    assert detect(root).consistent


@pytest.mark.parametrize("start", VERSIONS)
def test_every_version_to_latest_keeps_gzip(tmp_path: Path, start: str) -> None:
    root = extract_loom("loom-gzip-v1.0", tmp_path)
    reference = extract_loom("loom-gzip-v1.0", tmp_path / "reference")
    migrate(reference, LATEST)
    assert migrate(root, start).status == "success"
    result = migrate(root, LATEST)
    assert result.status == "success"
    assert result.outcome == ("unchanged" if start == LATEST else "migrated")
    for rel, _, _ in collection_files(FileStore(root)):
        raw = (root / rel).read_bytes()
        assert sniff(raw) == "gzip", rel
        json.loads(gzip.decompress(raw))  # any gzip reader (Loom's pako too) reads it
    assert sniff((root / "global/archived-decisions.json").read_bytes()) == "gzip"
    assert_same_records(collections(root), collections(reference))
    found = detect(root)
    assert found.version == LATEST and found.consistent
    counts = {agent: tuple(found.agents[agent][c]["items"] for c in ("patterns", "solutions", "decisions"))
              for agent in found.agents}
    assert counts == LOOM_COUNTS["loom-gzip-v1.0"]


def test_dry_run_and_detect_write_nothing(tmp_path: Path) -> None:
    project = tmp_path / "p"
    root = extract_loom("loom-gzip-v1.0", project)
    before = snapshot_tree(project)
    for target in ("2.0.0", "1.1.0", "1.0.0"):
        assert migrate(root, target, dry_run=True).outcome == "dry_run"
    dry = migrate(root, "2.0.0", dry_run=True).to_dict()
    total = sum(sum(c) for c in LOOM_COUNTS["loom-gzip-v1.0"].values())
    assert dry["records"] == dry["records_changed"] == total and len(dry["files_to_write"]) == 12
    assert dry["files_written"] == [] and dry["agents"]["debugger"]["patterns"] == {
        "items": 80, "changed": 80, "from": {"1.0.0": 80}}
    detect(root)
    assert snapshot_tree(project) == before  # bytes, mtimes and modes; no .aml directory


def test_unparseable_document_is_reported_untouched_and_fails_the_run(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path)
    broken = root / "debugger" / "solutions.json"
    broken.write_bytes(broken.read_bytes()[:5000])  # truncated, as a crash of Loom's writer leaves it
    os.utime(broken, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    corrupt = root / "code-reviewer" / "patterns.json"
    corrupt.write_bytes(gzip.compress(corrupt.read_bytes())[:300])  # torn gzip
    kept = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (broken, corrupt)}
    result = migrate(root, "2.0.0")
    report = result.to_dict()
    assert report["status"] == "failure"
    assert sorted(report["unparseable"]) == ["code-reviewer/patterns.json", "debugger/solutions.json"]
    codes = {p["relpath"]: p for p in report["problems"]}
    assert codes["debugger/solutions.json"]["code"] == "truncated_json"
    assert codes["debugger/solutions.json"]["offset"] is not None
    assert codes["code-reviewer/patterns.json"]["code"] == "corrupt_gzip"
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in kept} == kept
    assert len(result.files_written) == 10  # every other file migrated
    found = detect(root)
    assert found.versions == {"2.0.0": 630 - 100 - 23}
    assert sorted(u["relpath"] for u in found.unparseable) == sorted(report["unparseable"])
    assert not found.consistent
    # The store holds two versions: it must not claim the target (it had no claim, and gets none).
    assert not (root / "config" / "schema_version.json").exists()
    # Once the files are repaired, a rerun finishes the migration and only then claims 2.0.0.
    pristine = extract_loom("loom-plain-v1.0", tmp_path / "pristine")
    for path in kept:
        path.write_bytes((pristine / path.relative_to(root)).read_bytes())
    again = migrate(root, "2.0.0")
    assert again.status == "success" and sorted(again.files_written) == sorted(report["unparseable"])
    assert json.loads((root / "config" / "schema_version.json").read_bytes())["version"] == "2.0.0"
    assert detect(root).versions == {"2.0.0": 630}


def test_incomplete_migration_keeps_the_old_claim_and_says_so(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path)
    assert migrate(root, "1.1.0").status == "success"
    schema = root / "config" / "schema_version.json"
    assert json.loads(schema.read_bytes())["version"] == "1.1.0"
    broken = root / "debugger" / "patterns.json"
    broken.write_bytes(broken.read_bytes()[:1000])
    result = migrate(root, "2.0.0")
    assert result.status == "failure"
    doc = json.loads(schema.read_bytes())
    assert doc["version"] == "1.1.0"  # not 2.0.0: debugger/patterns.json still holds 1.1.0 (or nothing)
    last = doc["migration_history"][-1]
    assert last["to"] == "2.0.0" and last["status"] == "incomplete"
    assert last["left_alone"] == ["debugger/patterns.json"]


def test_lossy_downgrade_is_refused_unless_forced(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path)
    migrate(root, "1.1.0")
    path = root / "debugger" / "patterns.json"
    items = json.loads(path.read_bytes())
    items[3].update(tags=["flaky"], active=False)
    items[4]["tags"] = ["kept"]  # active: absent means active, so this one goes down without loss
    path.write_text(json.dumps(items, indent=2))
    before = snapshot_tree(root)
    refused = migrate(root, "1.0.0")
    assert refused.status == "failure" and refused.outcome == "refused"
    assert refused.plan.lossy == [{"path": "debugger/patterns.json", "index": 3, "id": items[3]["id"],
                                   "lost": ["/tags"]}]
    assert snapshot_tree(root) == before
    forced = migrate(root, "1.0.0", force=True)
    assert forced.status == "success" and forced.to_dict()["forced"]
    after = json.loads(path.read_bytes())
    assert "tags" not in after[3] and after[3]["active"] is False
    assert after[4]["tags"] == ["kept"] and "active" not in after[4]
    assert detect(root).version == "1.0.0"


def test_mixed_store_is_detected_and_migrated_item_by_item(tmp_path: Path, loom_store) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path)
    shutil.copy(loom_store("loom-plain-v2.0.0") / "debugger" / "patterns.json", root / "debugger" / "patterns.json")
    shutil.copy(loom_store("loom-plain-v1.2.0") / "code-reviewer" / "decisions.json",
                root / "code-reviewer" / "decisions.json")
    found = detect(root).to_dict()
    assert found["mixed"] and found["version"] == "mixed" and not found["consistent"]
    assert found["versions"] == {"1.0.0": 630 - 90 - 4, "1.2.0": 4, "2.0.0": 90}
    assert found["agents"]["debugger"]["patterns"]["version"] == "2.0.0"
    result = migrate(root, "2.0.0")
    assert result.plan.source_label == "mixed" and result.to_dict()["records_changed"] == 630 - 90
    assert "debugger/patterns.json" not in result.files_written
    assert_same_records(collections(root), collections(loom_store("loom-plain-v2.0.0")))


def test_rerun_is_idempotent_and_rollback_without_journal_does_nothing(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path)
    migrate(root, "1.2.0")
    before = snapshot_tree(root)
    again = migrate(root, "1.2.0")
    assert again.outcome == "unchanged" and again.files_written == [] and not again.schema_written
    assert rollback(root).outcome == "nothing"
    assert snapshot_tree(root) == before
    assert migrate(root, "1.0.0").status == "success"  # Loom's TS store has no schema file; ours says 1.0.0
    assert json.loads((root / SCHEMA_FILE).read_bytes())["version"] == "1.0.0"


def test_file_changed_by_an_agent_during_the_run_is_planned_again(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path)
    late = root / "frontend-developer" / "solutions.json"

    def agent_writes(relpath: str, done: int, total: int) -> None:
        if done == 1:  # the runtime records a new solution while aml works on other files
            items = json.loads(late.read_bytes())
            items.append({**items[-1], "id": "new-solution"})
            late.write_text(json.dumps(items, indent=2))

    result = migrate(root, "2.0.0", on_file=agent_writes)
    assert result.status == "success" and "frontend-developer/solutions.json" in result.files_written
    items = json.loads(late.read_bytes())
    assert len(items) == 56 and items[-1]["id"] == "new-solution" and items[-1]["version"] == "2.0.0"


def test_document_locked_by_loom_is_left_alone_and_the_run_is_incomplete(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path)
    locked = root / "debugger" / "patterns.json"
    (root / "debugger" / "patterns.json.lock").mkdir()  # Loom's proper-lockfile, fresh
    before = locked.read_bytes()
    result = migrate(root, "2.0.0")
    assert result.status == "failure" and [p["code"] for p in result.problems] == ["locked"]
    assert locked.read_bytes() == before and "debugger/patterns.json" not in result.files_written
    assert not (root / "config" / "schema_version.json").exists()  # the store is not all 2.0.0
    (root / "debugger" / "patterns.json.lock").rmdir()
    assert migrate(root, "2.0.0").status == "success"
    assert detect(root).versions == {"2.0.0": 630}
