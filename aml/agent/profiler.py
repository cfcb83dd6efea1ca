"""The TinyTroupe seed's ``MemoryProfiler``: wall time per decorated function.

::

    from aml.agent.profiler import MemoryProfiler

    profiler = MemoryProfiler()

    @profiler.profile
    def consolidate_memories(agent):
        agent.consolidate_episode_memories()

    consolidate_memories(agent)
    profiler.print_stats()          # a table: function, calls, errors, total / avg / min / max seconds
    stats = profiler.get_stats()    # {"consolidate_memories": {"calls": 1, "total_time": ..., ...}}
    profiler.reset()                # (``clear()`` is the same)

Per decorated function (keyed by its ``__name__``, like the seed; by ``__qualname__``, then
``module.qualname``, when another profiled function already has that name) the profiler keeps ``calls``,
``errors`` (calls that raised; the exception is re-raised unchanged), and ``total_time`` / ``min_time`` /
``max_time`` / ``avg_time`` in seconds, measured with :func:`time.perf_counter` around the call (the seed:
"execution time statistics (min, max, avg, total)"). Calls that raise are timed too. Counters are
updated under a lock, so a profiled function may run in many threads. ``async def`` functions are timed
until their coroutine finishes; for a generator function only the call that creates the generator is timed.
Pure Python: no Celery, no catalog.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, TypeVar, cast

__all__ = ["FunctionStats", "MemoryProfiler"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(slots=True)
class FunctionStats:
    """Running statistics of one profiled function. Times are seconds (``time.perf_counter``)."""

    name: str
    calls: int = 0
    errors: int = 0
    total_time: float = 0.0
    min_time: float = float("inf")
    max_time: float = 0.0

    def add(self, seconds: float, failed: bool) -> None:
        """Count one call that took ``seconds`` (``failed``: it raised)."""
        self.calls += 1
        self.errors += failed
        self.total_time += seconds
        self.min_time = min(self.min_time, seconds)
        self.max_time = max(self.max_time, seconds)

    def as_dict(self) -> dict[str, Any]:
        """``{name, calls, errors, total_time, min_time, max_time, avg_time}``; with no calls the times are 0."""
        return {
            "name": self.name,
            "calls": self.calls,
            "errors": self.errors,
            "total_time": self.total_time,
            "min_time": self.min_time if self.calls else 0.0,
            "max_time": self.max_time,
            "avg_time": self.total_time / self.calls if self.calls else 0.0,
        }


class MemoryProfiler:
    """Times functions decorated with :meth:`profile` (see the module docstring).

    Attributes:
        enabled: when ``False`` the decorated functions run untimed (set it to switch profiling off
            without removing decorators).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._lock = threading.Lock()
        self._stats: dict[str, FunctionStats] = {}
        self._owners: dict[str, Callable[..., Any]] = {}

    def _key(self, func: Callable[..., Any]) -> str:
        """The stats key of ``func``: its ``__name__``; its ``__qualname__``, then ``module.qualname``, when
        another profiled function already has that name."""
        name = getattr(func, "__name__", None) or repr(func)
        qualname = getattr(func, "__qualname__", None) or name
        candidates = (name, qualname, f"{getattr(func, '__module__', '?')}.{qualname}")
        with self._lock:
            key = next((c for c in candidates if self._owners.get(c) in (None, func)), f"{candidates[-1]}#{id(func)}")
            self._owners[key] = func
            self._stats.setdefault(key, FunctionStats(key))
            return key

    def _record(self, key: str, seconds: float, failed: bool) -> None:
        with self._lock:
            stats = self._stats.get(key)
            if stats is None:  # reset() ran since decoration
                stats = self._stats[key] = FunctionStats(key)
            stats.add(seconds, failed)

    def profile(self, func: F) -> F:
        """Decorator: time every call of ``func`` (``functools.wraps`` keeps its name, doc and signature).

        Args:
            func: a function, method or ``async def`` function.

        Returns:
            The wrapped function; it returns what ``func`` returns and re-raises what it raises.
        """
        if not callable(func):
            raise TypeError(f"profile: expected a callable, got {type(func).__name__}")
        key = self._key(func)

        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                if not self.enabled:
                    return await func(*args, **kwargs)
                failed = True
                start = time.perf_counter()
                try:
                    result = await func(*args, **kwargs)
                    failed = False
                    return result
                finally:
                    self._record(key, time.perf_counter() - start, failed)

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not self.enabled:
                return func(*args, **kwargs)
            failed = True
            start = time.perf_counter()
            try:
                result = func(*args, **kwargs)
                failed = False
                return result
            finally:
                self._record(key, time.perf_counter() - start, failed)

        return cast(F, wrapper)

    def get_stats(self, name: str | None = None) -> dict[str, Any]:
        """A copy of the statistics.

        Args:
            name: one function's key; ``None`` for all.

        Returns:
            With ``name``: ``{name, calls, errors, total_time, min_time, max_time, avg_time}`` (seconds);
            without: ``{key: that dict}`` for every profiled function, including ones never called.

        Raises:
            KeyError: ``name`` was never profiled.
        """
        with self._lock:
            if name is not None:
                return self._stats[name].as_dict()
            return {key: s.as_dict() for key, s in self._stats.items()}

    def reset(self) -> None:
        """Forget every count and time (decorated functions stay decorated and start again from zero)."""
        with self._lock:
            for key in list(self._stats):
                self._stats[key] = FunctionStats(key)

    clear = reset
    """The seed's test name for :meth:`reset`."""

    def format_stats(self) -> str:
        """The table :meth:`print_stats` prints: one row per function, the slowest total first; times in
        milliseconds."""
        rows = sorted(self.get_stats().values(), key=lambda s: (-s["total_time"], s["name"]))
        header = ("function", "calls", "errors", "total ms", "avg ms", "min ms", "max ms")
        body = [
            (r["name"], str(r["calls"]), str(r["errors"]),
             *(f"{r[k] * 1000:.3f}" for k in ("total_time", "avg_time", "min_time", "max_time")))
            for r in rows
        ]
        widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]

        def line(cells: tuple[str, ...]) -> str:
            pairs = enumerate(zip(cells, widths, strict=True))
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

        out = ["Memory profiler statistics", line(header), "  ".join("-" * w for w in widths)]
        out += [line(row) for row in body] or ["(no profiled calls)"]
        return "\n".join(out)

    def print_stats(self, file: IO[str] | None = None) -> None:
        """Print :meth:`format_stats` (to ``file``, default ``sys.stdout``)."""
        print(self.format_stats(), file=file or sys.stdout)
