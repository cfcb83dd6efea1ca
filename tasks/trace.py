"""Celery tasks of the ``trace`` operation (fast queue): ``aml.trace.run``, ``aml.trace.clean`` and
``aml.trace.undo_clean``.

``aml.trace.run`` traces a Redis keyspace (:func:`aml.trace.run.trace_keyspace`) or a file store
(:func:`aml.trace.files.trace_file_store`), compares it with the previous trace of the same store (the
catalog's ``trace_items`` / ``trace_bytes`` samples: keys or records, and bytes), and in the catalog: records
per-subject time series (the ``trace_series_patterns`` largest key patterns or agent/collection pairs, plus
store totals), raises one alert per finding (fingerprint: store, subject, ``trace.<kind>``) and resolves the
trace alerts whose finding is gone. Appends the seed's JSONL time-series line under ``AML_HOME``. Read-only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aml.backup.progress import Progress
from aml.store.storeid import keyspace_id
from aml.trace.anomalies import KINDS, AnomalyThresholds
from aml.trace.clean import CleanCriteria, clean, undo_clean
from aml.trace.files import trace_file_store
from aml.trace.keyspace import KeyspaceFileError
from aml.trace.live import tracing_client
from aml.trace.run import TraceOptions, trace_keyspace
from aml.trace.timeseries import append as append_timeseries
from models import queries
from models.tables import TaskRun
from tasks.base import Catalog, normalize_store, run_operation
from tasks.notify import notify_store
from tasks.progress import task_progress
from tasks.registry import operation_task
from tasks.snapshots import run_file
from workers.app import get_settings
from workers.settings import Settings

if TYPE_CHECKING:
    from celery import Task

SERIES = ("trace_items", "trace_bytes")
"""The per-pattern series a trace records (subject = pattern; ``None`` = the whole keyspace)."""


def trace_options(settings: Settings, *, match: str | None = None, sample: int | None = None,
                  families: tuple[str, ...] | None = None, sniff: bool | None = True) -> TraceOptions:
    """The engine's options from the settings, with a command's own choices on top."""
    return TraceOptions(
        delimiters=settings.trace_delimiters, max_patterns=settings.trace_max_patterns,
        families=settings.trace_families if families is None else families, match=match, sample=sample,
        sniff=sniff, unused_idle_s=settings.trace_unused_days * 86400.0,
        companion_min_coverage=settings.trace_companion_coverage,
        thresholds=AnomalyThresholds(growth_ratio=settings.trace_growth_ratio,
                                     growth_min_keys=settings.trace_growth_min_keys,
                                     persistent_min_ttl_share=settings.trace_persistent_ttl_share))


def _record(catalog: Catalog, store_id: str, report: dict[str, Any], settings: Settings) -> dict[str, Any]:
    patterns = report["patterns"]
    largest = list(patterns.items())[: settings.trace_series_patterns]  # largest first
    samples = [queries.Sample(store_id, "trace_items", report["keys"], "count"),
               queries.Sample(store_id, "trace_bytes", report["bytes"], "bytes"),
               queries.Sample(store_id, "trace_duration", report["duration_s"], "seconds")]
    for name, p in largest:
        samples += [queries.Sample(store_id, "trace_items", p["keys"], "count", name),
                    queries.Sample(store_id, "trace_bytes", p["bytes"], "bytes", name)]
    full = not report["partial"] and report.get("match") is None  # the whole keyspace was read
    raised, resolved = 0, 0
    with catalog() as session:
        if full:  # a partial trace would read as a sudden shrink in the series, then as growth
            queries.add_metric_samples(session, samples)
        found = {(a["pattern"], f"trace.{a['kind']}") for a in report["anomalies"]}
        for a in report["anomalies"]:
            details = {k: v for k, v in a.items() if k not in ("message", "severity")}
            queries.observe_check(session, store=store_id, agent=a["pattern"], check=f"trace.{a['kind']}",
                                  passed=False, severity=a["severity"], message=a["message"], details=details)
            raised += 1
        if full:  # a partial trace cannot tell that a finding is gone
            checks = {f"trace.{k}" for k in KINDS}
            for alert in queries.open_alerts(session, store=store_id):
                if alert.check in checks and (alert.agent, alert.check) not in found:
                    queries.observe_check(session, store=store_id, agent=alert.agent, check=alert.check, passed=True)
                    resolved += 1
    return {"alerts_raised": raised, "alerts_resolved": resolved, "samples": len(samples) if full else 0}


def _previous(catalog: Catalog, store_id: str) -> dict[str, tuple[float, float]] | None:
    with catalog(write=False) as session:
        latest = queries.latest_samples(session, store=store_id, names=SERIES)
    keys, nbytes = latest.get("trace_items", {}), latest.get("trace_bytes", {})
    if not keys:
        return None
    return {p: (v, nbytes.get(p, 0.0)) for p, v in keys.items() if p is not None}


@operation_task("aml.trace.run")
def run(self: Task, store: str, pattern: str | None = None, sample: int | None = None,
        families: list[str] | None = None, sniff: bool | None = True) -> dict[str, Any]:
    """Trace a Redis keyspace per key pattern, or a file store per agent and collection, and record its time
    series and anomalies.

    Args:
        store: ``redis://[user:password@]host:port/db``, or a file store's path. A password is used to
            connect and never recorded: the catalog, the result and the log name the store by
            :func:`keyspace_id`.
        pattern: Redis only: a ``SCAN MATCH`` glob restricting the trace (anomalies are then not resolved).
        sample: Redis only: trace at most this many keys (a partial trace; totals scaled in ``keys_estimated``).
        families: key family globs (default: ``AML_TRACE_FAMILIES``).
        sniff: read the first 16 bytes of string values to tell JSON / text / pickle; ``None`` (beat's
            choice): only on Redis 7.2+, where ``CLIENT NO-TOUCH`` keeps that read from counting as an access.

    Returns:
        ``{"report": <trace report>, "recorded": {"alerts_raised", "alerts_resolved", "samples"},
        "timeseries": <log path>, "status", "task_run_id", ...}``; status ``warning`` when anomalies were
        found or the trace is partial; ``notifications`` summarises the alerts pushed
        (:func:`tasks.notify.notify_store`).

    Raises:
        ValueError: ``store`` is a URL that is not a Redis URL.
        NotADirectoryError: a file store path that is not a directory.
        redis.exceptions.RedisError: the server cannot be reached or refuses, before any key was read.
    """
    settings = get_settings()
    keyspace = "://" in store
    store_id = keyspace_id(store) if keyspace else normalize_store(store)
    options = trace_options(settings, match=pattern, sample=sample,
                            families=tuple(families) if families is not None else None, sniff=sniff)

    def body(catalog: Catalog) -> dict[str, Any]:
        previous = _previous(catalog, store_id)
        if keyspace:
            sink = task_progress(self)
            progress = None if sink is None else (
                lambda done, total: sink(Progress("trace", files_done=done, files_total=total)))
            report = trace_keyspace(store, options, previous=previous, progress=progress)
        else:
            report = trace_file_store(Path(store_id), previous=previous, thresholds=options.thresholds,
                                      unused_idle_s=options.unused_idle_s)
        report["store"] = store_id
        recorded = _record(catalog, store_id, report, settings)
        log = append_timeseries(settings.home, report)
        warn = report["partial"] or report["anomalies"]
        return {"report": report, "recorded": recorded, "timeseries": str(log),
                "status": "warning" if warn else "success"}

    arguments = {"store": store_id, "pattern": pattern, "sample": sample, "families": families, "sniff": sniff}
    result = run_operation(task_id=self.request.id, operation="trace", store=store_id, arguments=arguments,
                           body=body)
    result["notifications"] = notify_store(store_id, eager=bool(self.request.is_eager))  # never raises
    return result


@operation_task("aml.trace.clean")
def clean_keys(self: Task, store: str, pattern: str, ttl_zero_only: bool = False, no_ttl: bool = False,
               idle_days: float | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Remove the keys of a pattern from a Redis keyspace, after a snapshot of them (:mod:`aml.trace.clean`).

    Args:
        store: ``redis://[user:password@]host:port/db`` (the password is never recorded).
        pattern: glob of the keys (required; ``*`` for all).
        ttl_zero_only: only keys whose TTL has run to zero (below one second).
        no_ttl: only keys with no TTL.
        idle_days: only keys idle this many days or more.
        dry_run: remove nothing; report the selection.

    Returns:
        ``{"selected", "removed", "snapshot" (``AML_HOME/trace-clean/<task id>.json``, or None; a redelivered
        task adds to the one its killed attempt wrote, so undo puts back every key the run removed),
        "snapshot_sha256", "criteria", "examples", "dry_run", "status", "task_run_id", ...}``;
        ``aml.trace.undo_clean`` with this ``task_run_id`` puts the keys back.

    Raises:
        ValueError: not a Redis URL, or contradictory criteria.
        OSError: the snapshot could not be written (nothing was removed).
    """
    settings = get_settings()
    store_id = keyspace_id(store)
    criteria = CleanCriteria(pattern, ttl_zero_only=ttl_zero_only, no_ttl=no_ttl, idle_days=idle_days)

    def body(catalog: Catalog) -> dict[str, Any]:
        path = run_file(settings, "trace-clean", self.request.id)
        client, _db, _name = tracing_client(store)
        try:
            result = clean(client, criteria, path, dry_run=dry_run, source=store_id)
        finally:
            client.close()
        if result["snapshot"]:
            result["snapshot_sha256"] = hashlib.sha256(Path(result["snapshot"]).read_bytes()).hexdigest()
        return result

    arguments = {"store": store_id, "pattern": pattern, "ttl_zero_only": ttl_zero_only, "no_ttl": no_ttl,
                 "idle_days": idle_days, "dry_run": dry_run}
    return run_operation(task_id=self.request.id, operation="trace", store=store_id, arguments=arguments,
                         body=body, destructive=not dry_run)


