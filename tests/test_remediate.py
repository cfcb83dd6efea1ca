"""The decision matrix acting on health: real Loom stores, the real SQLite catalog, a real worker.

The seeds' matrix (prune above 70 % / 85 % of the limit, index and warm-cache for slow lookups, warm-cache for a
low hit rate, gc for a document that does not parse), its modes, and the guards against runaway loops (one chain
per store, cooldowns, no repeat of a remediation that could not help).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aml.health.checks import CheckResult, Severity
from aml.health.remediate import ACTIONS, Policy, PolicyError, evaluate, parse_cooldowns, parse_policy
from tests.fixtures_runtime import REPO, RedisServer, runtime_env, spawn_worker, stop_process
from tests.realdata import extract_loom

MIB = 1024 * 1024
LOWERED = {"AML_AGENT_CRITICAL_MB": "0.25", "AML_AGENT_WARNING_MB": "0.2"}
"""Limits under which the debugger agent of ``loom-plain-v1.0-pyops`` (217,975 bytes) is at 83 % of its limit
and over the warning size, and every agent is below both after a time + performance prune."""


# ------------------------------------------------------------------------------------------ the pure policy


def _memory(agent: str | None, size: int, critical_mb: float = 80.0) -> CheckResult:
    return CheckResult("memory_within_limits", True, Severity.INFO, "", agent,
                       {"size_bytes": size, "warning_mb": 60.0, "critical_mb": critical_mb})


def _perf(avg_ms: float = 1.0, rate: float | None = None, recorded: float | None = None) -> CheckResult:
    return CheckResult("performance_ok", True, Severity.INFO, "", None,
                       {"lookups": 50, "avg_query_time_ms": avg_ms, "cache_hit_rate": rate,
                        "recorded_query_time_ms": recorded})


def test_matrix_rows_fire_above_their_lines_only() -> None:
    policy = Policy()
    at_70 = int(0.70 * 80 * MIB)
    assert evaluate([_memory("a", at_70)], policy) == []  # the seeds' inequality is strict
    high = evaluate([_memory("a", at_70 + 1), _memory(None, 10)], policy)
    assert [f.rule for f in high] == ["memory_high"] and high[0].agent == "a"
    assert dict(policy.steps("memory_high")[0][1])["strategies"] == ["time_based", "performance_based"]
    crit = evaluate([_memory("a", int(0.86 * 80 * MIB)), _memory("b", at_70 + 5)], policy)
    assert [f.rule for f in crit] == ["memory_critical"]  # its prune covers the 70 % row
    action, kwargs = policy.steps("memory_critical")[0]
    assert action.task == "aml.prune.run" and kwargs["aggressive"] is True
    assert set(kwargs["strategies"]) == {"time_based", "performance_based", "space_based", "session_based"}
    assert kwargs["overrides"] == {"agent_limit_mib": 80.0, "store_limit_mib": 800.0}
    store = evaluate([_memory(None, int(0.75 * 800 * MIB), critical_mb=800)], policy)
    assert store[0].rule == "memory_high" and store[0].agent is None

    assert evaluate([_perf(avg_ms=50.0)], policy) == []
    slow = evaluate([_perf(avg_ms=50.1)], policy)
    assert [f.rule for f in slow] == ["slow_lookups"]
    assert [a.name for a, _ in policy.steps("slow_lookups")] == ["optimize_index", "warm_cache"]
    assert [f.rule for f in evaluate([_perf(recorded=80.0)], policy)] == ["slow_lookups"]
    assert evaluate([_perf(rate=0.6)], policy) == []
    low = evaluate([_perf(rate=0.59)], policy)
    assert [f.rule for f in low] == ["low_cache_hit"] and low[0].better == "higher"
    more = policy.steps("low_cache_hit")[0][1]
    assert more["limit"] > 5000

    bad = CheckResult("file_integrity", False, Severity.ERROR, "", None,
                      {"failures": [{"path": "a/patterns.json", "offset": 3, "reason": "x"}]})
    order = evaluate([_perf(avg_ms=99, rate=0.1), _memory("a", int(0.9 * 80 * MIB)), bad], policy)
    assert [f.rule for f in order] == ["unparsable_document", "memory_critical", "slow_lookups", "low_cache_hit"]


def test_policy_and_cooldown_settings_parse_or_name_the_problem() -> None:
    policy = parse_policy("slow_lookups = optimize_index ; low_cache_hit=none")
    assert policy["slow_lookups"] == ("optimize_index",) and policy["low_cache_hit"] == ()
    assert policy["memory_high"] == ("prune",)
    with pytest.raises(PolicyError, match=r"unknown action 'frobnicate' in rule slow_lookups"):
        parse_policy("slow_lookups=optimize_index,frobnicate")
    with pytest.raises(PolicyError, match="unknown rule 'memory'"):
        parse_policy("memory=prune")
    with pytest.raises(PolicyError, match="not RULE=VALUE"):
        parse_policy("prune")
    with pytest.raises(PolicyError, match="given twice"):
        parse_policy("memory_high=prune; memory_high=gc")
    assert parse_cooldowns("memory_high=0")["memory_high"] == 0.0
    assert parse_cooldowns("")["memory_high"] == 24 * 3600.0
    with pytest.raises(PolicyError, match="finite number"):
        parse_cooldowns("memory_high=-1")
    with pytest.raises(PolicyError, match="not a number"):
        parse_cooldowns("memory_high=1d")


def test_action_effects_read_the_task_results() -> None:
    assert ACTIONS["prune"].effect({"records_removed": 3, "records_archived": 2}) == 5
    assert ACTIONS["prune"].effect({"applied": None, "plan": {}}) is None  # a dry run, or a summary without it
    assert ACTIONS["gc"].effect({"records_removed": 0, "quarantined": [{"copy": "x"}, {"copy": None}]}) == 1
    assert ACTIONS["warm_cache"].effect({"records": 0}) == 0


# ------------------------------------------------------------------------------------------ inline, real store


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return extract_loom("loom-plain-v1.0-pyops", tmp_path)


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    from workers.app import current_aml_app
    from workers.settings import load_settings

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    monkeypatch.setitem(current_aml_app().conf, "aml_settings", settings)
    return settings


def _health(store: Path, **kwargs: Any) -> dict[str, Any]:
    from tasks.health import check

    return check.apply(kwargs={"store": str(store), **kwargs}, throw=True).get()


def _rows(settings: Any) -> list[dict[str, Any]]:
    from models import remediations
    from workers.catalog import session_scope

    with session_scope(settings.catalog_url) as session:
        return [remediations.to_dict(r) for r in reversed(remediations.list_remediations(session))]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dry_run_default_lists_what_would_run_and_changes_nothing(store: Path, aml_settings, monkeypatch) -> None:
    settings = _settings(monkeypatch, **LOWERED)
    assert settings.remediate == "dry-run"
    before = _tree(store)
    for remediate in (None, True):  # even --remediate only lists while AML_REMEDIATE=dry-run
        section = _health(store, remediate=remediate)["report"]["remediation"]
        assert section["mode"] == "dry-run" and section["acting"] is False and section["chain"] is None
        [decision] = section["decisions"]
        assert decision["rule"] == "memory_high" and decision["status"] == "would_run"
        assert decision["agent"] == "debugger" and "83% of its 0.25 MiB limit" in decision["why"]
        assert decision["actions"][0]["task"] == "aml.prune.run"
    assert _tree(store) == before
    assert _rows(settings) == []
    monkeypatch.setenv("AML_REMEDIATE", "off")
    _settings(monkeypatch)
    assert _health(store)["report"]["remediation"]["decisions"] == []


def test_on_prunes_below_the_limit_resolves_the_alert_then_cools_down(store: Path, aml_settings,
                                                                        monkeypatch) -> None:
    settings = _settings(monkeypatch, AML_REMEDIATE="on", **LOWERED)
    result = _health(store, remediate=True)
    first = result["report"]
    assert first["checks"]["memory_within_limits"] is False
    [decision] = first["remediation"]["decisions"]
    assert decision["status"] == "run" and decision["alert_before"]["open"] is True
    run = result["remediation_run"]
    [step] = run["steps"]
    assert step["action"] == "prune" and step["status"] == "success"
    assert step["result"]["applied"]["removed"] + step["result"]["applied"]["archived"] > 0
    assert step["result"]["backup_id"]  # prune took its safety snapshot first
    closing = run["closing"]["report"]
    assert closing["checks"]["memory_within_limits"] is True
    closed = closing["remediation"]["closed"]
    assert closed["status"] == "success" and closed["result"]["improved"] is True
    assert closed["result"]["still_fires"] is False and closed["result"]["effect"] > 0
    assert closed["result"]["measure_after"] < 0.7 < closed["result"]["measure_before"]
    assert closed["alert_after"]["open"] is False and closed["alert_after"]["id"] == decision["alert_before"]["id"]
    assert closing["remediation"]["decisions"] == []

    from tasks.health import alerts

    listed = alerts.apply(kwargs={"store": str(store), "include_resolved": True}).get()
    memory = [a for a in listed["alerts"] if a["check"] == "memory_within_limits"]
    assert memory and all(a["resolved_at"] for a in memory)

    # the store grows back over the line: the 24 h cooldown stops a second prune
    debugger = store / "debugger" / "patterns.json"
    data = json.loads(debugger.read_text())
    grown = list(data)
    while sum(p.stat().st_size for p in debugger.parent.rglob("*") if p.is_file()) < 0.75 * 0.25 * MIB:
        grown.append(dict(data[len(grown) % len(data)], id=f"copy-{len(grown)}"))
        debugger.write_text(json.dumps(grown, indent=2))
    again = _health(store, remediate=True)
    [skipped] = again["report"]["remediation"]["decisions"]
    assert skipped["status"] == "skipped" and "cooldown" in skipped["why"]
    assert "remediation_run" not in again
    rows = _rows(settings)
    assert [(r["rule"], r["status"]) for r in rows] == [("memory_high", "success"), ("memory_high", "skipped")]
    assert rows[0]["task_id"] == step["task_id"] and rows[0]["fingerprint"] == decision["fingerprint"]
    # the prune task carried the alert that caused it (message header, recorded with its run)
    from models import queries
    from workers.catalog import session_scope

    with session_scope(settings.catalog_url) as session:
        run_row = queries.get_task_run(session, step["task_id"])
        assert run_row is not None and run_row.operation == "prune"
        assert run_row.arguments["cause"] == {"remediation_id": rows[0]["id"], "rule": "memory_high",
                                              "fingerprint": decision["fingerprint"]}


def test_a_prune_that_cannot_help_is_refused_and_the_alert_escalated(store: Path, aml_settings,
                                                                      monkeypatch) -> None:
    # 30 % of the limit: still over the line after the prune removed all it could
    settings = _settings(monkeypatch, AML_REMEDIATE="on", AML_REMEDIATE_PRUNE_RATIO="0.3",
                         AML_REMEDIATE_COOLDOWN="memory_high=0", AML_AGENT_CRITICAL_MB="0.25",
                         AML_AGENT_WARNING_MB="0.1")
    result = _health(store, remediate=True)
    first = result["remediation_run"]
    assert first["steps"][0]["result"]["applied"]["removed"] > 0
    second = first["closing"]["remediation_run"]  # still over: the rule ran again (cooldown 0) ...
    assert second["steps"][0]["status"] == "success"
    assert second["steps"][0]["result"]["applied"] is None or \
        second["steps"][0]["result"]["applied"]["removed"] == 0  # ... and found nothing to remove
    final = second["closing"]["report"]["remediation"]
    assert final["closed"]["result"]["effect"] == 0
    [refused] = final["decisions"]
    assert refused["status"] == "refused" and "changed nothing" in refused["why"]
    assert "warning -> error" in refused["why"]
    assert "remediation_run" not in second["closing"]
    from tasks.health import alerts

    open_alerts = alerts.apply(kwargs={"store": str(store)}).get()["alerts"]
    debugger = [a for a in open_alerts if a["check"] == "memory_within_limits" and a["agent"] == refused["agent"]]
    assert debugger[0]["severity"] == "error" and "not run again" in debugger[0]["details"]["remediation"]
    # every health run while it lasts: refused again, never a third prune
    again = _health(store, remediate=True)["report"]["remediation"]["decisions"]
    assert [d["status"] for d in again] == ["refused"]
    rows = _rows(settings)
    assert [r["status"] for r in rows] == ["success", "success", "refused", "refused"]
    assert rows[2]["alert_before"]["severity"] == "warning" and rows[2]["alert_after"]["severity"] == "error"


def test_unparsable_document_gets_gc_and_names_the_snapshot_with_a_good_copy(store: Path, aml_settings,
                                                                                monkeypatch) -> None:
    from tasks.backup import create

    settings = _settings(monkeypatch, AML_REMEDIATE="on")
    snap = create.apply(kwargs={"store": str(store)}, throw=True).get()
    broken = store / "debugger" / "solutions.json"
    good = broken.read_bytes()
    broken.write_bytes(good[: len(good) // 2])
    result = _health(store, remediate=True)
    [decision] = result["report"]["remediation"]["decisions"]
    assert decision["rule"] == "unparsable_document" and decision["status"] == "run"
    step = result["remediation_run"]["steps"][0]
    assert step["action"] == "gc" and step["result"]["quarantined"][0]["relpath"] == "debugger/solutions.json"
    assert broken.read_bytes() == good[: len(good) // 2]  # aml never overwrites the document itself
    closing = result["remediation_run"]["closing"]["report"]["remediation"]
    closed = closing["closed"]
    copy = closed["result"]["good_copies"]["debugger/solutions.json"]
    assert copy["backup_id"] == snap["backup_id"]
    assert f"--backup-id {snap['backup_id']} --path debugger/solutions.json" in copy["command"]
    assert f"restore from {snap['backup_id']}" in closed["reason"]
    # gc could not make it parse: refused at once (before the 24 h cooldown); the error alert becomes critical
    assert closed["result"]["improved"] is False and closed["result"]["still_fires"] is True
    [refused] = closing["decisions"]
    assert refused["status"] == "refused" and "error -> critical" in refused["why"]
    assert "left the measure no better" in refused["why"]
    rows = _rows(settings)
    assert [r["status"] for r in rows] == ["success", "refused"]


def test_unknown_action_in_the_policy_is_a_clear_error_and_health_completes(store: Path, aml_settings,
                                                                            monkeypatch) -> None:
    settings = _settings(monkeypatch, AML_REMEDIATE="on", AML_REMEDIATE_POLICY="memory_high=prune,frobnicate",
                         **LOWERED)
    result = _health(store, remediate=True)
    section = result["report"]["remediation"]
    assert "AML_REMEDIATE_POLICY" in section["error"] and "'frobnicate'" in section["error"]
    assert section["decisions"] == [] and "remediation_run" not in result
    assert result["report"]["status"] == "warning" and result["status"] == "warning"
    assert _rows(settings) == []


def test_one_chain_in_flight_per_store_and_a_stale_one_is_finished(store: Path, aml_settings, monkeypatch) -> None:
    from models import remediations
    from workers.catalog import session_scope

    settings = _settings(monkeypatch, AML_REMEDIATE="on", **LOWERED)
    sid = str(store.resolve())
    with session_scope(settings.catalog_url) as session:
        first = remediations.add(session, store=sid, rule="slow_lookups", mode="on", actions=[], status="queued",
                                 reason="r", task_id="t1", created_at=datetime.now(UTC) - timedelta(hours=1))
        assert first is not None
        assert remediations.add(session, store=sid, rule="memory_high", mode="on", actions=[], status="running",
                                reason="r", task_id="t2") is None
    # the chain in flight holds the store: the memory rule waits
    waiting = _health(store, remediate=True)["report"]["remediation"]["decisions"]
    assert [d["status"] for d in waiting] == ["skipped"] and "is in flight" in waiting[0]["why"]
    with session_scope(settings.catalog_url) as session:
        row = remediations.get(session, first.id)
        assert row is not None
        row.created_at = datetime.now(UTC) - timedelta(seconds=settings.visibility_timeout + 60)
    result = _health(store, remediate=True)
    section = result["report"]["remediation"]
    assert section["reconciled"][0]["remediation_id"] == first.id and "no outcome" in section["reconciled"][0]["reason"]
    assert [d["status"] for d in section["decisions"]] == ["run"]
    assert result["remediation_run"]["closing"]["report"]["remediation"]["closed"]["status"] == "success"


@pytest.mark.slow
def test_cli_remediate_prunes_and_the_next_health_is_healthy(store: Path, tmp_path: Path) -> None:
    """The issue's done-when: over 70 % of a lowered limit, `monitor health --remediate` prunes; the next health
    run is healthy (exit 0) and the alert is resolved in `monitor alerts --all`."""
    env = runtime_env(tmp_path / "home", "redis://127.0.0.1:1/0")
    env.update(LOWERED, AML_REMEDIATE="on", AML_LOCK_URL="none", COLUMNS="250")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli.main", str(store), *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)

    assert cli("optimize", "index").returncode == 0  # the only other check this Loom store fails
    listed = cli("monitor", "health", "--remediate", "--dry-run")
    assert listed.returncode == 1 and "would run" in listed.stdout
    assert "prune (time + performance strategies)" in listed.stdout
    done = cli("monitor", "health", "--remediate")
    assert "started" in done.stdout and "step prune" in done.stdout and "after remediation" in done.stdout, done.stdout
    assert done.returncode == 0, done.stdout  # the exit code of the health run that closed the chain
    after = cli("monitor", "health", "--json")
    report = json.loads(after.stdout)
    assert after.returncode == 0 and report["status"] == "healthy", report["results"]
    alerts = json.loads(cli("monitor", "alerts", "--all", "--json").stdout)["alerts"]
    memory = [a for a in alerts if a["check"] == "memory_within_limits"]
    assert memory and all(a["resolved_at"] for a in memory)
    [row] = json.loads(cli("monitor", "remediations", "--json").stdout)["remediations"]
    assert row["rule"] == "memory_high" and row["status"] == "success" and row["alert_after"]["open"] is False
    table = cli("monitor", "remediations")
    assert "memory_high" in table.stdout and "resolved" in table.stdout


# ------------------------------------------------------------------------------------------ on a real worker


@pytest.mark.slow
def test_worker_health_enqueues_the_chain_which_prunes_and_resolves(store: Path, tmp_path: Path,
                                                                     redis_server: RedisServer) -> None:
    home = tmp_path / "home"
    env = runtime_env(home, redis_server.url(5))
    env.update(LOWERED, AML_REMEDIATE="on")
    proc = spawn_worker(env, tmp_path / "worker.log")
    try:
        # an operator's `monitor health --enqueue` only lists ...
        out = subprocess.run([sys.executable, "-m", "cli.main", str(store), "monitor", "health", "--enqueue",
                              "--wait", "--timeout", "120"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=180)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "would run" in out.stdout and "enqueued" not in out.stdout, out.stdout
        # ... beat's run (the task by name, store alone, as beat_schedule sends it) acts
        from celery import Celery
        from sqlalchemy import create_engine, text

        sender = Celery("beat-like", broker=redis_server.url(5), backend=redis_server.url(5))
        reply = sender.send_task("aml.health.check", kwargs={"store": str(store)}, queue="fast").get(timeout=120)
        assert reply["remediation_run"]["enqueued"] is True, reply

        engine = create_engine(f"sqlite:///{home / 'catalog.db'}")
        deadline = time.monotonic() + 120
        while True:
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT status, alert_after FROM remediations")).all()
            if rows and rows[0][0] not in ("queued", "running"):
                break
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            time.sleep(0.5)
        assert rows[0][0] == "success", rows
        assert json.loads(rows[0][1])["open"] is False
        with engine.connect() as conn:
            ops = [r[0] for r in conn.execute(text("SELECT operation FROM task_runs ORDER BY id"))]
            causes = [json.loads(r[0]).get("cause") for r in conn.execute(
                text("SELECT arguments FROM task_runs ORDER BY id"))]
            fingerprint = conn.execute(text("SELECT fingerprint FROM remediations")).scalar()
            still_open = conn.execute(text("SELECT count(*) FROM alerts WHERE resolved_at IS NULL AND "
                                           "\"check\" = 'memory_within_limits'")).scalar()
        assert ops == ["health", "health", "prune", "health"], ops
        assert causes[:2] == [None, None] and causes[2]["fingerprint"] == causes[3]["fingerprint"] == fingerprint
        assert still_open == 0
        log = (tmp_path / "worker.log").read_text()
        assert "aml.prune.run" in log
    finally:
        stop_process(proc)


def test_catalog_retention_deletes_old_finished_remediations_and_drills_only(aml_settings) -> None:
    from models import remediations
    from models.retention import apply_retention
    from models.tables import RestoreDrill
    from workers.catalog import session_scope

    old = datetime.now(UTC) - timedelta(days=100)
    with session_scope(aml_settings.catalog_url) as session:
        for status, store in (("success", "/a"), ("refused", "/b"), ("queued", "/c")):
            remediations.add(session, store=store, rule="memory_high", mode="on", actions=[], status=status,
                             reason="r", created_at=old, finished_at=None if status == "queued" else old)
        remediations.add(session, store="/d", rule="memory_high", mode="on", actions=[], status="success",
                         reason="r")
        for status, finished in (("passed", old), ("running", None), ("failed", datetime.now(UTC))):
            session.add(RestoreDrill(store="/a", status=status, started_at=old, finished_at=finished,
                                     files_checked=0, bytes_checked=0, failures=[]))
    with session_scope(aml_settings.catalog_url) as session:
        done = apply_retention(session, task_runs_days=90)
        assert (done.remediations_deleted, done.drills_deleted) == (2, 1)
    with session_scope(aml_settings.catalog_url) as session:
        assert sorted(r.store for r in remediations.list_remediations(session)) == ["/c", "/d"]
        assert sorted(d.status for d in session.query(RestoreDrill)) == ["failed", "running"]


def test_a_failed_step_fails_the_chain_without_refusal_and_the_cooldown_holds(store: Path, aml_settings,
                                                                               monkeypatch) -> None:
    # warm-cache without an index raises: the step fails, the closing health run records it
    settings = _settings(monkeypatch, AML_REMEDIATE="on", AML_REMEDIATE_LOOKUP_MS="0.0001",
                         AML_REMEDIATE_POLICY="slow_lookups=warm_cache")
    result = _health(store, remediate=True)
    [step] = result["remediation_run"]["steps"]
    assert step["status"] == "failure" and "IndexMissingError" in step["error"]
    closed = result["remediation_run"]["closing"]["report"]["remediation"]["closed"]
    assert closed["status"] == "failure" and closed["result"]["steps"][0]["status"] == "failure"
    [after] = result["remediation_run"]["closing"]["report"]["remediation"]["decisions"]
    assert after["status"] == "skipped" and "cooldown" in after["why"]  # a failure proves nothing: no refusal
    assert [r["status"] for r in _rows(settings)] == ["failure", "skipped"]


def test_health_completes_when_remediation_breaks(store: Path, aml_settings, monkeypatch) -> None:
    import tasks.remediate

    _settings(monkeypatch, AML_REMEDIATE="on", **LOWERED)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("catalog exploded")

    monkeypatch.setattr(tasks.remediate.rows, "in_flight", broken)
    result = _health(store, remediate=True)
    section = result["report"]["remediation"]
    assert "catalog exploded" in section["error"] and section["chain"] is None
    assert result["status"] == "warning" and "remediation_run" not in result
    assert result["report"]["checks"]["memory_within_limits"] is False  # the health run itself is whole


def test_budget_caps_chains_per_store_and_hour(store: Path, aml_settings, monkeypatch) -> None:
    settings = _settings(monkeypatch, AML_REMEDIATE="on", AML_REMEDIATE_PRUNE_RATIO="0.3",
                         AML_REMEDIATE_COOLDOWN="memory_high=0", AML_REMEDIATE_MAX_PER_HOUR="1",
                         AML_AGENT_CRITICAL_MB="0.25", AML_AGENT_WARNING_MB="0.1")
    result = _health(store, remediate=True)
    [after] = result["remediation_run"]["closing"]["report"]["remediation"]["decisions"]
    assert after["status"] == "skipped" and "AML_REMEDIATE_MAX_PER_HOUR=1" in after["why"]
    assert [r["status"] for r in _rows(settings)] == ["success", "skipped"]


def test_measure_after_follows_the_subject_and_unknown_effects_are_not_refusals() -> None:
    from aml.health.remediate import current_measure
    from models.tables import Remediation
    from tasks.remediate import _ineffective

    grown = [_memory("a", int(0.9 * 80 * MIB)), _memory(None, 10)]
    # a memory_high chain after which agent a grew past 85 %: its share is measured, not "cleared"
    assert current_measure("memory_high", "a", grown) == pytest.approx(0.9, abs=1e-5)
    assert current_measure("memory_high", "gone", grown) is None
    assert current_measure("low_cache_hit", None, [_perf(rate=0.4)]) == 0.4
    assert current_measure("slow_lookups", None, [_perf(avg_ms=3.0, recorded=9.0)]) == 9.0
    row = Remediation(status="success", task_id="t", result={"effect": None, "improved": None})
    assert _ineffective(row) is None  # a step whose result did not say is not "changed nothing"
    row.result = {"effect": 0, "improved": None}
    assert "changed nothing" in (_ineffective(row) or "")
    row.result = {"effect": 3, "improved": False, "measure_before": 1, "measure_after": 1}
    assert "no better" in (_ineffective(row) or "")
    row.status = "failure"
    assert _ineffective(row) is None


def test_html_report_shows_the_decisions() -> None:
    from aml.health.report_html import render_html

    report = {"store": "/s", "status": "warning", "timestamp": "t", "results": [], "agents": {},
              "memory": {"total_mb": 1.0, "agents": 1, "patterns": 1, "solutions": 1, "decisions": 1},
              "health_checks": {"passed": 6, "total": 7}, "alerts": {"active": 0, "open": []},
              "remediation": {"mode": "dry-run", "error": None, "decisions": [
                  {"rule": "memory_high", "status": "would_run", "why": "agent <a> uses 80%",
                   "actions": [{"summary": "prune (time + performance strategies)"}]}]}}
    page = render_html(report, {})
    assert "Remediation (dry-run)" in page and "memory_high" in page and "agent &lt;a&gt; uses 80%" in page
    page = render_html({**report, "remediation": {"mode": "on", "error": "AML_REMEDIATE_POLICY: bad", "decisions": []}},
                       {})
    assert "policy error: AML_REMEDIATE_POLICY: bad" in page
    assert "Remediation" not in render_html({**report, "remediation": {"mode": "off"}}, {})
