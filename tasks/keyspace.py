"""Celery tasks exporting a Redis keyspace to a plain JSON file and importing it back
(``aml redis://... backup export|import``; the format is :mod:`aml.trace.keyspace`'s), and the keyspace
side of ``backup create|restore`` (snapshots in the backup repository, :mod:`aml.backup.keyspace`), which
:mod:`tasks.backup` dispatches here for ``redis://`` stores.

The import is destructive: it takes the keyspace's lock, and first saves the keys it is about to overwrite
to ``AML_HOME/keyspace-pre-restore/<task id>.json`` (an import of that file undoes it).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aml.backup.keyspace import KeyspaceSnapshotResult, create_keyspace_snapshot
from aml.backup.keyspace_restore import resolve_keyspace_at, restore_keyspace
from aml.backup.progress import ProgressCallback
from aml.store.storeid import keyspace_id
from aml.trace.keyspace import export_keyspace, import_entries, read_keyspace_file
from aml.trace.live import tracing_client
from tasks.base import Catalog, run_operation
from tasks.registry import operation_task
from tasks.snapshots import is_keyspace, keyspace_repository, run_file
from workers.app import get_settings

if TYPE_CHECKING:
    from celery import Task


@operation_task("aml.backup.export")
def export(self: Task, store: str, path: str, pattern: str | None = None) -> dict[str, Any]:
    """Export every key of a Redis database (or those matching ``pattern``) to the JSON file ``path``
    (written atomically, on the machine that runs the task).

    Returns:
        ``{"path", "keys", "bytes", "types", "status", "task_run_id", ...}``.

    Raises:
        ValueError: not a Redis URL, or a module-type key; OSError: the file cannot be written.
    """
    store_id = keyspace_id(store)

    def body(catalog: Catalog) -> dict[str, Any]:
        client, _db, _name = tracing_client(store)
        try:
            result = export_keyspace(client, Path(path), match=pattern, source=store_id)
        finally:
            client.close()
        return {"path": str(result.path), "keys": result.keys, "bytes": result.bytes, "types": result.types}

    return run_operation(task_id=self.request.id, operation="backup", store=store_id,
                         arguments={"store": store_id, "path": path, "pattern": pattern}, body=body)


@operation_task("aml.backup.import")
def import_(self: Task, store: str, path: str, pattern: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Write the keys of a keyspace file into a Redis database: each key replaced whole, expiry times kept,
    keys whose expiry time has passed skipped and counted, nothing else touched (never ``FLUSHDB``).

    Args:
        store: the target ``redis://`` URL (the same or another server/database than the export's).
        path: the keyspace file.
        pattern: import only keys matching this glob.
        dry_run: write nothing; report what would be written and overwritten.

    Returns:
        :func:`aml.trace.keyspace.import_entries`'s report (``pre_restore``: the file holding what was
        overwritten) plus ``{"source", "created"}`` of the file.

    Raises:
        aml.trace.keyspace.KeyspaceFileError: the file is missing, damaged or not a keyspace file.
    """
    settings = get_settings()
    store_id = keyspace_id(store)

    def body(catalog: Catalog) -> dict[str, Any]:
        header, entries = read_keyspace_file(Path(path))
        pre = run_file(settings, "keyspace-pre-restore", self.request.id)
        client, _db, _name = tracing_client(store)
        try:
            report = import_entries(client, entries, match=pattern, dry_run=dry_run, pre_restore=pre,
                                    source=store_id)
        finally:
            client.close()
        return report | {"source": header.get("source"), "created": header.get("created")}

    return run_operation(task_id=self.request.id, operation="backup", store=store_id,
                         arguments={"store": store_id, "path": path, "pattern": pattern, "dry_run": dry_run},
                         body=body, destructive=not dry_run)


def snapshot_keyspace(store: str, *, incremental: bool, tags: list[str], description: str | None,
                      progress: ProgressCallback | None = None) -> KeyspaceSnapshotResult:
    """Take a snapshot of the keyspace ``store`` (a Redis URL, password allowed) into its repository
    (:func:`tasks.snapshots.keyspace_repository`); the caller records it in the catalog.

    Raises:
        aml.backup.keyspace.KeyspaceUnavailable: the server stopped answering (no snapshot is visible).
    """
    client, _db, _name = tracing_client(store)
    try:
        return create_keyspace_snapshot(client, keyspace_repository(store, get_settings()), source=keyspace_id(store),
                                        incremental=incremental, tags=tags, description=description,
                                        progress=progress)
    finally:
        client.close()


def restore_snapshot(task_id: str | None, store: str, *, backup_id: str | None, when: datetime | None,
                     target: str | None, pattern: str | None, dry_run: bool) -> dict[str, Any]:
    """``backup restore`` for a keyspace: the snapshot ``backup_id`` (or the newest of ``store`` at or before
    ``when``) from ``store``'s repository into ``target`` (a Redis URL; default ``store`` itself).

    The run is recorded on, and locks, the keyspace written (``target``). The keys it overwrites are exported
    first to ``AML_HOME/keyspace-pre-restore/<task id>.json`` (``backup import`` of it undoes the restore).

    Returns:
        :func:`aml.backup.keyspace_restore.restore_keyspace`'s report plus ``status`` (``"failure"`` when some
        keys could not be read back) and the task run fields.

    Raises:
        ValueError: ``target`` is not a Redis URL.
    """
    target_url = target or store
    if not is_keyspace(target_url):
        raise ValueError(f"a keyspace snapshot restores into a Redis database (--target redis://host:port/db), "
                         f"not {target_url!r}")
    source_id, target_id = keyspace_id(store), keyspace_id(target_url)
    settings = get_settings()

    def body(catalog: Catalog) -> dict[str, Any]:
        repo = keyspace_repository(source_id, settings)
        chosen = backup_id or resolve_keyspace_at(repo, source_id, when)
        pre = run_file(settings, "keyspace-pre-restore", task_id)
        client, _db, _name = tracing_client(target_url)
        try:
            report = restore_keyspace(repo, chosen, client, pattern=pattern, dry_run=dry_run, pre_restore=pre,
                                      target=target_id)
        finally:
            client.close()
        report["status"] = "success" if report["ok"] else "failure"
        return report

    return run_operation(task_id=task_id, operation="backup", store=target_id,
                         arguments={"action": "restore", "source": source_id, "backup_id": backup_id,
                                    "at": when.isoformat() if when else None, "target": target_id,
                                    "pattern": pattern, "dry_run": dry_run},
                         body=body, destructive=not dry_run)
