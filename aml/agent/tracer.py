"""The AMAOS seed's ``MemoryTracer`` and ``MemorySnapshot``, for agent processes.

::

    from aml.agent.tracer import MemorySnapshot, MemoryTracer

    tracer = MemoryTracer(redis="redis://127.0.0.1:6379/0", trace_interval=10, history_size=100, agent=my_agent)
    tracer.start_tracing()          # a background thread traces every 10 s, calls my_agent.on_memory_trace(stats)
    ...
    tracer.stop_tracing()
    print(tracer.report())
    tracer.clean_keys(pattern="agent:*", ttl_zero_only=True)

    snap = MemorySnapshot(redis="redis://127.0.0.1:6379/0")
    snap.snapshot_memory("backup.json")
    snap.restore_snapshot("backup.json")

The same engine as the ``aml.trace.run`` task (:mod:`aml.trace`), run in process; ``enqueue=True`` sends
each trace to aml's workers instead (where it is recorded in the catalog). This module needs redis-py, and
Celery only when ``enqueue=True``: no worker, catalog or broker has to be reachable to import or use it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from aml.trace.clean import CleanCriteria, clean, undo_clean
from aml.trace.keyspace import export_keyspace, import_entries, read_keyspace_file
from aml.trace.live import tracing_client
from aml.trace.run import TraceOptions, trace_keyspace
from aml.trace.timeseries import append as append_timeseries
from aml.trace.timeseries import timeseries_line

__all__ = ["MemorySnapshot", "MemoryTracer"]

log = logging.getLogger("aml.agent.tracer")

DEFAULT_URL = "redis://127.0.0.1:6379/0"
"""The Redis used when none is given (the AMAOS seed's default client), unless ``REDIS_URL`` is set."""

RedisSource = redis.Redis | str | None


def _url(source: RedisSource) -> redis.Redis | str:
    return source if source is not None else os.environ.get("REDIS_URL") or DEFAULT_URL


def default_log_dir() -> Path:
    """Where the time-series log goes by default: ``$AML_HOME`` (as aml's workers), else ``~/.aml``."""
    return Path(os.environ.get("AML_HOME") or "~/.aml").expanduser()


class MemoryTracer:
    """Traces a Redis keyspace per key pattern, now and every ``trace_interval`` seconds.

    Args:
        redis: a redis-py client or a ``redis://`` URL (default ``$REDIS_URL``, else
            ``redis://127.0.0.1:6379/0``). aml opens its own connections to the same database.
        trace_interval: seconds between two traces of the background thread.
        history_size: traces kept in :attr:`history` (a summary each: time, keys, bytes, per-pattern keys
            and bytes, anomalies).
        agent: an object; if it has ``on_memory_trace(stats)``, it is called with each trace's stats (in the
            tracing thread; an exception it raises is logged and the tracing goes on).
        options: the engine's :class:`aml.trace.run.TraceOptions` (patterns, families, thresholds).
        log_dir: where ``memory_tracer_timeseries.jsonl`` is appended (default :func:`default_log_dir`);
            ``timeseries=False`` writes no log.
        enqueue: send each trace to aml's workers (``aml.trace.run`` on the ``fast`` queue) instead of
            running it here; ``trace_memory`` then returns ``{"queued": True, "task_id": ...}``.
        broker: the Celery broker with ``enqueue`` (default ``AML_BROKER_URL``). Only a URL can be enqueued.
    """

    def __init__(self, redis: RedisSource = None, trace_interval: float = 10, history_size: int = 100,
                 agent: Any = None, *, options: TraceOptions | None = None, log_dir: str | Path | None = None,
                 timeseries: bool = True, enqueue: bool = False, broker: str | None = None) -> None:
        if trace_interval <= 0:
            raise ValueError(f"trace_interval must be positive seconds, not {trace_interval}")
        if history_size < 1:
            raise ValueError(f"history_size must be at least 1, not {history_size}")
        self.redis = _url(redis)
        if enqueue and not isinstance(self.redis, str):
            raise ValueError("enqueue=True needs a redis:// URL (workers cannot use this process's client)")
        self.trace_interval = float(trace_interval)
        self.history: deque[dict[str, Any]] = deque(maxlen=history_size)
        self.agent = agent
        self.options = options or TraceOptions()
        self.log_dir = Path(log_dir).expanduser() if log_dir is not None else default_log_dir()
        self.timeseries = timeseries
        self.enqueue = enqueue
        self.broker = broker
        self.last: dict[str, Any] | None = None
        self.errors: deque[str] = deque(maxlen=history_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------- tracing

    def trace_memory(self) -> dict[str, Any]:
        """Trace now: the stats (the report of :func:`aml.trace.run.trace_keyspace`), also kept in
        :attr:`last` and :attr:`history`, logged to the time series, and given to ``agent.on_memory_trace``.

        Raises:
            redis.exceptions.RedisError: the Redis cannot be reached (a server lost mid-trace gives a
                partial report instead).
        """
        if self.enqueue:
            from aml.agent.client import enqueue

            assert isinstance(self.redis, str)
            result = enqueue("trace", self.redis, broker=self.broker)
            return {"queued": True, "task_id": result.id}
        with self._lock:
            previous = self.history[-1]["patterns"] if self.history else None
            prev = {p: (kb[0], kb[1]) for p, kb in previous.items()} if previous else None
            stats = trace_keyspace(self.redis, self.options, previous=None if stats_partial(previous) else prev)
            self.last = stats
            if not stats["partial"]:
                self.history.append(timeseries_line(stats))
            if self.timeseries:
                append_timeseries(self.log_dir, stats)
        callback = getattr(self.agent, "on_memory_trace", None)
        if callable(callback):
            callback(stats)
        return stats

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.trace_memory()
            except Exception as exc:  # a tracer must not kill its agent: keep the error, try again later
                message = f"{datetime.now(UTC).isoformat()} {type(exc).__name__}: {exc}"
                self.errors.append(message)
                log.warning("memory trace failed: %s", message)
            self._stop.wait(self.trace_interval)

    def start_tracing(self) -> None:
        """Trace every ``trace_interval`` seconds in a daemon thread (the first trace at once); a second
        call while it runs does nothing."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="aml-memory-tracer", daemon=True)
        self._thread.start()

    def stop_tracing(self, timeout: float | None = None) -> None:
        """Stop the background thread and wait for it (at most ``timeout`` seconds; a trace in progress
        finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def tracing(self) -> bool:
        """Whether the background thread is running."""
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------------------- reports

    def report(self) -> str:
        """A text report: the last trace (largest patterns, anomalies) and the trend over :attr:`history`."""
        if self.last is None:
            return "no trace yet: call trace_memory() or start_tracing()"
        last = self.last
        lines = [f"memory trace of {last['store']} at {last['time']}: {last['keys']:,} keys, "
                 f"{last['bytes']:,} bytes in {last['pattern_count']} patterns"
                 + (" (partial: " + str(last["error"] or "sampled") + ")" if last["partial"] else "")]
        if len(self.history) > 1:
            first, newest = self.history[0], self.history[-1]
            lines.append(f"trend over {len(self.history)} traces since {first['time']}: keys {first['keys']:,} -> "
                         f"{newest['keys']:,}, bytes {first['bytes']:,} -> {newest['bytes']:,}")
        lines.append("largest patterns:")
        for name, p in list(last["patterns"].items())[:10]:
            lines.append(f"  {name}: {p['keys']:,} keys, {p['bytes']:,} bytes, {p['without_ttl']:,} without TTL")
        if last["anomalies"]:
            lines.append("anomalies:")
            lines.extend(f"  [{a['severity']}] {a['kind']}: {a['message']}" for a in last["anomalies"])
        else:
            lines.append("no anomalies")
        if self.errors:
            lines.append(f"{len(self.errors)} failed traces; last: {self.errors[-1]}")
        return "\n".join(lines)

    # ------------------------------------------------------------------------------- cleaning

    def clean_keys(self, pattern: str = "*", ttl_zero_only: bool = True, *, no_ttl: bool = False,
                   idle_days: float | None = None, dry_run: bool = False,
                   snapshot: str | Path | None = None) -> dict[str, Any]:
        """Remove the keys of ``pattern`` (by default only those whose TTL has run to zero), after a
        snapshot of them (see :mod:`aml.trace.clean`).

        Args:
            pattern: glob of the keys.
            ttl_zero_only: only keys whose TTL is below one second (the seed's default).
            no_ttl: only keys with no TTL (give ``ttl_zero_only=False`` with it).
            idle_days: only keys idle this many days or more.
            dry_run: remove nothing; say what would be removed.
            snapshot: where the removed keys are saved (default ``<log_dir>/clean-<UTC time>.json``);
                :meth:`undo_clean` puts them back.

        Returns:
            ``{"selected", "removed", "snapshot", "dry_run", "criteria", "examples"}``.
        """
        criteria = CleanCriteria(pattern, ttl_zero_only=ttl_zero_only, no_ttl=no_ttl, idle_days=idle_days)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = Path(snapshot) if snapshot is not None else self.log_dir / f"clean-{stamp}.json"
        if not dry_run:
            path.parent.mkdir(parents=True, exist_ok=True)
        client, _db, name = tracing_client(self.redis)
        try:
            return clean(client, criteria, path, dry_run=dry_run, source=name)
        finally:
            client.close()

    def undo_clean(self, snapshot: str | Path) -> dict[str, Any]:
        """Put back the keys of a :meth:`clean_keys` from its snapshot (keys created again since stay)."""
        client, _db, _name = tracing_client(self.redis)
        try:
            return undo_clean(client, Path(snapshot))
        finally:
            client.close()


def stats_partial(previous: Any) -> bool:
    """Whether a history entry cannot serve as the base of a growth comparison (none yet)."""
    return previous is None


class MemorySnapshot:
    """Exports a Redis database to a JSON file and restores it (the format of :mod:`aml.trace.keyspace`:
    every type, binary-safe, absolute expiry times).

    Args:
        redis: a redis-py client or a ``redis://`` URL (default as :class:`MemoryTracer`).
    """

    def __init__(self, redis: RedisSource = None) -> None:
        self.redis = _url(redis)

    def snapshot_memory(self, path: str | Path, pattern: str | None = None) -> dict[str, Any]:
        """Export every key (or those matching ``pattern``) to ``path``, atomically.

        Returns:
            ``{"path", "keys", "bytes", "types"}``.
        """
        client, _db, name = tracing_client(self.redis)
        try:
            result = export_keyspace(client, Path(path), match=pattern, source=name)
        finally:
            client.close()
        return {"path": str(result.path), "keys": result.keys, "bytes": result.bytes, "types": result.types}

    def restore_snapshot(self, path: str | Path, pattern: str | None = None, *, dry_run: bool = False,
                         pre_restore: str | Path | None = None) -> dict[str, Any]:
        """Write the keys of a snapshot back (each key replaced whole; keys whose expiry time has passed are
        skipped and counted; nothing else in the database is touched).

        Args:
            path: a file written by :meth:`snapshot_memory` (or ``aml ... backup export``).
            pattern: restore only keys matching this glob.
            dry_run: write nothing, say what would happen.
            pre_restore: save the keys about to be overwritten to this file first.

        Returns:
            :func:`aml.trace.keyspace.import_entries`'s report.

        Raises:
            aml.trace.keyspace.KeyspaceFileError: the file is missing, damaged or not a snapshot.
        """
        header, entries = read_keyspace_file(Path(path))
        client, _db, _name = tracing_client(self.redis)
        try:
            return import_entries(client, entries, match=pattern, dry_run=dry_run, source=str(header.get("source")),
                                  pre_restore=Path(pre_restore) if pre_restore is not None else None)
        finally:
            client.close()
