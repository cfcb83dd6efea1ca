"""The migrate tasks (inline, as the CLI runs them), the seeds' CLI, and the catalog's own schema
commands (``aml db downgrade`` / ``upgrade``, and the worker's refusal of a catalog that is behind)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tests.fixtures_runtime import REPO, runtime_env
from tests.realdata import extract_loom, snapshot_tree


def apply(task, **kwargs):
    return task.apply(kwargs=kwargs, throw=True).get()


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_migrate_task_records_its_run_and_a_pre_migrate_snapshot(tmp_path: Path, aml_settings) -> None:
    from aml.backup import Repository, restore
    from models import queries
    from tasks import migrate as migrate_tasks
    from workers.catalog import session_scope

    store = extract_loom("loom-plain-v1.0", tmp_path / "p")
    pristine = files(store)
    result = apply(migrate_tasks.migrate, store=str(store), version="2.0.0")
    assert result["status"] == "success" and result["outcome"] == "migrated"
    assert result["backup_id"] and result["records_changed"] == 630 and result["target"] == "2.0.0"
    store_id = os.path.realpath(store)
    with session_scope(aml_settings.catalog_url) as session:
        (run,) = queries.recent_task_runs(session, store=store_id, operation="migrate")
        assert run.status == "success" and run.arguments["version"] == "2.0.0"
        assert run.result is not None and run.result["backup_id"] == result["backup_id"]
        assert run.id == result["task_run_id"]
        backup = queries.get_backup(session, result["backup_id"])
        assert backup is not None and "pre-migrate" in (backup.tags or [])
    # the snapshot puts back exactly what the migration changed
    restored = tmp_path / "restored"
    restore(Repository(store.parent / "memory-backup"), result["backup_id"], restored)
    assert files(restored) == pristine

    again = apply(migrate_tasks.migrate, store=str(store), version="2.0.0")
    assert again["outcome"] == "unchanged" and again["backup_id"] is None  # nothing to protect, nothing taken


def test_dry_run_and_refusal_take_no_snapshot_and_write_nothing(tmp_path: Path, aml_settings) -> None:
    from tasks import migrate as migrate_tasks

    project = tmp_path / "p"
    store = extract_loom("loom-plain-v1.1.0", project)
    items = json.loads((store / "debugger" / "decisions.json").read_bytes())
    items[0].update(tags=["kept"], active=False)
    (store / "debugger" / "decisions.json").write_text(json.dumps(items, indent=2))
    before = snapshot_tree(project)
    dry = apply(migrate_tasks.migrate, store=str(store), version="2.0.0", dry_run=True)
    assert dry["status"] == "success" and dry["outcome"] == "dry_run" and dry["backup_id"] is None
    refused = apply(migrate_tasks.migrate, store=str(store), version="1.0.0")
    assert refused["status"] == "failure" and refused["refused"] and refused["lossy_count"] == 1
    assert snapshot_tree(project) == before  # no memory-backup/ either
    found = apply(migrate_tasks.detect_versions, store=str(store))
    assert found["version"] == "1.1.0" and found["claimed"] == "1.1.0" and found["status"] == "success"


def test_unparseable_document_fails_the_task_run_naming_it(tmp_path: Path, aml_settings) -> None:
    from models import queries
    from tasks import migrate as migrate_tasks
    from workers.catalog import session_scope

    store = extract_loom("loom-gzip-v1.0", tmp_path)
    (store / "debugger" / "patterns.json").write_bytes(b'[{"id": "x", "agent": "debugger",')
    result = apply(migrate_tasks.migrate, store=str(store))
    assert result["status"] == "failure" and result["unparseable"] == ["debugger/patterns.json"]
    assert result["backup_id"] and len(result["files_written"]) == 11
    with session_scope(aml_settings.catalog_url) as session:
        (run,) = queries.recent_task_runs(session, operation="migrate")
        assert run.status == "failure" and run.result["unparseable"] == ["debugger/patterns.json"]


def test_rollback_through_the_task_after_an_interrupted_run(tmp_path: Path, aml_settings) -> None:
    from aml.migrate import build_plan
    from aml.migrate.files import sha256
    from aml.migrate.journal import Journal
    from aml.store.atomic import atomic_write
    from tasks import migrate as migrate_tasks

    store = extract_loom("loom-plain-v1.0", tmp_path / "p")
    pristine = {k: v for k, v in snapshot_tree(store).items() if "/" in k and not k.endswith("/")}
    plan = build_plan(store, "2.0.0", keep_bytes_limit=1 << 30)  # a run that got as far as its journal and one
    # file, then died (the new contents kept, to write the first one as that run did)
    journal = Journal(store, ["mig_dead"], plan.now, "2.0.0", plan.now,
                      files={fp.relpath: fp.sha256 for fp in plan.writes} | {"config/schema_version.json": ""})
    journal.save()
    first = plan.writes[0]
    journal.keep_original(first.relpath)
    assert first.new_bytes is not None
    atomic_write(store / first.relpath, first.new_bytes)  # as aml writes: a new inode, renamed over
    journal.record_written(first.relpath, sha256(first.new_bytes))
    assert apply(migrate_tasks.detect_versions, store=str(store))["journal"]["target"] == "2.0.0"
    undone = apply(migrate_tasks.migrate, store=str(store), rollback=True)
    assert undone["status"] == "success" and undone["restored"] == [first.relpath] and undone["backup_id"]
    after = {k: v for k, v in snapshot_tree(store).items() if k in pristine}
    assert after == pristine
    assert not (store / ".aml").exists()


def _aml(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def _cli(store: Path, *args: str) -> Result:
    """``aml <store> ARGS`` in this process (the console script's routing is tested once, below)."""
    from cli.main import store_app

    return CliRunner().invoke(store_app, list(args), obj={"store": str(store)})


@pytest.mark.slow
def test_seed_cli_commands(tmp_path: Path, aml_settings) -> None:
    store = extract_loom("loom-plain-v1.0", tmp_path / "p")
    env = runtime_env(aml_settings.home, "redis://127.0.0.1:1/0") | {"AML_LOCK_URL": "none://"}
    detect = _aml([str(store), "migrate", "detect", "--json"], env)  # the real console-script entry point
    assert detect.returncode == 0, detect.stderr
    assert json.loads(detect.stdout)["version"] == "1.0.0"
    dry = _cli(store, "migrate", "migrate", "--version", "1.2.0", "--dry-run")
    assert dry.exit_code == 0 and "would change 630 of 630 records in 12 files" in " ".join(dry.stdout.split())
    done = _cli(store, "migrate", "migrate", "--version", "1.2.0", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["backup_id"]
    latest = _cli(store, "migrate", "migrate-latest")
    assert latest.exit_code == 0 and "1.2.0 -> 2.0.0" in latest.stdout
    assert json.loads(_cli(store, "migrate", "detect", "--json").stdout)["claimed"] == "2.0.0"
    bad = _cli(store, "migrate", "migrate", "--version", "3.0")
    assert bad.exit_code == 2 and "unknown schema version" in bad.output
    (store / "debugger" / "decisions.json").write_text("[{")
    broken = _cli(store, "migrate", "migrate", "--version", "1.0.0")
    assert broken.exit_code == 2 and "debugger/decisions.json" in broken.stdout
    mixed = _cli(store, "migrate", "detect")
    assert mixed.exit_code == 1 and "unreadable" in mixed.stdout


def test_db_downgrade_and_upgrade_commands(aml_settings) -> None:
    from cli.service import service_app

    def db(*args: str) -> str:
        result = CliRunner().invoke(service_app, ["db", *args])
        assert result.exit_code == 0, result.output
        return " ".join(result.stdout.split())

    from workers.catalog import head_revision

    head = head_revision()  # the newest migration, whichever it is
    assert f"at revision {head}" in db("upgrade")
    assert f"{head} (head {head})" in db("current")
    assert "at revision base" in db("downgrade", "base")
    assert f"none (head {head})" in db("current")
    assert f"at revision {head}" in db("upgrade")


@pytest.mark.slow
@pytest.mark.postgres
def test_worker_refuses_a_catalog_that_is_behind(tmp_path: Path) -> None:
    """A shared (PostgreSQL) catalog is never migrated behind its operator's back: after
    ``aml db downgrade base`` the worker will not start and names the command to run."""
    url = os.environ.get("AML_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("AML_TEST_POSTGRES_URL is not set")
    import uuid

    import sqlalchemy as sa

    from tests.catalog_helpers import postgres_schema_url

    schema = f"aml_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        env = runtime_env(tmp_path / "home", "redis://127.0.0.1:1/0")
        env["AML_CATALOG_URL"] = postgres_schema_url(url, schema)
        assert _aml(["db", "upgrade"], env).returncode == 0
        assert _aml(["db", "downgrade", "base"], env).returncode == 0
        worker = _aml(["worker", "--pool", "solo"], env)
        assert worker.returncode == 2 and "run `aml db upgrade` first" in " ".join(worker.stderr.split())
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
