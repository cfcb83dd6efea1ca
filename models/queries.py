"""The catalog's data access: every read and write the tasks make goes through these functions.

Each function takes an open :class:`~sqlalchemy.orm.Session` and neither commits nor rolls back
(the caller's ``session_scope`` does); functions that write flush, so database errors surface at
the call. Instants are aware UTC (a naive ``datetime`` is taken as UTC). Use write sessions
(``models.engine.session_factory(engine, write=True)``, the default) for the writing functions.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, case, delete, exists, func, insert, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.base import as_utc, iso_z, utcnow
from models.bulk import insert_columns, select_in
from models.tables import (
    SEVERITY_RANK,
    TERMINAL_STATUSES,
    Alert,
    Backup,
    BackupType,
    DrillStatus,
    MetricSample,
    PruneAction,
    PruneActionKind,
    PruneUndoLog,
    RestoreDrill,
    Severity,
    TaskRun,
    TaskStatus,
    Unit,
    VerifyStatus,
)
from models.undolog import UndoLogError, decode_payloads, encode_payloads

__all__ = [
    "ActionRef",
    "PrunedRecord",
    "Sample",
    "add_metric_samples",
    "add_prune_actions",
    "alert_fingerprint",
    "alert_history",
    "delete_backups",
    "delete_prune_actions",
    "finish_restore_drill",
    "finish_task_run",
    "get_backup",
    "get_task_run",
    "latest_backup",
    "list_backups",
    "list_restore_drills",
    "mark_prune_actions_undone",
    "metric_series",
    "observe_check",
    "open_alert_fingerprints",
    "open_alerts",
    "prune_action_payload",
    "prune_action_payloads",
    "prune_actions_for_run",
    "queue_task_run",
    "recent_task_runs",
    "record_backup",
    "restore_drill_to_dict",
    "set_backup_verification",
    "start_restore_drill",
    "start_task_run",
]


@functools.cache
def _values(allowed: type[enum.StrEnum]) -> frozenset[str]:
    """The stored forms of an enum's members (computed once per enum: :func:`_choice` runs once per row)."""
    return frozenset(v.value for v in allowed)


def _choice(value: str | enum.Enum, allowed: type[enum.StrEnum], what: str) -> str:
    """Normalise ``value`` (a string, or any enum whose name or value is allowed) to its stored form."""
    raw = (value.value if isinstance(value.value, str) else value.name) if isinstance(value, enum.Enum) else value
    norm = str(raw).lower()
    if norm not in _values(allowed):
        raise ValueError(f"{what} {value!r}: expected one of {', '.join(v.value for v in allowed)}")
    return norm


def _now(now: datetime | None) -> datetime:
    return utcnow() if now is None else as_utc(now)


def _text(value: str) -> str:
    """``value`` as valid text for a column: a file name's bytes that are not UTF-8 (Python's surrogateescape
    code points) written ``\\xNN``; valid text unchanged. The same rule as :func:`aml.store.names.text_name`
    (``models`` imports nothing of ``aml``): SQLite and PostgreSQL refuse lone surrogates, and an agent or a
    path named with such bytes must not stop a run from being recorded."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        try:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _opt_text(value: str | None) -> str | None:
    return None if value is None else _text(value)


def _clean(value: Any) -> Any:
    """A JSON value with :func:`_text` applied to every string (dict keys too)."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, Mapping):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


# --------------------------------------------------------------------------------- task runs


def get_task_run(session: Session, task_id: str) -> TaskRun | None:
    """The run with Celery task id ``task_id``, or ``None``."""
    return session.scalars(select(TaskRun).where(TaskRun.task_id == task_id)).one_or_none()


