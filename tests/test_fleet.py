"""The service as it runs: real prefork workers, real kills, plain-Celery clients, Redis and RabbitMQ brokers.

Workers are subprocesses (``aml worker``), not pytest-celery's in-process worker: the tests kill them with
SIGKILL and restart them, which needs a process of their own, and they must run the same console entry an
operator starts.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.backup_helpers import make_json_store
from tests.fixtures_runtime import REPO, RedisServer, runtime_env

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def _rabbitmq_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def start_worker(tmp_path: Path, env: dict[str, str], *args: str, tag: str = "w") -> Proc:
    """``aml worker ARGS`` as an operator starts it; returns once Celery says ``ready.``."""
    log = tmp_path / f"{tag}-{time.monotonic_ns()}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "worker", *args], cwd=REPO, env=env, stdout=fh,
                                stderr=fh, start_new_session=True)
    deadline = time.monotonic() + 60
    while b"ready." not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"worker not ready:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    return Proc(proc, log)


def stop(p: Proc) -> None:
    if p.proc.poll() is None:
        os.killpg(p.proc.pid, signal.SIGTERM)
        try:
            p.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.proc.pid, signal.SIGKILL)
            p.proc.wait()


def pool_children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


@pytest.fixture
def fleet_env(tmp_path: Path, redis_server: RedisServer) -> Iterator[dict[str, str]]:
    home = tmp_path / "home"
    home.mkdir()
    env = runtime_env(home, redis_server.url(7))
    env["AML_LOCK_URL"] = redis_server.url(7)
    yield env


def _client(broker: str, backend: str):
    from celery import Celery

    return Celery("plain", broker=broker, backend=backend, set_as_current=False)


def _run_rows(env: dict[str, str], task_id: str) -> list[str]:
    db = env["AML_CATALOG_URL"].removeprefix("sqlite:///")
    if not Path(db).exists():
        return []
    with sqlite3.connect(db, timeout=10) as conn:
        try:
            rows = conn.execute("SELECT status FROM task_runs WHERE task_id = ? ORDER BY id", (task_id,))
            return [r[0] for r in rows]
        except sqlite3.OperationalError:
            return []


def _wait_running(env: dict[str, str], task_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while "running" not in _run_rows(env, task_id):
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.02)


# -- enqueue by name -------------------------------------------------------------------------------------

PLAIN_CLIENT = """
import json, sys
try:
    import aml  # noqa: F401
except ImportError:
    pass
else:
    sys.exit("aml is importable: the test would prove nothing")
from celery import Celery
broker, backend, store, mode = sys.argv[1:5]
app = Celery("agent", broker=broker, backend=backend)
if mode == "client":
    import importlib.util
    spec = importlib.util.spec_from_file_location("amlclient", sys.argv[5])
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    res = mod.enqueue("health", store, app=app)
elif mode == "queue":
    res = app.send_task("aml.health.check", kwargs={"store": store}, queue="fast")
else:
    res = app.send_task("aml.health.check", kwargs={"store": store})
