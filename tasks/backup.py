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
from typing import TYPE_CHECKING, Any

from aml.backup import (
    Excludes,
    RetentionPolicy,
    SnapshotResult,
    create_snapshot,
    list_damaged_snapshots,
    list_snapshots,
    resolve_at,
    restore,
    rotate,
)
from aml.backup.crypto import is_encrypted
from aml.backup.excludes import read_exclude_file
from aml.store.timestamps import parse_timestamp, utc_iso_z
from models import queries
from tasks.base import Catalog, run_operation, store_path
from tasks.progress import task_progress
from tasks.registry import deferring, operation_task
from tasks.snapshots import is_keyspace, record_snapshot, repository_for, repository_of, safety_snapshot, store_id_of
from workers.app import get_settings
from workers.settings import Settings

if not deferring():
    # A Celery process (a worker, a user's own app, a test) gets the keyspace tasks (aml.backup.export/import) with
    # the backup tasks, as it always has; the one-shot command imports them (and redis-py) for a keyspace only.
    import tasks.keyspace  # noqa: F401

if TYPE_CHECKING:
    from celery import Task


def _snapshot_result(result: SnapshotResult) -> dict[str, Any]:
    out = result.to_dict()
    out["status"] = "warning" if result.errors or result.warnings else "success"
    return out


def _exclude_patterns(store: str, excludes: list[str] | None, exclude_files: list[str] | None) -> list[str]:
    """The ``--exclude`` patterns plus those of the ``--exclude-file`` files (read here, on the worker),
    checked (a bad pattern or an unreadable file fails before the store is locked).

    Raises:
        ValueError: a malformed pattern, an unreadable exclude file, or excludes for a Redis keyspace.
    """
    patterns = [str(p) for p in excludes or []]
    for f in exclude_files or []:
        try:
            patterns += read_exclude_file(f)
        except OSError as exc:
            raise ValueError(f"exclude file {f!r}: {exc.strerror or exc}") from exc
    if patterns and is_keyspace(store):
        raise ValueError("--exclude / --exclude-file are for file stores; a keyspace snapshot takes every key")
    Excludes(patterns)  # raises ValueError naming a malformed pattern
    return patterns


def _create(task: Task, store_id: str, incremental: bool, tags: list[str], description: str | None,
            catalog: Catalog, url: str | None = None, excludes: list[str] | None = None) -> SnapshotResult:
    """Take and record a snapshot; a keyspace (``url``: its URL, password included) goes to
    :func:`tasks.keyspace.snapshot_keyspace`. ``excludes``: restic-style patterns (file stores; aml's derived
    files are always excluded, :data:`aml.backup.excludes.DEFAULT_EXCLUDES`)."""
    if is_keyspace(store_id):
        from tasks import keyspace as keyspace_tasks  # redis-py only for a keyspace

        result: SnapshotResult = keyspace_tasks.snapshot_keyspace(
            url or store_id, incremental=incremental, tags=tags, description=description,
            progress=task_progress(task))
    else:
        root = store_path(store_id)
        result = create_snapshot(root, repository_for(root, get_settings()), incremental=incremental, tags=tags,
                                 description=description, progress=task_progress(task), excludes=excludes or ())
    with catalog() as session:
        record_snapshot(session, store_id, result)
    return result


@operation_task("aml.backup.create")
def create(self: Task, store: str, incremental: bool = False, tags: list[str] | None = None,
           description: str | None = None, excludes: list[str] | None = None,
           exclude_files: list[str] | None = None) -> dict[str, Any]:
    """Take a snapshot of a file store or of a Redis keyspace (:mod:`aml.backup.keyspace`).

    Args:
        store: store path, or a Redis URL (``redis://host:port/db``).
        incremental: store only new contents and skip unchanged files (size, mtime_ns, inode equal to
            the parent manifest's); the snapshot is still complete.
        tags: labels stored with the snapshot.
        description: free text stored with the snapshot.
        excludes: restic ``--exclude`` patterns, relative to the store root (``*.tmp``, ``/cache``,
            ``a/**/b``: :mod:`aml.backup.excludes`); aml's own derived files (``.aml/index.*``) are
            always excluded. File stores only.
        exclude_files: files of patterns, one per line (restic ``--exclude-file``), read by the worker.

    Returns:
        :class:`aml.backup.SnapshotResult` as a dict, plus ``status`` (``"warning"`` when some
        entries could not be stored, listed in ``errors``, or changed while being read, listed in
        ``warnings``) and the task run fields.
    """
    store_id = store_id_of(store)
    patterns = _exclude_patterns(store, excludes, exclude_files)  # bad patterns fail before the store is locked

    def body(catalog: Catalog) -> dict[str, Any]:
        return _snapshot_result(_create(self, store_id, incremental, list(tags or []), description, catalog,
                                        url=store, excludes=patterns))

    return run_operation(task_id=self.request.id, operation="backup", store=store_id,
                         arguments={"incremental": incremental, "tags": tags, "description": description,
                                    "excludes": patterns or None},
                         body=body, destructive=True)


