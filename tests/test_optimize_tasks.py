"""optimize tasks, CLI and catalog: task runs, query metrics feeding health's performance_ok, beat, demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aml.optimize.files import INDEX_FILE
from aml.store.codec import sniff
from tests.fixtures_runtime import REPO, runtime_env
from tests.realdata import extract_loom, snapshot_tree


def run(task, **kwargs):
    return task.apply(kwargs=kwargs, throw=True).get()


def runs_of(settings, store: str) -> list[tuple[str, str]]:
    from models import queries
    from workers.catalog import session_scope

    with session_scope(settings.catalog_url) as session:
        return [(r.operation, r.status) for r in reversed(queries.recent_task_runs(session, store=store))]


def samples_of(settings, store: str, name: str) -> list[tuple[float, str]]:
    from models import queries
    from workers.catalog import session_scope

    with session_scope(settings.catalog_url) as session:
        return [(s.value, s.unit) for s in queries.metric_series(session, store=store, name=name)]


def test_tasks_record_runs_and_metrics(tmp_path: Path, aml_settings) -> None:
    from tasks import compress as t

    root = extract_loom("loom-plain-v1.0", tmp_path)
    store = str(root)
    dry = run(t.optimize_all, store=store, dry_run=True, age_days=0)
    assert dry["steps"]["index"] == {"skipped": "dry run: index writes .aml/index.sqlite"}
    assert dry["steps"]["compress"]["files_changed"] == 13 and not (root / INDEX_FILE).exists()
    out = run(t.optimize_all, store=store, age_days=0)
    assert out["status"] == "success" and list(out["steps"]) == ["gc", "compress", "index"]
    assert out["steps"]["compress"]["files_changed"] == 13 and out["steps"]["index"]["records"] == 649
    assert sniff((root / "debugger" / "patterns.json").read_bytes()) == "gzip"
    assert out["steps"]["index"]["documents_read"] == 18
    run(t.compress, store=store, decompress=True)
    idx = run(t.index, store=store)
    assert idx["documents_read"] == 13  # only the rewritten documents
    warm = run(t.warm_cache, store=store, limit=1000)
    assert warm["records"] == 642 and warm["measurement"]["lookups"] == 50
    run(t.gc, store=store, dry_run=True)
    assert runs_of(aml_settings, store) == [("optimize", "success"), ("optimize", "success"),
                                            ("compress", "success"), ("index", "success"),
                                            ("warm_cache", "success"), ("gc", "success")]
    assert samples_of(aml_settings, store, "index_records") == [(649.0, "count"), (649.0, "count")]
    assert samples_of(aml_settings, store, "compress_bytes_saved")[0][0] > 500_000
    [(rate, unit)] = samples_of(aml_settings, store, "query_cache_hit_rate")
    assert unit == "ratio" and rate == warm["measurement"]["cache"]["hit_rate"]


def test_query_metrics_feed_health_performance_ok(tmp_path: Path, aml_settings) -> None:
    from tasks import compress as t
    from tasks.health import check
    from tasks.query import query

    root = extract_loom("loom-plain-v2.0.0", tmp_path)
    store = str(root)
    run(t.index, store=store)
    cold = run(query, store=store, kind="pattern", min_confidence=0.5, limit=10)
    assert cold["count"] == 10 and cold["cache"]["hit_rate"] == 0.0 and cold["recorded"] == 2
    assert all(h["item"]["id"] == h["id"] and h["confidence"] >= 0.5 for h in cold["hits"])
    [(seconds, unit)] = samples_of(aml_settings, store, "query_time")
    assert unit == "seconds" and seconds == pytest.approx(cold["elapsed_s"], abs=1e-5)
    report = run(check, store=store)["report"]
    assert report["performance"]["cache_hit_rate"] == 0.0
    perf = next(r for r in report["results"] if r["check"] == "performance_ok")
    assert not perf["passed"] and perf["severity"] == "critical" and "cache hit rate 0%" in perf["message"]
    # warm the cache: the next queries are served from it, and health sees it
    run(t.warm_cache, store=store, measure=0)
    warm = run(query, store=store, kind="pattern", min_confidence=0.5, limit=10)
    assert warm["cache"]["hit_rate"] == 1.0
    report = run(check, store=store)["report"]
    # the rate health judges is the mean over the last day's queries: one cold, one warm
    assert report["performance"]["cache_hit_rate"] == 0.5
    perf = next(r for r in report["results"] if r["check"] == "performance_ok")
    assert perf["severity"] == "warning" and "cache hit rate 50%" in perf["message"]
    for _ in range(3):
        assert run(query, store=store, kind="pattern", min_confidence=0.5, limit=10)["cache"]["hit_rate"] == 1.0
    report = run(check, store=store)["report"]
    assert report["performance"]["cache_hit_rate"] == pytest.approx(0.8)
    assert report["checks"]["performance_ok"] is True
    assert report["checks"]["index_exists"] is True
    assert report["performance"]["lookups"] == 50  # the probe's lookups went through the index
    # a query with no record values records its time only
    bare = run(query, store=store, text="retry", with_items=False)
    assert bare["cache"]["lookups"] == 0 and bare["recorded"] == 1


def test_cli_commands(tmp_path: Path, aml_settings) -> None:
    from cli.main import store_app

    root = extract_loom("loom-plain-v1.1.0", tmp_path)
    runner = CliRunner()

    def cli(*args: str):
        return runner.invoke(store_app, list(args), obj={"store": str(root)}, catch_exceptions=False)

    before = snapshot_tree(root.parent)
    for dry in (["optimize", "compress", "--dry-run", "--age-days", "0"], ["optimize", "gc", "--dry-run"],
                ["optimize", "all", "--dry-run", "--age-days", "0"]):
        res = cli(*dry, "--json")
        assert res.exit_code == 0, res.output
        json.loads(res.output)
    assert snapshot_tree(root.parent) == before  # no dry run wrote anything
    res = cli("query", "--agent", "debugger")
    assert res.exit_code == 2 and "no index at" in res.output  # no index yet: a clear error
    assert cli("optimize", "index").exit_code == 0
    res = cli("query", "--agent", "debugger", "--kind", "decision", "--limit", "3", "--json")
    data = json.loads(res.output)
    assert res.exit_code == 0 and data["count"] == 3 and data["truncated"]
    assert {h["collection"] for h in data["hits"]} == {"decisions"}
    res = cli("query", "--text", "eslint", "--no-items")
    assert res.exit_code == 0 and "records" in res.output
    res = cli("optimize", "warm-cache", "--limit", "50")
    assert res.exit_code == 0 and "50 lookups" in res.output
    res = cli("optimize", "compress", "--age-days", "0", "--codec", "brotli")
    assert res.exit_code == 2


def test_cli_entry_point_runs_optimize_all(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path)
    env = runtime_env(tmp_path / "home", "redis://127.0.0.1:1/0")
    env["AML_LOCK_URL"] = "none://"
    proc = subprocess.run([sys.executable, "-m", "cli.main", str(root), "optimize", "all", "--age-days", "0"],
                          cwd=REPO, env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert b"compress (gzip): 13 of 15 files" in proc.stdout and (root / INDEX_FILE).is_file()


def test_beat_runs_optimize_monthly() -> None:
    from beat_schedule import beat_schedule

    entry = beat_schedule(("/srv/p/.loom/memory",))["optimize /srv/p/.loom/memory"]
    assert entry["task"] == "aml.compress.all" and entry["options"] == {"queue": "heavy"}
    sched = entry["schedule"]
    assert sched.day_of_month == {1} and sched.hour == {4} and sched.minute == {0}


def test_demo_step(tmp_path: Path, aml_settings) -> None:
    from aml.sample import SampleSpec, generate_loom_store
    from cli.demo import DemoContext, step_optimize

    root = tmp_path / ".loom" / "memory"
    generate_loom_store(root, SampleSpec(agents=2, patterns=20, solutions=10, decisions=5, days=200))
    ctx = DemoContext(tmp_path, root)
    step_optimize(ctx)
    assert ctx.notes and ctx.notes[-1].startswith("optimize:") and (root / INDEX_FILE).is_file()


@pytest.mark.slow
def test_queues_and_worker_keeps_its_record_cache(tmp_path: Path, celery_worker_process) -> None:
    from workers.app import current_aml_app
    app = current_aml_app()

    route = app.amqp.router.route
    assert route({}, "aml.trace.query")["queue"].name == "fast"
    assert route({}, "aml.compress.all")["queue"].name == "heavy"
    root = extract_loom("loom-plain-v1.0", tmp_path)
    env = celery_worker_process.env

    def cli(*args: str) -> dict:
        proc = subprocess.run([sys.executable, "-m", "cli.main", str(root), *args, "--enqueue", "--wait",
                               "--timeout", "120", "--json"], cwd=REPO, env=env, capture_output=True, timeout=180)
        assert proc.returncode == 0, proc.stderr.decode() + celery_worker_process.log.read_text()
        return json.loads(proc.stdout)

    assert cli("optimize", "index")["records"] == 649
    first = cli("query", "--agent", "debugger", "--limit", "5")
    second = cli("query", "--agent", "debugger", "--limit", "5")
    assert first["cache"]["hit_rate"] == 0.0 and second["cache"]["hit_rate"] == 1.0  # one engine per worker
    assert b"aml.trace.query" in celery_worker_process.log.read_bytes()
