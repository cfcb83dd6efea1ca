"""The service as it runs: real prefork workers, real kills, plain-Celery clients, Redis and RabbitMQ brokers.

Workers are subprocesses (``aml worker``), not pytest-celery's in-process worker: the tests kill them with
SIGKILL and restart them, which needs a process of their own, and they must run the same console entry an
operator starts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
        if operation != "trace":  # trace lands with its own issue
            assert task_name(operation) in app.tasks, operation
    with pytest.raises(ValueError, match="unknown aml operation"):
        task_name("defrag")


def test_wait_with_no_worker_says_so_in_one_line(tmp_path: Path, fleet_env: dict[str, str]) -> None:
    store = make_json_store(tmp_path / "store", agents=1, docs=2)
    proc = subprocess.run([sys.executable, "-m", "cli.main", str(store), "monitor", "health", "--enqueue", "--wait"],
                          cwd=REPO, env=fleet_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 69, proc.stderr
    assert "no worker consumes queue 'fast'" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 3  # one message (rich may wrap it)


# -- a killed worker never loses a task ------------------------------------------------------------------

def _backup_and_kill(tmp_path: Path, env: dict[str, str], kill_whole: bool) -> tuple[float, Path]:
    """Enqueue a backup, SIGKILL the pool child (or the whole worker) while it runs, and return the time
    from the kill until the task finished, plus the store."""
    store = make_json_store(tmp_path / "store", agents=12, docs=150, seed=3)
    worker = start_worker(tmp_path, env, "-Q", "heavy", "-c", "1", tag="heavy")
    app = _client(env["AML_BROKER_URL"], env["AML_RESULT_BACKEND"] if "AML_RESULT_BACKEND" in env
                  else env["AML_LOCK_URL"])
    try:
        res = app.send_task("aml.backup.create", kwargs={"store": str(store)}, queue="heavy")
        _wait_running(env, res.id)
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
        assert f"aml.backup.create[{res.id}] received" in worker.text()  # the (restarted) worker got it again
        return took, store
    finally:
        stop(worker)


def _verify_clean(store: Path, env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "cli.main", str(store), "backup", "verify", "--read-data", "--json"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


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


# -- a store held by a live operation is retried, never a success ---------------------------------------

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