@operation_task("aml.backup.list")
def list_(self: Task, store: str) -> dict[str, Any]:
    """List the snapshots of a store's repository (aml's and Loom's legacy backups), oldest first.

    Returns:
        ``{"repository", "store", "encrypted", "snapshots": [SnapshotInfo dict + stored_size_bytes,
        verify_status, verified_at], "damaged": [{"backup_id", "location", "reason"}]}``; catalog fields are ``None``
        for snapshots the catalog does not know; ``damaged`` lists snapshots whose manifest header
        cannot be read (they cannot be restored; ``backup verify`` names what they held).
    """
    from workers.catalog import session_scope

    store_id = store_id_of(store)
    repo = repository_of(store_id, get_settings())
    infos = list_snapshots(repo) if repo.path.exists() else []
    damaged = [d.to_dict() for d in list_damaged_snapshots(repo)] if repo.path.exists() else []
    with session_scope(get_settings().catalog_url, write=False) as session:
        rows = {b.backup_id: b for b in queries.list_backups(session, store_id) if b.repository == repo.url}
        out = []
        for info in infos:
            d = info.to_dict()
            row = rows.get(info.backup_id)
            d["stored_size_bytes"] = row.stored_size_bytes if row else None
            d["verify_status"] = row.verify_status if row else None
            d["verified_at"] = utc_iso_z(row.verified_at) if row and row.verified_at else None
            out.append(d)
    return {"repository": repo.url, "store": store_id, "encrypted": is_encrypted(repo.path), "snapshots": out,
            "damaged": damaged}


@operation_task("aml.backup.restore")
def restore_(self: Task, store: str, backup_id: str | None = None, at: str | None = None,
             target: str | None = None, agent: str | None = None, paths: list[str] | None = None,
             exact: bool = True, dry_run: bool = False, pattern: str | None = None) -> dict[str, Any]:
    """Restore a snapshot: to ``target``, or over the live store after a safety snapshot.

    A Redis store (``redis://...``) restores a keyspace snapshot into ``target`` (another Redis URL) or
    into itself, all keys or those matching ``pattern``, after exporting the keys it overwrites
    (:func:`tasks.keyspace.restore_snapshot`); ``agent``, ``paths`` and ``exact`` are for file stores.

    Args:
        store: store path or Redis URL (whose repository holds the snapshot).
        backup_id: the snapshot; or ``at``.
        at: ISO 8601 instant: restore the newest snapshot taken at or before it (point in time).
        target: directory to restore into; ``None`` restores over the live store.
        agent: restore only this agent's directory.
        paths: restore only paths matching these globs (relative to the store root).
        exact: remove files the snapshot does not have (inside the restored scope).
        dry_run: list what would change; write nothing (no safety snapshot either).
        pattern: keyspaces only: restore only keys matching this glob.

    Returns:
        :class:`aml.backup.RestoreResult` as a dict plus ``safety_backup_id`` (over the live store)
        and the task run fields.

    Raises:
        ValueError: neither or both of ``backup_id`` and ``at``; ``at`` does not parse.
        aml.backup.SnapshotNotFound, aml.backup.UnsafePathError, aml.backup.CorruptionError: see
            :func:`aml.backup.restore`.
    """
    store_id = store_id_of(store)
    if (backup_id is None) == (at is None):
        raise ValueError("give exactly one of backup_id and at")
    when: datetime | None = None
    if at is not None:
        when = parse_timestamp(at)
        if when is None:
            raise ValueError(f"--at {at!r} is not an ISO 8601 time")
    if is_keyspace(store):
        if agent or paths:
            raise ValueError("a keyspace restore selects keys with --pattern GLOB (--agent and --path are for "
                             "file stores)")
        from tasks import keyspace as keyspace_tasks  # redis-py only for a keyspace

        return keyspace_tasks.restore_snapshot(self.request.id, store, backup_id=backup_id, when=when,
                                               target=target, pattern=pattern, dry_run=dry_run)
    if pattern is not None:
        raise ValueError("--pattern selects keys of a Redis keyspace; file stores use --path GLOB")
    over_live = target is None or os.path.realpath(target) == store_id

    def body(catalog: Catalog) -> dict[str, Any]:
        root = store_path(store_id)
        settings = get_settings()
        repo = repository_for(root, settings)
        chosen = backup_id or resolve_at(repo, when)  # type: ignore[arg-type]
        safety: str | None = None
        if over_live and not dry_run and root.exists() and any(root.iterdir()):  # nothing to save in an empty one
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
                         body=body, destructive=over_live and not dry_run, create_store=over_live)


_KEEP_RULES = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly",
               "keep_within", "keep_tags")
"""restic's keep options: when any is given, these rules (plus an explicit ``retention_days``) decide."""

_POLICY_FIELDS = frozenset(_KEEP_RULES) | {"retention_days", "max_backups"}


