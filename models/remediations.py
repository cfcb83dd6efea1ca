"""Data access for the remediation policy: the ``remediations`` rows and the alerts they act on.

Every decision of the policy while it acts (``AML_REMEDIATE=on``) is one row (:class:`models.tables.Remediation`):
its rule, the alert that caused it (fingerprint, state before and after), the actions with their task ids,
the outcome and why. At most one row per store is in flight (``queued``/``running``): the database enforces it
(``ux_remediations_store_in_flight``), so two health runs racing on one store start one chain, never two.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.base import iso_z, utcnow
from models.tables import SEVERITY_RANK, Alert, Remediation, RemediationStatus, TaskRun

IN_FLIGHT = (RemediationStatus.QUEUED.value, RemediationStatus.RUNNING.value)
"""Statuses of a chain that has not finished."""

RAN = (*IN_FLIGHT, RemediationStatus.SUCCESS.value, RemediationStatus.FAILURE.value)
"""Statuses of a chain that was started (what a cooldown counts)."""


def in_flight(session: Session, store: str) -> list[Remediation]:
    """The store's rows still ``queued`` or ``running`` (at most one while the index holds)."""
    stmt = select(Remediation).where(Remediation.store == store, Remediation.status.in_(IN_FLIGHT))
    return list(session.scalars(stmt))


def last_started(session: Session, store: str, rule: str) -> Remediation | None:
    """The newest row of ``rule`` on ``store`` whose chain was started (in flight or finished)."""
    stmt = (select(Remediation).where(Remediation.store == store, Remediation.rule == rule,
                                      Remediation.status.in_(RAN))
            .order_by(Remediation.created_at.desc(), Remediation.id.desc()).limit(1))
    return session.scalars(stmt).first()


def add(session: Session, **values: Any) -> Remediation | None:
    """Insert a row (in a savepoint). Returns ``None`` when it would be a second chain in flight on its store
    (the partial unique index refused it); the caller records the decision as ``skipped`` instead."""
    row = Remediation(**values)
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError as exc:
        text = str(exc.orig)
        if "ux_remediations_store_in_flight" in text or "remediations.store" in text:
            return None
        raise
    return row


def started_since(session: Session, store: str, since: datetime) -> int:
    """How many chains were started on ``store`` at or after ``since`` (the per-store budget)."""
    stmt = select(func.count()).select_from(Remediation).where(
        Remediation.store == store, Remediation.status.in_(RAN), Remediation.created_at >= since)
    return int(session.scalar(stmt) or 0)


def get(session: Session, remediation_id: int) -> Remediation | None:
    """The row with this id, or ``None``."""
    return session.get(Remediation, remediation_id)


def finish(session: Session, row: Remediation, *, status: str, result: Mapping[str, Any] | None = None,
           alert_after: Mapping[str, Any] | None = None, reason: str | None = None,
           now: datetime | None = None) -> None:
    """Record the outcome of ``row``: terminal ``status``, the result, the alert's state after, finish time."""
    row.status = RemediationStatus(status).value
    row.finished_at = now or utcnow()
    if result is not None:
        row.result = dict(result)
    if alert_after is not None:
        row.alert_after = dict(alert_after)
    if reason is not None:
        row.reason = reason


def fail(session: Session, row: Remediation, reason: str, *, now: datetime | None = None) -> None:
    """Finish ``row`` as ``failure``: ``reason`` appended to its reason and kept as ``result["error"]``."""
    finish(session, row, status=RemediationStatus.FAILURE.value, reason=f"{row.reason}; {reason}",
           result={**(row.result or {}), "error": reason}, now=now)


def list_remediations(session: Session, store: str | None = None, limit: int = 50) -> list[Remediation]:
    """Rows newest first, of one store or all."""
    stmt = select(Remediation).order_by(Remediation.created_at.desc(), Remediation.id.desc()).limit(limit)
    if store is not None:
        stmt = stmt.where(Remediation.store == store)
    return list(session.scalars(stmt))


def to_dict(row: Remediation) -> dict[str, Any]:
    """JSON form: ``{id, store, rule, fingerprint, mode, actions, task_id, status, reason, result,
    alert_before, alert_after, created_at, finished_at}`` (ISO 8601 UTC ``Z`` times)."""
    return {"id": row.id, "store": row.store, "rule": row.rule, "fingerprint": row.fingerprint, "mode": row.mode,
            "actions": row.actions, "task_id": row.task_id, "status": row.status, "reason": row.reason,
            "result": row.result, "alert_before": row.alert_before, "alert_after": row.alert_after,
            "created_at": iso_z(row.created_at), "finished_at": iso_z(row.finished_at)}


def alert_state(session: Session, fingerprint: str) -> dict[str, Any] | None:
    """The state of the newest alert of ``fingerprint``: ``{id, severity, count, open, resolved_at,
    message}``, or ``None`` when it never fired."""
    stmt = select(Alert).where(Alert.fingerprint == fingerprint).order_by(Alert.id.desc()).limit(1)
    alert = session.scalars(stmt).first()
    if alert is None:
        return None
    return {"id": alert.id, "severity": alert.severity, "count": alert.count, "open": alert.resolved_at is None,
            "resolved_at": iso_z(alert.resolved_at), "message": alert.message}


def escalate(session: Session, fingerprint: str, note: str) -> tuple[str, str] | None:
    """Raise the open alert of ``fingerprint`` one severity level (capped at ``critical``) and add ``note``
    to its details under ``remediation``.

    Returns:
        ``(severity before, after)``, or ``None`` when no alert of that fingerprint is open.
    """
    alert = session.scalars(select(Alert).where(Alert.fingerprint == fingerprint,
                                                Alert.resolved_at.is_(None))).first()
    if alert is None:
        return None
    before = alert.severity
    rank = min(SEVERITY_RANK.get(before, 1) + 1, max(SEVERITY_RANK.values()))
    after = next(name for name, r in SEVERITY_RANK.items() if r == rank)
    alert.severity = after
    alert.details = {**(alert.details or {}), "remediation": note}
    return before, after


def task_runs(session: Session, task_ids: Iterable[Any]) -> dict[str, TaskRun]:
    """task id -> its ``task_runs`` row, for the ids that have one (``None`` and empty ids are skipped)."""
    ids = [str(t) for t in task_ids if t]
    if not ids:
        return {}
    return {r.task_id: r for r in session.scalars(select(TaskRun).where(TaskRun.task_id.in_(ids)))
            if r.task_id is not None}