def queue_task_run(
    session: Session,
    *,
    task_id: str | None,
    operation: str,
    store: str,
    arguments: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> TaskRun:
    """Record that a task was enqueued (status ``pending``); idempotent per ``task_id``.

    Returns:
        The new row, or the existing row for ``task_id`` unchanged.
    """
    if task_id is not None and (existing := get_task_run(session, task_id)) is not None:
        return existing
    run = TaskRun(
        task_id=task_id,
        operation=operation,
        store=_text(store),
        arguments=_clean(dict(arguments or {})),
        status=TaskStatus.PENDING.value,
        attempts=0,
        queued_at=_now(now),
    )
    session.add(run)
    session.flush()
    return run


def start_task_run(
    session: Session,
    *,
    task_id: str | None,
    operation: str,
    store: str,
    arguments: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> TaskRun:
    """Mark a run as started (status ``running``, ``started_at`` = now, ``attempts`` + 1).

    A row already recorded for ``task_id`` (queued by :func:`queue_task_run`, or an earlier
    attempt of a retried task) is reused and its previous outcome cleared; otherwise a row is
    created with ``queued_at`` = ``started_at``. ``task_id=None`` always creates a row.

    Returns:
        The :class:`TaskRun`, flushed (its ``id`` is set).
    """
    at = _now(now)
    run = get_task_run(session, task_id) if task_id is not None else None
    if run is None:
        run = TaskRun(task_id=task_id, queued_at=at, attempts=0)
        session.add(run)
    run.operation = operation
    run.store = _text(store)
    run.arguments = _clean(dict(arguments or {}))
    run.status = TaskStatus.RUNNING.value
    run.attempts = (run.attempts or 0) + 1
    run.started_at = at
    run.finished_at = None
    run.duration_s = None
    run.result = None
    run.error = None
    session.flush()
    return run


def finish_task_run(
    session: Session,
    run: TaskRun,
    *,
    status: str | TaskStatus,
    result: Mapping[str, Any] | None = None,
    error: str | None = None,
    now: datetime | None = None,
) -> TaskRun:
    """Record the outcome of ``run``: terminal ``status``, ``finished_at``, ``duration_s``.

    Args:
        run: the row from :func:`start_task_run` (attached to ``session`` or not: it is merged).
        status: ``success``, ``warning``, ``failure`` or ``skipped``.
        result: the operation's JSON summary.
        error: failure text (exception and message), if any.

    Raises:
        ValueError: ``status`` is not terminal.
    """
    value = _choice(status, TaskStatus, "status")
    if value not in TERMINAL_STATUSES:
        raise ValueError(f"status {value!r} is not terminal: expected one of {sorted(TERMINAL_STATUSES)}")
    if run not in session:
        run = session.merge(run)
    at = _now(now)
    run.status = value
    run.finished_at = at
    started = run.started_at or run.queued_at
    run.duration_s = max(0.0, (at - started).total_seconds()) if started is not None else None
    run.result = _clean(dict(result)) if result is not None else None
    run.error = _opt_text(error)
    session.flush()
    return run


def recent_task_runs(
    session: Session,
    *,
    store: str | None = None,
    operation: str | None = None,
    status: str | TaskStatus | None = None,
    limit: int = 50,
) -> list[TaskRun]:
    """The newest runs first (by ``queued_at``), optionally for one store/operation/status."""
    stmt = select(TaskRun)
    if store is not None:
        stmt = stmt.where(TaskRun.store == store)
    if operation is not None:
        stmt = stmt.where(TaskRun.operation == operation)
    if status is not None:
        stmt = stmt.where(TaskRun.status == _choice(status, TaskStatus, "status"))
    stmt = stmt.order_by(TaskRun.queued_at.desc(), TaskRun.id.desc()).limit(limit)
    return list(session.scalars(stmt))


# ------------------------------------------------------------------------------------ alerts


def alert_fingerprint(store: str, agent: str | None, check: str) -> str:
    """The identity of an alert: SHA-256 (hex) of ``[store, agent, check]`` as JSON.

    ``agent=None`` (a store-wide check) and ``agent=""`` are different fingerprints. A name holding bytes
    that are not UTF-8 is taken in its escaped form (:func:`_text`), the one the alert row stores, so the
    fingerprint of a row's own ``store``/``agent``/``check`` is the row's fingerprint.
    """
    raw = json.dumps([_text(store), _opt_text(agent), _text(check)], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def _update_open_alert(session: Session, fingerprint: str, values: Mapping[str, Any]) -> Alert | None:
    """Set ``values`` on the open alert of ``fingerprint`` and return it, refreshed; ``None`` when none is open.

    One ``UPDATE ... RETURNING`` statement (SQLite 3.35+, PostgreSQL): the update locks the row itself, so a
    concurrent observer waits and then sees the new values (``count = count + 1`` never loses an increment), and
    the alert comes back without a select before and a refresh after."""
    stmt = (
        update(Alert)
        .where(Alert.fingerprint == fingerprint, Alert.resolved_at.is_(None))
        .values(values)
        .returning(Alert)
        .execution_options(populate_existing=True, synchronize_session=False)
    )
    return session.scalars(stmt).one_or_none()


def observe_check(
    session: Session,
    *,
    store: str,
    agent: str | None,
    check: str,
    passed: bool,
    severity: str | enum.Enum = Severity.WARNING,
    message: str = "",
    details: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> Alert | None:
    """Feed one health-check outcome into the alerts: raise, repeat or resolve.

    Exactly one open alert (``resolved_at IS NULL``) exists per fingerprint
    (:func:`alert_fingerprint` of ``store``, ``agent``, ``check``):

    - failing, an open alert exists: ``count`` + 1 (in SQL, so concurrent observers never lose
      an increment), ``last_seen`` = now, ``severity``/``message``/``details`` replaced;
    - failing, none open: a new row with ``count`` 1, ``first_seen`` = ``last_seen`` = now;
    - passing: the open alert, if any, gets ``resolved_at`` = now.

    The database enforces the rule (partial unique index ``ux_alerts_fingerprint_open``). If a
    concurrent observer inserts the open row first, the insert is rolled back to a savepoint and
    the existing row is updated instead.

    Args:
        severity: ``info``/``warning``/``error``/``critical``, or an enum whose name is one
            (``aml.health.checks.Severity`` works as is). Ignored when ``passed``.
        now: the instant of the observation (default: now).

    Returns:
        The open alert (new or updated) when failing; the alert just resolved when passing;
        ``None`` when passing with nothing open.
    """
    at = _now(now)
    fingerprint = alert_fingerprint(store, agent, check)
    if passed:
        return _update_open_alert(session, fingerprint, {"resolved_at": at})

    level = _choice(severity, Severity, "severity")
    payload = _clean(dict(details or {}))
    message = _text(message)
    for _attempt in range(3):
        alert = _update_open_alert(session, fingerprint, {"count": Alert.count + 1, "last_seen": at,
                                                          "severity": level, "message": message, "details": payload})
        if alert is not None:
            return alert
        alert = Alert(
            fingerprint=fingerprint,
            store=_text(store),
            agent=_opt_text(agent),
            check=_text(check),
            severity=level,
            message=message,
            details=payload,
            first_seen=at,
            last_seen=at,
            count=1,
            resolved_at=None,
        )
        try:
            with session.begin_nested():
                session.add(alert)
        except IntegrityError:
            continue  # another observer opened it first: update that row instead
        return alert
    raise RuntimeError(f"could not record alert {check!r} for {store!r}/{agent!r}: kept conflicting")


def open_alert_fingerprints(session: Session, store: str) -> set[str]:
    """The fingerprints of ``store``'s open alerts: which checks have an alert to resolve or repeat (one column,
    no rows loaded as objects: cheaper than :func:`open_alerts` when only that matters)."""
    stmt = select(Alert.fingerprint).where(Alert.store == store, Alert.resolved_at.is_(None))
    return set(session.scalars(stmt))


def open_alerts(session: Session, store: str | None = None) -> list[Alert]:
    """Open alerts, worst first (severity, then most recently seen), optionally for one store."""
    rank = case(SEVERITY_RANK, value=Alert.severity, else_=-1)
    stmt = select(Alert).where(Alert.resolved_at.is_(None))
    if store is not None:
        stmt = stmt.where(Alert.store == store)
    stmt = stmt.order_by(rank.desc(), Alert.last_seen.desc(), Alert.id)
    return list(session.scalars(stmt))


def alert_history(
    session: Session, *, store: str | None = None, since: datetime | None = None, limit: int = 200
) -> list[Alert]:
    """Alerts open or resolved, newest ``last_seen`` first, optionally for one store / since an instant."""
    stmt = select(Alert)
    if store is not None:
        stmt = stmt.where(Alert.store == store)
    if since is not None:
        stmt = stmt.where(Alert.last_seen >= as_utc(since))
    return list(session.scalars(stmt.order_by(Alert.last_seen.desc(), Alert.id.desc()).limit(limit)))


def claim_notifications(
    session: Session, *, store: str, repeat_s: float, now: datetime | None = None
) -> list[Alert]:
    """Claim ``store``'s alerts that are due a notification, and mark them notified (``notified_at`` = now).

    Due are: an open alert never notified, or last notified ``repeat_s`` seconds ago or more (one
    notification per fingerprint per repeat interval while it fires: Alertmanager's ``repeat_interval``);
    and a resolved alert whose firing was notified but whose resolution was not yet
    (``notified_at < resolved_at``). An alert raised and resolved between two notifications is never sent.

    The claim is one ``UPDATE ... WHERE <due> RETURNING``: on PostgreSQL a concurrent claimer blocks on the
    row lock, re-checks the condition on the updated row and skips it, so each notification is claimed
    once (SQLite serialises writers). Nothing is sent here: the caller delivers after its commit.

    Args:
        repeat_s: the repeat interval, seconds.
        now: the instant of the claim (default: now).

    Returns:
        The claimed alerts (``notified_at`` already set to ``now``), oldest first.
    """
    at = _now(now)
    cutoff = at - timedelta(seconds=repeat_s)
    firing_due = Alert.resolved_at.is_(None) & (Alert.notified_at.is_(None) | (Alert.notified_at <= cutoff))
    resolved_due = Alert.resolved_at.is_not(None) & Alert.notified_at.is_not(None) & (
        Alert.notified_at < Alert.resolved_at)
    stmt = (update(Alert).where(Alert.store == store, firing_due | resolved_due).values(notified_at=at)
            .returning(Alert).execution_options(synchronize_session=False))
    rows = list(session.scalars(stmt))
    return sorted(rows, key=lambda a: (a.first_seen, a.id))


def release_notifications(session: Session, ids: Sequence[int]) -> None:
    """Undo :func:`claim_notifications` for alerts whose notification reached no target, so the next run
    claims them again: a firing alert becomes never-notified, a resolved one gets ``notified_at`` =
    ``first_seen`` (before its resolution)."""
    if not ids:
        return
    session.execute(update(Alert).where(Alert.id.in_(ids), Alert.resolved_at.is_(None)).values(notified_at=None)
                    .execution_options(synchronize_session=False))
    session.execute(update(Alert).where(Alert.id.in_(ids), Alert.resolved_at.is_not(None))
                    .values(notified_at=Alert.first_seen).execution_options(synchronize_session=False))


# ----------------------------------------------------------------------------------- metrics


class Sample(NamedTuple):
    """One metric sample to record. A plain tuple in this field order is accepted too.

    ``subject`` is an agent or key pattern (``None`` = the whole store); ``time`` defaults to the
    ``now`` given to :func:`add_metric_samples`; ``unit`` is bytes/seconds/ratio/count.
    """

    store: str
    name: str
    value: float
    unit: str
    subject: str | None = None
    time: datetime | None = None
    task_run_id: int | None = None


def add_metric_samples(
    session: Session,
    samples: Iterable[Sample | tuple[Any, ...]],
    *,
    now: datetime | None = None,
    task_run_id: int | None = None,
) -> int:
    """Insert metric samples in one statement.

    Args:
        samples: :class:`Sample` values (or tuples in its field order).
        now: time of samples without their own ``time`` (default: now).
        task_run_id: run of samples without their own ``task_run_id``.

    Returns:
        The number of samples inserted.

    Raises:
        ValueError: a unit is not bytes/seconds/ratio/count, or a value is not a number.
    """
    at = _now(now)
    rows: list[dict[str, Any]] = []
    for item in samples:
        s = item if isinstance(item, Sample) else Sample(*item)
        rows.append(
            {
                "time": as_utc(s.time) if s.time is not None else at,
                "store": _text(s.store),
                "subject": _opt_text(s.subject),
                "name": s.name,
                "value": float(s.value),
                "unit": _choice(s.unit, Unit, "unit"),
                "task_run_id": s.task_run_id if s.task_run_id is not None else task_run_id,
            }
        )
    if rows:
        # a Core insert of the table (one executemany): the ORM's bulk-insert path adds nothing for rows no
        # object will represent, and costs more than the insert itself for a run's few dozen samples
        session.execute(insert(cast(Table, MetricSample.__table__)), rows)
    return len(rows)


def latest_samples(session: Session, *, store: str, names: Iterable[str]) -> dict[str, dict[str | None, float]]:
    """The samples of ``names`` recorded at the newest time any of them has for ``store``: one
    measurement's set (e.g. the previous trace's per-pattern key counts and bytes).

    Returns:
        name -> subject -> value (empty when nothing was recorded).
    """
    wanted = list(names)
    newest = session.scalar(select(func.max(MetricSample.time))
                            .where(MetricSample.store == store, MetricSample.name.in_(wanted)))
    if newest is None:
        return {}
    stmt = select(MetricSample).where(MetricSample.store == store, MetricSample.name.in_(wanted),
                                      MetricSample.time == newest)
    out: dict[str, dict[str | None, float]] = {}
    for sample in session.scalars(stmt):
        out.setdefault(sample.name, {})[sample.subject] = sample.value
    return out


def metric_series(
    session: Session,
    *,
    store: str,
    name: str,
    subject: str | None = None,
    any_subject: bool = False,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[MetricSample]:
    """The time series ``name`` of ``store`` in time order.

    Args:
        subject: the agent/key pattern (``None`` = store-wide samples) unless ``any_subject``.
        any_subject: return samples of every subject.
        since, until: inclusive bounds on ``time``.
    """
    stmt = select(MetricSample).where(MetricSample.store == store, MetricSample.name == name)
    if not any_subject:
        stmt = stmt.where(
            MetricSample.subject.is_(None) if subject is None else MetricSample.subject == subject
        )
    if since is not None:
        stmt = stmt.where(MetricSample.time >= as_utc(since))
    if until is not None:
        stmt = stmt.where(MetricSample.time <= as_utc(until))
    return list(session.scalars(stmt.order_by(MetricSample.time, MetricSample.id)))


# ----------------------------------------------------------------------------------- backups


def get_backup(session: Session, backup_id: str, repository: str | None = None) -> Backup | None:
    """The snapshot row ``backup_id`` of ``repository``, or ``None``.

    Ids are unique per repository only. Without ``repository``, the newest row with that id (a
    lookup by id alone is ambiguous only when two repositories took a snapshot in the same second).
    """
    stmt = select(Backup).where(Backup.backup_id == backup_id)
    if repository is not None:
        stmt = stmt.where(Backup.repository == repository)
    return session.scalars(stmt.order_by(Backup.id.desc()).limit(1)).first()


def record_backup(
    session: Session,
    *,
    backup_id: str,
    store: str,
    repository: str,
    backup_type: str | BackupType,
    created_at: datetime,
    file_count: int,
    total_size_bytes: int,
    stored_size_bytes: int,
    parent_backup_id: str | None = None,
    agents: Sequence[str] = (),
    tags: Sequence[str] = (),
    description: str | None = None,
) -> Backup:
    """Insert or update (by ``repository`` and ``backup_id``) the row of one snapshot; idempotent.

    Updating keeps the verification state. Sizes are bytes: ``total_size_bytes`` of the store's
    files, ``stored_size_bytes`` added to the repository by this snapshot.
    """
    kind = _choice(backup_type, BackupType, "backup_type")  # validate before touching the session
    row = get_backup(session, backup_id, repository)
    if row is None:
        row = Backup(backup_id=backup_id, verify_status=VerifyStatus.UNVERIFIED.value)
        session.add(row)
    row.store = store
    row.repository = repository
    row.backup_type = kind
    row.created_at = as_utc(created_at)
    row.parent_backup_id = parent_backup_id
    row.file_count = int(file_count)
    row.total_size_bytes = int(total_size_bytes)
    row.stored_size_bytes = int(stored_size_bytes)
    row.agents = [_text(a) for a in agents]
    row.tags = [_text(t) for t in tags]
    row.description = _opt_text(description)
    session.flush()
    return row


def set_backup_verification(
    session: Session,
    *,
    backup_id: str,
    status: str | VerifyStatus,
    detail: Mapping[str, Any] | None = None,
    verified_at: datetime | None = None,
    repository: str | None = None,
) -> Backup | None:
    """Record the outcome of verifying snapshot ``backup_id`` of ``repository`` (``ok``/``failed``/
    ``unverified``); see :func:`get_backup` for a lookup without ``repository``.

    Returns:
        The updated row, or ``None`` when the snapshot is not in the catalog (e.g. a legacy
        Loom backup).
    """
    value = _choice(status, VerifyStatus, "verify_status")
    row = get_backup(session, backup_id, repository)
    if row is None:
        return None
    row.verify_status = value
    row.verified_at = _now(verified_at)
    row.verify_detail = _clean(dict(detail)) if detail is not None else None
    session.flush()
    return row


def latest_backup(session: Session, store: str, verified_ok_only: bool = False) -> Backup | None:
    """The newest snapshot (by ``created_at``) of ``store``; with ``verified_ok_only``, the newest
    whose last verification passed."""
    stmt = select(Backup).where(Backup.store == store)
    if verified_ok_only:
        stmt = stmt.where(Backup.verify_status == VerifyStatus.OK.value)
    return session.scalars(stmt.order_by(Backup.created_at.desc(), Backup.id.desc()).limit(1)).first()


def list_backups(session: Session, store: str | None = None) -> list[Backup]:
    """Snapshots, oldest first, optionally of one store."""
    stmt = select(Backup)
    if store is not None:
        stmt = stmt.where(Backup.store == store)
    return list(session.scalars(stmt.order_by(Backup.created_at, Backup.id)))


def delete_backups(session: Session, backup_ids: Iterable[str], repository: str | None = None) -> int:
    """Remove the rows of snapshots that retention deleted from ``repository`` (every repository's
    rows with those ids when ``None``).

    Returns:
        The number of rows deleted.
    """
    ids = list(backup_ids)
    if not ids:
        return 0
    stmt = delete(Backup).where(Backup.backup_id.in_(ids))
    if repository is not None:
        stmt = stmt.where(Backup.repository == repository)
    result = session.execute(stmt.execution_options(synchronize_session="fetch"))
    return int(getattr(result, "rowcount", 0) or 0)


# ----------------------------------------------------------------------------- prune actions


@dataclass(frozen=True)
class PrunedRecord:
    """One record a prune run archived or removed (input of :func:`add_prune_actions`).

    ``record`` is undo's payload (the record's exact text, its key and its place: :mod:`aml.prune.undo`),
    ``document_path`` the document it was in (so undo can put it back); ``score`` its value score 0-1.
    """

    agent: str
    collection: str
    record_id: str
    reason: str
    action: str
    document_path: str
    record: Any
    score: float | None = None


def add_prune_actions(
    session: Session,
    *,
    run_id: str,
    store: str,
    records: Iterable[PrunedRecord],
    task_run_id: int | None = None,
    backup_id: str | None = None,
    now: datetime | None = None,
) -> int:
    """Record what prune run ``run_id`` did to one document: one row per record (one statement), their undo payloads
    together in :class:`PruneUndoLog` rows (:mod:`models.undolog`) of about :data:`UNDO_LOG_BYTES` each.

    Args:
        records: the records, all of one document (the log is named after the first one's ``document_path``).
        run_id: the prune run's id (its Celery task id), the handle of ``prune undo``.
        task_run_id: the :class:`TaskRun` row of the run, if any.
        backup_id: the pre-prune snapshot.

    Returns:
        The number of rows inserted.

    Raises:
        ValueError: an action is not ``archived``/``removed``.
        TypeError: a payload holds a value that neither JSON nor MessagePack encodes.
    """
    at = _now(now)
    records = list(records)
    if not records:
        return 0
    actions = [_choice(r.action, PruneActionKind, "action") for r in records]  # refused before anything is written
    # the payloads in undo logs (models.undolog) of about UNDO_LOG_BYTES each, each row pointing at its entry;
    # ``record`` holds JSON null
    places: list[tuple[int, int]] = []
    for chunk in _log_chunks(records):
        codec, value = encode_payloads([r.record for r in chunk])
        inserted = cast(CursorResult[Any], session.execute(insert(PruneUndoLog).values(
            run_id=run_id, store=store, document_path=_text(chunk[0].document_path), codec=codec,
            entries=len(chunk), payloads=value, created_at=at)))
        log_id = inserted.inserted_primary_key[0]  # type: ignore[index]  # always set for a single-row insert
        places.extend((log_id, index) for index in range(len(chunk)))
    # not ORM objects (the ORM's bulk path costs ~15 µs a row) nor a mapping per row: one executemany of the rows
    # given column by column; on SQLite their values are converted without SQLAlchemy's per-row work, the values
    # every row shares once (models.bulk)
    columns: dict[str, list[Any]] = {
        "agent": [_text(r.agent) for r in records],
        "collection": [r.collection for r in records],
        "record_id": [_text(r.record_id) for r in records],
        "reason": [_text(r.reason) for r in records],
        "score": [r.score for r in records],
        "action": actions,
        "document_path": [_text(r.document_path) for r in records],
        "undo_log_id": [log_id for log_id, _ in places],
        "undo_index": [index for _, index in places],
    }
    shared: dict[str, Any] = {"run_id": run_id, "task_run_id": task_run_id, "backup_id": backup_id, "store": store,
                              "record": None, "created_at": at, "undone_at": None}
    return insert_columns(session, cast(Table, PruneAction.__table__), columns, shared)


UNDO_LOG_BYTES = 1 << 20
"""About this many bytes of record text per undo log (a log is decoded whole when undo reads it). Logs of 5,000
Loom records (6.5 MB) left a large document's undo 27 MB above the same undo with 1,000 (glibc keeps the heap
pages of the freed multi-megabyte buffers); 1 MiB holds about 800 of them."""


def _log_chunks(records: list[PrunedRecord]) -> Iterator[list[PrunedRecord]]:
    """``records`` in runs of about :data:`UNDO_LOG_BYTES` of payload text (at least one record each)."""
    chunk: list[PrunedRecord] = []
    size = 0
    for r in records:
        text = r.record.get("text") if isinstance(r.record, dict) else None
        weight = 256 + (len(text) if isinstance(text, str) else 0)
        if chunk and size + weight > UNDO_LOG_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(r)
        size += weight
    if chunk:
        yield chunk


def prune_actions_for_run(
    session: Session, run_id: str, *, include_undone: bool = False
) -> list[PruneAction]:
    """The actions of prune run ``run_id`` in the order they were recorded (undone ones only on request)."""
    stmt = select(PruneAction).where(PruneAction.run_id == run_id)
    if not include_undone:
        stmt = stmt.where(PruneAction.undone_at.is_(None))
    return list(session.scalars(stmt.order_by(PruneAction.id)))


PRUNE_ID_BATCH = 500
"""Ids per ``IN`` list when prune actions are read, marked or deleted by id (SQLite's variable limit is 32,766
since 3.32 and 999 before)."""


class ActionRef(NamedTuple):
    """A prune action as undo first reads it: its row id, its record's id and where its payload is (entry
    ``undo_index`` of undo log ``undo_log_id``; both ``None`` for a row written before undo logs, whose
    ``record`` column holds it). Sorts by ``id``."""

    id: int
    record_id: str
    undo_log_id: int | None
    undo_index: int | None


def prune_action_documents(session: Session, run_id: str, store: str) -> tuple[int, dict[str, list[ActionRef]]]:
    """The actions of prune run ``run_id`` on ``store`` as undo needs them first, without their payloads (one
    query; :func:`prune_action_payloads` then reads only the payloads).

    Returns:
        ``(rows, pending)``: how many actions the run has on the store (undone or not), and those not undone yet
        by recorded document path (as :attr:`PruneAction.document_path` holds it), each list in id (recording)
        order.
    """
    t = cast(Table, PruneAction.__table__).c  # a Core query: no ORM row processing for tens of thousands of rows
    stmt = (select(t.id, t.document_path, t.undone_at.is_(None), t.record_id, t.undo_log_id, t.undo_index)
            .where(t.run_id == run_id, t.store == store).order_by(t.id))
    pending: dict[str, list[ActionRef]] = {}
    total = 0
    for action_id, document_path, waiting, record_id, log_id, index in session.execute(stmt):
        total += 1
        if waiting:
            pending.setdefault(document_path, []).append(ActionRef(action_id, record_id, log_id, index))
    return total, pending


def prune_action_payloads(session: Session, actions: Sequence[int] | Sequence[ActionRef]
                          ) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """``(id, record_id, payload)`` of the prune actions ``actions`` in their order (give them sorted for id
    order), read :data:`PRUNE_ID_BATCH` at a time (``payload``: the action's entry of its undo log, or the
    ``record`` column of a row written before undo logs; ``{}`` when there is none).

    Args:
        actions: row ids (their record ids and log entries are read first; an id with no row is left out), or
            the :class:`ActionRef` of :func:`prune_action_documents` (only the logs, and the ``record`` of rows
            without one, are read: refs read in an earlier transaction must still have their rows, which only
            :func:`delete_prune_actions` deletes, under the store's lock). Each is yielded as often as given.

    Rows are yielded as they are read: a caller that keeps less of each payload than the whole (undo:
    :func:`aml.prune.undo.lean_payload`) never holds every payload of a large run at once. A log is held while the
    batch reading it needs it (ids in order: a run writes a document's rows in id order, :data:`UNDO_LOG_BYTES` of
    them to a log; ids out of order are read right, with logs decoded again). Each payload yielded is the caller's
    own (nothing else holds it; the caller may change it). Consume it inside the session's transaction.

    Raises:
        models.undolog.UndoLogError: an undo log that does not decode (named by its id).
    """
    logs: dict[int, list[dict[str, Any]]] = {}
    table = cast(Table, PruneAction.__table__)
    for start in range(0, len(actions), PRUNE_ID_BATCH):
        batch = actions[start:start + PRUNE_ID_BATCH]
        if batch and not isinstance(batch[0], ActionRef):
            found = {row[0]: ActionRef(*row) for row in select_in(
                session, table, ("id", "record_id", "undo_log_id", "undo_index"), "id", batch)}
            refs = [found[i] for i in cast(Sequence[int], batch) if i in found]
        else:
            refs = cast(list[ActionRef], batch)
        needed = {ref.undo_log_id for ref in refs if ref.undo_log_id is not None}
        for done in logs.keys() - needed:  # a log no row of this batch reads: ids in order never come back to it
            del logs[done]
        _load_logs(session, needed - logs.keys(), logs)
        older = [ref.id for ref in refs if ref.undo_log_id is None]  # rows written before undo logs
        records = dict(select_in(session, table, ("id", "record"), "id", older)) if older else {}
        for ref in refs:
            yield ref.id, ref.record_id, _payload(logs, ref.id, records.get(ref.id), ref.undo_log_id, ref.undo_index,
                                                  copy=False)


def prune_action_payload(session: Session, action: PruneAction) -> dict[str, Any]:
    """The undo payload of one prune action (see :func:`prune_action_payloads`, which reads many at a time).

    Raises:
        models.undolog.UndoLogError: its undo log does not decode, or holds no entry for it.
    """
    logs: dict[int, list[dict[str, Any]]] = {}
    if action.undo_log_id is not None:
        _load_logs(session, {action.undo_log_id}, logs)
    return _payload(logs, action.id, action.record, action.undo_log_id, action.undo_index, copy=True)


def _load_logs(session: Session, wanted: set[int], into: dict[int, list[dict[str, Any]]]) -> None:
    """Decode the undo logs ``wanted`` into ``into`` (log id -> payloads)."""
    if not wanted:
        return
    table = cast(Table, PruneUndoLog.__table__)
    for log_id, codec, value in select_in(session, table, ("id", "codec", "payloads"), "id", sorted(wanted)):
        try:
            into[log_id] = decode_payloads(codec, value)
        except UndoLogError as exc:
            raise UndoLogError(f"prune undo log {log_id}: {exc}") from exc


def _payload(logs: Mapping[int, list[dict[str, Any]]], action_id: int, record: Any, log_id: int | None,
             index: int | None, *, copy: bool) -> dict[str, Any]:
    """One action's payload: its log's entry ``index``, else its own ``record`` (a row older than undo logs);
    ``copy``: a dict of its own, else possibly the decoded log's (which only this call's caller holds)."""
    if log_id is None:
        return dict(record or {})
    payloads = logs.get(log_id)
    if payloads is None or index is None or not 0 <= index < len(payloads):
        raise UndoLogError(f"prune action {action_id}: its undo log {log_id} is missing or has no entry {index}")
    return dict(payloads[index]) if copy else payloads[index]


def delete_prune_actions(session: Session, run_id: str, ids: Iterable[int]) -> int:
    """Delete actions of ``run_id`` by id (rows a crashed attempt wrote ahead of a rewrite that never
    happened: their records are still in the store), and the run's undo logs left with no row. Undone rows are
    never deleted.

    Returns:
        The number of rows deleted.
    """
    wanted = list(ids)
    deleted = 0
    for start in range(0, len(wanted), PRUNE_ID_BATCH):  # bounded IN lists (SQLite's variable limit)
        stmt = delete(PruneAction).where(PruneAction.run_id == run_id, PruneAction.undone_at.is_(None),
                                         PruneAction.id.in_(wanted[start:start + PRUNE_ID_BATCH]))
        result = session.execute(stmt.execution_options(synchronize_session=False))
        deleted += int(getattr(result, "rowcount", 0) or 0)
    if deleted:  # the run's undo logs no row points at any more
        orphan = ~exists().where(PruneAction.run_id == run_id, PruneAction.undo_log_id == PruneUndoLog.id)
        session.execute(delete(PruneUndoLog).where(PruneUndoLog.run_id == run_id, orphan)
                        .execution_options(synchronize_session=False))
    return deleted


def mark_prune_actions_undone(
    session: Session, run_id: str, *, ids: Iterable[int] | None = None, now: datetime | None = None
) -> int:
    """Mark the actions of ``run_id`` (all, or those in ``ids``) as undone; idempotent. A Core statement (an undo
    marks tens of thousands of rows, :data:`PRUNE_ID_BATCH` ids per statement): :class:`PruneAction` objects the
    session already holds keep their ``undone_at`` until refreshed.

    Returns:
        The number of rows newly marked.
    """
    table = cast(Table, PruneAction.__table__)
    stmt = update(table).where(table.c.run_id == run_id, table.c.undone_at.is_(None)).values(undone_at=_now(now))
    if ids is None:
        return int(getattr(session.execute(stmt), "rowcount", 0) or 0)
    wanted = list(ids)
    marked = 0
    for start in range(0, len(wanted), PRUNE_ID_BATCH):  # bounded IN lists (SQLite's variable limit)
        result = session.execute(stmt.where(table.c.id.in_(wanted[start:start + PRUNE_ID_BATCH])))
        marked += int(getattr(result, "rowcount", 0) or 0)
    return marked


# ----------------------------------------------------------------------------------- views


_iso = iso_z


def alert_to_dict(alert: Alert) -> dict[str, Any]:
    """JSON form of an alert: ``{id, fingerprint, store, agent, check, severity, message, details,
    first_seen, last_seen, count, resolved_at}`` with ISO 8601 UTC ``Z`` times."""
    return {
        "id": alert.id, "fingerprint": alert.fingerprint, "store": alert.store, "agent": alert.agent,
        "check": alert.check, "severity": alert.severity, "message": alert.message,
        "details": alert.details or {}, "first_seen": _iso(alert.first_seen), "last_seen": _iso(alert.last_seen),
        "count": alert.count, "resolved_at": _iso(alert.resolved_at),
    }


def sample_to_dict(sample: MetricSample) -> dict[str, Any]:
    """JSON form of a metric sample: ``{time, name, value, unit, subject}``."""
    return {"time": _iso(sample.time), "name": sample.name, "value": sample.value, "unit": sample.unit,
            "subject": sample.subject}


def list_alerts(
    session: Session, *, store: str | None = None, include_resolved: bool = False, limit: int = 200
) -> list[Alert]:
    """Open alerts (worst first), or with ``include_resolved`` every alert, newest first."""
    if not include_resolved:
        return open_alerts(session, store)[:limit]
    return alert_history(session, store=store, limit=limit)


def store_samples(
    session: Session, *, store: str, name: str | None = None, since: datetime | None = None
) -> list[MetricSample]:
    """Every sample of ``store`` (one metric ``name`` or all), in time order, since an instant."""
    stmt = select(MetricSample).where(MetricSample.store == store)
    if name is not None:
        stmt = stmt.where(MetricSample.name == name)
    if since is not None:
        stmt = stmt.where(MetricSample.time >= as_utc(since))
    return list(session.scalars(stmt.order_by(MetricSample.time, MetricSample.id)))


def latest_value(
    session: Session, *, store: str, name: str, since: datetime | None = None
) -> MetricSample | None:
    """The newest store-wide sample of metric ``name`` (at or after ``since``), or ``None``."""
    series = metric_series(session, store=store, name=name, since=since)
    return series[-1] if series else None


# --------------------------------------------------------------------------------- restore drills


def start_restore_drill(
    session: Session,
    *,
    store: str,
    repository: str | None,
    backup_id: str | None = None,
    agent: str | None = None,
    task_id: str | None = None,
    now: datetime | None = None,
) -> RestoreDrill:
    """Record a restore drill as ``running`` (``started_at`` = now).

    A row of the same ``task_id`` still ``running`` (the task was redelivered after its worker died) is
    reused, so a killed drill does not stay ``running`` forever; ``task_id=None`` always creates a row.

    Returns:
        The :class:`RestoreDrill`, flushed (its ``id`` is set).
    """
    row = None
    if task_id is not None:
        row = session.scalars(select(RestoreDrill).where(RestoreDrill.task_id == task_id,
                                                         RestoreDrill.status == DrillStatus.RUNNING.value)
                              .order_by(RestoreDrill.id.desc()).limit(1)).first()
    if row is None:
        row = RestoreDrill(task_id=task_id)
        session.add(row)
    row.store = store
    row.repository = repository
    row.backup_id = backup_id
    row.agent = agent
    row.status = DrillStatus.RUNNING.value
    row.started_at = _now(now)
    row.finished_at = None
    row.duration_s = None
    row.files_checked = 0
    row.bytes_checked = 0
    row.failures = []
    row.error = None
    session.flush()
    return row


def finish_restore_drill(
    session: Session,
    drill_id: int,
    *,
    status: str | DrillStatus,
    backup_id: str | None = None,
    duration_s: float | None = None,
    files_checked: int = 0,
    bytes_checked: int = 0,
    failures: Sequence[Mapping[str, Any]] = (),
    error: str | None = None,
    now: datetime | None = None,
) -> RestoreDrill:
    """Record the outcome of drill ``drill_id``: ``passed``, ``failed`` or ``error``.

    Args:
        drill_id: the row :func:`start_restore_drill` created.
        status: ``passed`` (every file matched its manifest), ``failed`` (some did not: ``failures``) or
            ``error`` (the drill could not run: ``error``).
        backup_id: the snapshot drilled (set when it was chosen by the drill), else the row's is kept.
        duration_s: wall time of the drill, seconds (default: from ``started_at`` to now).
        files_checked, bytes_checked: files and bytes read back and compared.
        failures: ``{"path", "reason"}`` per entry that did not match.
        error: why the drill could not run.

    Raises:
        ValueError: ``status`` is ``running`` or unknown; no drill has that id.
    """
    value = _choice(status, DrillStatus, "status")
    if value == DrillStatus.RUNNING.value:
        raise ValueError("status 'running' is not an outcome: expected passed, failed or error")
    row = session.get(RestoreDrill, drill_id)
    if row is None:
        raise ValueError(f"no restore drill {drill_id}")
    at = _now(now)
    row.status = value
    row.finished_at = at
    if backup_id is not None:
        row.backup_id = backup_id
    started = as_utc(row.started_at) if row.started_at is not None else None
    row.duration_s = duration_s if duration_s is not None else (
        max(0.0, (at - started).total_seconds()) if started is not None else None)
    row.files_checked = int(files_checked)
    row.bytes_checked = int(bytes_checked)
    row.failures = [{"path": str(f.get("path", "")), "reason": str(f.get("reason", ""))} for f in failures]
    row.error = error
    session.flush()
    return row


def list_restore_drills(
    session: Session,
    *,
    store: str | None = None,
    repository: str | None = None,
    since: datetime | None = None,
    statuses: Iterable[str | DrillStatus] | None = None,
    limit: int = 100,
) -> list[RestoreDrill]:
    """Restore drills, newest first (by ``started_at``).

    Args:
        store: one store's drills, or ``None`` for every store.
        repository: only drills of this repository (and those that recorded none).
        since: only drills started at or after this instant.
        statuses: only these statuses (``running``, ``passed``, ``failed``, ``error``).
        limit: at most this many rows.
    """
    stmt = select(RestoreDrill)
    if store is not None:
        stmt = stmt.where(RestoreDrill.store == store)
    if repository is not None:
        stmt = stmt.where((RestoreDrill.repository == repository) | RestoreDrill.repository.is_(None))
    if since is not None:
        stmt = stmt.where(RestoreDrill.started_at >= as_utc(since))
    if statuses is not None:
        stmt = stmt.where(RestoreDrill.status.in_([_choice(s, DrillStatus, "status") for s in statuses]))
    return list(session.scalars(stmt.order_by(RestoreDrill.started_at.desc(), RestoreDrill.id.desc()).limit(limit)))


def restore_drill_to_dict(drill: RestoreDrill) -> dict[str, Any]:
    """JSON form of a drill: ``{id, store, repository, backup_id, agent, task_id, status, started_at,
    finished_at, duration_s, files_checked, bytes_checked, failures, error}`` (times ISO 8601 UTC ``Z``)."""
    return {
        "id": drill.id, "store": drill.store, "repository": drill.repository, "backup_id": drill.backup_id,
        "agent": drill.agent, "task_id": drill.task_id, "status": drill.status,
        "started_at": _iso(drill.started_at), "finished_at": _iso(drill.finished_at),
        "duration_s": drill.duration_s, "files_checked": drill.files_checked, "bytes_checked": drill.bytes_checked,
        "failures": list(drill.failures or []), "error": drill.error,
    }
