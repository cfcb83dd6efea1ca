"""Celery tasks of the ``backup`` operation: create, list, restore, rotate, auto.

The engine is :mod:`aml.backup` (restic-shaped repository). These tasks resolve the store's
repository (``AML_BACKUP_ROOT`` or ``<store>/../memory-backup``), take the store's lock where the
store or repository changes, record ``backups`` rows in the catalog, and return JSON results.
Restoring over the live store takes a safety snapshot first and returns its id.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from celery import Task, shared_task

from aml.backup import (
    RetentionPolicy,
    SnapshotResult,
    create_snapshot,
    list_snapshots,
    resolve_at,
    restore,
    rotate,
)
from aml.store.timestamps import parse_timestamp
from models import queries
from tasks.base import Catalog, normalize_store, run_operation, store_path
from tasks.progress import task_progress
from tasks.snapshots import record_snapshot, repository_for, safety_snapshot
from workers.app import get_settings


def _snapshot_result(result: SnapshotResult) -> dict[str, Any]:
    out = result.to_dict()
    out["status"] = "warning" if result.errors else "success"
    return out


def _create(task: Task, store_id: str, incremental: bool, tags: list[str], description: str | None,
            catalog: Catalog) -> SnapshotResult:
    root = store_path(store_id)
    result = create_snapshot(root, repository_for(root, get_settings()), incremental=incremental, tags=tags,
                             description=description, progress=task_progress(task))
    with catalog() as session:
        record_snapshot(session, store_id, result)
    return result


@shared_task(bind=True, name="aml.backup.create")
def create(self: Task, store: str, incremental: bool = False, tags: list[str] | None = None,
           description: str | None = None) -> dict[str, Any]:
    """Take a snapshot of a file store.

    Args:
        store: store path.
        incremental: store only new contents and skip unchanged files (size, mtime_ns, inode equal to
            the parent manifest's); the snapshot is still complete.
        tags: labels stored with the snapshot.
        description: free text stored with the snapshot.

    Returns:
        :class:`aml.backup.SnapshotResult` as a dict, plus ``status`` (``"warning"`` when some
        entries could not be stored: listed in ``errors``) and the task run fields.
    """
    store_id = normalize_store(store)

    def body(catalog: Catalog) -> dict[str, Any]:
        return _snapshot_result(_create(self, store_id, incremental, list(tags or []), description, catalog))

    return run_operation(task_id=self.request.id, operation="backup", store=store_id,
                         arguments={"incremental": incremental, "tags": tags, "description": description},
                         body=body, destructive=True)


@shared_task(bind=True, name="aml.backup.list")
def list_(self: Task, store: str) -> dict[str, Any]:
    """List the snapshots of a store's repository (aml's and Loom's legacy backups), oldest first.

    Returns:
        ``{"repository", "snapshots": [SnapshotInfo dict + stored_size_bytes, verify_status,
        verified_at]}``; catalog fields are ``None`` for snapshots the catalog does not know.
    """
    from workers.catalog import session_scope

    store_id = normalize_store(store)
    root = store_path(store_id)
    repo = repository_for(root, get_settings())
    infos = list_snapshots(repo.path) if repo.path.exists() else []
    with session_scope(get_settings().catalog_url, write=False) as session:
        rows = {b.backup_id: b for b in queries.list_backups(session, store_id)}
        out = []
        for info in infos:
            d = info.to_dict()
            row = rows.get(info.backup_id)
            d["stored_size_bytes"] = row.stored_size_bytes if row else None
            d["verify_status"] = row.verify_status if row else None
            d["verified_at"] = row.verified_at.isoformat().replace("+00:00", "Z") if row and row.verified_at else None
            out.append(d)
    return {"repository": str(repo.path), "store": store_id, "snapshots": out}


@shared_task(bind=True, name="aml.backup.restore")
def restore_(self: Task, store: str, backup_id: str | None = None, at: str | None = None,
             target: str | None = None, agent: str | None = None, paths: list[str] | None = None,
             exact: bool = True, dry_run: bool = False) -> dict[str, Any]:
    """Restore a snapshot: to ``target``, or over the live store after a safety snapshot.

    Args:
        store: store path (whose repository holds the snapshot).
        backup_id: the snapshot; or ``at``.
        at: ISO 8601 instant: restore the newest snapshot taken at or before it (point in time).
        target: directory to restore into; ``None`` restores over the live store.
        agent: restore only this agent's directory.
        paths: restore only paths matching these globs (relative to the store root).
        exact: remove files the snapshot does not have (inside the restored scope).
        dry_run: list what would change; write nothing (no safety snapshot either).

    Returns:
        :class:`aml.backup.RestoreResult` as a dict plus ``safety_backup_id`` (over the live store)
        and the task run fields.

    Raises:
        ValueError: neither or both of ``backup_id`` and ``at``; ``at`` does not parse.
        aml.backup.SnapshotNotFound, aml.backup.UnsafePathError, aml.backup.CorruptionError: see
            :func:`aml.backup.restore`.
    """
    store_id = normalize_store(store)
    if (backup_id is None) == (at is None):
        raise ValueError("give exactly one of backup_id and at")
    when: datetime | None = None
    if at is not None:
        when = parse_timestamp(at)
        if when is None:
            raise ValueError(f"--at {at!r} is not an ISO 8601 time")
    over_live = target is None or os.path.realpath(target) == store_id

    def body(catalog: Catalog) -> dict[str, Any]:
        root = store_path(store_id)
        settings = get_settings()
        repo = repository_for(root, settings)
        chosen = backup_id or resolve_at(repo, when)  # type: ignore[arg-type]
        safety: str | None = None
        if over_live and not dry_run and root.exists():
            safety = safety_snapshot(catalog, store_id, root, settings, reason="pre-restore",
                                     progress=task_progress(self)).backup_id
        result = restore(repo, chosen, root if over_live else Path(str(target)), agent=agent,
                         paths=tuple(paths or ()), exact=exact, dry_run=dry_run, progress=task_progress(self))
        out = result.to_dict()
        out["safety_backup_id"] = safety
        out["status"] = "success" if result.ok else "failure"
        return out

    return run_operation(task_id=self.request.id, operation="backup", store=store_id,
                         arguments={"action": "restore", "backup_id": backup_id, "at": at, "target": target,
                                    "agent": agent, "paths": paths, "exact": exact, "dry_run": dry_run},
                         body=body, destructive=over_live and not dry_run)


def _policy(keep: dict[str, Any] | None) -> RetentionPolicy:
    settings = get_settings()
    keep = {k: v for k, v in (keep or {}).items() if v is not None}
    if not keep:
        return RetentionPolicy(retention_days=settings.retention_days, max_backups=settings.max_backups)
    return RetentionPolicy(**keep)


def _rotate(store_id: str, keep: dict[str, Any] | None, dry_run: bool, catalog: Catalog) -> dict[str, Any]:
    root = store_path(store_id)
    result = rotate(repository_for(root, get_settings()), _policy(keep), dry_run=dry_run)
    if not dry_run and result.removed:
        with catalog() as session:
            queries.delete_backups(session, [d.backup_id for d in result.removed])
    return result.to_dict()


@shared_task(bind=True, name="aml.backup.rotate")
def rotate_(self: Task, store: str, keep: dict[str, Any] | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Apply a retention policy to a store's repository, then remove unreferenced data.

    Args:
        store: store path.
        keep: :class:`aml.backup.RetentionPolicy` fields (``keep_last``, ``keep_hourly``,
            ``keep_daily``, ``keep_weekly``, ``keep_monthly``, ``keep_yearly``, ``keep_within``,
            ``retention_days``, ``max_backups``); default the seeds' ``retention_days=30``,
            ``max_backups=100`` (``AML_RETENTION_DAYS``, ``AML_MAX_BACKUPS``). The newest snapshot is
            always kept.
        dry_run: report the decisions only.

    Returns:
        :class:`aml.backup.ForgetResult` as a dict plus the task run fields.
    """
    store_id = normalize_store(store)
    return run_operation(task_id=self.request.id, operation="backup", store=store_id,
                         arguments={"action": "rotate", "keep": keep, "dry_run": dry_run},
                         body=lambda catalog: _rotate(store_id, keep, dry_run, catalog),
                         destructive=not dry_run)


@shared_task(bind=True, name="aml.backup.auto")
def auto(self: Task, store: str) -> dict[str, Any]:
    """The seeds' daily job: an incremental backup (full when none exists), then rotate.

    Returns:
        ``{"backup": SnapshotResult dict, "rotate": ForgetResult dict, ...}``.
    """
    store_id = normalize_store(store)

    def body(catalog: Catalog) -> dict[str, Any]:
        snap = _create(self, store_id, True, ["auto"], "daily automatic backup", catalog)
        rotated = _rotate(store_id, None, False, catalog)
        return {"backup": snap.to_dict(), "rotate": rotated, "backup_id": snap.backup_id,
                "status": "warning" if snap.errors else "success"}

    return run_operation(task_id=self.request.id, operation="backup", store=store_id,
                         arguments={"action": "auto"}, body=body, destructive=True)
