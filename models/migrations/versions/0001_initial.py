"""The initial catalog: task runs, backups, alerts, metric samples, prune actions.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Written from the models (``models/tables.py``) and checked against them by
``tests/test_catalog.py::test_migration_matches_models``. Instants are ``timestamp with time
zone`` (PostgreSQL) / ``DATETIME`` holding UTC (SQLite); ``models.base.UTCDateTime`` reads them
back as aware UTC. ``ux_alerts_fingerprint_open`` is a partial unique index (both databases):
at most one open alert per fingerprint.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite only auto-increments INTEGER


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the five catalog tables and their indexes."""
    op.create_table(
        "task_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task_id", sa.String(length=255), nullable=True),
        sa.Column("operation", sa.String(length=64), nullable=False),
        sa.Column("store", sa.Text(), nullable=False),
        sa.Column("arguments", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("queued_at", _utc(), nullable=False),
        sa.Column("started_at", _utc(), nullable=True),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'success', 'warning', 'failure', 'skipped')",
            name=op.f("ck_task_runs_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_runs")),
        sa.UniqueConstraint("task_id", name=op.f("uq_task_runs_task_id")),
    )
    op.create_index("ix_task_runs_queued_at", "task_runs", ["queued_at"])
    op.create_index(
        "ix_task_runs_store_operation_queued_at", "task_runs", ["store", "operation", "queued_at"]
    )

    op.create_table(
        "backups",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("backup_id", sa.String(length=64), nullable=False),
        sa.Column("store", sa.Text(), nullable=False),
        sa.Column("repository", sa.Text(), nullable=False),
        sa.Column("backup_type", sa.String(length=16), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("parent_backup_id", sa.String(length=64), nullable=True),
        sa.Column("file_count", sa.BigInteger(), nullable=False),
        sa.Column("total_size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("stored_size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("agents", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("verified_at", _utc(), nullable=True),
        sa.Column("verify_status", sa.String(length=16), nullable=False),
        sa.Column("verify_detail", sa.JSON(), nullable=True),
        sa.CheckConstraint("backup_type IN ('full', 'incremental')", name=op.f("ck_backups_backup_type")),
        sa.CheckConstraint(
            "verify_status IN ('unverified', 'ok', 'failed')", name=op.f("ck_backups_verify_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backups")),
        sa.UniqueConstraint("backup_id", name=op.f("uq_backups_backup_id")),
    )
    op.create_index("ix_backups_store_created_at", "backups", ["store", "created_at"])

    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("store", sa.Text(), nullable=False),
        sa.Column("agent", sa.Text(), nullable=True),
        sa.Column("check", sa.String(length=128), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("first_seen", _utc(), nullable=False),
        sa.Column("last_seen", _utc(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("resolved_at", _utc(), nullable=True),
        sa.CheckConstraint(
            "severity IN ('info', 'warning', 'error', 'critical')", name=op.f("ck_alerts_severity")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    op.create_index(
        "ux_alerts_fingerprint_open",
        "alerts",
        ["fingerprint"],
        unique=True,
        sqlite_where=sa.text("resolved_at IS NULL"),
        postgresql_where=sa.text("resolved_at IS NULL"),
    )
    op.create_index("ix_alerts_store_resolved_at", "alerts", ["store", "resolved_at"])

    op.create_table(
        "metric_samples",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("time", _utc(), nullable=False),
        sa.Column("store", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("unit", sa.String(length=16), nullable=False),
        sa.Column("task_run_id", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "unit IN ('bytes', 'seconds', 'ratio', 'count')", name=op.f("ck_metric_samples_unit")
        ),
        sa.ForeignKeyConstraint(
            ["task_run_id"],
            ["task_runs.id"],
            name=op.f("fk_metric_samples_task_run_id_task_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_metric_samples")),
    )
    op.create_index("ix_metric_samples_store_name_time", "metric_samples", ["store", "name", "time"])
    op.create_index("ix_metric_samples_task_run_id", "metric_samples", ["task_run_id"])

    op.create_table(
        "prune_actions",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=255), nullable=False),
        sa.Column("task_run_id", sa.Integer(), nullable=True),
        sa.Column("backup_id", sa.String(length=64), nullable=True),
        sa.Column("store", sa.Text(), nullable=False),
        sa.Column("agent", sa.Text(), nullable=False),
        sa.Column("collection", sa.String(length=128), nullable=False),
        sa.Column("record_id", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("document_path", sa.Text(), nullable=False),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("undone_at", _utc(), nullable=True),
        sa.CheckConstraint("action IN ('archived', 'removed')", name=op.f("ck_prune_actions_action")),
        sa.ForeignKeyConstraint(
            ["task_run_id"],
            ["task_runs.id"],
            name=op.f("fk_prune_actions_task_run_id_task_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prune_actions")),
    )
    op.create_index("ix_prune_actions_run_id", "prune_actions", ["run_id"])
    op.create_index("ix_prune_actions_store_created_at", "prune_actions", ["store", "created_at"])
    op.create_index("ix_prune_actions_task_run_id", "prune_actions", ["task_run_id"])


def downgrade() -> None:
    """Drop everything :func:`upgrade` created (children before the table they reference)."""
    op.drop_index("ix_prune_actions_task_run_id", table_name="prune_actions")
    op.drop_index("ix_prune_actions_store_created_at", table_name="prune_actions")
    op.drop_index("ix_prune_actions_run_id", table_name="prune_actions")
    op.drop_table("prune_actions")

    op.drop_index("ix_metric_samples_task_run_id", table_name="metric_samples")
    op.drop_index("ix_metric_samples_store_name_time", table_name="metric_samples")
    op.drop_table("metric_samples")

    op.drop_index("ix_alerts_store_resolved_at", table_name="alerts")
    op.drop_index("ux_alerts_fingerprint_open", table_name="alerts")
    op.drop_table("alerts")

    op.drop_index("ix_backups_store_created_at", table_name="backups")
    op.drop_table("backups")

    op.drop_index("ix_task_runs_store_operation_queued_at", table_name="task_runs")
    op.drop_index("ix_task_runs_queued_at", table_name="task_runs")
    op.drop_table("task_runs")