@operation_task("aml.trace.undo_clean")
def undo_clean_keys(self: Task, store: str, run_id: int, dry_run: bool = False) -> dict[str, Any]:
    """Put back the keys a ``trace clean`` run removed, from its snapshot; keys created again since are left
    alone, keys whose expiry time has passed are skipped.

    Args:
        store: the keyspace the clean ran on.
        run_id: the clean's ``task_run_id``.
        dry_run: write nothing; report what would be written.

    Returns:
        :func:`aml.trace.keyspace.import_entries`'s report plus ``{"undone_run", "snapshot", ...}``.

    Raises:
        ValueError: no such clean run of this keyspace, or one that removed nothing.
        aml.trace.keyspace.KeyspaceFileError: its snapshot is missing or altered (checked against the
            SHA-256 recorded at the clean).
    """
    store_id = keyspace_id(store)

    def body(catalog: Catalog) -> dict[str, Any]:
        with catalog(write=False) as session:
            run_row = session.get(TaskRun, int(run_id))
            found = None if run_row is None else (run_row.operation, run_row.store, dict(run_row.result or {}))
        if found is None or found[0] != "trace" or found[1] != store_id or "criteria" not in found[2]:
            raise ValueError(f"run {run_id} is not a trace clean of {store_id}")
        recorded = found[2]
        if not recorded.get("snapshot"):
            raise ValueError(f"run {run_id} removed nothing: there is nothing to put back")
        path = Path(recorded["snapshot"])
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise KeyspaceFileError(f"{path}: the snapshot of run {run_id} cannot be read: {exc}") from None
        if digest != recorded.get("snapshot_sha256"):
            raise KeyspaceFileError(f"{path}: the snapshot of run {run_id} was altered since the clean (SHA-256)")
        client, _db, _name = tracing_client(store)
        try:
            result = undo_clean(client, path, dry_run=dry_run)
        finally:
            client.close()
        return result | {"undone_run": int(run_id), "snapshot": str(path)}

    return run_operation(task_id=self.request.id, operation="trace", store=store_id,
                         arguments={"store": store_id, "run_id": run_id, "dry_run": dry_run}, body=body,
                         destructive=not dry_run)
