"""The trace tasks as the CLI and workers run them: catalog alerts and time series, clean and undo,
keyspace export and import, with a SQLite catalog and a private redis-server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from models import queries
from models.tables import TaskRun
from tests.fixtures_runtime import start_redis_server
from workers.catalog import session_scope
from workers.settings import Settings


@pytest.fixture
def keyspace(tmp_path: Path) -> Iterator[tuple[str, redis.Redis]]:
    proc, port = start_redis_server(tmp_path)
    client = redis.Redis(port=port, db=2)
    for i in range(200):
        client.set(f"agent:coder:turn:{i}", json.dumps({"i": i}), ex=3600)
        if i % 10:
            client.set(f"agent:coder:turn:{i}:metadata", "{}", ex=3600)
    yield f"redis://127.0.0.1:{port}/2", client
    proc.kill()
    proc.wait()


def _trace(url: str, **kwargs: object) -> dict:
    from tasks import trace

    return dict(trace.run.apply(kwargs={"store": url, **kwargs}, throw=True).get())


def test_trace_raises_alerts_records_series_and_resolves_when_fixed(aml_settings: Settings,
                                                                    keyspace: tuple[str, redis.Redis]) -> None:
    url, client = keyspace
    first = _trace(url)
    assert first["status"] == "warning" and first["recorded"]["alerts_raised"] == 1
    with session_scope(aml_settings.catalog_url) as session:
        alerts = queries.open_alerts(session, store=url)
        assert [(a.agent, a.check) for a in alerts] == [("agent:coder:turn:*", "trace.orphaned_companions")]
        assert alerts[0].details["keys"] == 20
        series = queries.latest_samples(session, store=url, names=["trace_items", "trace_bytes"])
        assert series["trace_items"][None] == 380 and series["trace_items"]["agent:coder:turn:*"] == 200
    lines = (aml_settings.home / "memory_tracer_timeseries.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["keys"] == 380
    for i in range(0, 200, 10):  # give the orphans their companions
        client.set(f"agent:coder:turn:{i}:metadata", "{}", ex=3600)
    second = _trace(url)
    assert second["recorded"]["alerts_resolved"] == 1 and second["status"] == "success"
    with session_scope(aml_settings.catalog_url) as session:
        assert queries.open_alerts(session, store=url) == []


def test_growth_between_traces_is_an_alert(aml_settings: Settings, keyspace: tuple[str, redis.Redis]) -> None:
    url, client = keyspace
    _trace(url)
    for i in range(200, 800):
        client.set(f"agent:coder:turn:{i}", "{}")
    report = _trace(url)["report"]
    growth = [a for a in report["anomalies"] if a["kind"] == "rapid_growth"]
    assert [(a["pattern"], a["keys_before"], a["keys"]) for a in growth] == [("agent:coder:turn:*", 200, 800)]
    assert growth[0]["severity"] == "critical"  # 4x: more than twice the growth ratio


def test_a_partial_trace_neither_records_series_nor_resolves(aml_settings: Settings,
                                                             keyspace: tuple[str, redis.Redis]) -> None:
    url, client = keyspace
    _trace(url)
    for i in range(0, 200, 10):
        client.set(f"agent:coder:turn:{i}:metadata", "{}", ex=3600)
    sampled = _trace(url, sample=50)
    assert sampled["report"]["partial"] and sampled["recorded"] == {"alerts_raised": 0, "alerts_resolved": 0,
                                                                    "samples": 0}
    with session_scope(aml_settings.catalog_url) as session:
        assert len(queries.open_alerts(session, store=url)) == 1


@pytest.mark.slow
def test_the_password_is_never_recorded(aml_settings: Settings, tmp_path: Path) -> None:
    proc, port = start_redis_server(tmp_path, "--requirepass", "hunter2")
    try:
        redis.Redis(port=port, password="hunter2").set("k:1", "v")
        result = _trace(f"redis://:hunter2@127.0.0.1:{port}/0")
        assert result["store"] == f"redis://:***@127.0.0.1:{port}/0"
        with session_scope(aml_settings.catalog_url) as session:
            rows = session.query(TaskRun).all()
            assert rows and all("hunter2" not in json.dumps([r.store, r.arguments, r.result]) for r in rows)
        assert "hunter2" not in (aml_settings.home / "memory_tracer_timeseries.jsonl").read_text()
    finally:
        proc.kill()
        proc.wait()


def test_trace_of_a_file_store_uses_the_same_time_series(aml_settings: Settings, tmp_path: Path) -> None:
    from aml.sample import SampleSpec, generate_loom_store

    store = tmp_path / "memory"
    generate_loom_store(store, SampleSpec(agents=2, patterns=20, solutions=10, decisions=5))
    first = _trace(str(store))
    report = first["report"]
    assert report["source"] == "files" and report["keys"] == 70 and len(report["agents"]) == 2
    subject = next(iter(report["patterns"]))
    generate_loom_store(store, SampleSpec(agents=2, patterns=200, solutions=10, decisions=5))  # patterns grow
    second = _trace(str(store))["report"]
    growth = {a["pattern"] for a in second["anomalies"] if a["kind"] == "rapid_growth"}
    assert growth and all(p.endswith("/patterns") for p in growth)
    with session_scope(aml_settings.catalog_url) as session:
        series = queries.latest_samples(session, store=str(store.resolve()), names=["trace_items"])
        assert series["trace_items"][None] == second["keys"] and subject in series["trace_items"]
    with pytest.raises(NotADirectoryError):
        _trace(str(tmp_path / "missing"))


def test_clean_and_undo_through_the_catalog(aml_settings: Settings, keyspace: tuple[str, redis.Redis]) -> None:
    from tasks import trace

    url, client = keyspace
    before = {k: client.get(k) for k in client.scan_iter(match="agent:coder:turn:*")}
    dry = trace.clean_keys.apply(kwargs={"store": url, "pattern": "agent:coder:turn:1*", "dry_run": True},
                                 throw=True).get()
    assert dry["selected"] == 211 and dry["removed"] == 0 and client.dbsize() == 380
    done = trace.clean_keys.apply(kwargs={"store": url, "pattern": "agent:coder:turn:1*"}, throw=True).get()
    assert done["removed"] == 211 and client.dbsize() == 169
    with pytest.raises(ValueError, match="is not a trace clean"):
        trace.undo_clean_keys.apply(kwargs={"store": url, "run_id": dry["task_run_id"] - 1}, throw=True).get()
    undone = trace.undo_clean_keys.apply(kwargs={"store": url, "run_id": done["task_run_id"]}, throw=True).get()
    assert undone["written"] == 211
    assert {k: client.get(k) for k in client.scan_iter(match="agent:coder:turn:*")} == before


def test_undo_refuses_an_altered_snapshot(aml_settings: Settings, keyspace: tuple[str, redis.Redis]) -> None:
    from aml.trace.keyspace import KeyspaceFileError
    from tasks import trace

    url, client = keyspace
    done = trace.clean_keys.apply(kwargs={"store": url, "pattern": "agent:coder:turn:5"}, throw=True).get()
    snapshot = Path(done["snapshot"])
    snapshot.write_bytes(snapshot.read_bytes().replace(b"5", b"6"))
    with pytest.raises(KeyspaceFileError, match="altered"):
        trace.undo_clean_keys.apply(kwargs={"store": url, "run_id": done["task_run_id"]}, throw=True).get()
    assert client.get("agent:coder:turn:5") is None


def test_a_locked_keyspace_is_not_cleaned(aml_settings: Settings, keyspace: tuple[str, redis.Redis]) -> None:
    import hashlib

    from tasks import trace
    from workers.locks import store_lock

    url, client = keyspace
    settings = aml_settings
    digest_dir = settings.home / "locks" / hashlib.sha256(url.encode()).hexdigest()[:24]
    digest_dir.mkdir(parents=True)
    with store_lock(url, redis_url=None, store_dir=digest_dir, wait_s=0.1):
        from workers.app import current_aml_app

        app = current_aml_app()
        app.conf["aml_settings"] = settings.replace(lock_timeout=0.2)
        try:
            result = trace.clean_keys.apply(kwargs={"store": url, "pattern": "agent:*"}, throw=True).get()
        finally:
            app.conf["aml_settings"] = settings
    assert result["status"] == "skipped" and client.dbsize() == 380


def test_export_then_import_into_another_database(aml_settings: Settings, keyspace: tuple[str, redis.Redis],
                                                  tmp_path: Path) -> None:
    from tasks import keyspace as keyspace_tasks

    url, client = keyspace
    exported = keyspace_tasks.export.apply(kwargs={"store": url, "path": str(tmp_path / "k.json")}, throw=True).get()
    assert exported["keys"] == 380
    other_url = url[:-1] + "5"
    other = redis.Redis(port=client.connection_pool.connection_kwargs["port"], db=5)
    other.set("agent:coder:turn:1", "older")
    result = keyspace_tasks.import_.apply(kwargs={"store": other_url, "path": str(tmp_path / "k.json")},
                                          throw=True).get()
    assert result["written"] == 380 and result["overwritten"] == 1 and result["pre_restore"]["keys"] == 1
    assert other.get("agent:coder:turn:1") == client.get("agent:coder:turn:1")
    assert 3500 < other.ttl("agent:coder:turn:1") <= 3600


@pytest.mark.slow
def test_trace_runs_on_a_real_worker_sent_by_name(celery_worker_process, keyspace: tuple[str, redis.Redis]) -> None:
    """An agent that has only Celery sends aml.trace.run by name; the worker traces and records it."""
    from celery import Celery

    url, _client = keyspace
    env = celery_worker_process.env
    sender = Celery(broker=env["AML_BROKER_URL"], backend=env["AML_BROKER_URL"])
    result = sender.send_task("aml.trace.run", kwargs={"store": url}, queue="fast").get(timeout=120)
    assert result["report"]["keys"] == 380 and result["recorded"]["alerts_raised"] == 1
    lines = (celery_worker_process.home / "memory_tracer_timeseries.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["store"] == url


@pytest.mark.slow
def test_cli_export_import_clean_and_undo(tmp_path: Path, keyspace: tuple[str, redis.Redis]) -> None:
    import subprocess
    import sys

    from tests.fixtures_runtime import REPO

    url, client = keyspace
    env = {"AML_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}

    def aml(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)

    exported = aml(url, "backup", "export", str(tmp_path / "ks.json"))
    assert exported.returncode == 0 and "exported 380 keys" in exported.stdout, exported.stderr
    dry = aml(url, "trace", "clean", "--pattern", "agent:coder:turn:1?", "--dry-run")
    assert dry.returncode == 0 and "would remove 10 keys" in dry.stdout and client.dbsize() == 380
    done = aml(url, "trace", "clean", "--pattern", "agent:coder:turn:1?", "--json")
    run_id = json.loads(done.stdout)["task_run_id"]
    assert client.dbsize() == 370
    undone = aml(url, "trace", "clean", "undo", str(run_id))
    assert undone.returncode == 0 and "put back 10 keys" in undone.stdout and client.dbsize() == 380
    client.set("agent:coder:turn:3", "changed")
    imported = aml(url, "backup", "import", str(tmp_path / "ks.json"), "--pattern", "agent:coder:turn:3")
    assert imported.returncode == 0 and "1 overwritten" in imported.stdout, imported.stderr
    assert client.get("agent:coder:turn:3") == b'{"i": 3}'
    wrong = aml(str(tmp_path), "backup", "export", "x.json")
    assert wrong.returncode == 2 and "for Redis keyspaces" in wrong.stderr
    missing = aml(url, "trace", "clean")
    assert missing.returncode == 2 and "--pattern" in missing.stderr


def test_a_clean_killed_part_way_then_redelivered_is_undone_exactly(
        aml_settings: Settings, keyspace: tuple[str, redis.Redis], monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker dies after the first UNLINK batch (a fault injected: the connection is lost); the task comes
    back with the same id, removes the rest, and its one snapshot holds every key both attempts removed."""
    from tasks import trace

    url, client = keyspace
    for i in range(1200):  # more than one UNLINK batch
        client.set(f"scratch:{i}", f"v{i}")
    before = {k: client.get(k) for k in client.scan_iter(match="scratch:*")}
    real_unlink = redis.Redis.unlink
    calls = {"n": 0}

    def dying_unlink(self: redis.Redis, *names: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise redis.ConnectionError("worker killed")
        return int(real_unlink(self, *names))

    monkeypatch.setattr(redis.Redis, "unlink", dying_unlink)
    with pytest.raises(redis.ConnectionError):
        trace.clean_keys.apply(kwargs={"store": url, "pattern": "scratch:*"}, task_id="clean-1", throw=True).get()
    assert 0 < len(list(client.scan_iter(match="scratch:*"))) < 1200  # the first batch is gone
    monkeypatch.setattr(redis.Redis, "unlink", real_unlink)
    done = trace.clean_keys.apply(kwargs={"store": url, "pattern": "scratch:*"}, task_id="clean-1",
                                  throw=True).get()
    assert done["snapshot_keys"] == 1200 and not list(client.scan_iter(match="scratch:*"))
    undone = trace.undo_clean_keys.apply(kwargs={"store": url, "run_id": done["task_run_id"]}, throw=True).get()
    assert undone["written"] == 1200
    assert {k: client.get(k) for k in client.scan_iter(match="scratch:*")} == before


def test_a_redelivered_import_keeps_the_values_from_before_its_first_attempt(
        aml_settings: Settings, keyspace: tuple[str, redis.Redis], tmp_path: Path) -> None:
    from aml.trace.keyspace import Entry, import_entries, read_keyspace_file

    _url, client = keyspace
    client.set("agent:coder:turn:1", "original")
    entries = [Entry(b"agent:coder:turn:1", "string", b"imported")]
    pre = tmp_path / "pre.json"
    import_entries(client, entries, pre_restore=pre)  # the first attempt: it finished its writes, then died
    import_entries(client, entries, pre_restore=pre)  # the redelivered attempt, same file
    saved = {e.key: e.value for e in read_keyspace_file(pre)[1]}
    assert saved == {b"agent:coder:turn:1": b"original"}  # not the value the first attempt wrote
