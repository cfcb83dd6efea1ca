"""The AMAOS seed's MemoryTracer and MemorySnapshot (aml.agent.tracer) against a private redis-server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from aml.agent.tracer import MemorySnapshot, MemoryTracer
from aml.trace.anomalies import AnomalyThresholds
from aml.trace.run import TraceOptions
from aml.trace.timeseries import FILE_NAME, read
from tests.fixtures_runtime import REPO, start_redis_server


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    proc, port = start_redis_server(tmp_path)
    client = redis.Redis(port=port)
    for i in range(300):
        client.set(f"agent:planner:turn:{i}", json.dumps({"i": i}), ex=3600)
        if i % 10:
            client.set(f"agent:planner:turn:{i}:metadata", "{}", ex=3600)
    yield f"redis://127.0.0.1:{port}/0"
    proc.kill()
    proc.wait()


class Agent:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def on_memory_trace(self, stats: dict[str, Any]) -> None:
        self.seen.append(stats)


def test_trace_memory_calls_the_agent_and_logs_the_time_series(url: str, tmp_path: Path) -> None:
    agent = Agent()
    tracer = MemoryTracer(redis=url, agent=agent, log_dir=tmp_path / "home")
    stats = tracer.trace_memory()
    assert agent.seen == [stats] and stats["keys"] == 570
    assert stats["patterns"]["agent:planner:turn:*"]["keys"] == 300
    orphans = [a for a in stats["anomalies"] if a["kind"] == "orphaned_companions"]
    assert orphans and orphans[0]["keys"] == 30
    lines = read(tmp_path / "home" / FILE_NAME)
    assert len(lines) == 1 and lines[0]["keys"] == 570 and lines[0]["store"] == url
    text = tracer.report()
    assert "570 keys" in text and "orphaned_companions" in text


def test_background_tracing_runs_each_interval_and_sees_growth(url: str, tmp_path: Path) -> None:
    agent = Agent()
    tracer = MemoryTracer(redis=url, trace_interval=0.3, history_size=3, agent=agent, log_dir=tmp_path,
                          options=TraceOptions(thresholds=AnomalyThresholds(growth_min_keys=10)))
    tracer.start_tracing()
    assert tracer.tracing
    deadline = time.monotonic() + 30
    while len(agent.seen) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    client = redis.Redis.from_url(url)
    for i in range(300, 1000):
        client.set(f"agent:planner:turn:{i}", "{}")
    while len(agent.seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    tracer.stop_tracing(timeout=30)
    assert not tracer.tracing and len(agent.seen) >= 3
    assert len(tracer.history) <= 3
    kinds = {a["kind"] for s in agent.seen[1:] for a in s["anomalies"]}
    assert "rapid_growth" in kinds
    assert "trend over" in tracer.report()


def test_an_agent_callback_that_raises_does_not_stop_tracing(url: str, tmp_path: Path) -> None:
    class Bad:
        calls = 0

        def on_memory_trace(self, stats: dict[str, Any]) -> None:
            Bad.calls += 1
            raise RuntimeError("agent bug")

    tracer = MemoryTracer(redis=url, trace_interval=0.2, agent=Bad(), log_dir=tmp_path)
    tracer.start_tracing()
    deadline = time.monotonic() + 30
    while Bad.calls < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    tracer.stop_tracing(timeout=30)
    assert Bad.calls >= 2 and "agent bug" in tracer.errors[-1]


def test_a_lost_redis_is_an_error_kept_not_a_crash(tmp_path: Path) -> None:
    tracer = MemoryTracer(redis="redis://127.0.0.1:1/0", trace_interval=0.2, log_dir=tmp_path)
    with pytest.raises(redis.ConnectionError):
        tracer.trace_memory()
    tracer.start_tracing()
    deadline = time.monotonic() + 30
    while not tracer.errors and time.monotonic() < deadline:
        time.sleep(0.05)
    tracer.stop_tracing(timeout=30)
    assert "ConnectionError" in tracer.errors[-1]
    assert tracer.report().startswith("no trace yet")


def test_an_application_client_is_left_as_it_was(url: str, tmp_path: Path) -> None:
    app_client = redis.Redis.from_url(url, decode_responses=True)
    stats = MemoryTracer(redis=app_client, log_dir=tmp_path, timeseries=False).trace_memory()
    assert stats["keys"] == 570 and not (tmp_path / FILE_NAME).exists()
    assert app_client.get("agent:planner:turn:1") == '{"i": 1}'  # still decodes: its own connections untouched


def test_clean_keys_and_undo(url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(url)
    client.set("agent:tmp:1", "x", px=500)
    tracer = MemoryTracer(redis=url, log_dir=tmp_path)
    result = tracer.clean_keys(pattern="agent:*", ttl_zero_only=True)
    assert result["removed"] == 1 and client.get("agent:tmp:1") is None
    assert client.dbsize() == 570
    everything = tracer.clean_keys(pattern="agent:planner:*", ttl_zero_only=False)
    assert everything["removed"] == 570 and client.dbsize() == 0
    undone = tracer.undo_clean(everything["snapshot"])
    assert undone["written"] == 570 and client.dbsize() == 570


def test_memory_snapshot_round_trip(url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(url)
    client.hset("profile:1", mapping={"name": "planner", "blob": b"\x80\x04\x95"})
    snap = MemorySnapshot(redis=url)
    saved = snap.snapshot_memory(tmp_path / "backup.json")
    assert saved["keys"] == 571
    client.set("agent:planner:turn:1", "changed")
    client.delete("profile:1")
    report = snap.restore_snapshot(tmp_path / "backup.json", pre_restore=tmp_path / "pre.json")
    assert report["written"] == 571 and report["overwritten"] == 570
    assert client.get("agent:planner:turn:1") == b'{"i": 1}'
    assert client.hget("profile:1", "blob") == b"\x80\x04\x95"


def test_the_agent_module_needs_no_celery_catalog_or_broker() -> None:
    code = ("import sys\nimport aml.agent.tracer\n"
            "bad = [m for m in ('celery', 'sqlalchemy', 'kombu', 'workers', 'tasks', 'models') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
