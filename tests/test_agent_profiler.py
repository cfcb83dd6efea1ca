"""``aml.agent.MemoryProfiler``: the TinyTroupe seed's ``@profiler.profile`` and ``print_stats()``."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import pytest

from aml.agent import MemoryProfiler

SLACK = 0.25
"""Upper-bound slack in seconds: the machines are shared and noisy; lower bounds are exact (sleep)."""


def test_counts_and_timings_with_known_sleeps() -> None:
    profiler = MemoryProfiler()

    @profiler.profile
    def nap(seconds: float) -> float:
        """Sleeps."""
        time.sleep(seconds)
        return seconds

    assert nap(0.01) == 0.01
    nap(0.03)
    nap(0.02)
    stats = profiler.get_stats("nap")
    assert stats["calls"] == 3 and stats["errors"] == 0
    assert 0.01 <= stats["min_time"] < 0.01 + SLACK
    assert 0.03 <= stats["max_time"] < 0.03 + SLACK
    assert 0.06 <= stats["total_time"] < 0.06 + SLACK
    assert stats["avg_time"] == pytest.approx(stats["total_time"] / 3)
    assert stats["min_time"] <= stats["avg_time"] <= stats["max_time"]


def test_wraps_keeps_metadata() -> None:
    profiler = MemoryProfiler()

    def consolidate_memories(agent: object, count: int = 1) -> None:
        """Profiled consolidation function."""

    wrapped = profiler.profile(consolidate_memories)
    assert wrapped.__name__ == "consolidate_memories"
    assert wrapped.__doc__ == "Profiled consolidation function."
    assert wrapped.__wrapped__ is consolidate_memories  # type: ignore[attr-defined]
    assert profiler.get_stats()["consolidate_memories"]["calls"] == 0


def test_exceptions_counted_and_reraised() -> None:
    profiler = MemoryProfiler()

    class Boom(Exception):
        pass

    @profiler.profile
    def flaky(fail: bool) -> str:
        if fail:
            time.sleep(0.01)
            raise Boom("no")
        return "ok"

    with pytest.raises(Boom, match="no"):
        flaky(True)
    assert flaky(False) == "ok"
    stats = profiler.get_stats()["flaky"]
    assert stats["calls"] == 2 and stats["errors"] == 1
    assert stats["max_time"] >= 0.01


def test_thread_safe_counters() -> None:
    profiler = MemoryProfiler()

    @profiler.profile
    def tick() -> None:
        pass

    def run() -> None:
        for _ in range(2000):
            tick()

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert profiler.get_stats("tick")["calls"] == 16000


def test_methods_async_and_same_names() -> None:
    profiler = MemoryProfiler()

    class Store:
        @profiler.profile
        def put(self, x: int) -> int:
            return x * 2

    @profiler.profile
    async def fetch() -> str:
        await asyncio.sleep(0.01)
        return "done"

    assert Store().put(2) == 4
    assert asyncio.run(fetch()) == "done"
    stats = profiler.get_stats()
    assert stats["put"]["calls"] == 1
    assert stats["fetch"]["calls"] == 1 and stats["fetch"]["min_time"] >= 0.01  # awaited, not just created

    def put(x: int) -> int:  # another function named put: kept apart under its qualname
        return x

    profiler.profile(put)(1)
    stats = profiler.get_stats()
    assert stats["put"]["calls"] == 1
    assert stats["test_methods_async_and_same_names.<locals>.put"]["calls"] == 1


def test_print_stats_reset_and_disabled(capsys: pytest.CaptureFixture[str]) -> None:
    profiler = MemoryProfiler()

    @profiler.profile
    def store_memories(count: int) -> None:
        time.sleep(0.002 * count)

    store_memories(1)
    store_memories(2)
    profiler.print_stats()
    out = capsys.readouterr().out
    assert "calls" in out and "total ms" in out
    row = next(line for line in out.splitlines() if "store_memories" in line)
    assert row.split()[1:3] == ["2", "0"]
    buf = io.StringIO()
    profiler.print_stats(file=buf)
    assert "store_memories" in buf.getvalue()

    profiler.reset()
    assert profiler.get_stats()["store_memories"]["calls"] == 0
    store_memories(1)
    assert profiler.get_stats()["store_memories"]["calls"] == 1
    profiler.clear()  # the seed's name
    profiler.enabled = False
    store_memories(1)
    assert profiler.get_stats()["store_memories"]["calls"] == 0
    assert "(no profiled calls)" not in profiler.format_stats()
    assert "(no profiled calls)" in MemoryProfiler().format_stats()


def test_bad_inputs() -> None:
    profiler = MemoryProfiler()
    with pytest.raises(TypeError, match="callable"):
        profiler.profile(42)  # type: ignore[type-var]
    with pytest.raises(KeyError):
        profiler.get_stats("never_profiled")