def _policy(keep: dict[str, Any] | None, settings: Settings | None = None) -> RetentionPolicy:
    """Translate the task's ``keep`` options into the retention policy applied.

    ``max_backups`` is a cap on top of the keep rules, never a rule that replaces them:

    * no restic keep option given: the seeds' rule, ``retention_days`` (the given value, else the
      setting, 30), capped by ``max_backups`` (the given value, else the setting, 100);
    * any restic keep option (``keep_last/hourly/daily/weekly/monthly/yearly/within/tags``, non-zero)
      given: those rules decide with restic's semantics, ORed with ``retention_days`` only if it was
      given, and capped by ``max_backups`` only if it was given (``--keep-last 200`` keeps 200, as
      restic does, not the seeds' 100).

    The newest snapshot is always kept (:func:`aml.backup.apply_policy`).

    Args:
        keep: :class:`aml.backup.RetentionPolicy` field names to values; ``None`` values count as not given.
        settings: runtime settings for the defaults (default: the app's).

    Returns:
        The :class:`aml.backup.RetentionPolicy`.

    Raises:
        ValueError: ``keep`` names an unknown option.
    """
    settings = settings or get_settings()
    given = {k: v for k, v in (keep or {}).items() if v is not None}
    unknown = sorted(set(given) - _POLICY_FIELDS)
    if unknown:
        raise ValueError(f"unknown retention options: {', '.join(unknown)}")
    max_backups = given.pop("max_backups", None)
    if any(given.get(k) for k in _KEEP_RULES):
        return RetentionPolicy(**given, max_backups=max_backups)
    return RetentionPolicy(retention_days=given.get("retention_days", settings.retention_days),
                           max_backups=settings.max_backups if max_backups is None else max_backups)


def _rotate(store_id: str, policy: RetentionPolicy, dry_run: bool, catalog: Catalog) -> dict[str, Any]:
    settings = get_settings()
    repo = repository_of(store_id, settings)
    # packs in no index (killed backups) go once older than AML_BACKUP_ORPHAN_GRACE_HOURS: a younger one may
    # belong to a backup still writing (aml.backup.retention, "Orphans and the grace period")
    result = rotate(repo, policy, dry_run=dry_run, orphan_grace=settings.backup_orphan_grace_hours * 3600)
    if not dry_run and result.removed:
        with catalog() as session:
            queries.delete_backups(session, [d.backup_id for d in result.removed], repository=repo.url)
    return result.to_dict()


@operation_task("aml.backup.rotate")
def rotate_(self: Task, store: str, keep: dict[str, Any] | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Apply a retention policy to a store's repository, then remove unreferenced data.

    Args:
        store: store path.
        keep: :class:`aml.backup.RetentionPolicy` fields (``keep_last``, ``keep_hourly``,
            ``keep_daily``, ``keep_weekly``, ``keep_monthly``, ``keep_yearly``, ``keep_within``,
            ``keep_tags``, ``retention_days``, ``max_backups``; ``None`` = not given). Without restic
            ``keep_*`` options the seeds' rule applies: ``retention_days`` (default 30,
            ``AML_RETENTION_DAYS``); with them, they decide (restic semantics). Either way
            ``max_backups`` (default 100, ``AML_MAX_BACKUPS``) caps the kept set to the newest N, and
            the newest snapshot is always kept. Then unreferenced data is removed, including orphan packs
            (in no index: left by killed backups) older than ``AML_BACKUP_ORPHAN_GRACE_HOURS`` (24 h).
        dry_run: report the decisions only.

    Returns:
        :class:`aml.backup.ForgetResult` as a dict plus the task run fields.

    Raises:
        ValueError: ``keep`` names an unknown option.
    """
    store_id = store_id_of(store)
    policy = _policy(keep)  # bad options fail before the store is locked
    return run_operation(task_id=self.request.id, operation="backup", store=store_id,
                         arguments={"action": "rotate", "keep": keep, "dry_run": dry_run},
                         body=lambda catalog: _rotate(store_id, policy, dry_run, catalog),
                         destructive=not dry_run)


@operation_task("aml.backup.auto")
def auto(self: Task, store: str, excludes: list[str] | None = None,
         exclude_files: list[str] | None = None) -> dict[str, Any]:
    """The seeds' daily job: an incremental backup (full when none exists), then rotate.

    Args:
        store: store path, or a Redis URL.
        excludes, exclude_files: as for :func:`create`.

    Returns:
        ``{"backup": SnapshotResult dict, "rotate": ForgetResult dict, ...}``.
    """
    store_id = store_id_of(store)
    patterns = _exclude_patterns(store, excludes, exclude_files)

    def body(catalog: Catalog) -> dict[str, Any]:
        snap = _create(self, store_id, True, ["auto"], "daily automatic backup", catalog, url=store,
                       excludes=patterns)
        rotated = _rotate(store_id, _policy(None), False, catalog)
        return {"backup": snap.to_dict(), "rotate": rotated, "backup_id": snap.backup_id,
                "status": "warning" if snap.errors or snap.warnings else "success"}

    return run_operation(task_id=self.request.id, operation="backup", store=store_id,
                         arguments={"action": "auto", "excludes": patterns or None}, body=body, destructive=True)
