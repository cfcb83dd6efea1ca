"""Restore drills: real stores, real repositories, a real SQLite catalog; the drill, health's restore_tested,
the CLI's exit codes and beat's weekly entry."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.backup_helpers import flip_byte, make_json_store


def apply(task, **kwargs):
    return task.apply(kwargs=kwargs, throw=True).get()


def _store(tmp_path: Path) -> Path:
    return make_json_store(tmp_path / "proj" / "memory", agents=3, docs=12)


def _packs(store: Path) -> list[Path]:
    return sorted(p for p in (store.parent / "memory-backup" / "packs").rglob("*") if p.is_file())


def _scratch_left(settings) -> list[str]:
    root = settings.home / "drills"
    return sorted(os.listdir(root)) if root.exists() else []


def _restore_tested(report: dict) -> dict:
    [result] = [r for r in report["results"] if r["check"] == "restore_tested"]
    return result


def _drills(settings) -> list:
    from models import queries
    from workers.catalog import session_scope

    with session_scope(settings.catalog_url) as session:
        return [queries.restore_drill_to_dict(d) for d in queries.list_restore_drills(session)]


# ------------------------------------------------------------------------------------------------ the task


def test_drill_passes_on_a_good_repository_and_records_it(tmp_path: Path, aml_settings) -> None:
    from tasks import backup, drill, health

    store = _store(tmp_path)
    snap = apply(backup.create, store=str(store))
    (store / "agent-0" / "late.json").write_text('{"id": "late"}')  # after the snapshot: not in it
    result = apply(drill.drill, store=str(store))
    assert result["status"] == "success" and result["drill_status"] == "passed" and result["passed"]
    assert result["backup_id"] == snap["backup_id"] and result["agent"] is None
    assert result["files_expected"] == result["files_checked"] == snap["file_count"]
    assert result["bytes_checked"] == snap["total_size_bytes"] and result["failures"] == []
    assert result["scratch_removed"] and _scratch_left(aml_settings) == []
    assert result["duration_seconds"] >= result["restore_seconds"] > 0
    [row] = _drills(aml_settings)
    assert (row["status"], row["backup_id"], row["store"]) == ("passed", snap["backup_id"], os.path.realpath(store))
    assert row["files_checked"] == snap["file_count"] and row["bytes_checked"] == snap["total_size_bytes"]
    assert row["duration_s"] == result["duration_seconds"] and row["finished_at"] and row["failures"] == []
    assert row["repository"] == str(store.parent / "memory-backup") and row["task_id"]

    report = apply(health.check, store=str(store))["report"]
    tested = _restore_tested(report)
    assert tested["passed"] and snap["backup_id"] in tested["message"]
    # the seventh check is reported after the seeds' six, whose keys and order are unchanged
    assert list(report["checks"]) == ["directory_structure", "memory_within_limits", "index_exists",
                                      "recent_backup", "file_integrity", "performance_ok", "restore_tested"]
    assert report["health_checks"]["total"] == 7


def test_one_agent_drill_checks_that_agent_only(tmp_path: Path, aml_settings) -> None:
    from tasks import backup, drill

    store = _store(tmp_path)
    apply(backup.create, store=str(store))
    expected = sorted(p.relative_to(store).as_posix() for p in (store / "agent-1").rglob("*") if p.is_file())
    result = apply(drill.drill, store=str(store), agent="agent-1")
    assert result["passed"] and result["agent"] == "agent-1"
    assert result["files_checked"] == result["files_expected"] == len(expected) == 12
    assert result["bytes_checked"] == sum((store / p).stat().st_size for p in expected)
    missing = apply(drill.drill, store=str(store), agent="nobody")
    assert missing["status"] == "failure" and missing["drill_status"] == "error"
    assert "nobody" in missing["error"] and "not in snapshot" in missing["error"]
    with pytest.raises(ValueError, match="top-level"):
        apply(drill.drill, store=str(store), agent="../x")
    assert [d["status"] for d in _drills(aml_settings)] == ["error", "passed"]  # newest first
    assert _scratch_left(aml_settings) == []


def test_flipped_byte_fails_the_drill_naming_the_file_and_health_turns_critical(tmp_path: Path,
                                                                                  aml_settings) -> None:
    from tasks import backup, drill, health, verify

    store = _store(tmp_path)
    snap = apply(backup.create, store=str(store))
    assert apply(drill.drill, store=str(store))["passed"]
    [pack] = _packs(store)
    flip_byte(pack, pack.stat().st_size // 2)
    result = apply(drill.drill, store=str(store))
    assert result["status"] == "failure" and result["drill_status"] == "failed" and not result["passed"]
    assert result["failures"] and result["files_checked"] == snap["file_count"] - len(result["failures"])
    assert result["scratch_removed"] and _scratch_left(aml_settings) == []
    # the files named are exactly those `verify --read-data` finds damaged, each with the pack's reason
    checked = apply(verify.verify, store=str(store), read_data=True)
    damaged = {f.split(":", 1)[1] for p in checked["errors"] for f in p["files"]}
    assert {f["path"] for f in result["failures"]} == damaged
    assert all(pack.name in f["reason"] for f in result["failures"])
    row = _drills(aml_settings)[0]
    assert row["status"] == "failed" and row["failures"] == result["failures"]

    report = apply(health.check, store=str(store))
    tested = _restore_tested(report["report"])
    assert tested["passed"] is False and tested["severity"] == "critical"
    assert report["report"]["status"] == "critical" and report["report"]["status_code"] == 2
    assert report["report"]["checks"]["restore_tested"] is False
    # a drill that cannot run proves nothing: still critical until a drill passes
    apply(drill.drill, store=str(store), backup_id="full_19990101_000000")
    assert _restore_tested(apply(health.check, store=str(store))["report"])["severity"] == "critical"


def test_damaged_manifest_body_fails_the_drill(tmp_path: Path, aml_settings) -> None:
    from tasks import backup, drill

    store = _store(tmp_path)
    snap = apply(backup.create, store=str(store))
    [body] = (store.parent / "memory-backup" / "snapshots" / "bodies").glob("*")
    flip_byte(body, 10)
    result = apply(drill.drill, store=str(store))
    assert result["drill_status"] == "failed" and result["backup_id"] == snap["backup_id"]
    assert result["files_checked"] == 0 and len(result["failures"]) == 1
    assert result["failures"][0]["path"].startswith("snapshots/")
    assert _scratch_left(aml_settings) == []


def test_store_without_backups_errors_and_health_does_not_warn_twice(tmp_path: Path, aml_settings) -> None:
    from tasks import drill, health

    store = _store(tmp_path)
    result = apply(drill.drill, store=str(store))
    assert result["drill_status"] == "error" and result["status"] == "failure"
    assert "RepositoryNotFound" in result["error"]
    report = apply(health.check, store=str(store))["report"]
    assert report["checks"]["recent_backup"] is False  # the one warning about it
    tested = _restore_tested(report)
    assert tested["passed"] and "no backups yet" in tested["message"]


def test_no_drill_passed_in_14_days_warns(tmp_path: Path, aml_settings, monkeypatch) -> None:
    from models import queries
    from tasks import backup, health
    from workers.catalog import session_scope

    store = _store(tmp_path)
    store_id = os.path.realpath(store)
    repo = str(store.parent / "memory-backup")
    apply(backup.create, store=str(store))
    now = datetime.now(UTC)
    # a fresh backup, no drill yet: the weekly drill has not had its window
    assert _restore_tested(apply(health.check, store=str(store))["report"])["passed"]
    with session_scope(aml_settings.catalog_url) as session:
        queries.record_backup(session, backup_id="full_old", store=store_id, repository=repo, backup_type="full",
                              created_at=now - timedelta(days=30), file_count=1, total_size_bytes=1,
                              stored_size_bytes=1)
        old = queries.start_restore_drill(session, store=store_id, repository=repo, now=now - timedelta(days=20))
        queries.finish_restore_drill(session, old.id, status="passed", backup_id="full_old", files_checked=1,
                                     now=now - timedelta(days=20))
    report = apply(health.check, store=str(store))["report"]
    tested = _restore_tested(report)
    assert tested["passed"] is False and tested["severity"] == "warning"
    assert "no restore drill passed in the last 14 days" in tested["message"] and "full_old" in tested["message"]
    assert report["status"] in ("warning", "critical") and report["checks"]["restore_tested"] is False
    # the window is AML_DRILL_MAX_AGE_DAYS: 30 days makes the 20-day-old drill recent again
    from workers.app import current_aml_app

    monkeypatch.setitem(current_aml_app().conf, "aml_settings", aml_settings.replace(drill_max_age_days=30.0))
    assert _restore_tested(apply(health.check, store=str(store))["report"])["passed"]


def test_drill_of_loom_legacy_backups_and_a_damaged_one(tmp_path: Path, aml_settings) -> None:
    """A store whose repository holds only Loom's own Python backups: the newest (an incremental applied on its
    full) is drilled without writing into that folder; a flipped byte in one of its ``.gz`` files fails it."""
    from tasks import drill
    from tests.backup_helpers import tree_state
    from tests.realdata import extract_loom

    store = extract_loom("loom-plain-v1.0-pyops", tmp_path)
    repo = store.parent / "memory-backup"
    before = tree_state(repo)
    result = apply(drill.drill, store=str(store))
    assert result["passed"] and result["legacy"] and result["backup_id"] == "incr_20261122_104825"
    assert result["files_checked"] == result["files_expected"] > 0
    assert tree_state(repo) == before  # no lock file, nothing written into Loom's folder
    damaged = repo / "incr_20261122_104825" / "debugger" / "patterns.json.gz"
    flip_byte(damaged, damaged.stat().st_size // 2)
    bad = apply(drill.drill, store=str(store))
    assert bad["drill_status"] == "failed"
    assert [f["path"] for f in bad["failures"]] == ["debugger/patterns.json"]
    assert "does not decompress" in bad["failures"][0]["reason"]
    assert _scratch_left(aml_settings) == []


# --------------------------------------------------------------------------------------------- the engine


def test_check_restore_tested_rules() -> None:
    from aml.health.checks import BackupEvidence, DrillEvidence, Severity, check_restore_tested

    now = datetime(2026, 12, 2, 12, tzinfo=UTC)

    def days(n: float) -> datetime:
        return now - timedelta(days=n)

    old_backups = [BackupEvidence("full_a", days(40), "catalog"), BackupEvidence("incr_b", days(1), "catalog")]
    new_backups = [BackupEvidence("full_c", days(3), "catalog")]

    def judge(drills, backups=old_backups):
        return check_restore_tested(drills, backups, now, max_age_days=14)

    assert judge([], []).passed  # nothing backed up: recent_backup warns, not this
    assert judge([], new_backups).passed  # grace: the first backup is 3 days old
    assert judge([DrillEvidence(days(2), "error", error="no space")], new_backups).severity == Severity.WARNING
    assert judge([]).severity == Severity.WARNING
    assert judge([DrillEvidence(days(3), "passed", "incr_b")]).passed
    stale = judge([DrillEvidence(days(15), "passed", "incr_b")])
    assert stale.severity == Severity.WARNING and "incr_b" in stale.message
    failed = judge([DrillEvidence(days(30), "failed", "full_a", failures=2),
                    DrillEvidence(days(1), "error", error="locked")])
    assert failed.severity == Severity.CRITICAL and "full_a" in failed.message  # until a drill passes
    assert judge([DrillEvidence(days(30), "failed", "full_a"), DrillEvidence(days(1), "passed", "incr_b")]).passed
    assert judge([DrillEvidence(days(1), "failed", "incr_b"), DrillEvidence(days(2), "passed", "incr_b")],
                 []).severity == Severity.CRITICAL
    errored = judge([DrillEvidence(days(20), "passed", "full_a"), DrillEvidence(days(1), "error", error="boom")])
    assert errored.severity == Severity.WARNING and "boom" in errored.message


def test_scratch_is_removed_even_with_read_only_directories_and_leftovers_are_swept(tmp_path: Path) -> None:
    from aml.backup import Repository, create_snapshot
    from aml.backup.drill import SCRATCH_PREFIX, run_drill

    store = make_json_store(tmp_path / "store", agents=2, docs=3)
    os.chmod(store / "agent-1", 0o555)  # restored with this mode: rmtree alone could not empty it
    try:
        repo = Repository(tmp_path / "repo").init()
        snap = create_snapshot(store, repo, incremental=False)
    finally:
        os.chmod(store / "agent-1", 0o755)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # a dead drill's leftover on this host (pid 2**22 + 1 is above Linux's pid_max), another host's, a stranger
    dead = scratch / f"{SCRATCH_PREFIX}{2**22 + 1}.{socket.gethostname()}.abc123"
    other = scratch / f"{SCRATCH_PREFIX}{2**22 + 1}.another-host.example.abc123"
    for d in (dead, other, scratch / "keep-me"):
        (d / "x").mkdir(parents=True)
    result = run_drill(repo, scratch_root=scratch)
    assert result.passed and result.backup_id == snap.backup_id and result.scratch_removed
    assert result.files_checked == snap.file_count and result.dirs_expected >= 4
    assert sorted(os.listdir(scratch)) == sorted([other.name, "keep-me"])
    # a failing drill removes its copy too
    [pack] = sorted(p for p in (tmp_path / "repo" / "packs").rglob("*") if p.is_file())
    flip_byte(pack, pack.stat().st_size // 2)
    bad = run_drill(repo, agent="agent-1", scratch_root=scratch)
    assert not bad.passed and bad.scratch_removed and sorted(os.listdir(scratch)) == sorted([other.name, "keep-me"])


def test_a_newer_damaged_manifest_header_is_drilled_and_fails(tmp_path: Path) -> None:
    """The newest snapshot's header is damaged (``backup list`` leaves it out): the drill takes it, not the
    older intact one, and fails naming the header; in a shared repository (``source`` given) a damaged header
    of unknown store is not taken."""
    from aml.backup import Repository, create_snapshot
    from aml.backup.drill import choose_snapshot, run_drill

    store = make_json_store(tmp_path / "store", agents=1, docs=3)
    repo = Repository(tmp_path / "repo").init()
    first = create_snapshot(store, repo, incremental=False)
    (store / "agent-0" / "new.json").write_text("{}")
    second = create_snapshot(store, repo, incremental=True)
    header = tmp_path / "repo" / "snapshots" / f"{second.backup_id}.json"
    header.write_bytes(header.read_bytes().replace(b'"incremental"', b'"incrementaX"'))
    assert choose_snapshot(repo) == second.backup_id
    result = run_drill(repo, scratch_root=tmp_path / "scratch")
    assert not result.passed and result.backup_id == second.backup_id
    assert [f["path"] for f in result.failures] == [f"snapshots/{second.backup_id}.json"]
    assert choose_snapshot(repo, source=store) == first.backup_id
    assert run_drill(repo, source=store, scratch_root=tmp_path / "scratch").passed


def test_extra_and_altered_files_are_named(tmp_path: Path, monkeypatch) -> None:
    """The read-back compares with the manifest, not with what restore reported: a file changed or added in the
    scratch copy after the restore is named (a restorer bug that wrote wrong bytes would be caught)."""
    import aml.backup.drill as drill_mod
    from aml.backup import Repository, create_snapshot
    from aml.backup.restorer import restore as real_restore

    store = make_json_store(tmp_path / "store", agents=1, docs=5)
    (store / "agent-0" / "doc-003.json").chmod(0o640)
    repo = Repository(tmp_path / "repo").init()
    create_snapshot(store, repo, incremental=False)

    def tampering_restore(*args, **kwargs):
        res = real_restore(*args, **kwargs)
        target = Path(args[2])
        size = (store / "agent-0" / "doc-000.json").stat().st_size
        (target / "agent-0" / "doc-000.json").write_bytes(b"x" * size)  # same size, other bytes
        (target / "agent-0" / "doc-001.json").write_bytes(b"short")
        (target / "agent-0" / "extra.json").write_text("{}")  # the directory's mtime changes too
        (target / "agent-0" / "doc-002.json").unlink()
        (target / "agent-0" / "doc-003.json").chmod(0o644)  # same bytes, other mode
        st = (target / "agent-0" / "doc-004.json").stat()
        os.utime(target / "agent-0" / "doc-004.json", ns=(st.st_atime_ns, st.st_mtime_ns + 1500))  # other mtime
        return res

    monkeypatch.setattr(drill_mod, "restore", tampering_restore)
    result = drill_mod.run_drill(repo, scratch_root=tmp_path / "scratch")
    reasons = {f["path"]: f["reason"] for f in result.failures}
    assert set(reasons) == {"agent-0/doc-000.json", "agent-0/doc-001.json", "agent-0/doc-002.json",
                            "agent-0/doc-003.json", "agent-0/doc-004.json", "agent-0/extra.json", "agent-0/"}
    assert "sha256" in reasons["agent-0/doc-000.json"] and "size 5 bytes" in reasons["agent-0/doc-001.json"]
    assert "missing" in reasons["agent-0/doc-002.json"] and "not in the snapshot" in reasons["agent-0/extra.json"]
    assert reasons["agent-0/doc-003.json"] == "mode 0644 differs from the manifest's 0640"
    assert reasons["agent-0/doc-004.json"] == "modification time differs from the manifest's by +0.000001500 s"
    assert reasons["agent-0/"].startswith("modification time differs")
    assert result.scratch_removed and os.listdir(tmp_path / "scratch") == []


def test_symlinks_come_back_as_links_with_their_targets(tmp_path: Path, monkeypatch) -> None:
    """Snapshots store symlinks as links (never followed): the drill checks each one's target, and names a link
    restored with another target."""
    import aml.backup.drill as drill_mod
    from aml.backup import Repository, create_snapshot
    from aml.backup.restorer import restore as real_restore

    store = make_json_store(tmp_path / "store", agents=1, docs=2)
    os.symlink("doc-000.json", store / "agent-0" / "link.json")
    os.symlink("/nonexistent/outside", store / "agent-0" / "dangling")
    repo = Repository(tmp_path / "repo").init()
    snap = create_snapshot(store, repo, incremental=False)
    if not getattr(snap, "link_count", 0):
        pytest.skip("this repository format stores no symlinks")
    assert drill_mod.run_drill(repo, scratch_root=tmp_path / "scratch").passed

    def retargeting_restore(*args, **kwargs):
        res = real_restore(*args, **kwargs)
        link = Path(args[2]) / "agent-0" / "dangling"
        before = link.parent.stat()
        link.unlink()
        os.symlink("/elsewhere", link)
        os.utime(link.parent, ns=(before.st_atime_ns, before.st_mtime_ns))  # only the link differs
        return res

    monkeypatch.setattr(drill_mod, "restore", retargeting_restore)
    result = drill_mod.run_drill(repo, scratch_root=tmp_path / "scratch")
    assert [(f["path"], "target" in f["reason"]) for f in result.failures] == [("agent-0/dangling", True)]


# ------------------------------------------------------------------------------------------ CLI and beat


def test_cli_backup_drill_exit_codes(tmp_path: Path, aml_settings) -> None:
    from typer.testing import CliRunner

    from cli.main import store_app

    store = _store(tmp_path)
    runner = CliRunner()

    def aml(*args: str):
        return runner.invoke(store_app, ["backup", *args], obj={"store": str(store)})

    none = aml("drill")
    assert none.exit_code == 2 and "could not run" in none.output
    assert aml("create").exit_code == 0
    good = aml("drill")
    assert good.exit_code == 0, good.output
    text = " ".join(good.output.split())
    assert "restore drill of full_" in text and "passed" in text and "38 of 38 files checked" in text
    as_json = aml("drill", "--agent", "agent-2", "--json")
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["files_checked"] == 12
    [pack] = _packs(store)
    flip_byte(pack, pack.stat().st_size // 2)
    bad = aml("drill")
    assert bad.exit_code == 2, bad.output
    failed = [f["path"] for f in json.loads(aml("drill", "--json").stdout)["failures"]]
    assert failed and all(path in bad.output for path in failed) and ": failed;" in bad.output


@pytest.mark.slow
def test_cli_drill_in_a_subprocess_then_health_exit_code(tmp_path: Path) -> None:
    """``aml <store> backup drill`` as an operator runs it: a good repository exits 0, a damaged one 2, and the
    next ``monitor health`` exits 2 (critical)."""
    from tests.fixtures_runtime import REPO, runtime_env

    store = _store(tmp_path)
    env = runtime_env(tmp_path / "home", "redis://127.0.0.1:1/0")
    env["AML_LOCK_URL"] = "none://"

    def aml(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "cli.main", str(store), *args], cwd=REPO, env=env,
                              capture_output=True, timeout=180)

    assert aml("backup", "create").returncode == 0
    good = aml("backup", "drill")
    assert good.returncode == 0, good.stdout.decode() + good.stderr.decode()
    [pack] = _packs(store)
    flip_byte(pack, pack.stat().st_size // 2)
    bad = aml("backup", "drill")
    assert bad.returncode == 2 and b"failed" in bad.stdout
    health = aml("monitor", "health", "--json")
    assert health.returncode == 2
    assert json.loads(health.stdout)["checks"]["restore_tested"] is False


def test_beat_runs_a_weekly_drill_per_file_store_on_the_heavy_queue() -> None:
    from celery.schedules import crontab

    from beat_schedule import beat_schedule, parse_overrides, scheduled_tasks
    from workers.app import current_aml_app

    app = current_aml_app()
    schedule = beat_schedule(("/srv/a/.loom/memory", "redis://10.0.0.5:6379/2"))
    entry = schedule["drill /srv/a/.loom/memory"]
    assert entry["task"] == "aml.backup.drill" and entry["kwargs"] == {"store": "/srv/a/.loom/memory"}
    assert entry["schedule"] == crontab(minute="30", hour="4", day_of_week="sun")
    assert entry["options"]["queue"] == "heavy" == app.amqp.router.route({}, "aml.backup.drill")["queue"].name
    assert not any(e["task"] == "aml.backup.drill" for name, e in schedule.items() if "redis://" in name)
    assert "aml.backup.drill" in scheduled_tasks() and "aml.backup.drill" in app.tasks
    moved = beat_schedule(("/s",), parse_overrides("aml.backup.drill=0 5 * * sat"))["drill /s"]
    assert moved["schedule"] == crontab(minute="0", hour="5", day_of_week="sat")
