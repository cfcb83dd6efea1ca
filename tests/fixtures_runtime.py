"""Runtime fixtures: an isolated AML_HOME + SQLite catalog per test, a private redis-server, workers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def aml_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Point the app at a fresh AML_HOME and SQLite catalog (and no lock Redis) for one test."""
    from workers.app import current_aml_app
    from workers.settings import load_settings
    app = current_aml_app()

    home = tmp_path / "aml-home"
    env = {"AML_HOME": str(home), "AML_CATALOG_URL": f"sqlite:///{home / 'catalog.db'}",
           "AML_LOCK_URL": "none://", "AML_BROKER_URL": "redis://127.0.0.1:1/0"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = load_settings()
    monkeypatch.setitem(app.conf, "aml_settings", settings)
    return settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    """A Redis the tests own: ``url(db)`` gives a URL on it."""

    host: str
    port: int
    db: int

    def url(self, db: int | None = None) -> str:
        return f"redis://{self.host}:{self.port}/{self.db if db is None else db}"


def start_redis_server(workdir: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start a private ``redis-server`` on a free loopback port (no persistence, ``extra`` arguments
    added) and wait until it answers.

    Returns:
        The process (the caller stops it) and its port.

    Raises:
        redis.RedisError: it did not answer within 10 s (the process is killed).
    """
    binary = shutil.which("redis-server") or "redis-server"
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                             "no", "--dir", str(workdir), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except (redis.AuthenticationError, redis.ResponseError):  # it answers: it asks for a password
            break
        except redis.RedisError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    client.close()
    return proc, port


@pytest.fixture(scope="module")
def private_redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The port of a redis-server of this test module's own (its databases are the module's to fill
    and flush)."""
    proc, port = start_redis_server(tmp_path_factory.mktemp("private-redis"))
    yield port
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server on a free port; else db 14 of the shared 127.0.0.1:6379 (keys cleaned)."""
    binary = shutil.which("redis-server")
    if binary is None:
        client = redis.Redis(host="127.0.0.1", port=6379, db=14)
        try:
            client.ping()
        except redis.RedisError:
            pytest.skip("no redis-server binary and no Redis on 127.0.0.1:6379")
        before = set(client.keys("*"))
        yield RedisServer("127.0.0.1", 6379, 14)
        created = set(client.keys("*")) - before
        if created:
            client.delete(*created)
        return
    proc, port = start_redis_server(tmp_path_factory.mktemp("redis"))
    yield RedisServer("127.0.0.1", port, 0)
    proc.terminate()
    proc.wait(timeout=10)


def runtime_env(home: Path, broker: str) -> dict[str, str]:
    """Environment for aml subprocesses (CLI, worker) sharing ``home``'s catalog and ``broker``."""
    env = dict(os.environ)
    env.update({"AML_HOME": str(home), "AML_CATALOG_URL": f"sqlite:///{home / 'catalog.db'}",
                "AML_BROKER_URL": broker, "AML_LOCK_URL": broker, "PYTHONPATH": str(REPO)})
    return env


@dataclass
class Worker:
    """A running ``celery worker`` subprocess and the environment it shares with the CLI."""

    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    home: Path
    log: Path


def spawn_worker(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """Start ``aml worker -Q heavy,fast -c 1 --pool solo -l info`` (plus ``args``) with ``env``, its output in
    ``log``, and return it once it is ready (it has bound its queues).

    Raises:
        RuntimeError: the worker died or was not ready within 60 s (its log is in the message).
    """
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "worker", "-Q", "heavy,fast", "-c", "1",
                                 "--pool", "solo", "-l", "info", *args], cwd=REPO, env=env, stdout=fh, stderr=fh)
    deadline = time.monotonic() + 60
    while True:  # ready when the worker has registered itself (kombu binding of its queues)
        if proc.poll() is not None:
            raise RuntimeError("worker died:\n" + log.read_text(errors="replace"))
        if b"ready." in log.read_bytes():
            return proc
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("worker not ready:\n" + log.read_text(errors="replace"))
        time.sleep(0.2)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate ``proc`` and wait for it (killed after 20 s)."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def celery_worker_process(tmp_path: Path, redis_server: RedisServer) -> Iterator[Worker]:
    """A real worker process (``aml worker``) consuming both queues from the private Redis."""
    home = tmp_path / "worker-home"
    home.mkdir()
    env = runtime_env(home, redis_server.url(3))
    log = tmp_path / "worker.log"
    proc = spawn_worker(env, log)
    yield Worker(proc, env, home, log)
    stop_process(proc)
