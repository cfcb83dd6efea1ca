"""backup/verify tasks: catalog rows, verification feeding health, restore over the live store, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_runtime import REPO, runtime_env
from tests.realdata import extract_loom


def apply(task, **kwargs):
    return task.apply(kwargs=kwargs, throw=True).get()


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_create_records_catalog_rows_and_incremental_reads_only_changes(tmp_path: Path, aml_settings) -> None:
    from models import queries
    from tasks import backup
    from workers.catalog import session_scope

    store = extract_loom("loom-plain-v1.0", tmp_path)
    full = apply(backup.create, store=str(store))
    (store / "debugger" / "note.json").write_text('{"n": 1}')
    incr = apply(backup.create, store=str(store), incremental=True, tags=["x"])
    assert full["backup_type"] == "full" and incr["backup_type"] == "incremental"
    assert incr["files_read"] == 1 and incr["files_unchanged"] == full["file_count"]
    with session_scope(aml_settings.catalog_url) as session:
        rows = {b.backup_id: b for b in queries.list_backups(session, os.path.realpath(store))}
    assert set(rows) == {full["backup_id"], incr["backup_id"]}
    assert rows[incr["backup_id"]].parent_backup_id == full["backup_id"]
    assert rows[incr["backup_id"]].tags == ["x"]
    listed = apply(backup.list_, store=str(store))["snapshots"]
    assert [s["backup_id"] for s in listed if not s["legacy"]] == [full["backup_id"], incr["backup_id"]]
    assert all(s["verify_status"] == "unverified" for s in listed if not s["legacy"])


def test_failed_verification_is_recorded_and_health_stops_counting_it(tmp_path: Path, aml_settings) -> None:
    from tasks import backup, health, verify

    store = extract_loom("loom-plain-v1.0", tmp_path)
    snap = apply(backup.create, store=str(store))
    ok = apply(verify.verify, store=str(store), read_data=True)
    assert ok["status"] == "success" and ok["verified"][snap["backup_id"]] == "ok"
    report = apply(health.check, store=str(store))["report"]
    assert report["checks"]["recent_backup"] is True
    # flip one byte in the (only) pack
    packs = [p for p in (store.parent / "memory-backup" / "packs").rglob("*") if p.is_file()]
    assert len(packs) == 1
    data = bytearray(packs[0].read_bytes())
    data[len(data) // 2] ^= 0x01
    packs[0].write_bytes(bytes(data))
    bad = apply(verify.verify, store=str(store), read_data=True)
    assert bad["status"] == "failure" and bad["verified"][snap["backup_id"]] == "failed"
    assert bad["errors"] and any(snap["backup_id"] in p["snapshots"] for p in bad["errors"])
    report = apply(health.check, store=str(store))["report"]
    assert report["checks"]["recent_backup"] is False
    [recent] = [r for r in report["results"] if r["check"] == "recent_backup"]
    assert snap["backup_id"] in recent["details"]["failed_verification"]


def test_restore_over_live_store_takes_safety_snapshot(tmp_path: Path, aml_settings) -> None:
    from tasks import backup

    store = extract_loom("loom-plain-v1.0", tmp_path)
    original = tree(store)
    snap = apply(backup.create, store=str(store))
    (store / "debugger" / "patterns.json").write_text("[]")
    (store / "debugger" / "new.json").write_text("[]")
    damaged = tree(store)
    dry = apply(backup.restore_, store=str(store), backup_id=snap["backup_id"], dry_run=True)
    assert tree(store) == damaged and dry["safety_backup_id"] is None
    assert "debugger/patterns.json" in dry["changed"] and "debugger/new.json" in dry["removed"]
    result = apply(backup.restore_, store=str(store), backup_id=snap["backup_id"])
    assert result["status"] == "success" and result["safety_backup_id"]
    assert tree(store) == original
    # the safety snapshot holds the state we overwrote
    out = tmp_path / "safety"
    apply(backup.restore_, store=str(store), backup_id=result["safety_backup_id"], target=str(out))
    assert tree(out) == damaged


def test_point_in_time_and_bad_arguments(tmp_path: Path, aml_settings) -> None:
    from tasks import backup

    store = extract_loom("loom-plain-v1.0", tmp_path)
    first = apply(backup.create, store=str(store))
    (store / "debugger" / "v2.json").write_text("[2]")
    second = apply(backup.create, store=str(store), incremental=True)
    out = tmp_path / "pit"
    apply(backup.restore_, store=str(store), at=first["time"], target=str(out))
    assert not (out / "debugger" / "v2.json").exists()
    out2 = tmp_path / "pit2"
    apply(backup.restore_, store=str(store), at=second["time"], target=str(out2))
    assert (out2 / "debugger" / "v2.json").read_text() == "[2]"
    with pytest.raises(ValueError):
        apply(backup.restore_, store=str(store))
    with pytest.raises(ValueError):
        apply(backup.restore_, store=str(store), at="not a time")


def test_auto_is_incremental_then_rotates(tmp_path: Path, aml_settings) -> None:
    from tasks import backup

    store = extract_loom("loom-plain-v1.0", tmp_path)
    one = apply(backup.auto, store=str(store))
    two = apply(backup.auto, store=str(store))
    assert one["backup"]["backup_type"] == "full" and two["backup"]["backup_type"] == "incremental"
    assert two["backup"]["files_read"] == 0
    assert {d["backup_id"] for d in two["rotate"]["kept"]} >= {one["backup_id"], two["backup_id"]}
    rotated = apply(backup.rotate_, store=str(store), keep={"keep_last": 1})
    assert [d["backup_id"] for d in rotated["kept"]] == [two["backup_id"]]
    listed = [s["backup_id"] for s in apply(backup.list_, store=str(store))["snapshots"] if not s["legacy"]]
    assert listed == [two["backup_id"]]


@pytest.mark.slow
def test_cli_backup_round_trip_and_verify_exit_code(tmp_path: Path) -> None:
    store = extract_loom("loom-gzip-v1.0", tmp_path)
    env = runtime_env(tmp_path / "home", "redis://127.0.0.1:1/0")
    env["AML_LOCK_URL"] = "none://"

    def aml(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "cli.main", str(store), *args], cwd=REPO, env=env,
                              capture_output=True, timeout=120)

    created = aml("backup", "create", "--json")
    assert created.returncode == 0, created.stderr.decode()
    backup_id = json.loads(created.stdout)["backup_id"]
    listed = json.loads(aml("backup", "list", "--json").stdout)
    kinds = {s["backup_id"]: s["legacy_origin"] for s in listed["snapshots"]}
    assert kinds[backup_id] is None and "typescript" in kinds.values()  # Loom's TS backup is listed too
    restored = aml("backup", "restore", "--backup-id", backup_id, "--target", str(tmp_path / "out"))
    assert restored.returncode == 0, restored.stderr.decode()
    assert tree(tmp_path / "out") == tree(store)
    assert aml("backup", "verify", "--read-data").returncode == 0
    index = next((store.parent / "memory-backup" / "index").iterdir())
    index.write_bytes(index.read_bytes()[:-3] + b"!!!")
    broken = aml("backup", "verify")
    assert broken.returncode == 2
    assert index.name.encode() in broken.stdout


@pytest.mark.slow
def test_cli_reports_a_locked_store_and_exits_non_zero(tmp_path: Path, aml_settings, monkeypatch) -> None:
    from typer.testing import CliRunner

    from cli.main import store_app
    from workers.app import current_aml_app
    from workers.locks import store_lock
    app = current_aml_app()

    monkeypatch.setitem(app.conf, "aml_settings", aml_settings.replace(lock_timeout=0.3))
    store = extract_loom("loom-plain-v1.0", tmp_path)
    repo = store.parent / "memory-backup"
    runner = CliRunner()
    with store_lock(os.path.realpath(store), redis_url=None, store_dir=Path(os.path.realpath(store)), wait_s=1):
        for args in (["create"], ["rotate", "--max-backups", "5"], ["auto"], ["restore", "--backup-id", "x"]):
            res = runner.invoke(store_app, ["backup", *args], obj={"store": str(store)})
            assert res.exit_code == 2, (args, res.output, res.exception)
            assert f"backup {args[0]} skipped" in res.output, res.output
            assert "is locked by another operation" in res.output and "nothing was changed" in res.output
        res = runner.invoke(store_app, ["backup", "create", "--json"], obj={"store": str(store)})
        assert res.exit_code == 2
        assert json.loads(res.stdout)["status"] == "skipped"
    assert not any((repo / "snapshots").glob("*.json")) if (repo / "snapshots").exists() else True
    created = runner.invoke(store_app, ["backup", "create"], obj={"store": str(store)})  # lock free: runs
    assert created.exit_code == 0, created.output
