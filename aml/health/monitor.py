"""Run every health check on a file store and build the seeds' report.

:func:`run_health` is the engine behind ``aml <store> monitor health``: one scan of the store, the six
checks of the seeds plus ``restore_tested`` (reported after them), the metric samples and the report. It
reads only. Alerts (raising, persisting, resolving) belong to the catalog and are applied by
``tasks/health.py``; the report's ``alerts`` section is filled from there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aml.agent.stats import analyze_memory_usage
from aml.health.checks import (
    MIB,
    BackupEvidence,
    CheckResult,
    DrillEvidence,
    IndexEvidence,
    IntegrityFailure,
    PerformanceEvidence,
    Severity,
    check_directory_structure,
    check_file_integrity,
    check_index_exists,
    check_memory_within_limits,
    check_performance,
    check_recent_backup,
    check_restore_tested,
)
from aml.health.metrics import MetricSample
from aml.health.probe import LookupProbe, summarize
from aml.health.thresholds import Thresholds
from aml.store import Document, FileStore, ScanResult
from aml.store.documents import LAZY_ITEMS_BYTES
from aml.store.timestamps import utc_iso_z

CHECK_ORDER = (
    "directory_structure",
    "memory_within_limits",
    "index_exists",
    "recent_backup",
    "file_integrity",
    "performance_ok",
)
"""The seeds' six checks, in the seeds' order."""

EXTRA_CHECKS = ("restore_tested",)
"""aml's checks beyond the seeds' six, reported after them: ``restore_tested`` (a restore drill passed
recently: the seeds' best practice "Test restores occasionally to verify backup integrity")."""

ALL_CHECKS = CHECK_ORDER + EXTRA_CHECKS
"""Every check a health run reports, in report order: the seeds' six, then :data:`EXTRA_CHECKS`."""

NOT_DOCUMENTS = frozenset({"symlink"})
"""Scan entries that are not documents by design, so not documents that fail to parse: a symlink is never
followed by the store reader (DESIGN.md) and a backup keeps it as a link. Health lists them under ``links``;
``file_integrity`` and the remediation policy leave them alone."""

INDEX_CANDIDATES = (".aml/index.sqlite", "global/index.json")
"""Where an index of the store's records lives: aml's own (``optimize index``), then Loom's."""


@dataclass
class HealthRun:
    """Everything one health run measured.

    Attributes:
        store_id: normalised store id.
        time: aware UTC start of the run.
        results: every check result (store-wide and per agent).
        scan: the store scan the checks used.
        performance: measured lookups.
        metrics: metric samples to record.
        duration_s: wall time of the run, seconds.
        sessions: per Aitor session file (store-relative path), its agent and the Aitor seed's
            ``analyze_memory_usage`` statistics (:mod:`aml.agent.stats`), computed from the scan's own read.
    """

    store_id: str
    time: datetime
    results: list[CheckResult]
    scan: ScanResult
    performance: PerformanceEvidence
    metrics: list[MetricSample] = field(default_factory=list)
    duration_s: float = 0.0
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """``"healthy"``, ``"warning"`` or ``"critical"``: the seeds' rule (any error is critical)."""
        failing = [r.severity for r in self.results if not r.passed]
        if not failing:
            return "healthy"
        return "critical" if max(failing) >= Severity.ERROR else "warning"

    @property
    def exit_code(self) -> int:
        """CLI exit code: 0 healthy, 1 warning, 2 critical."""
        return {"healthy": 0, "warning": 1, "critical": 2}[self.status]

    def check_passed(self) -> dict[str, bool]:
        """The seeds' ``checks`` map: check name -> passed (all of its store and agent results); the seeds'
        six first, in their order, then ``restore_tested``."""
        return {name: all(r.passed for r in self.results if r.check == name) for name in ALL_CHECKS}

    def report(self, alerts: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON report, with the seeds' keys and aml's additions.

        Args:
            alerts: the ``alerts`` section (``{"active": n, "by_level": {...}}``) from the catalog;
                default: no active alert.

        Returns:
            ``{timestamp, store, status, checks, memory, performance, health_checks, alerts,
            results, agents, sessions, integrity_failures, links, duration_s}`` (``sessions``: see
            :attr:`sessions`; sizes there in KiB); sizes in MiB where a key ends in
            ``_mb`` (1024² bytes), else bytes; times in ms where a key ends in ``_ms``.
        """
        counts = self.scan.counts()
        sizes = self.scan.agent_sizes()
        largest = max(sizes.items(), key=lambda kv: kv[1]) if sizes else ("none", 0)
        failing = [r for r in self.results if not r.passed]

        def total(collection: str) -> int:
            return sum(c.get(collection, 0) for c in counts.values())

        checks = self.check_passed()
        return {
            "timestamp": utc_iso_z(self.time),
            "store": self.store_id,
            "status": self.status,
            "checks": checks,
            "memory": {
                "total_mb": self.scan.total_bytes / MIB,
                "total_bytes": self.scan.total_bytes,
                "agents": len(sizes),
                "patterns": total("patterns"),
                "solutions": total("solutions"),
                "decisions": total("decisions"),
                "largest_agent": {"name": largest[0], "size_mb": largest[1] / MIB},
            },
            "performance": {
                "avg_query_time_ms": self.performance.avg_ms,
                "p95_query_time_ms": self.performance.p95_ms,
                "lookups": self.performance.lookups,
                "probe": self.performance.probe,
                "cache_hit_rate": self.performance.cache_hit_rate,
            },
            "health_checks": {
                "status": self.status,
                "passed": sum(1 for v in checks.values() if v),
                "total": len(checks),
                "warnings": [r.message for r in failing if r.severity == Severity.WARNING],
                "errors": [r.message for r in failing if r.severity >= Severity.ERROR],
            },
            "alerts": alerts or {"active": 0, "by_level": {s.label: 0 for s in Severity}},
            "agents": {
                agent: {"size_bytes": sizes.get(agent, 0), **counts.get(agent, {})}
                for agent in sorted(set(sizes) | set(counts))
            },
            "results": [r.to_dict() for r in self.results],
            "sessions": self.sessions,
            "integrity_failures": [
                {"path": e.relpath or str(e.path), "offset": e.offset, "reason": e.reason, "code": e.code}
                for e in self.scan.errors if e.code not in NOT_DOCUMENTS
            ],
            "links": sorted(e.relpath or str(e.path) for e in self.scan.errors if e.code in NOT_DOCUMENTS),
            "duration_s": round(self.duration_s, 3),
        }


def _timed(fn: Callable[[], CheckResult | list[CheckResult]]) -> list[CheckResult]:
    start = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - start
    results = out if isinstance(out, list) else [out]
    return [CheckResult(r.check, r.passed, r.severity, r.message, r.agent, r.details, elapsed) for r in results]


def _index_evidence(root: Path, scan: ScanResult) -> IndexEvidence:
    newest_ns = max((d.mtime_ns for d in scan.documents), default=None)
    newest = datetime.fromtimestamp(newest_ns / 1e9, UTC) if newest_ns is not None else None
    for rel in INDEX_CANDIDATES:
        path = root / rel
        if path.is_file():
            mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            return IndexEvidence(path, mtime, newest)
    return IndexEvidence(None, None, newest)


def session_stats(doc: Document) -> dict[str, Any] | None:
    """The memory statistics of an Aitor session document (:func:`aml.agent.stats.analyze_memory_usage`, without
    its own timestamp: the report has one), ``{"agent", "error"}`` for a session they cannot read, ``None`` for
    any other document. Computed where the scan reads the document (a worker process)."""
    if doc.kind != "aitor_session" or doc.error is not None:
        return None
    try:
        stats = analyze_memory_usage(doc.data)
    except (TypeError, ValueError, ArithmeticError) as exc:  # a session the statistics cannot read
        return {"agent": doc.agent, "error": str(exc)}
    stats.pop("analysis_timestamp", None)
    return {"agent": doc.agent, **stats}


def run_health(
    root: Path,
    *,
    backups: Sequence[BackupEvidence] = (),
    drills: Sequence[DrillEvidence] = (),
    cache_hit_rate: float | None = None,
    cache_source: str = "none",
    query_times_s: Sequence[float] = (),
    thresholds: Thresholds | None = None,
    now: datetime | None = None,
    lookup_sample: int = 50,
) -> HealthRun:
    """Run the six checks of the seeds and ``restore_tested`` on the file store at ``root``.

    Args:
        root: store root directory (e.g. ``.loom/memory``).
        backups: snapshots known for this store (repository and catalog), with verification state.
        drills: the store's finished restore drills (:func:`aml.health.checks.check_restore_tested`).
        cache_hit_rate: hit rate of the record cache measured by real queries (0-1), ``None`` when
            there was no query traffic.
        cache_source: where ``cache_hit_rate`` came from, reported as is.
        query_times_s: wall times of real queries recorded recently, seconds (judged by
            ``performance_ok`` with the probe's lookups).
        thresholds: limits (default :class:`Thresholds`: the seeds' numbers).
        now: the run's instant, aware UTC (default: now).
        lookup_sample: number of record lookups the performance probe times.

    Returns:
        A :class:`HealthRun`; ``run.report()`` is the seeds' JSON report.
    """
    thresholds = thresholds or Thresholds()
    now = now or datetime.now(UTC)
    started = time.perf_counter()
    store = FileStore(root)
    scan_start = time.perf_counter()
    sessions: dict[str, dict[str, Any]] = {}
    scan = ScanResult.empty(store.store_id)
    with LookupProbe(root, sample=lookup_sample) as probe:
        if root.is_dir():
            # worker processes read the documents; the probe's own documents are read here, where their lookups
            # are timed on the scan's read; a very large Loom collection is read here too, item by item (memory
            # holds its bytes and one item at a time); health needs counts, bytes and wrong types, not record views
            for part in store.scan_tallies(session_stats, here=probe.documents, visit=probe.visit,
                                           lazy_items=LAZY_ITEMS_BYTES):
                scan.add(part)
                if part.extra is not None:
                    sessions[part.info.relpath] = part.extra
    scan_s = time.perf_counter() - scan_start
    times = probe.times_ms
    avg, p95 = summarize(times)
    recorded = [t * 1000.0 for t in query_times_s]
    perf = PerformanceEvidence(len(times), avg, p95, cache_hit_rate, cache_source,
                               query_avg_ms=sum(recorded) / len(recorded) if recorded else None,
                               queries=len(recorded), probe=probe.source, unprobed=tuple(probe.unprobed))
    failures = [IntegrityFailure(e.relpath or str(e.path), e.offset, e.reason) for e in scan.errors
                if e.code not in NOT_DOCUMENTS]
    t = thresholds
    results: list[CheckResult] = []
    results += _timed(lambda: check_directory_structure(root))
    results += _timed(lambda: check_memory_within_limits(
        scan.agent_sizes(), scan.total_bytes, agent_warning_mb=t.agent_warning_mb,
        agent_critical_mb=t.agent_critical_mb, store_warning_mb=t.store_warning_mb,
        store_critical_mb=t.store_critical_mb))
    results += _timed(lambda: check_index_exists(_index_evidence(root, scan), now,
                                                 max_age_hours=t.index_max_age_hours))
    results += _timed(lambda: check_recent_backup(backups, now, max_age_hours=t.backup_max_age_hours))
    results += _timed(lambda: check_file_integrity(failures, len(scan.documents), scan.wrong_type_findings))
    results += _timed(lambda: check_performance(
        perf, query_warning_ms=t.query_warning_ms, query_critical_ms=t.query_critical_ms,
        cache_hit_warning=t.cache_hit_warning, cache_hit_critical=t.cache_hit_critical))
    results += _timed(lambda: check_restore_tested(drills, backups, now, max_age_days=t.drill_max_age_days))
    run = HealthRun(store.store_id, now, results, scan, perf, duration_s=time.perf_counter() - started,
                    sessions=sessions)
    run.metrics = _samples(run, scan_s)
    return run


def _samples(run: HealthRun, scan_s: float) -> list[MetricSample]:
    now = run.time
    out = [
        MetricSample(now, "store_bytes", float(run.scan.total_bytes), "bytes"),
        MetricSample(now, "store_records", float(run.scan.record_count), "count"),
        MetricSample(now, "store_documents", float(len(run.scan.documents)), "count"),
        MetricSample(now, "integrity_failures", float(sum(e.code not in NOT_DOCUMENTS for e in run.scan.errors)),
                     "count"),
        MetricSample(now, "scan_duration", scan_s, "seconds"),
        MetricSample(now, "health_duration", run.duration_s, "seconds"),
    ]
    if run.performance.lookups:
        out.append(MetricSample(now, "lookup_time", run.performance.avg_ms / 1000.0, "seconds"))
    for agent, size in sorted(run.scan.agent_sizes().items()):
        out.append(MetricSample(now, "agent_bytes", float(size), "bytes", agent))
    for agent, by_collection in sorted(run.scan.counts().items()):
        for collection, n in sorted(by_collection.items()):
            out.append(MetricSample(now, "records", float(n), "count", f"{agent}/{collection}"))
    for agent, by_collection in sorted(run.scan.collection_bytes().items()):
        for collection, n in sorted(by_collection.items()):
            out.append(MetricSample(now, "collection_bytes", float(n), "bytes", f"{agent}/{collection}"))
    seen: set[str] = set()
    for r in run.results:
        if r.check not in seen:
            seen.add(r.check)
            out.append(MetricSample(now, "check_duration", r.duration_s, "seconds", r.check))
    return out
