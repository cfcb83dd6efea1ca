"""Celery tasks of the ``health`` operation: checks, alerts, metrics, reports.

``aml.health.check`` runs the six checks of the seeds and ``restore_tested`` (restore drills recorded by
:mod:`tasks.drill`) (:func:`aml.health.monitor.run_health`), then in the
catalog: raises or refreshes one open alert per failing fingerprint (store + agent + check),
resolves the open alerts whose check passed, and records the run's metric samples; then the alerts that
fired or resolved are notified (:mod:`tasks.notify`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from aml.health.checks import BackupEvidence, CheckResult, Severity
from aml.health.monitor import run_health
from models import queries
from tasks.backup_evidence import backup_evidence, drill_evidence
from tasks.base import Catalog, normalize_store, run_operation, store_path
from tasks.notify import notify_store
from tasks.registry import operation_task
from tasks.remediate import decide, record_outcome, start_chain
from workers.app import get_settings
from workers.settings import Settings

if TYPE_CHECKING:
    from celery import Task

log = logging.getLogger("aml.tasks.health")


def _alerts_summary(session: Session, store_id: str) -> dict[str, Any]:
    open_alerts = queries.open_alerts(session, store=store_id)
    by_level = {s.label: 0 for s in Severity}
    for alert in open_alerts:
        by_level[alert.severity] = by_level.get(alert.severity, 0) + 1
    return {
        "active": len(open_alerts),
        "by_level": by_level,
        "open": [queries.alert_to_dict(a) for a in open_alerts],
    }


def _remediation(catalog: Catalog, store_id: str, results: list[CheckResult], settings: Settings, *, act: bool,
                 eager: bool, remediation_id: int | None) -> dict[str, Any]:
    """The report's ``remediation`` section: the chain this run closes (:func:`tasks.remediate.record_outcome`),
    then the decisions (:func:`tasks.remediate.decide`). Never raises: an error is reported in ``error``."""
    closed, error = None, None
    if remediation_id is not None:
        try:
            closed = record_outcome(catalog, remediation_id, results, settings)
        except Exception as exc:
            log.exception("could not record the outcome of remediation %s on %s", remediation_id, store_id)
            error = f"could not record the outcome of remediation {remediation_id}: {type(exc).__name__}: {exc}"
    plan = decide(catalog, store_id, results, settings, act=act, eager=eager).to_dict()
    return {**plan, "closed": closed, "error": plan["error"] or error}


def health_body(store_id: str, lookup_sample: int, *, act: bool = False, eager: bool = True,
                remediation_id: int | None = None) -> Any:
    """Build the operation body for one health run on ``store_id`` (see :func:`tasks.base.run_operation`).

    After the alerts are observed, a run closing a remediation chain records its outcome
    (:func:`tasks.remediate.record_outcome`), then the decision matrix is evaluated (:func:`tasks.remediate.decide`;
    ``act``: record the decisions and start a chain when ``AML_REMEDIATE=on``). Its plan is the report's
    ``remediation`` section.
    """
    settings = get_settings()

    def body(catalog: Catalog) -> dict[str, Any]:
        root = store_path(store_id)
        with catalog(write=False) as session:
            evidence: list[BackupEvidence] = backup_evidence(session, store_id, root, settings)
            drills = drill_evidence(session, store_id, root, settings)
            day = datetime.now(UTC) - timedelta(days=1)
            # the cache hit rate of the last day's queries (mean of their rates), not of the last one:
            # one three-record query must not decide the check on its own
            rates = [s.value for s in queries.metric_series(session, store=store_id, name="query_cache_hit_rate",
                                                             since=day)]
            hit_rate, source = (sum(rates) / len(rates), f"queries ({len(rates)})") if rates else (None, "none")
            recent = queries.metric_series(session, store=store_id, name="query_time", since=day)
        run = run_health(root, backups=evidence, drills=drills, cache_hit_rate=hit_rate, cache_source=source,
                         query_times_s=[s.value for s in recent], thresholds=settings.thresholds,
                         lookup_sample=lookup_sample)
        with catalog() as session:
            # a passing check only resolves: skip the per-check lookup when its alert is not open (one query
            # for the store's open alerts instead of one per check and agent)
            open_now = queries.open_alert_fingerprints(session, store=store_id)
            for result in run.results:
                if result.passed and queries.alert_fingerprint(store_id, result.agent, result.check) not in open_now:
                    continue
                queries.observe_check(
                    session, store=store_id, agent=result.agent, check=result.check, passed=result.passed,
                    severity=result.severity.label, message=result.message, details=dict(result.details),
                    now=run.time,
                )
            queries.add_metric_samples(session, [
                queries.Sample(store_id, m.name, m.value, m.unit, m.subject, m.time) for m in run.metrics])
            session.flush()
            report = run.report(alerts=_alerts_summary(session, store_id))
        report["remediation"] = _remediation(catalog, store_id, run.results, settings, act=act, eager=eager,
                                             remediation_id=remediation_id)
        if report["remediation"].get("acting") and any(d["status"] == "refused"
                                                       for d in report["remediation"]["decisions"]):
            with catalog(write=False) as session:  # the refusals raised severities
                report["alerts"] = _alerts_summary(session, store_id)
        report["status_code"] = run.exit_code
        report["health_status"] = run.status
        return {"report": report, "status": {0: "success", 1: "warning", 2: "failure"}[run.exit_code]}

    return body


@operation_task("aml.health.check")
def check(self: Task, store: str, lookup_sample: int = 50, remediate: bool | None = None,
          remediation_id: int | None = None) -> dict[str, Any]:
    """Run the health checks on a file store, update alerts and metrics in the catalog, and apply the
    remediation policy (:mod:`tasks.remediate`).

    Args:
        store: path of the file store (e.g. ``.loom/memory``).
        lookup_sample: number of record lookups the performance probe times.
        remediate: act on the decision matrix when ``AML_REMEDIATE=on`` (``False``: list only). Default:
            act on a worker, list only inline (the CLI's ``--remediate`` passes ``True``).
        remediation_id: this run closes that remediation chain (set by the chain itself).

    Returns:
        ``{"report": <seeds' JSON report>, "status", "task_run_id", "notifications", "remediation_run", ...}``;
        ``report["status_code"]`` is the CLI exit code (0 healthy, 1 warning, 2 critical);
        ``report["remediation"]`` the decisions (:meth:`tasks.remediate.Plan.to_dict`); ``remediation_run`` what
        was started (enqueued chain ids, or inline: each step's outcome and the closing health run's result);
        ``notifications`` summarises the alerts pushed (:func:`tasks.notify.notify_store`).
    """
    store_id = normalize_store(store)
    eager = bool(self.request.is_eager)
    act = (not eager) if remediate is None else remediate
    arguments: dict[str, Any] = {"store": store, "lookup_sample": lookup_sample}
    if remediate is not None or remediation_id is not None:
        arguments.update(remediate=remediate, remediation_id=remediation_id)
    result = run_operation(task_id=self.request.id, operation="health", store=store_id, arguments=arguments,
                           body=health_body(store_id, lookup_sample, act=act, eager=eager,
                                            remediation_id=remediation_id))
    # after the run's transactions: alerts that fired or resolved are pushed (never raises)
    result["notifications"] = notify_store(store_id, eager=eager)
    chain = result["report"]["remediation"].get("chain")
    if chain:  # after the run is recorded: start_chain never raises, a failure finishes the chain's row
        result["remediation_run"] = start_chain(self, store_id, chain, lookup_sample=lookup_sample)
    return result


@operation_task("aml.health.alerts")
def alerts(self: Task, store: str | None = None, include_resolved: bool = False, limit: int = 100) -> dict[str, Any]:
    """List alerts from the catalog (read-only, not recorded as a task run).

    Args:
        store: a store path/id, or ``None`` for every store.
        include_resolved: also list resolved alerts (newest first).
        limit: maximum number of alerts.

    Returns:
        ``{"alerts": [alert dicts], "active": n}``.
    """
    from workers.catalog import session_scope

    store_id = normalize_store(store) if store else None
    with session_scope(get_settings().catalog_url) as session:
        rows = queries.list_alerts(session, store=store_id, include_resolved=include_resolved, limit=limit)
        return {"alerts": [queries.alert_to_dict(a) for a in rows],
                "active": sum(1 for a in rows if a.resolved_at is None)}


@operation_task("aml.health.metrics")
def metrics(self: Task, store: str, name: str | None = None, hours: float = 24.0) -> dict[str, Any]:
    """Return recorded metric samples of a store (the time series), newest last.

    Args:
        store: store path/id.
        name: one metric name, or ``None`` for all.
        hours: how far back, hours.

    Returns:
        ``{"store", "since", "samples": [{time, name, value, unit, subject}]}``.
    """
    from workers.catalog import session_scope

    store_id = normalize_store(store)
    since = datetime.now(UTC) - timedelta(hours=hours)
    with session_scope(get_settings().catalog_url) as session:
        rows = queries.store_samples(session, store=store_id, name=name, since=since)
        return {"store": store_id, "since": since.isoformat().replace("+00:00", "Z"),
                "samples": [queries.sample_to_dict(r) for r in rows]}


@operation_task("aml.health.remediations")
def remediations(self: Task, store: str | None = None, limit: int = 50) -> dict[str, Any]:
    """List the remediation policy's decisions from the catalog, newest first (read-only, not recorded).

    Args:
        store: a store path/id, or ``None`` for every store.
        limit: maximum rows.

    Returns:
        ``{"remediations": [row dicts (:func:`models.remediations.to_dict`)]}``.
    """
    from models import remediations as rows
    from workers.catalog import session_scope

    store_id = normalize_store(store) if store else None
    with session_scope(get_settings().catalog_url) as session:
        return {"remediations": [rows.to_dict(r) for r in rows.list_remediations(session, store_id, limit)]}
