"""Metric samples say whether they are a measurement or an hourly roll-up.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09

Catalog retention (``models.retention.apply_retention``) replaces raw samples older than
``AML_METRICS_RAW_DAYS`` by their hourly means and deletes those after ``AML_METRICS_HOURLY_DAYS``.
``metric_samples.resolution`` (``'raw'`` or ``'1h'``, default ``'raw'``: every existing row is a
measurement) marks the roll-ups, so a later run never rolls them up again and the hourly horizon
applies to them alone.

The downgrade drops the column; the roll-up rows stay, as ordinary samples at the start of their
hour (upgrading again marks them ``raw``, and rolling a one-sample hour up gives the same row).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``metric_samples.resolution`` and its check ``ck_metric_samples_resolution``."""
    with op.batch_alter_table("metric_samples") as batch:  # SQLite: the table is copied (batch mode)
        batch.add_column(sa.Column("resolution", sa.String(length=8), server_default="raw", nullable=False))
        batch.create_check_constraint(op.f("ck_metric_samples_resolution"), "resolution IN ('raw', '1h')")


def downgrade() -> None:
    """Drop the check and the column (roll-up rows remain as plain samples)."""
    with op.batch_alter_table("metric_samples") as batch:
        batch.drop_constraint(op.f("ck_metric_samples_resolution"), type_="check")
        batch.drop_column("resolution")
