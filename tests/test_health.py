"""health end to end: real stores, broken documents, alert lifecycle, metrics, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.fixtures_runtime import REPO, runtime_env
from tests.realdata import extract_loom

LOOM_COUNTS = {
    "loom-plain-v1.0-pyops": {
        "frontend-developer": (113, 55, 30), "debugger": (93, 100, 25),
        "backend-architect": (95, 50, 36), "code-reviewer": (23, 12, 4),
    },
    "loom-gzip-v1.0": {
        "frontend-developer": (120, 60, 35), "debugger": (80, 110, 25),
        "backend-architect": (100, 55, 52), "test-automator": (60, 40, 15),
    },
}


def run_health(store: Path, **kwargs):
    from tasks.health import check

    return check.apply(kwargs={"store": str(store), **kwargs}, throw=True).get()


def snapshot_tree(root: Path) -> dict[str, tuple[bytes, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


@pytest.mark.parametrize("name", sorted(LOOM_COUNTS))
def test_health_on_real_loom_store_counts_agents(name: str, tmp_path: Path, aml_settings) -> None:
    store = extract_loom(name, tmp_path)
    before = snapshot_tree(store.parent)
    result = run_health(store)
    report = result["report"]
    agents = report["agents"]
    for agent, (patterns, solutions, decisions) in LOOM_COUNTS[name].items():
        assert (agents[agent]["patterns"], agents[agent]["solutions"], agents[agent]["decisions"]) == (
            patterns, solutions, decisions), agent
    assert set(agents) == set(LOOM_COUNTS[name])
    assert report["memory"]["agents"] == 4
    assert report["memory"]["patterns"] == sum(c[0] for c in LOOM_COUNTS[name].values())
    assert report["checks"]["file_integrity"] is True
    assert report["checks"]["directory_structure"] is True
    # No aml index and no Loom global/index.json in these stores: a warning, not an error.
    assert report["checks"]["index_exists"] is False
    assert report["status"] in ("warning", "critical")
    assert report["health_checks"]["total"] == 7  # the seeds' six and restore_tested
    assert snapshot_tree(store.parent) == before, "health must not write into the store"


def test_recent_backup_reads_seed_backup_summary(tmp_path: Path, aml_settings) -> None:
    store = extract_loom("loom-plain-v1.0-pyops", tmp_path)
    report = run_health(store)["report"]
    [recent] = [r for r in report["results"] if r["check"] == "recent_backup"]
    assert recent["details"]["latest"] == "incr_20261122_104825"


def _broken_store(root: Path) -> Path:
    store = root / ".loom" / "memory"
    (store / "global").mkdir(parents=True)
    (store / "alice").mkdir()
    (store / "alice" / "patterns.json").write_text(json.dumps([{"id": "p1", "agent": "alice",
                                                                 "timestamp": "2026-01-01T00:00:00Z"}]))
    (store / "alice" / "solutions.json").write_bytes(b'[{"id": "s1", "agent": "alice", "timest')
    (store / "bob").mkdir()
    (store / "bob" / "patterns.json").write_bytes(b'[{"id": "p2", "note": "caf\xe9"}]')
    (store / "bob" / "decisions.json").write_text(json.dumps({"not": "a list"}))
    return store


def test_file_integrity_names_each_broken_file_and_changes_nothing(tmp_path: Path, aml_settings) -> None:
    store = _broken_store(tmp_path)
    before = snapshot_tree(tmp_path / ".loom")
    report = run_health(store)["report"]
    assert snapshot_tree(tmp_path / ".loom") == before
    assert report["checks"]["file_integrity"] is False
    assert report["status"] == "critical"
    assert report["status_code"] == 2
    failed = {f["path"]: f for f in report["integrity_failures"]}
    assert set(failed) == {"alice/solutions.json", "bob/patterns.json", "bob/decisions.json"}
    assert failed["alice/solutions.json"]["offset"] is not None
    assert failed["bob/patterns.json"]["offset"] == b'[{"id": "p2", "note": "caf\xe9"}]'.index(b"\xe9")
    [integrity] = [r for r in report["results"] if r["check"] == "file_integrity"]
    for path in failed:
        assert path in integrity["message"]
    # The good document was still read.
    assert report["agents"]["alice"]["patterns"] == 1


def test_alert_lifecycle_raise_persist_resolve(tmp_path: Path, aml_settings) -> None:
    from models import queries
    from workers.catalog import session_scope

    store = _broken_store(tmp_path)
    first = run_health(store)["report"]
    run_health(store)
    with session_scope(aml_settings.catalog_url) as session:
        rows = [a for a in queries.list_alerts(session, store=first["store"], include_resolved=True)
                if a.check == "file_integrity"]
        assert len(rows) == 1
        assert rows[0].count == 2 and rows[0].resolved_at is None and rows[0].severity == "error"
        assert rows[0].last_seen >= rows[0].first_seen
    # Repair every document: the alert is resolved, not deleted.
    (store / "alice" / "solutions.json").write_text("[]")
    (store / "bob" / "patterns.json").write_text("[]")
    (store / "bob" / "decisions.json").write_text("[]")
    third = run_health(store)["report"]
    assert third["checks"]["file_integrity"] is True
    with session_scope(aml_settings.catalog_url) as session:
        rows = [a for a in queries.list_alerts(session, store=first["store"], include_resolved=True)
                if a.check == "file_integrity"]
        assert len(rows) == 1 and rows[0].resolved_at is not None


def test_memory_limits_raise_per_agent_alerts(tmp_path: Path, aml_settings, monkeypatch) -> None:
    from aml.health.thresholds import Thresholds
    from workers.app import current_aml_app
    app = current_aml_app()

    store = extract_loom("loom-plain-v1.0", tmp_path)
    tiny = aml_settings.replace(thresholds=Thresholds(agent_warning_mb=0.05, agent_critical_mb=0.15))
    monkeypatch.setitem(app.conf, "aml_settings", tiny)
    report = run_health(store)["report"]
    memory = {r["agent"]: r for r in report["results"] if r["check"] == "memory_within_limits"}
    assert memory[None]["passed"] is True
    sizes = {a: v["size_bytes"] for a, v in report["agents"].items()}
    for agent, size in sizes.items():
        mib = size / 1024 / 1024
        expected = "critical" if mib >= 0.15 else "warning" if mib >= 0.05 else "info"
        assert memory[agent]["severity"] == expected, (agent, mib)
    open_agents = {a["agent"] for a in report["alerts"]["open"] if a["check"] == "memory_within_limits"}
    assert open_agents == {a for a, s in sizes.items() if s / 1024 / 1024 >= 0.05}


def test_metric_samples_recorded_per_agent_and_collection(tmp_path: Path, aml_settings) -> None:
    from tasks.health import metrics

    store = extract_loom("loom-gzip-v1.0", tmp_path)
    run_health(store)
    run_health(store)
    samples = metrics.apply(kwargs={"store": str(store)}).get()["samples"]
    records = [s for s in samples if s["name"] == "records" and s["subject"] == "debugger/solutions"]
    assert [s["value"] for s in records] == [110.0, 110.0]
    assert {s["unit"] for s in samples if s["name"] == "agent_bytes"} == {"bytes"}
    assert {s["subject"] for s in samples if s["name"] == "check_duration"} >= {"file_integrity", "performance_ok"}


@pytest.mark.slow
def test_healthy_store_exits_zero_via_cli(tmp_path: Path) -> None:
    from aml.sample import SampleSpec, generate_loom_store

    store = tmp_path / "proj" / ".loom" / "memory"
    generate_loom_store(store, SampleSpec(agents=2, patterns=10, solutions=5, decisions=5))
    (store / "config").mkdir()
    (store / "global" / "index.json").write_text("{}")
    repo = store.parent / "memory-backup"
    repo.mkdir()
    now = datetime.now(UTC).isoformat()
    (repo / "backup_metadata.json").write_text(json.dumps({"version": "1.0", "backups": [
        {"backup_id": "full_x", "backup_type": "full", "timestamp": now}]}))
    env = runtime_env(tmp_path / "home", "redis://127.0.0.1:1/0")
    env["AML_LOCK_URL"] = "none://"
    proc = subprocess.run([sys.executable, "-m", "cli.main", str(store), "monitor", "health", "--json"],
                          cwd=REPO, env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert report["status"] == "healthy" and all(report["checks"].values())
    # the same store with a broken document: exit 2, and the error is on stdout's report
    (store / "frontend-developer" / "patterns.json").write_bytes(b"[{")
    proc = subprocess.run([sys.executable, "-m", "cli.main", str(store), "monitor", "health"],
                          cwd=REPO, env=env, capture_output=True, timeout=120)
    assert proc.returncode == 2
    assert b"frontend-developer/patterns.json" in proc.stdout


def test_missing_store_is_critical(tmp_path: Path, aml_settings) -> None:
    report = run_health(tmp_path / "nope")["report"]
    assert report["status"] == "critical"
    assert report["checks"]["directory_structure"] is False


@pytest.mark.slow
def test_enqueue_runs_on_real_worker_and_catalog_records_it(tmp_path: Path, celery_worker_process) -> None:
    import sqlalchemy as sa

    store = extract_loom("loom-plain-v1.0", tmp_path)
    proc = subprocess.run([sys.executable, "-m", "cli.main", str(store), "monitor", "health", "--enqueue",
                           "--wait", "--timeout", "120", "--json"], cwd=REPO, env=celery_worker_process.env,
                          capture_output=True, timeout=180)
    assert proc.returncode in (1, 2), proc.stderr.decode() + celery_worker_process.log.read_text()
    report = json.loads(proc.stdout)
    assert report["agents"]["debugger"]["solutions"] == 100
    engine = sa.create_engine(f"sqlite:///{celery_worker_process.home / 'catalog.db'}")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select operation, store, status, task_id from task_runs")).all()
    engine.dispose()
    assert [(r[0], r[1]) for r in rows] == [("health", os.path.realpath(store))]
    assert rows[0][2] == "warning" and rows[0][3]
    assert b"aml.health.check" in celery_worker_process.log.read_bytes()


@pytest.mark.slow
def test_html_report_is_self_contained_with_charts(tmp_path: Path) -> None:
    store = extract_loom("loom-plain-v1.0", tmp_path)
    env = runtime_env(tmp_path / "home", "redis://127.0.0.1:1/0")
    env["AML_LOCK_URL"] = "none://"
    out = tmp_path / "report.html"
    for _ in range(2):  # two runs: two points per series
        proc = subprocess.run([sys.executable, "-m", "cli.main", str(store), "monitor", "report", "--format",
                               "html", "-o", str(out)], cwd=REPO, env=env, capture_output=True, timeout=120)
        assert proc.returncode in (1, 2), proc.stderr.decode()
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "<polyline" in page
    assert "agent_bytes debugger" in page and "2 samples" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    json_out = subprocess.run([sys.executable, "-m", "cli.main", str(store), "monitor", "report", "--json"],
                              cwd=REPO, env=env, capture_output=True, timeout=120)
    report = json.loads(json_out.stdout)
    assert set(report) >= {"status", "checks", "memory", "performance", "health_checks", "alerts"}
    assert set(report["memory"]["largest_agent"]) == {"name", "size_mb"}
    assert set(report["alerts"]["by_level"]) == {"info", "warning", "error", "critical"}


def test_recorded_query_times_feed_performance_ok(tmp_path: Path, aml_settings) -> None:
    """Slow real queries (the ``query_time`` samples ``aml <store> query`` records) make
    ``performance_ok`` fail even when the health probe's own lookups are fast; day-old ones do not."""
    from datetime import timedelta

    from models import queries
    from workers.catalog import session_scope

    store = extract_loom("loom-plain-v1.0", tmp_path)
    store_id = os.path.realpath(store)
    now = datetime.now(UTC)
    with session_scope(aml_settings.catalog_url) as session:
        queries.add_metric_samples(session, [
            queries.Sample(store_id, "query_time", 5.0, "seconds", None, now - timedelta(days=2)),  # too old
            *(queries.Sample(store_id, "query_time", 0.07, "seconds", None, now) for _ in range(3)),
        ])
    perf = next(r for r in run_health(store)["report"]["results"] if r["check"] == "performance_ok")
    assert perf["passed"] is False and perf["severity"] == "warning"
    assert "recorded queries (3) take 70.0 ms" in perf["message"]
    with session_scope(aml_settings.catalog_url) as session:
        queries.add_metric_samples(session, [queries.Sample(store_id, "query_time", 0.4, "seconds", None, now)])
    perf = next(r for r in run_health(store)["report"]["results"] if r["check"] == "performance_ok")
    assert perf["severity"] == "critical" and "recorded queries (4)" in perf["message"]


def test_a_symlink_is_listed_not_an_integrity_failure(tmp_path: Path, aml_settings) -> None:
    """A link is never followed and backups keep it as a link: health lists it, file_integrity passes and the
    remediation policy has no unparseable document to act on."""
    store = extract_loom("loom-plain-v1.0", tmp_path)
    (store / "debugger" / "latest.json").symlink_to(store / "debugger" / "patterns.json")
    report = run_health(store)["report"]
    assert report["checks"]["file_integrity"] is True
    assert report["links"] == ["debugger/latest.json"] and report["integrity_failures"] == []
    assert all(d["rule"] != "unparsable_document" for d in report["remediation"]["decisions"])
