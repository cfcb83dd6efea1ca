"""Restore drills and remediations.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

``restore_drills``: one row per restore drill (a snapshot, or one agent of it, restored into a scratch
directory and checked file by file against its manifest); health's ``restore_tested`` check reads them.
``remediations``: one row per decision of the remediation policy (the decision matrix of the seeds' quick
reference): the rule, the alert that caused it and its state before and after, the actions, the task id,
the outcome and why; at most one row per store is in flight (``queued``/``running``: partial unique index
``ux_remediations_store_in_flight``). Both are new tables; the downgrade drops them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create ``restore_drills`` and ``remediations`` with their indexes."""
    op.create_table(
        "restore_drills",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("store", sa.Text(), nullable=False),
        sa.Column("repository", sa.Text(), nullable=True),
        sa.Column("backup_id", sa.String(length=64), nullable=True),
        sa.Column("agent", sa.Text(), nullable=True),
        sa.Column("task_id", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", _utc(), nullable=False),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("files_checked", sa.BigInteger(), nullable=False),
        sa.Column("bytes_checked", sa.BigInteger(), nullable=False),
        sa.Column("failures", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint("status IN ('running', 'passed', 'failed', 'error')",
                           name=op.f("ck_restore_drills_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_restore_drills")),
    )
    op.create_index("ix_restore_drills_store_started_at", "restore_drills", ["store", "started_at"])
    op.create_table(
        "remediations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("store", sa.Text(), nullable=False),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=True),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("actions", sa.JSON(), nullable=False),
        sa.Column("task_id", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("alert_before", sa.JSON(), nullable=True),
        sa.Column("alert_after", sa.JSON(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'success', 'failure', 'skipped', 'refused')",
            name=op.f("ck_remediations_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_remediations")),
    )
    op.create_index("ix_remediations_store_rule_created_at", "remediations", ["store", "rule", "created_at"])
    op.create_index("ix_remediations_task_id", "remediations", ["task_id"])
    in_flight = sa.text("status IN ('queued', 'running')")
    op.create_index("ux_remediations_store_in_flight", "remediations", ["store"], unique=True,
                    sqlite_where=in_flight, postgresql_where=in_flight)


def downgrade() -> None:
    """Drop both tables and their indexes."""
    op.drop_index("ux_remediations_store_in_flight", table_name="remediations")
    op.drop_index("ix_remediations_task_id", table_name="remediations")
    op.drop_index("ix_remediations_store_rule_created_at", table_name="remediations")
    op.drop_table("remediations")
    op.drop_index("ix_restore_drills_store_started_at", table_name="restore_drills")
    op.drop_table("restore_drills")
