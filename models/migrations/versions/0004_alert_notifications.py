"""Alerts remember when they were last notified.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-12

``alerts.notified_at`` (nullable, UTC) is the instant a notification of the alert was last claimed
(``models.queries.claim_notifications``): ``NULL`` = never notified; older than the repeat interval = a
firing alert due again; older than ``resolved_at`` = its resolution is still to be sent. Existing rows
get ``NULL``: open alerts are notified once at the next health or trace run, resolved ones never.

The downgrade drops the column.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``alerts.notified_at``."""
    with op.batch_alter_table("alerts") as batch:  # SQLite: the table is copied (batch mode)
        batch.add_column(sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Drop ``alerts.notified_at``."""
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("notified_at")