print(json.dumps(res.get(timeout=60)["report"]["status"]))
"""


@pytest.mark.slow
def test_plain_celery_process_enqueues_by_name(tmp_path: Path, fleet_env: dict[str, str]) -> None:
    """A process that cannot import aml (only Celery on sys.path) sends by name, with and without a queue,
    and through the copied client module; two workers with the README's commands serve it."""
    store = make_json_store(tmp_path / "store", agents=2, docs=3)
    heavy = start_worker(tmp_path, fleet_env, "-Q", "heavy", "-c", "1", tag="heavy")
    fast = start_worker(tmp_path, fleet_env, "-Q", "fast", "-c", "2", tag="fast")
    try:
        site = sysconfig.get_paths()["purelib"]
        env = {"PYTHONPATH": site, "PATH": os.environ.get("PATH", "")}  # -S: no .pth files, so no editable aml
        for mode in ("default", "queue", "client"):
            proc = subprocess.run([sys.executable, "-S", "-c", PLAIN_CLIENT, fleet_env["AML_BROKER_URL"],
                                   fleet_env["AML_BROKER_URL"], str(store), mode, str(REPO / "aml/agent/client.py")],
                                  cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, (mode, proc.stderr[-3000:])
            assert json.loads(proc.stdout) in ("healthy", "warning", "critical"), proc.stdout
        for p in (heavy, fast):
            assert "DuplicateNodenameWarning" not in p.text(), p.text()
        assert "heavy@" in heavy.text() and "fast@" in fast.text()
    finally:
        stop(heavy)
        stop(fast)


def test_client_routes_like_the_workers() -> None:
    from aml.agent.client import QUEUES, task_name
    from workers.app import current_aml_app, queue_for

    app = current_aml_app()
    app.loader.import_default_modules()
    for operation, queue in QUEUES.items():
        assert queue_for(operation) == queue
        assert task_name(operation) in app.tasks, operation
    with pytest.raises(ValueError, match="unknown aml operation"):
        task_name("defrag")


@pytest.mark.slow
def test_wait_with_no_worker_says_so_in_one_line(tmp_path: Path, fleet_env: dict[str, str]) -> None:
    store = make_json_store(tmp_path / "store", agents=1, docs=2)
    proc = subprocess.run([sys.executable, "-m", "cli.main", str(store), "monitor", "health", "--enqueue", "--wait"],
                          cwd=REPO, env=fleet_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 69, proc.stderr
    assert "no worker consumes queue 'fast'" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 3  # one message (rich may wrap it)


# -- a killed worker never loses a task ------------------------------------------------------------------

@dataclass
class KillRun:
    """A task killed once and redelivered (:func:`_kill_during`)."""

    task_id: str
    took_s: float
    """Seconds from the SIGKILL until the redelivered task's result arrived."""
    result: dict[str, Any]
    """The redelivered task's result."""


def _kill_during(tmp_path: Path, env: dict[str, str], task: str, kwargs: dict[str, Any], *, kill_whole: bool,
                 kill_when: Callable[[str], bool] | None = None) -> KillRun:
    """Send ``task`` by name to a real ``aml worker -Q heavy -c 1``, SIGKILL its pool child (or the whole worker,
    then start a new one) while the task runs, and wait for the redelivered task's result.

    The kill lands once the task's catalog run is ``running`` and ``kill_when(task_id)`` holds (polled every
    2 ms; default: at once). Asserts that the kill landed mid-run (the run still ``running``), that the
    (restarted) worker received the task again, that it finished with ``success`` or ``warning``, and that
    the catalog holds exactly one run for the task id, with that status.
    """
    worker = start_worker(tmp_path, env, "-Q", "heavy", "-c", "1", tag="heavy")
    app = _client(env["AML_BROKER_URL"], env["AML_RESULT_BACKEND"] if "AML_RESULT_BACKEND" in env
                  else env["AML_LOCK_URL"])
    try:
        res = app.send_task(task, kwargs=kwargs, queue="heavy")
        _wait_running(env, res.id)
        if kill_when is not None:
            deadline = time.monotonic() + 60
            while not kill_when(res.id):
                assert time.monotonic() < deadline, "the kill point never came"
                time.sleep(0.002)
        children = pool_children(worker.proc.pid)
        assert children, "no pool child"
        if kill_whole:
            os.killpg(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait()
            killed = time.monotonic()
            worker = start_worker(tmp_path, env, "-Q", "heavy", "-c", "1", tag="heavy-restarted")
        else:
            for child in children:
                os.kill(child, signal.SIGKILL)
            killed = time.monotonic()
        assert _run_rows(env, res.id) == ["running"]  # the kill landed mid-run: the run never finished
        result = res.get(timeout=180)
        took = time.monotonic() - killed
        assert result["status"] in ("success", "warning"), result
        assert _run_rows(env, res.id) == [result["status"]]
        received = worker.text().count(f"{task}[{res.id}] received")
        assert received == (1 if kill_whole else 2), received  # the (restarted) worker got it again
        return KillRun(res.id, took, result)
    finally:
        stop(worker)


def _backup_and_kill(tmp_path: Path, env: dict[str, str], kill_whole: bool) -> tuple[float, Path]:
    """Enqueue a backup, SIGKILL the pool child (or the whole worker) while it runs, and return the time
    from the kill until the task finished, plus the store."""
    store = make_json_store(tmp_path / "store", agents=12, docs=150, seed=3)
    run = _kill_during(tmp_path, env, "aml.backup.create", {"store": str(store)}, kill_whole=kill_whole)
    return run.took_s, store


def _aml_json(env: dict[str, str], *args: str) -> Any:
    """``aml ARGS --json`` run inline as an operator runs it; asserts exit code 0 and returns the parsed output."""
    proc = subprocess.run([sys.executable, "-m", "cli.main", *args, "--json"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout)


def _verify_clean(store: Path, env: dict[str, str]) -> None:
    _aml_json(env, str(store), "backup", "verify", "--read-data")


@pytest.mark.slow
def test_kill_pool_child_during_backup_redelivers_at_once(tmp_path: Path, fleet_env: dict[str, str]) -> None:
    took, store = _backup_and_kill(tmp_path, fleet_env, kill_whole=False)
    print(f"redis, pool child killed: backup finished {took:.1f} s after the kill")
    assert took < 60  # redelivered at once; the dead child's lock is taken over, not waited out
    _verify_clean(store, fleet_env)


@pytest.mark.slow
def test_kill_whole_worker_with_redis_recovers_within_the_visibility_timeout(
        tmp_path: Path, fleet_env: dict[str, str]) -> None:
    env = {**fleet_env, "AML_VISIBILITY_TIMEOUT": "15"}
    took, store = _backup_and_kill(tmp_path, env, kill_whole=True)
    print(f"redis (visibility timeout 15 s), whole worker killed: backup finished {took:.1f} s after the kill")
    assert took < 15 + 5 + 30  # visibility timeout + one restore sweep + restart and the backup itself
    _verify_clean(store, env)


@pytest.mark.slow
@pytest.mark.skipif(not _rabbitmq_up(), reason="no RabbitMQ on 127.0.0.1:5672")
def test_kill_whole_worker_with_rabbitmq_redelivers_at_once(tmp_path: Path, fleet_env: dict[str, str]) -> None:
    vhost_queue_prefix = f"aml-test-{os.getpid()}"
    env = {**fleet_env, "AML_BROKER_URL": AMQP_URL, "AML_RESULT_BACKEND": fleet_env["AML_LOCK_URL"]}
    del vhost_queue_prefix
    took, store = _backup_and_kill(tmp_path, env, kill_whole=True)
    print(f"rabbitmq, whole worker killed: backup finished {took:.1f} s after the kill")
    assert took < 30
    _verify_clean(store, env)


SAMPLE_END = "2026-06-01T00:00:00Z"
"""The generated stores' last instant, and prune's reference time (``now``): the runs are reproducible."""

PRUNE_STRATEGIES = ["time_based", "performance_based"]
"""Per-record rules: re-planned after a partial run, they plan exactly the rest (``space_based`` would rank
the records of an agent that the killed attempt had already shrunk differently)."""


def _loom_store(root: Path, *, agents: int, patterns: int, idle: int = 0, gzip_every: int = 2) -> Path:
    """A generated Loom store (:mod:`aml.sample`) ending at :data:`SAMPLE_END`; ``idle`` agents have been idle
    45 days (their files are cold)."""
    from datetime import datetime

    from aml.sample import SampleSpec, generate_loom_store

    end = datetime.fromisoformat(SAMPLE_END.replace("Z", "+00:00"))
    generate_loom_store(root, SampleSpec(agents=agents, patterns=patterns, solutions=patterns // 2,
                                         decisions=patterns // 2, days=400, gzip_every=gzip_every,
                                         idle_agents=idle, end=end, seed=5))
    return root


def _documents(store: Path) -> dict[str, Any]:
    """Every JSON document below ``store`` (aml's own ``.aml/`` left out), decoded (plain, gzip or zstd) and
    parsed: a torn or unparseable document fails the test."""
    from aml.store.codec import decode

    out: dict[str, Any] = {}
    for path in sorted(store.rglob("*.json")):
        rel = path.relative_to(store)
        if ".aml" not in rel.parts:
            out[rel.as_posix()] = json.loads(decode(path.read_bytes())[0])
    return out


def _record_keys(documents: dict[str, Any]) -> set[tuple[str, str]]:
    """``(document, record id)`` of every record in the documents' top-level lists."""
    return {(rel, str(item["id"])) for rel, doc in documents.items() if isinstance(doc, list)
            for item in doc if isinstance(item, dict) and "id" in item}


def _restore_oldest_snapshot(repo: Path, tag: str, attempts: int, target: Path) -> list[str]:
    """Restore into ``target`` the oldest snapshot in ``repo`` tagged ``tag`` (a killed attempt's safety snapshot)
    and return the ids of all of them, oldest first; asserts one per attempt."""
    from aml.backup import list_snapshots, restore

    tagged = [s.backup_id for s in list_snapshots(repo, include_legacy=False) if tag in s.tags]
    assert len(tagged) == attempts, tagged  # one safety snapshot per attempt
    restore(repo, tagged[0], target)
    return tagged


@pytest.mark.slow
def test_kill_pool_child_during_prune_redelivers_and_prunes_exactly_the_plan(
        tmp_path: Path, fleet_env: dict[str, str]) -> None:
    """SIGKILL once the prune has rewritten its first document: the redelivered run prunes the rest, and the
    store ends as prune's own plan says (every document parses, every record not planned is there, every
    archived decision is in the run's archive exactly once); the killed attempt's pre-prune snapshot holds
    the store as it was; the run has one undo row per planned record, the killed attempt's included, and
    ``prune undo`` puts every record back."""
    from aml.prune import build_plan
    from aml.prune.archive import read_archive
    from tasks.prune import make_config

    store = _loom_store(tmp_path / "p" / ".loom" / "memory", agents=16, patterns=300)
    before = _documents(store)
    plan = build_plan(store, make_config(now=SAMPLE_END), PRUNE_STRATEGIES)
    planned = {(a.document, a.record_id) for a in plan.actions}
    archived = sorted(a.record_id for a in plan.actions if a.action == "archived")
    assert planned and archived and planned <= _record_keys(before)
    first = store / min(a.document for a in plan.actions)  # apply_plan rewrites documents in path order
    inode = first.stat().st_ino  # an atomic rewrite (temp file + rename) gives the path a new inode

    run = _kill_during(tmp_path, fleet_env, "aml.prune.run",
                       {"store": str(store), "strategies": PRUNE_STRATEGIES, "now": SAMPLE_END},
                       kill_whole=False, kill_when=lambda _task_id: first.stat().st_ino != inode)

    assert run.result["status"] == "success", run.result
    applied = run.result["applied"] or {"removed": 0, "archived": 0}
    by_killed = len(planned) - applied["removed"] - applied["archived"]
    print(f"prune, pool child killed: {by_killed} of {len(planned)} records pruned before the kill; "
          f"finished {run.took_s:.1f} s after it")
    assert 0 < by_killed < len(planned)  # the kill landed between rewrites: both attempts pruned some
    after = _documents(store)
    assert set(after) == set(before)  # no document lost, none added
    assert _record_keys(after) == _record_keys(before) - planned  # exactly the planned records are gone
    repo = store.parent / "memory-backup"
    kept = [item["id"] for f in sorted(repo.glob(f"archives/*/decisions_{run.task_id}.json.gz"))
            for item in read_archive(f)]
    assert sorted(kept) == archived  # every archived decision once: none lost, none twice
    _restore_oldest_snapshot(repo, f"prune:{run.task_id}", 2, tmp_path / "restored")
    assert _documents(tmp_path / "restored") == before  # the killed attempt's snapshot: the store as it was
    # the rows are written ahead of each rewrite: the redelivered run owns the killed attempt's removals too
    assert (run.result["resumed"] or {}).get("kept") == by_killed, run.result["resumed"]
    with sqlite3.connect(fleet_env["AML_CATALOG_URL"].removeprefix("sqlite:///"), timeout=10) as conn:
        rows = conn.execute("SELECT document_path, record_id FROM prune_actions WHERE run_id = ? "
                            "AND undone_at IS NULL", (run.task_id,)).fetchall()
    assert len(rows) == len(planned) and set(rows) == planned  # one row per pruned record, whichever attempt
    undone = _aml_json(fleet_env, str(store), "prune", "undo", run.task_id)
    assert undone["restored"] == len(planned) and not undone["failed"], undone
    assert _documents(store) == before  # every record the run removed is back, in place


MIGRATE_FROM, MIGRATE_TO = "1.0.0", "2.0.0"
"""The generated stores' schema version, and the migration kill test's target."""


def _record_ids(documents: dict[str, Any]) -> dict[str, list[str]]:
    """Record ids of every document's top-level list, in order (a lost or duplicated record shows)."""
    return {rel: [str(item["id"]) for item in doc] for rel, doc in documents.items() if isinstance(doc, list)}


def _assert_equivalent_records(got: dict[str, Any], want: dict[str, Any]) -> None:
    """The collection documents of ``got`` and ``want`` hold the same records, in the same order and with the same
    values (:func:`aml.migrate.differences`: the migration's own bookkeeping times ignored)."""
    from aml.migrate import differences

    assert _record_ids(got) == _record_ids(want)
    for rel in _record_ids(want):
        assert differences(got[rel], want[rel]) == [], rel


@pytest.mark.slow
def test_kill_pool_child_during_migrate_redelivers_and_finishes_the_journaled_migration(
        tmp_path: Path, fleet_env: dict[str, str]) -> None:
    """SIGKILL once ``aml.migrate.migrate`` has rewritten its first document: the redelivered run finds the killed
    attempt's journal and finishes the migration. The store ends as an uninterrupted migration of an untouched copy
    leaves it (every document parses, at the target version, every record once, same values), with one
    ``migration_history`` entry naming both attempts and no journal left; the killed attempt's pre-migrate snapshot
    holds the store as it was; ``--rollback`` finds nothing left to undo, and migrating back down restores every
    record."""
    from aml.migrate import build_plan, detect
    from aml.migrate import migrate as migrate_store
    from aml.store import TMP_PREFIX

    store = _loom_store(tmp_path / "m" / ".loom" / "memory", agents=16, patterns=300)
    before = _documents(store)
    reference = tmp_path / "reference" / ".loom" / "memory"
    shutil.copytree(store, reference)
    assert migrate_store(reference, MIGRATE_TO).status == "success"  # the same migration, never interrupted
    expected = _documents(reference)
    writes = [fp.relpath for fp in build_plan(store, MIGRATE_TO).writes]
    assert detect(store).version == MIGRATE_FROM and len(writes) == len(_record_ids(before))
    first = store / writes[0]  # apply_plan rewrites the planned files in order
    inode = first.stat().st_ino  # an atomic rewrite (temp file + rename) gives the path a new inode

    run = _kill_during(tmp_path, fleet_env, "aml.migrate.migrate", {"store": str(store), "version": MIGRATE_TO},
                       kill_whole=False, kill_when=lambda _task_id: first.stat().st_ino != inode)

    result = run.result
    assert result["status"] == "success" and result["outcome"] == "migrated" and result["resumed"], result
    by_killed = len(writes) - len(result["files_written"])
    print(f"migrate, pool child killed: {by_killed} of {len(writes)} files rewritten before the kill; "
          f"finished {run.took_s:.1f} s after it")
    assert 0 < by_killed < len(writes)  # the kill landed between rewrites: both attempts rewrote some
    assert set(result["files_written"]) < set(writes)  # the redelivered run rewrote only what was left
    after = _documents(store)  # every document parses
    assert set(after) == set(expected)  # no document lost; the schema file added, as by the reference
    _assert_equivalent_records(after, expected)  # no record lost, duplicated or migrated differently
    found = detect(store)
    assert found.consistent and found.version == found.claimed == MIGRATE_TO, found.to_dict()
    (entry,) = after["config/schema_version.json"]["migration_history"]  # one migration, carried out twice
    assert len(entry["run_ids"]) == 2 and entry["run_ids"][-1] == result["run_id"], entry
    assert entry["from"] == MIGRATE_FROM and entry["to"] == MIGRATE_TO
    assert not (store / ".aml").exists()  # journal, originals and progress log gone
    assert not [p for p in store.rglob("*") if p.name.startswith(TMP_PREFIX)]  # no torn temporary file

    repo = store.parent / "memory-backup"
    snapshots = _restore_oldest_snapshot(repo, "pre-migrate", 2, tmp_path / "restored")
    assert _documents(tmp_path / "restored") == before  # the killed attempt's snapshot: the store as it was
    assert snapshots[-1] == result["backup_id"]  # the redelivered attempt's, of the half-migrated store

    # the undo paths: nothing interrupted is left to roll back, and the migration goes back down losslessly
    undone = _aml_json(fleet_env, str(store), "migrate", "migrate", "--rollback")
    assert undone["status"] == "success" and undone["outcome"] == "nothing", undone
    down = _aml_json(fleet_env, str(store), "migrate", "migrate", "--version", MIGRATE_FROM)
    assert down["status"] == "success" and down["outcome"] == "migrated" and not down["lossy_count"], down
    assert detect(store).version == MIGRATE_FROM
    _assert_equivalent_records(_documents(store), before)


@pytest.mark.slow
def test_kill_pool_child_during_optimize_all_redelivers_and_compresses_every_cold_file(
        tmp_path: Path, fleet_env: dict[str, str]) -> None:
    """SIGKILL once ``aml.compress.all`` has compressed its first document: the redelivered run compresses the
    rest and builds the index; every document still parses to the same JSON, with its mtime."""
    from aml.optimize import compress_store

    store = _loom_store(tmp_path / "c" / ".loom" / "memory", agents=40, patterns=150, idle=40, gzip_every=0)
    before = _documents(store)
    mtimes = {rel: (store / rel).stat().st_mtime_ns for rel in before}
    cold = [store / c.relpath for c in compress_store(store, dry_run=True).changed]
    assert len(cold) >= 100

    def gzipped(path: Path) -> bool:
        with open(path, "rb") as fh:
            return fh.read(2) == b"\x1f\x8b"

    assert not any(gzipped(p) for p in cold)
    run = _kill_during(tmp_path, fleet_env, "aml.compress.all", {"store": str(store)}, kill_whole=False,
                       kill_when=lambda _task_id: any(gzipped(p) for p in cold))

    assert run.result["status"] == "success", run.result
    by_redelivered = run.result["steps"]["compress"]["files_changed"]
    print(f"optimize all, pool child killed: {len(cold) - by_redelivered} of {len(cold)} files compressed "
          f"before the kill; finished {run.took_s:.1f} s after it")
    assert 0 < by_redelivered < len(cold)  # the kill landed between two files: both attempts compressed some
    assert _documents(store) == before  # lossless, nothing torn
    assert all(gzipped(p) for p in cold)
    assert {rel: (store / rel).stat().st_mtime_ns for rel in before} == mtimes
    assert run.result["steps"]["index"]["records"] > 0


# -- a store held by a live operation is retried, never a success ---------------------------------------

@pytest.mark.slow
def test_locked_store_is_retried_on_the_worker(tmp_path: Path, fleet_env: dict[str, str]) -> None:
    from workers.locks import store_lock

    store = make_json_store(tmp_path / "store", agents=1, docs=3)
    env = {**fleet_env, "AML_LOCK_TIMEOUT": "0.5"}
    worker = start_worker(tmp_path, env, "-Q", "heavy", "-c", "1", tag="heavy")
    app = _client(env["AML_BROKER_URL"], env["AML_BROKER_URL"])
    try:
        with store_lock(str(store.resolve()), redis_url=env["AML_LOCK_URL"], store_dir=store.resolve(), wait_s=1):
            res = app.send_task("aml.backup.create", kwargs={"store": str(store)}, queue="heavy")
            deadline = time.monotonic() + 30
            while res.state != "RETRY":
                assert time.monotonic() < deadline, res.state
                time.sleep(0.1)
        result = res.get(timeout=120)
        assert result["status"] == "success" and result["backup_id"]
        assert _run_rows(env, res.id) == ["success"]  # one row per task id: the retry reused it
        assert "StoreLocked" in worker.text() and "retry" in worker.text().lower()
    finally:
        stop(worker)


# -- beat and flower refuse to start unsafe -------------------------------------------------------------

def test_beat_refuses_without_stores_and_flower_without_auth(tmp_path: Path, fleet_env: dict[str, str]) -> None:
    env = {**fleet_env, "AML_STORES": ""}
    beat = subprocess.run([sys.executable, "-m", "cli.main", "beat"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert beat.returncode == 2 and "AML_STORES is empty" in beat.stderr
    env.pop("FLOWER_BASIC_AUTH", None)
    flower = subprocess.run([sys.executable, "-m", "cli.main", "flower", "--port=0"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert flower.returncode == 2 and "--basic-auth" in flower.stderr


# -- beat fires its entries onto the workers, once per interval even with two beats ---------------------

BEAT_INTERVAL_S = 2.0
"""The health entry's interval in the beat tests (``AML_BEAT_SCHEDULE=aml.health.check=2``), seconds."""


def start_beat(tmp_path: Path, env: dict[str, str], tag: str = "beat") -> Proc:
    """``aml beat`` as an operator starts it (in ``tmp_path``); returns once it logs ``beat: Starting``."""
    log = tmp_path / f"{tag}-{time.monotonic_ns()}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "beat"], cwd=tmp_path, env=env, stdout=fh,
                                stderr=fh, start_new_session=True)
    deadline = time.monotonic() + 60
    while b"beat: Starting" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(Proc(proc, log))
            raise RuntimeError(f"beat not started:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    return Proc(proc, log)


@pytest.fixture
def beat_env(tmp_path: Path, fleet_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """:func:`fleet_env` with a store for beat and its health entry every :data:`BEAT_INTERVAL_S` seconds; RedBeat's
    keys (schedule, lock) are deleted before and after, so no earlier beat's lock makes this one a standby."""
    import redis

    if shutil.which("redis-server") is None:  # redis_server fell back to the shared Redis: leave its keys alone
        pytest.skip("the beat tests delete RedBeat's keys: they need a private redis-server")
    store = make_json_store(tmp_path / "store", agents=2, docs=3)
    env = {**fleet_env, "AML_STORES": str(store), "AML_BEAT_SCHEDULE": f"aml.health.check={BEAT_INTERVAL_S:g}"}
    client = redis.Redis.from_url(env["AML_LOCK_URL"])

    def clear() -> None:
        keys = list(client.scan_iter("aml:redbeat:*"))
        if keys:
            client.delete(*keys)

    clear()
    yield env
    clear()
    client.close()


def _health_runs(env: dict[str, str]) -> list[tuple[str, float]]:
    """``(status, started_at as seconds since the epoch)`` of the catalog's health runs, oldest first."""
    from datetime import UTC, datetime

    db = env["AML_CATALOG_URL"].removeprefix("sqlite:///")
    if not Path(db).exists():
        return []
    with sqlite3.connect(db, timeout=10) as conn:
        try:
            rows = conn.execute("SELECT status, started_at FROM task_runs WHERE operation = 'health' "
                                "AND started_at IS NOT NULL ORDER BY started_at").fetchall()
        except sqlite3.OperationalError:
            return []
    return [(status, datetime.fromisoformat(str(at)).replace(tzinfo=UTC).timestamp()) for status, at in rows]


def test_settings_give_beat_a_short_schedule() -> None:
    from celery.schedules import crontab, schedule

    from workers.app import create_app
    from workers.settings import load_settings

    settings = load_settings({"AML_STORES": "/srv/a,/srv/b",
                              "AML_BEAT_SCHEDULE": "aml.health.check=2.5; aml.prune.run = 0 4 * * sat ;"})
    entries = create_app(settings).conf.beat_schedule
    for store in ("/srv/a", "/srv/b"):
        interval = entries[f"health {store}"]["schedule"]
        assert type(interval) is schedule and interval.run_every.total_seconds() == 2.5
        assert entries[f"prune {store}"]["schedule"] == crontab(minute="0", hour="4", day_of_week="sat")
        assert entries[f"backup auto {store}"]["schedule"] == crontab(minute="0", hour="2")  # not named: the seeds'
    for bad, why in (("aml.health.chek=60", "no entry for task 'aml.health.chek'"), ("aml.health.check=0", "positive"),
                     ("aml.health.check=-5", "positive"), ("aml.health.check=0 4 * *", "5 fields"),
                     ("aml.health.check=61 * * * *", "cron"), ("aml.health.check", "TASK=SCHEDULE"),
                     ("aml.health.check=1;aml.health.check=2", "twice")):
        with pytest.raises(ValueError, match="AML_BEAT_SCHEDULE") as err:
            load_settings({"AML_BEAT_SCHEDULE": bad})
        assert why in str(err.value), (bad, err.value)


@pytest.mark.slow
def test_beat_fires_a_short_schedule_onto_a_worker(tmp_path: Path, beat_env: dict[str, str]) -> None:
    """Real ``aml beat`` (RedBeat) with ``AML_BEAT_SCHEDULE`` sends the health entry; a real worker runs it and
    the catalog records it, within a few intervals of beat's start."""
    worker = start_worker(tmp_path, beat_env, "-Q", "fast", "-c", "1", tag="fast")
    try:
        beat = start_beat(tmp_path, beat_env)
        started = time.time()
        try:
            deadline = time.monotonic() + 30
            while len(_health_runs(beat_env)) < 2 or _health_runs(beat_env)[1][0] == "running":
                assert time.monotonic() < deadline, beat.text()[-3000:] + worker.text()[-3000:]
                time.sleep(0.2)
        finally:
            stop(beat)
        runs = _health_runs(beat_env)
        print(f"beat: first health run {runs[0][1] - started:.1f} s after beat started, the second "
              f"{runs[1][1] - runs[0][1]:.1f} s later (interval {BEAT_INTERVAL_S:g} s)")
        assert runs[0][1] - started < 3 * BEAT_INTERVAL_S + 5
        assert runs[1][0] in ("success", "warning", "failure")  # finished; the status is the store's health
        assert runs[1][1] - runs[0][1] > BEAT_INTERVAL_S / 2  # sent one interval apart, not in a burst
        assert "Sending due task health" in beat.text()
        assert "aml.health.check[" in worker.text() and "succeeded" in worker.text()
    finally:
        stop(worker)


@pytest.mark.slow
def test_two_beats_fire_each_interval_once(tmp_path: Path, beat_env: dict[str, str]) -> None:
    """Two ``aml beat`` started together: RedBeat's lock makes one a standby, so the health entry runs once per
    interval, not twice."""
    window_s = 5 * BEAT_INTERVAL_S
    worker = start_worker(tmp_path, beat_env, "-Q", "fast", "-c", "1", tag="fast")
    beats: list[Proc] = []
    try:
        beats = [start_beat(tmp_path, beat_env, tag="beat-a"), start_beat(tmp_path, beat_env, tag="beat-b")]
        deadline = time.monotonic() + 30
        while not _health_runs(beat_env):
            assert time.monotonic() < deadline, "".join(b.text()[-2000:] for b in beats)
            time.sleep(0.2)
        first = _health_runs(beat_env)[0][1]
        time.sleep(window_s + BEAT_INTERVAL_S / 2)
        assert all(b.proc.poll() is None for b in beats)  # the standby waits; it does not exit
    finally:
        for b in beats:
            stop(b)
        stop(worker)
    runs = [at for _status, at in _health_runs(beat_env) if first <= at <= first + window_s]
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    print(f"two beats: {len(runs)} health runs in {window_s:g} s (interval {BEAT_INTERVAL_S:g} s); gaps "
          + ", ".join(f"{g:.2f}" for g in gaps))
    senders = [b for b in beats if "Sending due task" in b.text()]
    assert len(senders) == 1, [b.text()[-1500:] for b in beats]  # one beat holds the lock, the other waits
    assert sum("beat: Acquired lock" in b.text() for b in beats) == 1
    assert window_s / BEAT_INTERVAL_S - 1 <= len(runs) <= window_s / BEAT_INTERVAL_S + 1
    assert min(gaps) > BEAT_INTERVAL_S / 2  # never two runs for one interval


def test_worker_arguments() -> None:
    from workers.service import ServiceRefused, worker_argv

    argv = worker_argv("heavy", 1, "info", [])
    assert argv[argv.index("-Q") + 1] == "heavy,celery" and argv[argv.index("-n") + 1] == "heavy@%h"
    argv = worker_argv("fast", 2, "info", ["-n", "mine@%h"], default_queue=False)
    assert argv[argv.index("-Q") + 1] == "fast" and argv.count("-n") == 1
    with pytest.raises(ServiceRefused, match="unknown queue"):
        worker_argv("slow", 1, "info", [])


def test_flower_metrics_need_auth() -> None:
    from flower.views import monitor

    from workers.service import flower_auth_given, protect_flower_metrics

    protect_flower_metrics()
    assert getattr(monitor.Metrics.get, "_aml_protected", False)
    assert flower_auth_given(["--basic-auth=a:b"], {}) and not flower_auth_given(["--port=1"], {})
    assert flower_auth_given([], {"FLOWER_BASIC_AUTH": "a:b"})
