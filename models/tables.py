"""The catalog's tables: task runs, backups, alerts, metric samples, prune actions and their undo logs,
restore drills, remediations.

Units everywhere: sizes in bytes, durations in seconds, ratios 0-1, instants aware UTC
(:class:`models.base.UTCDateTime`). Enumerated columns are plain strings guarded by ``CHECK``
constraints; the allowed values are the :class:`enum.StrEnum` classes below.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigIntPK, UTCDateTime, partial_index, utcnow


class TaskStatus(enum.StrEnum):
    """State of a task run. ``pending`` (queued), ``running``, then one terminal state."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    WARNING = "warning"
    FAILURE = "failure"
    SKIPPED = "skipped"


TERMINAL_STATUSES = frozenset(
    {TaskStatus.SUCCESS, TaskStatus.WARNING, TaskStatus.FAILURE, TaskStatus.SKIPPED}
)


class BackupType(enum.StrEnum):
    """Kind of snapshot (every manifest is complete; incremental only stores new contents)."""

    FULL = "full"
    INCREMENTAL = "incremental"


class VerifyStatus(enum.StrEnum):
    """Outcome of the last verification of a snapshot."""

    UNVERIFIED = "unverified"
    OK = "ok"
    FAILED = "failed"


class Severity(enum.StrEnum):
    """Alert severity as stored. Order: info < warning < error < critical (see :data:`SEVERITY_RANK`)."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "error": 2, "critical": 3}
"""Severity name -> rank, higher is worse (the same order as ``aml.health.checks.Severity``)."""


class Unit(enum.StrEnum):
    """Unit of a metric sample."""

    BYTES = "bytes"
    SECONDS = "seconds"
    RATIO = "ratio"
    COUNT = "count"


class PruneActionKind(enum.StrEnum):
    """What prune did with a record."""

    ARCHIVED = "archived"
    REMOVED = "removed"


def _in(column: str, values: type[enum.StrEnum]) -> str:
    """SQL text ``column IN ('a', 'b', ...)`` for a CHECK constraint."""
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


class TaskRun(Base):
    """One execution of an operation (a Celery task, inline or on a worker).

    ``task_id`` is Celery's task id; a retry of the same task reuses the row (``attempts`` counts
    the starts). ``result`` is the operation's JSON summary; ``error`` the failure text.
    """

    __tablename__ = "task_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    operation: Mapped[str] = mapped_column(String(64))
    store: Mapped[str] = mapped_column(Text)
    arguments: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=TaskStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    duration_s: Mapped[float | None] = mapped_column(Float)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(_in("status", TaskStatus), name="status"),
        Index("ix_task_runs_store_operation_queued_at", "store", "operation", "queued_at"),
        Index("ix_task_runs_queued_at", "queued_at"),
    )

    def __repr__(self) -> str:
        return f"<TaskRun {self.id} {self.operation} {self.store!r} {self.status}>"


class Backup(Base):
    """One snapshot of a store in a backup repository; mirrors the manifest summary.

    ``total_size_bytes`` is the size of the store's files; ``stored_size_bytes`` what this
    snapshot added to the repository (new, compressed contents).
    """

    __tablename__ = "backups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    backup_id: Mapped[str] = mapped_column(String(64))
    store: Mapped[str] = mapped_column(Text)
    repository: Mapped[str] = mapped_column(Text)
    backup_type: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    parent_backup_id: Mapped[str | None] = mapped_column(String(64))
    file_count: Mapped[int] = mapped_column(BigInteger, default=0)
    total_size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    stored_size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    agents: Mapped[list[str]] = mapped_column(JSON, default=list)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    description: Mapped[str | None] = mapped_column(Text)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    verify_status: Mapped[str] = mapped_column(String(16), default=VerifyStatus.UNVERIFIED.value)
    verify_detail: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))

    __table_args__ = (
        CheckConstraint(_in("backup_type", BackupType), name="backup_type"),
        CheckConstraint(_in("verify_status", VerifyStatus), name="verify_status"),
        # Ids are unique inside one repository only (two stores backed up in the same second share one).
        UniqueConstraint("repository", "backup_id"),
        Index("ix_backups_store_created_at", "store", "created_at"),
    )

    def __repr__(self) -> str:
        return f"<Backup {self.backup_id} {self.store!r} {self.verify_status}>"


class Alert(Base):
    """A failing health check. One *open* row (``resolved_at IS NULL``) per fingerprint.

    ``fingerprint`` identifies store + agent + check (see :func:`models.queries.alert_fingerprint`).
    While the check keeps failing the open row's ``count`` and ``last_seen`` grow; when it passes
    ``resolved_at`` is set; a later failure opens a new row. The partial unique index
    ``ux_alerts_fingerprint_open`` enforces the rule in the database itself. ``notified_at`` records the
    last notification (``tasks.notify``).
    """

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    store: Mapped[str] = mapped_column(Text)
    agent: Mapped[str | None] = mapped_column(Text)
    check: Mapped[str] = mapped_column(String(128))
    severity: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    count: Mapped[int] = mapped_column(Integer, default=1)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When a notification of this alert was last claimed (:func:`models.queries.claim_notifications`):
    ``NULL`` = never notified; ``< resolved_at`` = its resolution is still to be sent."""

    __table_args__ = (
        CheckConstraint(_in("severity", Severity), name="severity"),
        partial_index("ux_alerts_fingerprint_open", "fingerprint", unique=True, where="resolved_at IS NULL"),
        Index("ix_alerts_store_resolved_at", "store", "resolved_at"),
    )

    @property
    def is_open(self) -> bool:
        """``True`` while the alert is not resolved."""
        return self.resolved_at is None

    def __repr__(self) -> str:
        state = "open" if self.resolved_at is None else "resolved"
        where = f"{self.store!r}/{self.agent}"
        return f"<Alert {self.id} {self.check} {where} {self.severity} x{self.count} {state}>"


