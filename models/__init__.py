"""The aml catalog: SQLAlchemy models of task runs, backups, alerts, metric samples, prune actions and their undo
logs, restore drills and remediations.

``models`` imports SQLAlchemy, the standard library and, for the encoding of prune undo logs, msgspec and
zstandard (never ``aml``). The schema is created and upgraded
by Alembic (``alembic/``, driven by ``workers.catalog``), never by ``create_all`` outside tests.

- :mod:`models.base`: declarative base, naming convention, :class:`UTCDateTime`.
- :mod:`models.tables`: the eight tables and their allowed values.
- :mod:`models.engine`: :func:`make_engine` (SQLite WAL, busy timeout, foreign keys), :func:`session_factory`.
- :mod:`models.queries`: the data-access functions the tasks use.
- :mod:`models.bulk`: :func:`~models.bulk.insert_rows`, many rows into one table (a prune run's actions).
- :mod:`models.undolog`: the encoding of a prune undo log (many undo payloads in one compressed value).
"""

from models.base import NAMING_CONVENTION, Base, UTCDateTime, as_utc, utcnow
from models.engine import make_engine, session_factory
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
    Remediation,
    RemediationStatus,
    RestoreDrill,
    Severity,
    TaskRun,
    TaskStatus,
    Unit,
    VerifyStatus,
)

__all__ = [
    "NAMING_CONVENTION",
    "SEVERITY_RANK",
    "TERMINAL_STATUSES",
    "Alert",
    "Backup",
    "BackupType",
    "Base",
    "DrillStatus",
    "MetricSample",
    "PruneAction",
    "PruneActionKind",
    "PruneUndoLog",
    "Remediation",
    "RemediationStatus",
    "RestoreDrill",
    "Severity",
    "TaskRun",
    "TaskStatus",
    "UTCDateTime",
    "Unit",
    "VerifyStatus",
    "as_utc",
    "make_engine",
    "session_factory",
    "utcnow",
]
