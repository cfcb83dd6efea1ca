"""Catalog retention: metric samples are rolled up to hourly means, then expire; old task runs go.

Imports only SQLAlchemy, the standard library and ``models``. :func:`apply_retention` is the whole
policy, in set-based SQL (one ``INSERT ... SELECT ... GROUP BY`` and a few ``DELETE ... WHERE``),
the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, delete, exists, func, insert, literal, literal_column, select
from sqlalchemy.orm import Session

from models.base import as_utc, utcnow
from models.remediations import IN_FLIGHT
from models.tables import (
    TERMINAL_STATUSES,
    DrillStatus,
    MetricSample,
    PruneAction,
    Remediation,
    Resolution,
    RestoreDrill,
    TaskRun,
)

__all__ = ["RetentionResult", "apply_retention", "hour_start"]

SQLITE_HOUR_FORMAT = "%Y-%m-%d %H:00:00.000000"
"""``strftime`` format of an hour's start on SQLite: the exact text ``UTCDateTime`` stores there
(SQLAlchemy's ``YYYY-MM-DD HH:MM:SS.ffffff``), so roll-up times compare with bound instants as
every other row does (``'... 03:00:00'`` would sort *before* ``'... 03:00:00.000000'``)."""


@dataclass(frozen=True)
class RetentionResult:
    """What one :func:`apply_retention` run changed (every count is rows).

    Attributes:
        samples_rolled_up: raw samples replaced by hourly means.
        hourly_rows_written: hourly (``resolution='1h'``) rows written for them.
        samples_deleted: samples older than the hourly horizon deleted: hourly rows, and raw rows
            that old (never rolled up because retention had not run while they were younger).
        task_runs_deleted: finished task runs deleted.
        remediations_deleted: finished remediation rows deleted (with the same horizon as task runs: the
            task runs they name are gone by then).
        drills_deleted: finished restore drills deleted (same horizon; health's ``restore_tested`` looks back
            14 days).
        raw_cutoff, hourly_cutoff, task_runs_cutoff: the instants used (the first two are hour starts).
    """

    samples_rolled_up: int
    hourly_rows_written: int
    samples_deleted: int
    task_runs_deleted: int
    raw_cutoff: datetime
    hourly_cutoff: datetime
    task_runs_cutoff: datetime
    remediations_deleted: int = 0
    drills_deleted: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON form: the counts, and the cutoffs as ISO 8601 UTC ``Z`` strings."""
        out = asdict(self)
        for key in ("raw_cutoff", "hourly_cutoff", "task_runs_cutoff"):
            out[key] = as_utc(out[key]).isoformat().replace("+00:00", "Z")
        return out


def hour_start(value: datetime) -> datetime:
    """The start of the UTC hour holding ``value`` (aware UTC; a naive value is taken as UTC)."""
    return as_utc(value).replace(minute=0, second=0, microsecond=0)


def _days(value: float, what: str) -> timedelta:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{what}={value!r}: expected a finite number of days >= 0")
    return timedelta(days=float(value))


def _hour_bucket(dialect: str) -> ColumnElement[Any]:
    """SQL for the start of the UTC hour of ``metric_samples.time``. Constants are literals, not bound
    parameters, so the ``SELECT`` and ``GROUP BY`` copies are the same expression to PostgreSQL."""
    if dialect == "sqlite":
        # stored as naive UTC text (models.base.UTCDateTime); see SQLITE_HOUR_FORMAT
        return func.strftime(literal_column(f"'{SQLITE_HOUR_FORMAT}'"), MetricSample.time)
    if dialect == "postgresql":
        # date_trunc on timestamptz truncates in the *session* time zone (an hour starts at :30 in
        # Asia/Kolkata): truncate the UTC wall-clock time and turn it back into an instant.
        utc: ColumnElement[str] = literal_column("'UTC'")
        hour: ColumnElement[str] = literal_column("'hour'")
        return func.timezone(utc, func.date_trunc(hour, func.timezone(utc, MetricSample.time)))
    raise NotImplementedError(f"catalog retention does not support the {dialect!r} database")


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def apply_retention(
    session: Session,
    *,
    now: datetime | None = None,
    raw_days: float = 7,
    hourly_days: float = 90,
    task_runs_days: float = 90,
) -> RetentionResult:
    """Apply the catalog's retention policy in ``session``'s transaction (the caller commits).

    1. Samples (raw or hourly) older than the hourly horizon, ``hour_start(now - hourly_days)``,
       are deleted.
    2. Raw samples older than ``hour_start(now - raw_days)`` are replaced by one row per
       ``(store, subject, name, unit, UTC hour)``: ``value`` = the mean, ``time`` = the hour's
       start, ``resolution = '1h'``, ``task_run_id`` = the run of the hour's samples when they all
       came from one run, else ``NULL``. Both cutoffs are hour starts, so an hour is always rolled
       up whole, exactly once: a second run changes nothing. (A raw sample written later with a
       time in an hour already rolled up becomes a second hourly row for that hour.)
    3. Finished task runs (status in :data:`~models.tables.TERMINAL_STATUSES`) that finished
       before ``now - task_runs_days`` are deleted (their metric samples keep their values:
       ``task_run_id`` is set ``NULL`` by the foreign key). Pending and running runs are never
       deleted, nor is any run that prune actions refer to (``prune_actions.task_run_id``, or
       ``prune_actions.run_id`` = its ``task_id``): ``prune undo`` and the audit of what a prune
       did keep their run, however old.
    4. Finished remediation rows (not ``queued``/``running``) and finished restore drills (not ``running``)
       that finished before the same instant are deleted.

    Roll-ups are ordinary samples for :func:`models.queries.metric_series` and the other readers:
    one point per hour. Concurrency: on SQLite use a write session (``BEGIN IMMEDIATE``); on
    PostgreSQL ``metric_samples`` is locked ``SHARE ROW EXCLUSIVE`` for the transaction (sample
    inserts wait, readers do not), so no sample can arrive between the roll-up and the delete of
    its raw rows, and two retention runs follow each other.

    Args:
        now: the reference instant (default: now).
        raw_days: days samples stay raw.
        hourly_days: days hourly roll-ups stay (at least ``raw_days``).
        task_runs_days: days finished task runs stay.

    Raises:
        ValueError: a negative or non-finite number of days, or ``hourly_days < raw_days``.
    """
    at = utcnow() if now is None else as_utc(now)
    raw_cutoff = hour_start(at - _days(raw_days, "raw_days"))
    hourly_cutoff = hour_start(at - _days(hourly_days, "hourly_days"))
    runs_cutoff = at - _days(task_runs_days, "task_runs_days")
    if hourly_days < raw_days:
        raise ValueError(f"hourly_days={hourly_days!r} is shorter than raw_days={raw_days!r}")

    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        table = session.get_bind().dialect.identifier_preparer.format_table(MetricSample.__table__)
        session.connection().exec_driver_sql(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")

    # 1. past the hourly horizon: gone, whatever the resolution
    deleted = session.execute(
        delete(MetricSample).where(MetricSample.time < hourly_cutoff).execution_options(synchronize_session=False)
    )

    # 2. raw -> hourly means, then the raw rows go
    raw_old = and_(MetricSample.resolution == Resolution.RAW.value, MetricSample.time < raw_cutoff)
    bucket = _hour_bucket(dialect)
    one_run = case(
        (
            and_(
                func.min(MetricSample.task_run_id) == func.max(MetricSample.task_run_id),
                func.count(MetricSample.task_run_id) == func.count(),
            ),
            func.min(MetricSample.task_run_id),
        ),
        else_=None,
    )
    keys = (MetricSample.store, MetricSample.subject, MetricSample.name, MetricSample.unit)
    means = (
        select(
            bucket.label("hour"),  # not "time": PostgreSQL's GROUP BY would take the column
            *keys,
            func.avg(MetricSample.value),
            one_run,
            literal(Resolution.HOURLY.value),
        )
        .where(raw_old)
        .group_by(*keys, bucket)
    )
    written = session.execute(
        insert(MetricSample).from_select(
            ["time", "store", "subject", "name", "unit", "value", "task_run_id", "resolution"], means
        )
    )
    rolled = session.execute(delete(MetricSample).where(raw_old).execution_options(synchronize_session=False))

    # 3. finished task runs, unless a prune action refers to them
    finished = func.coalesce(TaskRun.finished_at, TaskRun.started_at, TaskRun.queued_at)
    runs = session.execute(
        delete(TaskRun)
        .where(
            TaskRun.status.in_(sorted(str(s) for s in TERMINAL_STATUSES)),
            finished < runs_cutoff,
            ~exists().where(PruneAction.task_run_id == TaskRun.id),
            ~exists().where(PruneAction.run_id == TaskRun.task_id),
        )
        .execution_options(synchronize_session=False)
    )
    # 4. finished remediations, on the task runs' horizon
    remediations = session.execute(
        delete(Remediation)
        .where(Remediation.status.not_in(IN_FLIGHT),
               func.coalesce(Remediation.finished_at, Remediation.created_at) < runs_cutoff)
        .execution_options(synchronize_session=False)
    )
    drills = session.execute(
        delete(RestoreDrill)
        .where(RestoreDrill.status != DrillStatus.RUNNING.value,
               func.coalesce(RestoreDrill.finished_at, RestoreDrill.started_at) < runs_cutoff)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return RetentionResult(
        samples_rolled_up=_rowcount(rolled),
        hourly_rows_written=_rowcount(written),
        samples_deleted=_rowcount(deleted),
        task_runs_deleted=_rowcount(runs),
        raw_cutoff=raw_cutoff,
        hourly_cutoff=hourly_cutoff,
        task_runs_cutoff=runs_cutoff,
        remediations_deleted=_rowcount(remediations),
        drills_deleted=_rowcount(drills),
    )
