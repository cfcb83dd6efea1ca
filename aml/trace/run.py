"""One trace, live or offline: options in, the report dict out (what the task, the CLI and
:class:`aml.agent.tracer.MemoryTracer` all print, store and compare)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from aml.store.timestamps import utc_iso_z
from aml.trace.anomalies import AnomalyThresholds, find_anomalies
from aml.trace.live import TraceInterrupted, trace_redis, tracing_client
from aml.trace.patterns import DEFAULT_DELIMITERS, PatternInferer
from aml.trace.rdbfile import trace_rdb
from aml.trace.stats import KeyspaceStats

Previous = Mapping[str, tuple[float, float]]
"""pattern -> (keys, bytes) of the previous trace of the same keyspace."""


@dataclass(frozen=True, slots=True)
class TraceOptions:
    """How to trace.

    Attributes:
        delimiters: key segment delimiters (see :mod:`aml.trace.patterns`).
        max_patterns: bound on the number of inferred patterns (later ones count as ``<other>``).
        families: declared family globs, first match wins.
        match: live only: a ``SCAN MATCH`` glob restricting the trace.
        sample: live only: stop after this many keys; totals are then also given scaled to the keyspace.
        sniff: read the first 16 bytes of string values to tell JSON / text / pickle (``None``: only where
            that read does not count as an access, Redis 7.2+ with ``CLIENT NO-TOUCH``).
        unused_idle_s: a key idle this long (seconds) is unused (default 7 days).
        companion_min_coverage: share of a pattern's keys that must have a companion key for the rest
            to count as orphans.
        thresholds: anomaly thresholds.
    """

    delimiters: str = DEFAULT_DELIMITERS
    max_patterns: int = 1000
    families: tuple[str, ...] = ()
    match: str | None = None
    sample: int | None = None
    sniff: bool | None = True
    unused_idle_s: float = 7 * 86400.0
    companion_min_coverage: float = 0.5
    thresholds: AnomalyThresholds = field(default_factory=AnomalyThresholds)


def _stats(options: TraceOptions) -> KeyspaceStats:
    inferer = PatternInferer(options.delimiters, options.max_patterns, options.families)
    return KeyspaceStats(inferer, unused_idle_s=options.unused_idle_s)


def _report(stats: KeyspaceStats, options: TraceOptions, previous: Previous | None, *, source: str,
            store: str, started: float, when: datetime, scale: float = 1.0) -> dict[str, Any]:
    elapsed = time.perf_counter() - started
    ordered = sorted(stats.patterns.items(), key=lambda kv: (-kv[1].bytes, kv[0]))
    patterns = {name: p.to_dict(scale) for name, p in ordered}
    companions = stats.companions(options.companion_min_coverage)
    with_ttl = sum(p["with_ttl"] for p in patterns.values())
    return {
        "source": source,
        "store": store,
        "time": utc_iso_z(when),
        "duration_s": round(elapsed, 3),
        "keys": stats.keys,
        "bytes": stats.bytes,
        "keys_per_s": round(stats.keys / elapsed) if elapsed > 0 else None,
        "with_ttl": with_ttl,
        "without_ttl": stats.keys - with_ttl,
        "expired": sum(p["expired"] for p in patterns.values()),
        "values": dict(stats.values.most_common()),
        "pattern_count": len(patterns),
        "patterns_overflowed": stats.inferer.overflowed,
        "families": list(options.families),
        "patterns": patterns,
        "companions": companions,
        "anomalies": find_anomalies(patterns, companions, previous, options.thresholds,
                                    unused_days=options.unused_idle_s / 86400),
        "compared_with_previous": previous is not None,
        "partial": False,
        "error": None,
    }


def trace_keyspace(source: str | redis.Redis, options: TraceOptions | None = None, previous: Previous | None = None,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Trace a running Redis database, read-only.

    Args:
        source: ``redis://[user:password@]host:port/db`` (also ``rediss://``, ``unix://``), or an
            application's redis-py client (aml opens its own connections to the same database).
        options: see :class:`TraceOptions`.
        previous: the previous trace's per-pattern ``(keys, bytes)`` for growth, or ``None``.
        progress: called with the keys traced so far and the keys of the database.

    Returns:
        The report: ``source`` ``"redis"``, ``store`` (the URL without its password), ``time`` (UTC),
        ``duration_s``, ``keys``, ``bytes`` (``MEMORY USAGE`` sum), ``keys_per_s``, ``server`` (version,
        ``INFO`` key counts and memory, eviction policy), ``patterns`` (pattern -> stats, largest first),
        ``companions``, ``anomalies``, ``partial`` and ``error`` (set when the server went away mid-trace:
        the rest is what was read before).

    Raises:
        ValueError: not a Redis URL.
        redis.exceptions.RedisError: the server cannot be reached or refuses (wrong password, no such db),
            before any key was read.
    """
    options = options or TraceOptions()
    started, when = time.perf_counter(), datetime.now(UTC)
    stats = _stats(options)
    client, db, name = tracing_client(source)
    try:
        try:
            live = trace_redis(client, stats, db=db, match=options.match, sample=options.sample,
                               sniff_values=options.sniff, progress=progress)
            error = None
        except TraceInterrupted as exc:
            live, error = exc.partial, str(exc)
    finally:
        client.close()
    total = live.server["keys"]
    sampled = options.sample is not None and options.match is None and 0 < stats.keys < total
    report = _report(stats, options, None if error else previous, source="redis", store=name,
                     started=started, when=when, scale=total / stats.keys if sampled else 1.0)
    report["server"] = live.server
    report["idle_source"] = live.idle_source
    report["sniff_touches_keys"] = live.touches_keys
    report["vanished"] = live.vanished
    report["script_calls"] = live.script_calls
    report["match"] = options.match
    report["sampled"] = sampled
    report["partial"] = error is not None or sampled
    report["error"] = error
    return report


def trace_rdb_file(path: Path, options: TraceOptions | None = None, previous: Previous | None = None, *,
                   db: int = 0, now: float | None = None,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Trace the keys of an RDB file, without a server (see :mod:`aml.trace.rdbfile`).

    Args:
        path: the RDB file.
        options: see :class:`TraceOptions` (``match`` and ``sample`` do not apply).
        previous: for growth, as in :func:`trace_keyspace`.
        db: the database to read.
        now: the time TTLs are measured from, Unix seconds (default now).
        progress: called with the keys read so far and the keys the file declares.

    Returns:
        The report as :func:`trace_keyspace`, with ``source`` ``"rdb"``, ``rdb`` (format version, aux
        fields, declared key counts) instead of ``server``, payload bytes, and ``expired`` counting keys
        whose expiry time has passed.

    Raises:
        aml.trace.rdbfile.RdbError: not a readable RDB file.
    """
    options = options or TraceOptions()
    started, when = time.perf_counter(), datetime.now(UTC)
    stats = _stats(options)
    info = trace_rdb(path, stats, db=db, now=now, progress=progress)
    report = _report(stats, options, previous, source="rdb", store=str(path), started=started, when=when)
    declared_keys, declared_expires = info.declared.get(db, (info.read, 0))
    report["rdb"] = {"version": info.version, "aux": info.aux, "db": db, "declared_keys": declared_keys,
                     "declared_expires": declared_expires, "read": info.read, "other_dbs_keys": info.skipped_dbs,
                     "measured_at": utc_iso_z(datetime.fromtimestamp(now, UTC)) if now else report["time"]}
    return report
