"""The six health checks of the seeds (Loom ``scripts/aml/monitoring.py`` ``run_health_check``), and aml's
seventh, ``restore_tested``.

Each check is a pure function of what was measured (a store scan, backup evidence, restore drills, lookup
timings) and returns one or more :class:`CheckResult`. Check names are the seeds' keys:
``directory_structure``, ``memory_within_limits``, ``index_exists``, ``recent_backup``,
``file_integrity``, ``performance_ok``; plus ``restore_tested`` (the seeds' best practice "Test restores
occasionally to verify backup integrity", judged from restore drills). Sizes in bytes (thresholds in MiB =
1024² bytes), times in seconds unless a name says ``_ms``, instants aware UTC.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
"""One MiB in bytes: every threshold given in MB by the seeds is taken as MiB (1024² bytes)."""

NON_AGENT_DIRS = frozenset({"global", "config", "monitoring", "audit", "backup"})


class Severity(enum.IntEnum):
    """Alert severity, ordered. Values and names are the seeds' ``AlertLevel``."""

    INFO = 0
    WARNING = 1
    ERROR = 2
    CRITICAL = 3

    @property
    def label(self) -> str:
        """Lower-case name as stored in the catalog and reports (``"warning"``...)."""
        return self.name.lower()


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check, for the store or one agent.

    Attributes:
        check: check name (one of the seeds' six, or ``restore_tested``).
        passed: ``True`` when the check holds.
        severity: severity of the failure (``INFO`` when passed).
        message: one human sentence saying what was found.
        agent: the agent the result is about, or ``None`` for the whole store.
        details: JSON-serialisable facts behind the message.
        duration_s: wall time the check took, seconds.
    """

    check: str
    passed: bool
    severity: Severity
    message: str
    agent: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{check, agent, passed, severity, message, details, duration_s}``."""
        return {
            "check": self.check,
            "agent": self.agent,
            "passed": self.passed,
            "severity": self.severity.label,
            "message": self.message,
            "details": dict(self.details),
            "duration_s": round(self.duration_s, 6),
        }


def _ok(check: str, message: str, agent: str | None = None, **details: Any) -> CheckResult:
    return CheckResult(check, True, Severity.INFO, message, agent, details)


def _fail(check: str, sev: Severity, message: str, agent: str | None = None, **details: Any) -> CheckResult:
    return CheckResult(check, False, sev, message, agent, details)


def _has_loom_layout(root: Path) -> bool:
    """True when the root has a Loom agent directory (:meth:`aml.store.FileStore.agents`) or ``config.json``."""
    from aml.store.filestore import FileStore

    try:
        return bool(FileStore(root).agents()) or (root / "config.json").is_file()
    except OSError:
        return True


def check_directory_structure(root: Path) -> CheckResult:
    """``directory_structure``: the store root is a readable directory with Loom's ``global/``.

    The seeds also require ``config/``; Loom's TypeScript runtime never creates it (only its
    Python migration does), so every store it writes would be "critical" (DATA.md, Python health).
    aml reports a missing ``config/`` in the details only. A missing root is critical; a missing
    ``global/`` is a warning, except in a store with no Loom layout at all (no Loom agent directory, no
    root ``config.json``: e.g. a directory of Aitor sessions or TinyTroupe specifications), which needs
    none of Loom's directories.
    """
    name = "directory_structure"
    if not root.exists():
        return _fail(name, Severity.CRITICAL, f"store directory {root} does not exist")
    if not root.is_dir():
        return _fail(name, Severity.CRITICAL, f"store path {root} is not a directory")
    missing = [d for d in ("global",) if not (root / d).is_dir()]
    if missing and not _has_loom_layout(root):
        return _ok(name, "store holds no Loom agents (sessions or specifications only): Loom's directories "
                         "are not needed", notes=["no Loom agent directory and no config.json"])
    notes = [] if (root / "config").is_dir() else ["config/ absent (written only by Loom's Python migration)"]
    if missing:
        return _fail(name, Severity.WARNING, f"missing directories: {', '.join(missing)}", missing=missing,
                     notes=notes)
    return _ok(name, "store layout is complete", notes=notes)


def check_memory_within_limits(
    agent_sizes: Mapping[str, int],
    total_bytes: int,
    *,
    agent_warning_mb: float,
    agent_critical_mb: float,
    store_warning_mb: float,
    store_critical_mb: float,
) -> list[CheckResult]:
    """``memory_within_limits``: one result for the store and one per agent.

    Args:
        agent_sizes: agent name -> bytes on disk.
        total_bytes: bytes on disk of the whole store.
        agent_warning_mb, agent_critical_mb, store_warning_mb, store_critical_mb: limits in MiB
            (seeds: 60/80 per agent, 600/800 per store).

    Returns:
        ``[store result, agent results...]``; a size at or above a limit fails with that severity.
    """
    name = "memory_within_limits"

    def judge(size: int, warn: float, crit: float, agent: str | None, what: str) -> CheckResult:
        mib = size / MIB
        details = {"size_bytes": size, "warning_mb": warn, "critical_mb": crit}
        if mib >= crit:
            return _fail(name, Severity.CRITICAL, f"{what} uses {mib:.1f} MiB, at or above the "
                         f"critical limit {crit:g} MiB", agent, **details)
        if mib >= warn:
            return _fail(name, Severity.WARNING, f"{what} uses {mib:.1f} MiB, at or above the "
                         f"warning limit {warn:g} MiB", agent, **details)
        return _ok(name, f"{what} uses {mib:.2f} MiB (limit {warn:g}/{crit:g} MiB)", agent, **details)

    results = [judge(total_bytes, store_warning_mb, store_critical_mb, None, "store")]
    for agent in sorted(agent_sizes):
        results.append(judge(agent_sizes[agent], agent_warning_mb, agent_critical_mb, agent,
                             f"agent {agent}"))
    return results


@dataclass(frozen=True)
class IndexEvidence:
    """What index exists: ``path`` (aml's index or Loom's ``global/index.json``) and its mtime."""

    path: Path | None
    mtime: datetime | None
    newest_data_mtime: datetime | None


def check_index_exists(index: IndexEvidence, now: datetime, *, max_age_hours: float = 24.0) -> CheckResult:
    """``index_exists``: an index of the store's records exists and is current.

    Fails (warning) when no index exists, or when it is older than ``max_age_hours`` (seeds: 24 h)
    and older than the newest document of the store (an old index of unchanged data is current).
    """
    name = "index_exists"
    if index.path is None or index.mtime is None:
        return _fail(name, Severity.WARNING,
                     "no record index found (Loom's global/index.json or aml's .aml/index.sqlite)")
    age_h = (now - index.mtime).total_seconds() / 3600
    stale = index.newest_data_mtime is not None and index.newest_data_mtime > index.mtime
    if stale and age_h > max_age_hours:
        return _fail(name, Severity.WARNING, f"index {index.path.name} is {age_h:.1f} h old and older than "
                     "the store's data", path=str(index.path), age_hours=round(age_h, 2))
    return _ok(name, f"index {index.path.name} is current", path=str(index.path), age_hours=round(age_h, 2))


@dataclass(frozen=True)
class BackupEvidence:
    """One known snapshot: id, time (aware UTC), where it was seen, its verification state.

    ``verify_status`` is ``"ok"``, ``"failed"`` or ``"unverified"``.
    """

    backup_id: str
    time: datetime
    source: str
    verify_status: str = "unverified"


def check_recent_backup(backups: Sequence[BackupEvidence], now: datetime, *, max_age_hours: float) -> CheckResult:
    """``recent_backup``: a snapshot younger than ``max_age_hours`` exists (seeds: 24 h).

    A snapshot whose verification failed does not count. No snapshot at all is a warning (seeds:
    "No backups found" is a warning), and so is an old one.
    """
    name = "recent_backup"
    usable = [b for b in backups if b.verify_status != "failed"]
    failed = [b.backup_id for b in backups if b.verify_status == "failed"]
    if not usable:
        msg = "no backups found" if not backups else "every backup failed verification"
        return _fail(name, Severity.WARNING, msg, failed_verification=failed)
    latest = max(usable, key=lambda b: b.time)
    age_h = (now - latest.time).total_seconds() / 3600
    details: dict[str, Any] = {"latest": latest.backup_id, "age_hours": round(age_h, 2),
                               "verify_status": latest.verify_status, "failed_verification": failed}
    if age_h > max_age_hours:
        return _fail(name, Severity.WARNING, f"latest backup {latest.backup_id} is {age_h:.1f} h old "
                     f"(limit {max_age_hours:g} h)", **details)
    return _ok(name, f"latest backup {latest.backup_id} is {age_h:.1f} h old", **details)


@dataclass(frozen=True)
class IntegrityFailure:
    """A document that failed to parse: relative path, byte offset (or ``None``), reason."""

    path: str
    offset: int | None
    reason: str


def check_file_integrity(
    failures: Sequence[IntegrityFailure],
    documents_read: int,
    wrong_type: Sequence[Mapping[str, Any]] = (),
) -> CheckResult:
    """``file_integrity``: every document of the store parses, and its records' fields have the JSON
    types their writer puts there.

    A document that does not parse fails the check with severity ``error``; the message counts the
    failures and names each file with its reason. Fields of the wrong JSON type (an integer
    ``lastUsed``, a ``null`` ``timestamp``, a string confidence: :func:`aml.store.accessors.wrong_types`)
    do not make the store unreadable: alone they fail the check as a ``warning``, each named in
    ``details["wrong_type"]`` (file, record id, field, JSON type found, expected). aml reads such a field
    as unknown and no destructive operation acts on it.

    Args:
        failures: documents that failed to parse.
        documents_read: documents examined.
        wrong_type: ``{"file", "record_id", "field", "found", "expected", ...}`` per field
            (:meth:`aml.store.Record.wrong_type_findings`).
    """
    name = "file_integrity"
    findings = [dict(w) for w in wrong_type]
    typed = ""
    if findings:
        named = "; ".join(f"{w['file']} record {w['record_id']}: {w['field']} is {w['found']} "
                          f"(expected {w['expected']})" for w in findings[:20])
        more_w = f" and {len(findings) - 20} more" if len(findings) > 20 else ""
        typed = (f"{len(findings)} field(s) of the wrong type, reported and left alone: {named}{more_w}")
    if not failures:
        if findings:
            return _fail(name, Severity.WARNING, f"all {documents_read} documents parse; {typed}",
                         documents=documents_read, failures=[], wrong_type=findings)
        return _ok(name, f"all {documents_read} documents parse", documents=documents_read, wrong_type=[])
    listed = "; ".join(
        f"{f.path}: {f.reason}" + (f" (byte {f.offset})" if f.offset is not None else "") for f in failures[:20]
    )
    more = f" and {len(failures) - 20} more" if len(failures) > 20 else ""
    return _fail(
        name, Severity.ERROR,
        f"{len(failures)} of {documents_read} documents do not parse: {listed}{more}" + (f"; {typed}" if typed else ""),
        documents=documents_read,
        failures=[{"path": f.path, "offset": f.offset, "reason": f.reason} for f in failures],
        wrong_type=findings,
    )


@dataclass(frozen=True)
class PerformanceEvidence:
    """Measured record lookups: count, mean and p95 in milliseconds; cache hit rate (0-1) or None;
    and the mean time of the real queries recorded recently (``query_avg_ms``, milliseconds, over
    ``queries`` queries; ``None`` without query traffic). ``probe``: how the lookups were made (``index``: through
    the record index; ``documents``: by id in the parsed documents; ``none``), see :mod:`aml.health.probe`.
    ``unprobed``: store-relative paths of documents the probe could not time lookups in (read item by item,
    :data:`aml.store.documents.LAZY_ITEMS_BYTES`)."""

    lookups: int
    avg_ms: float
    p95_ms: float
    cache_hit_rate: float | None
    cache_source: str = "none"
    query_avg_ms: float | None = None
    queries: int = 0
    probe: str = "none"
    unprobed: tuple[str, ...] = ()


def check_performance(
    perf: PerformanceEvidence,
    *,
    query_warning_ms: float,
    query_critical_ms: float,
    cache_hit_warning: float,
    cache_hit_critical: float,
) -> CheckResult:
    """``performance_ok``: record lookups are fast and the cache serves enough of them.

    Thresholds (foundation issue; the seeds warn at 100 ms and 50 % hit rate): mean lookup time
    ``query_warning_ms``/``query_critical_ms`` (50/100 ms); cache hit rate below
    ``cache_hit_warning``/``cache_hit_critical`` (0.6/0.5). A cache hit rate of ``None`` (no query
    traffic recorded yet) is not judged, unlike the seeds which report 0 % and warn forever. The
    same time limits apply to the probe's mean lookup and to the mean of the real queries recorded
    (``aml <store> query``, ``warm-cache``), each judged on its own.
    """
    name = "performance_ok"
    details: dict[str, Any] = {"lookups": perf.lookups, "avg_query_time_ms": round(perf.avg_ms, 3),
                               "p95_query_time_ms": round(perf.p95_ms, 3), "cache_hit_rate": perf.cache_hit_rate,
                               "cache_source": perf.cache_source, "queries": perf.queries, "probe": perf.probe,
                               "recorded_query_time_ms": None if perf.query_avg_ms is None
                               else round(perf.query_avg_ms, 3)}
    problems: list[tuple[Severity, str]] = []
    timed = [("record lookups", perf.avg_ms)] if perf.lookups else []
    if perf.query_avg_ms is not None and perf.queries:
        timed.append((f"recorded queries ({perf.queries})", perf.query_avg_ms))
    for what, ms in timed:
        if ms >= query_critical_ms:
            problems.append((Severity.CRITICAL, f"{what} take {ms:.1f} ms (critical ≥ {query_critical_ms:g} ms)"))
        elif ms >= query_warning_ms:
            problems.append((Severity.WARNING, f"{what} take {ms:.1f} ms (warning ≥ {query_warning_ms:g} ms)"))
    rate = perf.cache_hit_rate
    if rate is not None and rate < cache_hit_critical:
        problems.append((Severity.CRITICAL, f"cache hit rate {rate:.0%} (critical < {cache_hit_critical:.0%})"))
    elif rate is not None and rate < cache_hit_warning:
        problems.append((Severity.WARNING, f"cache hit rate {rate:.0%} (warning < {cache_hit_warning:.0%})"))
    if problems:
        worst = max(s for s, _ in problems)
        return _fail(name, worst, "; ".join(m for _, m in problems), **details)
    if not perf.lookups and perf.unprobed:
        return _ok(name, f"lookups not timed: {', '.join(perf.unprobed)} is too large to hold parsed (read item by "
                   "item); build the record index (`optimize index`) to time lookups through it",
                   unprobed=list(perf.unprobed), **details)
    if not perf.lookups:
        return _ok(name, "no records to look up", **details)
    hit = "no query traffic recorded" if rate is None else f"cache hit rate {rate:.0%}"
    return _ok(name, f"record lookups take {perf.avg_ms:.2f} ms on average; {hit}", **details)


@dataclass(frozen=True)
class DrillEvidence:
    """One finished restore drill of the store (:mod:`aml.backup.drill`).

    Attributes:
        time: when it finished (aware UTC).
        status: ``"passed"``, ``"failed"`` or ``"error"`` (it could not run: no verdict on the data).
        backup_id: the snapshot drilled.
        agent: the agent drilled, or ``None`` for the whole snapshot.
        failures: number of files that did not match their manifest.
        error: why it could not run (``"error"`` only).
    """

    time: datetime
    status: str
    backup_id: str | None = None
    agent: str | None = None
    failures: int = 0
    error: str | None = None

    def describe(self) -> str:
        """``"<backup_id>[ agent <agent>] at <time>"`` for messages."""
        what = self.backup_id or "?"
        if self.agent:
            what += f" agent {self.agent}"
        return f"{what} at {self.time.strftime('%Y-%m-%d %H:%M')} UTC"


def check_restore_tested(
    drills: Sequence[DrillEvidence],
    backups: Sequence[BackupEvidence],
    now: datetime,
    *,
    max_age_days: float,
) -> CheckResult:
    """``restore_tested``: a restore drill proved recently that the store's backups restore.

    Source: the seeds' best practice "Test restores occasionally to verify backup integrity" (Loom
    ``scripts/aml`` README, Best Practices 6); beat drills every file store weekly (Sunday 04:30 UTC), so
    ``max_age_days`` (``AML_DRILL_MAX_AGE_DAYS``, 14) allows one missed drill.

    Rules, in order:

    1. **critical** when the most recent conclusive drill (``passed`` or ``failed``; drills that could not
       run prove nothing either way) failed: a backup did not restore identically. It stays critical until a
       drill passes, however old the failure.
    2. **passed** when a drill passed within ``max_age_days``.
    3. **passed** when the store has no backup at all: there is nothing to drill, and ``recent_backup``
       already warns "no backups found" (one cause, one warning).
    4. **passed** (grace) when the oldest known backup is younger than ``max_age_days`` and no drill since
       it failed to run: the weekly drill has not had a full window yet (a store backed up for the first
       time today is not "untested" yet).
    5. otherwise **warning**: no drill passed in the last ``max_age_days`` days (the message names the last
       passed drill, if any, and the last drill that could not run, with its error).

    Args:
        drills: the store's finished drills (any order), at least those of the last ``max_age_days`` and
            the most recent conclusive one.
        backups: the store's known snapshots (:func:`check_recent_backup`'s evidence).
        now: the run's instant, aware UTC.
        max_age_days: a passed drill older than this no longer counts, days.
    """
    name = "restore_tested"
    ordered = sorted(drills, key=lambda d: d.time, reverse=True)
    conclusive = [d for d in ordered if d.status in ("passed", "failed")]
    passed = [d for d in ordered if d.status == "passed"]
    errors = [d for d in ordered if d.status == "error"]
    details: dict[str, Any] = {
        "max_age_days": max_age_days,
        "last_passed": passed[0].describe() if passed else None,
        "last_passed_at": passed[0].time.isoformat().replace("+00:00", "Z") if passed else None,
        "last_drill_status": ordered[0].status if ordered else None,
        "drills": len(ordered),
    }
    if conclusive and conclusive[0].status == "failed":
        last = conclusive[0]
        return _fail(name, Severity.CRITICAL, f"the last restore drill ({last.describe()}) failed: {last.failures} "
                     "file(s) did not come back identical; run `backup verify --read-data` to locate the damage "
                     "and `backup drill` again once repaired", failed_backup_id=last.backup_id,
                     failed_agent=last.agent, failures=last.failures, **details)
    if passed:
        age_d = (now - passed[0].time).total_seconds() / 86400
        details["age_days"] = round(age_d, 2)
        if age_d <= max_age_days:
            return _ok(name, f"restore drill of {passed[0].describe()} passed {age_d:.1f} days ago", **details)
    if not backups:
        return _ok(name, "no backups yet: nothing to drill (recent_backup reports it)", **details)
    oldest = min(b.time for b in backups)
    first_age_d = (now - oldest).total_seconds() / 86400
    broken = [e for e in errors if e.time >= oldest]  # drills that could not run while there were backups
    if not passed and first_age_d < max_age_days and not broken:
        return _ok(name, f"no restore drill yet; the oldest backup is {first_age_d:.1f} days old (a drill is due "
                   f"within {max_age_days:g} days of it)", oldest_backup_age_days=round(first_age_d, 2), **details)
    msg = f"no restore drill passed in the last {max_age_days:g} days"
    msg += f" (last passed: {passed[0].describe()})" if passed else " (none ever passed)"
    if broken and (not passed or broken[0].time > passed[0].time):
        msg += f"; the last drill could not run: {broken[0].error or 'unknown error'}"
    return _fail(name, Severity.WARNING, msg + "; run `aml <store> backup drill`", **details)