class Resolution(enum.StrEnum):
    """What a metric sample is: one measurement (``raw``) or the mean of one UTC hour's raw samples
    (``1h``, written by :func:`models.retention.apply_retention`, ``time`` = the hour's start)."""

    RAW = "raw"
    HOURLY = "1h"


class MetricSample(Base):
    """One point of a time series: ``name`` of ``subject`` (agent or key pattern; ``None`` = the
    whole store) at ``time``, in ``unit``; ``resolution`` tells a measurement from an hourly mean."""

    __tablename__ = "metric_samples"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime())
    store: Mapped[str] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(Text)
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[float] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(16))
    task_run_id: Mapped[int | None] = mapped_column(ForeignKey("task_runs.id", ondelete="SET NULL"))
    resolution: Mapped[str] = mapped_column(
        String(8), default=Resolution.RAW.value, server_default=Resolution.RAW.value
    )

    __table_args__ = (
        CheckConstraint(_in("unit", Unit), name="unit"),
        CheckConstraint(_in("resolution", Resolution), name="resolution"),
        Index("ix_metric_samples_store_name_time", "store", "name", "time"),
        Index("ix_metric_samples_task_run_id", "task_run_id"),
    )

    def __repr__(self) -> str:
        return (
            f"<MetricSample {self.store!r} {self.subject} {self.name}={self.value} {self.unit} @{self.time}>"
        )


class PruneAction(Base):
    """One record that a prune run archived or removed, with enough to put it back.

    ``run_id`` is the prune run's id as users see it (``aml <store> prune undo <run_id>``: the
    Celery task id); ``task_run_id`` links the :class:`TaskRun` row when there is one.
    ``backup_id`` is the pre-prune snapshot. Undo's payload (the record's exact text, its key and its place in
    the list: :mod:`aml.prune.undo`) is entry ``undo_index`` of the :class:`PruneUndoLog` ``undo_log_id``
    (written since catalog revision 0006); a row written before holds it in ``record`` (JSON), which is
    JSON ``null`` on newer rows (:func:`models.queries.prune_action_payloads` reads either).
    ``document_path`` is the document the record was in; ``undone_at`` is set once the action was undone.
    """

    __tablename__ = "prune_actions"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(255))
    task_run_id: Mapped[int | None] = mapped_column(ForeignKey("task_runs.id", ondelete="SET NULL"))
    backup_id: Mapped[str | None] = mapped_column(String(64))
    store: Mapped[str] = mapped_column(Text)
    agent: Mapped[str] = mapped_column(Text)
    collection: Mapped[str] = mapped_column(String(128))
    record_id: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Float)
    action: Mapped[str] = mapped_column(String(16))
    document_path: Mapped[str] = mapped_column(Text)
    record: Mapped[Any] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    undone_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    undo_log_id: Mapped[int | None] = mapped_column(BigIntPK, ForeignKey("prune_undo_logs.id"))
    undo_index: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        CheckConstraint(_in("action", PruneActionKind), name="action"),
        Index("ix_prune_actions_run_id", "run_id"),
        Index("ix_prune_actions_store_created_at", "store", "created_at"),
        Index("ix_prune_actions_task_run_id", "task_run_id"),
    )

    def __repr__(self) -> str:
        return f"<PruneAction {self.run_id} {self.action} {self.agent}/{self.collection}/{self.record_id}>"


