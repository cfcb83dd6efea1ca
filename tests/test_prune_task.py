"""The prune tasks end to end: plan, dry run, pre-prune snapshot, rewrites, prune_actions rows, undo, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import delete, update

from tests.fixtures_runtime import REPO, runtime_env
from tests.realdata import extract_loom, snapshot_tree

NOW = "2026-11-23T00:00:00Z"
STRATEGIES = ["time_based", "performance_based", "space_based"]


def apply(task, **kwargs):
    return task.apply(kwargs=kwargs, throw=True).get()


def files(root: Path) -> dict[str, bytes]:
    return {k: v[0] for k, v in snapshot_tree(root).items() if (root / k).is_file()}


def test_dry_run_task_writes_nothing_and_takes_no_snapshot(tmp_path: Path, aml_settings) -> None:
    from tasks import prune

    store = extract_loom("loom-gzip-v1.0", tmp_path)
    before = snapshot_tree(store.parent)
    result = apply(prune.run, store=str(store), strategies=STRATEGIES, dry_run=True, now=NOW,
                   overrides={"agent_limit_mib": 0.02})
    assert result["status"] == "success" and result["dry_run"] is True
    assert result["plan"]["counts"]["total"] == len(result["plan"]["actions"]) > 0
    assert result["backup_id"] is None and result["applied"] is None
    assert snapshot_tree(store.parent) == before, "a dry run changes no byte and no mtime"


@pytest.mark.parametrize("batch", [None, 3], ids=["one-statement", "rows-3-at-a-time"])
def test_run_records_snapshot_and_one_row_per_record_then_undo(tmp_path: Path, aml_settings, batch: int | None,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from aml.backup import Repository, restore
    from models import queries
    from tasks import prune
    from workers.catalog import session_scope

    if batch is not None:  # a document's undo rows written ahead in several statements of one transaction
        monkeypatch.setattr(prune, "WRITE_AHEAD_BATCH", batch)
    store = extract_loom("loom-gzip-v1.0", tmp_path)
    before = files(store)
    result = apply(prune.run, store=str(store), strategies=STRATEGIES, now=NOW, overrides={"agent_limit_mib": 0.02})
    assert result["status"] == "success", result
    counts, applied = result["plan"]["counts"], result["applied"]
    assert applied["removed"] + applied["archived"] == counts["total"] > 0
    assert applied["archived"] == counts["archived"] > 0
    run_id, backup_id = result["run_id"], result["backup_id"]
    store_id = os.path.realpath(store)
    with session_scope(aml_settings.catalog_url) as session:
        rows = queries.prune_actions_for_run(session, run_id)
        assert len(rows) == counts["total"]
        assert {r.backup_id for r in rows} == {backup_id}
        assert {r.store for r in rows} == {store_id}
        assert {r.task_run_id for r in rows} == {result["task_run_id"]}
        planned = {(a["document"], a["record_id"], a["reason"], a["action"]) for a in result["plan"]["actions"]}
        assert {(r.document_path, r.record_id, r.reason, r.action) for r in rows} == planned
        payloads = [queries.prune_action_payload(session, r) for r in rows]
        assert all(p["text"] and p["item"] == {"id": r.record_id} and p["v"] == 2
                   for r, p in zip(rows, payloads, strict=True))
        by_document: dict[str, set[object]] = {}
        logs: dict[str, set[int | None]] = {}
        for r in rows:
            by_document.setdefault(r.document_path, set()).add(r.created_at)
            logs.setdefault(r.document_path, set()).add(r.undo_log_id)
        assert all(len(times) == 1 for times in by_document.values()), "one write-ahead instant per document"
        # undo logs of about UNDO_LOG_BYTES each, none across two WRITE_AHEAD_BATCH statements or two documents
        sizes = {d: sum(1 for r in rows if r.document_path == d) for d in logs}
        assert all(-(-sizes[d] // (batch or 5000)) <= len(ids) <= sizes[d] and None not in ids
                   for d, ids in logs.items())
        assert len(set().union(*logs.values())) == sum(len(ids) for ids in logs.values())
        assert queries.get_backup(session, backup_id) is not None
        assert queries.get_task_run(session, run_id).status == "success"
    # decisions were archived in the backup repository, not deleted
    archives = list((store.parent / "memory-backup" / "archives").rglob("decisions_*.json.gz"))
    assert archives
    # the pre-prune snapshot restores the store as it was
    target = tmp_path / "restored"
    restore(Repository(store.parent / "memory-backup"), backup_id, target)
    assert files(target) == before

    undone = apply(prune.undo, store=str(store), run_id=run_id)
    assert undone["restored"] == counts["total"] and undone["status"] == "success"
    assert undone["backup_id"], "a pre-undo safety snapshot"
    assert files(store) == before, "undo gives back the identical documents"
    with session_scope(aml_settings.catalog_url) as session:
        assert queries.prune_actions_for_run(session, run_id) == []
        assert len(queries.prune_actions_for_run(session, run_id, include_undone=True)) == counts["total"]
    again = apply(prune.undo, store=str(store), run_id=run_id)
    assert again["restored"] == 0 and again["already_undone"] == counts["total"]
    assert files(store) == before

    with pytest.raises(ValueError, match="no prune run"):
        apply(prune.undo, store=str(store), run_id="no-such-run")


@pytest.mark.slow
@pytest.mark.parametrize("version", [1, 2])
def test_undo_of_rows_written_before_undo_logs(version: int, tmp_path: Path, aml_settings) -> None:
    """A run recorded before undo logs (catalog revision 0006), each row holding its payload in ``record``: of payload
    version 1 (the whole record parsed as ``item``, as the catalog's JSON keeps it: NaN as null) or 2 (its key and
    text), is undone through the task as a new one is: byte-identical documents, the archives emptied, and a second
    undo finds every record in place."""
    from models import queries
    from models.tables import PruneAction, PruneUndoLog
    from tasks import prune
    from workers.catalog import session_scope

    store = extract_loom("loom-plain-v1.0", tmp_path)
    for path in store.glob("*/decisions.json"):  # a value the catalog's JSON cannot keep as it is
        items = json.loads(path.read_text(encoding="utf-8"))
        items[0]["score"] = float("nan")
        path.write_text(json.dumps(items, indent=2), encoding="utf-8")
    before = files(store)
    result = apply(prune.run, store=str(store), strategies=STRATEGIES, now=NOW, overrides={"agent_limit_mib": 0.02})
    assert result["status"] == "success" and result["applied"]["archived"] > 0
    run_id = result["run_id"]
    with session_scope(aml_settings.catalog_url) as session:
        rows = queries.prune_actions_for_run(session, run_id)
        for row in rows:  # as the code before version 2 wrote them: the payload in the row, not in an undo log
            record = queries.prune_action_payload(session, row)
            if version == 1:
                record.update(v=1, item=json.loads(record["text"]))
            session.execute(update(PruneAction).where(PruneAction.id == row.id)
                            .values(record=record, undo_log_id=None, undo_index=None))
    with session_scope(aml_settings.catalog_url) as session:
        rows = queries.prune_actions_for_run(session, run_id)
        assert rows and all(r.record["v"] == version and r.record["item"]["id"] == r.record_id for r in rows)
        assert version == 2 or any(r.record["item"].get("score", 0) is None for r in rows)
        session.execute(delete(PruneUndoLog))

    undone = apply(prune.undo, store=str(store), run_id=run_id)
    assert undone["status"] == "success" and undone["restored"] == len(rows)
    assert files(store) == before
    assert not list((store.parent / "memory-backup" / "archives").rglob("decisions_*.json.gz"))
    with session_scope(aml_settings.catalog_url) as session:  # undo once more, from the rows not marked
        session.execute(update(PruneAction).where(PruneAction.run_id == run_id).values(undone_at=None))
    again = apply(prune.undo, store=str(store), run_id=run_id)
    assert again["restored"] == 0 and again["already_present"] == len(rows)
    assert files(store) == before


def test_nothing_to_prune_takes_no_snapshot(tmp_path: Path, aml_settings) -> None:
    from tasks import prune

    store = extract_loom("loom-plain-v1.0", tmp_path)
    result = apply(prune.run, store=str(store), strategies=["time_based"], now="2025-01-01T00:00:00Z")
    assert result["plan"]["counts"]["total"] == 0
    assert result["backup_id"] is None and result["applied"] is None
    assert not (store.parent / "memory-backup").exists()


def test_bad_arguments_are_refused(tmp_path: Path, aml_settings) -> None:
    from tasks import prune

    store = extract_loom("loom-plain-v1.0", tmp_path)
    with pytest.raises(ValueError, match="unknown strategy"):
        apply(prune.run, store=str(store), strategies=["size_based"])
    with pytest.raises(ValueError, match="unknown prune setting"):
        apply(prune.run, store=str(store), overrides={"max_age": 3})


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """Run ``aml <argv>`` in this process (the console script's own ``main``); returns (exit code, stdout)."""
    from cli.main import main

    capsys.readouterr()
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().out


def test_cli_seeds_form_prune_and_undo(tmp_path: Path, aml_settings, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    store = extract_loom("loom-plain-v1.0", tmp_path)
    before = files(store)
    code, out = run_cli(capsys, str(store), "prune", "--strategies", "time_based", "performance_based",
                        "--aggressive", "--dry-run", "--json", "--now", NOW)
    assert code == 0
    plan = json.loads(out)["plan"]
    assert plan["strategies"] == ["time_based", "performance_based"]
    assert plan["config"]["pattern_max_age_days"] == 60 and plan["config"]["min_success_rate"] == 0.3
    assert plan["counts"]["total"] > 0
    assert files(store) == before

    code, out = run_cli(capsys, str(store), "prune", "--strategies", "time_based", "space_based",
                        "--agent-limit-mib", "0.1", "--now", NOW)
    assert code == 0, out
    assert "prune plan" in out and "pre-prune snapshot" in out and "memory_limit_exceeded" in out
    run_id = out.split("prune undo")[-1].split()[0]
    assert files(store) != before
    code, out = run_cli(capsys, str(store), "prune", "undo", run_id)
    assert code == 0, out
    assert "restored" in out
    assert files(store) == before


def test_console_script_dry_run_json(tmp_path: Path) -> None:
    store = extract_loom("loom-gzip-v1.0", tmp_path)
    before = snapshot_tree(store.parent)
    env = runtime_env(tmp_path / "home", "redis://127.0.0.1:1/0")
    env["AML_LOCK_URL"] = "none://"
    proc = subprocess.run([sys.executable, "-m", "cli.main", str(store), "prune", "--strategies", "time_based",
                           "performance_based", "space_based", "--dry-run", "--json"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["dry_run"] and result["plan"]["strategies"] == STRATEGIES
    assert snapshot_tree(store.parent) == before


def test_undo_of_a_run_without_rows_names_its_pre_prune_snapshot(tmp_path: Path, aml_settings) -> None:
    """A run killed between its rewrites and its catalog rows: undo cannot put records back one by
    one, and says which snapshot holds the store as it was."""
    from sqlalchemy import delete

    from models.tables import PruneAction
    from tasks import prune
    from workers.catalog import session_scope

    store = extract_loom("loom-gzip-v1.0", tmp_path)
    result = apply(prune.run, store=str(store), strategies=STRATEGIES, now=NOW, overrides={"agent_limit_mib": 0.02})
    assert result["status"] == "success" and result["backup_id"]
    with session_scope(aml_settings.catalog_url) as session:  # the rows the killed run never wrote
        session.execute(delete(PruneAction).where(PruneAction.run_id == result["run_id"]))
    with pytest.raises(ValueError, match=f"pre-prune snapshot {result['backup_id']}"):
        apply(prune.undo, store=str(store), run_id=result["run_id"])
    with pytest.raises(ValueError, match="no prune run 'nope' recorded"):
        apply(prune.undo, store=str(store), run_id="nope")
