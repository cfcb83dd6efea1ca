"""Snapshot ids are unique per repository, not across the catalog.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Backup ids (``full_YYYYMMDD_HHMMSS``, ``incr_...``) are made unique inside one repository only: two
stores backed up by beat in the same second get the same id. 0001 made ``backups.backup_id`` unique
catalog-wide, so the second store's row overwrote the first's (and verification and retention then
acted on the wrong store's row). The key is now ``(repository, backup_id)``.

The downgrade puts the catalog-wide constraint back; it fails (and changes nothing) while two
repositories hold rows with the same id.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Replace ``uq_backups_backup_id`` with ``uq_backups_repository_backup_id``."""
    with op.batch_alter_table("backups") as batch:  # SQLite: the table is copied (batch mode)
        batch.drop_constraint(op.f("uq_backups_backup_id"), type_="unique")
        batch.create_unique_constraint(op.f("uq_backups_repository_backup_id"), ["repository", "backup_id"])


def downgrade() -> None:
    """Back to a catalog-wide unique ``backup_id`` (fails while two repositories share an id)."""
    with op.batch_alter_table("backups") as batch:
        batch.drop_constraint(op.f("uq_backups_repository_backup_id"), type_="unique")
        batch.create_unique_constraint(op.f("uq_backups_backup_id"), ["backup_id"])
