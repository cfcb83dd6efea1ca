"""Prune undo logs: a run's undo payloads stored per document, compressed, instead of one JSON value per record.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

``prune_undo_logs``: one row per batch of a prune run's actions in one document, its undo payloads encoded
together (:mod:`models.undolog`). ``prune_actions`` gains ``undo_log_id`` (the log holding its payload) and
``undo_index`` (its place in the log). Rows written before this revision keep their payload in
``prune_actions.record`` and are read as before; nothing is rewritten on upgrade.

The downgrade puts each log's payloads back into the ``record`` column of their rows (so the older aml can still
undo the runs made since), then drops the two columns and the table.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``prune_undo_logs`` and its index; add ``undo_log_id`` and ``undo_index`` to ``prune_actions``."""
    op.create_table(
        "prune_undo_logs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=255), nullable=False),
        sa.Column("store", sa.Text(), nullable=False),
        sa.Column("document_path", sa.Text(), nullable=False),
        sa.Column("codec", sa.String(length=32), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("payloads", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prune_undo_logs")),
    )
    op.create_index("ix_prune_undo_logs_run_id", "prune_undo_logs", ["run_id"])
    with op.batch_alter_table("prune_actions") as batch:
        batch.add_column(sa.Column("undo_log_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                                   nullable=True))
        batch.add_column(sa.Column("undo_index", sa.Integer(), nullable=True))
        batch.create_foreign_key(op.f("fk_prune_actions_undo_log_id_prune_undo_logs"), "prune_undo_logs",
                                 ["undo_log_id"], ["id"])


def downgrade() -> None:
    """Move every log's payloads back into ``prune_actions.record``, then drop the columns and the table."""
    from models.undolog import decode_payloads  # the codec of the logs being folded back

    bind = op.get_bind()
    actions = sa.table("prune_actions", sa.column("id", sa.Integer()), sa.column("record", sa.JSON()),
                       sa.column("undo_log_id", sa.Integer()), sa.column("undo_index", sa.Integer()))
    logs = bind.execute(sa.text("SELECT id, codec, payloads FROM prune_undo_logs ORDER BY id"))
    for log_id, codec, value in logs.fetchall():
        payloads = decode_payloads(codec, value)
        rows = bind.execute(sa.select(actions.c.id, actions.c.undo_index).where(actions.c.undo_log_id == log_id))
        for action_id, index in rows.fetchall():
            bind.execute(sa.update(actions).where(actions.c.id == action_id)
                         .values(record=payloads[index]))
    with op.batch_alter_table("prune_actions") as batch:
        batch.drop_constraint(op.f("fk_prune_actions_undo_log_id_prune_undo_logs"), type_="foreignkey")
        batch.drop_column("undo_index")
        batch.drop_column("undo_log_id")
    op.drop_index("ix_prune_undo_logs_run_id", table_name="prune_undo_logs")
    op.drop_table("prune_undo_logs")