class PruneUndoLog(Base):
    """The undo payloads of a batch of one prune run's actions in one document, stored together.

    A run writes a document's logs (one per :data:`models.queries.UNDO_LOG_BYTES` of record text) ahead of its
    rewrite, in the same transaction as its :class:`PruneAction` rows; row
    ``undo_index`` of the log is the payload of the action whose ``undo_index`` it is. ``payloads`` is a list
    of payloads encoded as ``codec`` says (:mod:`models.undolog`: MessagePack in a zstd frame, about a
    thirteenth of the JSON's bytes on Loom records); ``entries`` is its length. Logs are never rewritten.
    """

    __tablename__ = "prune_undo_logs"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(255))
    store: Mapped[str] = mapped_column(Text)
    document_path: Mapped[str] = mapped_column(Text)
    codec: Mapped[str] = mapped_column(String(32))
    entries: Mapped[int] = mapped_column(Integer)
    payloads: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_prune_undo_logs_run_id", "run_id"),)

    def __repr__(self) -> str:
        return f"<PruneUndoLog {self.run_id} {self.document_path} {self.entries}>"


class DrillStatus(enum.StrEnum):
    """Outcome of a restore drill: every file matched (``passed``), a file did not (``failed``), or the
    drill could not run (``error``: no snapshot, unreadable repository)."""

    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"


class RestoreDrill(Base):
    """One restore drill (``aml <store> backup drill``, beat's weekly ``aml.backup.drill``): a snapshot, or
    one agent of it, restored into a scratch directory and every file checked against the manifest.

    ``files_checked``/``bytes_checked`` count what was compared; ``failures`` lists
    ``{"path", "reason"}`` per file that did not match; ``error`` is why a drill could not run.
    """

    __tablename__ = "restore_drills"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    store: Mapped[str] = mapped_column(Text)
    repository: Mapped[str | None] = mapped_column(Text)
    backup_id: Mapped[str | None] = mapped_column(String(64))
    agent: Mapped[str | None] = mapped_column(Text)
    task_id: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default=DrillStatus.RUNNING.value)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    duration_s: Mapped[float | None] = mapped_column(Float)
    files_checked: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_checked: Mapped[int] = mapped_column(BigInteger, default=0)
    failures: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(_in("status", DrillStatus), name="status"),
        Index("ix_restore_drills_store_started_at", "store", "started_at"),
    )

    def __repr__(self) -> str:
        return f"<RestoreDrill {self.id} {self.store!r} {self.backup_id} {self.status}>"


class RemediationStatus(enum.StrEnum):
    """State of a remediation: ``queued``/``running``, a terminal ``success``/``failure``, ``skipped`` (a chain
    in flight, a cooldown, the budget) or ``refused`` (the rule's previous chain could not improve the cause:
    the alert's severity is raised instead). Dry runs write no row."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILURE = "failure"
    SKIPPED = "skipped"
    REFUSED = "refused"


class Remediation(Base):
    """One decision of the remediation policy (``aml.health.remediate``): the alert that caused it
    (``fingerprint``, its state before and after), the rule, the actions (task names with arguments),
    the task id of the chain, the outcome and why. At most one row per store is ``queued`` or ``running``
    (partial unique index ``ux_remediations_store_in_flight``).
    """

    __tablename__ = "remediations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    store: Mapped[str] = mapped_column(Text)
    rule: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(16))
    actions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    task_id: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    alert_before: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    alert_after: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint(_in("status", RemediationStatus), name="status"),
        Index("ix_remediations_store_rule_created_at", "store", "rule", "created_at"),
        Index("ix_remediations_task_id", "task_id"),
        # at most one chain in flight per store, enforced by the database (the policy's no-runaway rule)
        partial_index("ux_remediations_store_in_flight", "store", unique=True,
                      where="status IN ('queued', 'running')"),
    )

    def __repr__(self) -> str:
        return f"<Remediation {self.id} {self.rule} {self.store!r} {self.status}>"
