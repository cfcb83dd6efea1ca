"""Celery tasks of the ``migrate`` operation: detect a store's schema versions; migrate it.

``aml.migrate.detect`` only reads. ``aml.migrate.migrate`` is destructive: it runs under the store's
lock (:func:`tasks.base.run_operation` with ``destructive=True``), plans first (a ``--dry-run`` stops
there, as does a downgrade that would lose data without ``force``), then takes a ``pre-migrate``
safety snapshot (:func:`tasks.snapshots.safety_snapshot`; its id is returned as ``backup_id`` and
recorded with the run) and only then writes. A store already at the target gets no snapshot and no
write.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aml.migrate import Journal, MigrationResult, apply_plan, build_plan, check_version, detect, new_run_id
from aml.migrate import rollback as rollback_store
from tasks.base import Catalog, OperationBody, normalize_store, run_operation, store_path
from tasks.registry import operation_task
from workers.app import get_settings

if TYPE_CHECKING:
    from celery import Task


def detect_body(store_id: str) -> OperationBody:
    """The body of one ``detect`` run (see :func:`tasks.base.run_operation`)."""

    def body(catalog: Catalog) -> dict[str, Any]:
        found = detect(store_path(store_id))
        result = found.to_dict()
        result["status"] = "success" if found.consistent else "warning"
        return result

    return body


def migrate_body(store_id: str, version: str | None, *, dry_run: bool, force: bool,
                 undo: bool) -> OperationBody:
    """The body of one ``migrate`` run (see the module docstring)."""
    settings = get_settings()

    def body(catalog: Catalog) -> dict[str, Any]:
        root = store_path(store_id)
        if undo:
            pending = Journal.load(root)
            if pending is None or dry_run:
                return {"status": "success", "outcome": "nothing" if pending is None else "dry_run",
                        "journal": pending.summary() if pending is not None else None, "backup_id": None}
            # imported by runs that change the store only: a dry run does without its ~25 ms
            from tasks.snapshots import safety_snapshot

            snapshot = safety_snapshot(catalog, store_id, root, settings, reason="pre-migrate", tags=["rollback"])
            undone = rollback_store(root, force=force).to_dict()
            undone["backup_id"] = snapshot.backup_id
            return undone
        plan = build_plan(root, version, force=force)
        run_id = new_run_id()
        if dry_run or plan.refused or plan.changes_nothing:
            outcome = "refused" if plan.refused else "dry_run" if dry_run else "unchanged"
            result = MigrationResult(plan, outcome, run_id, problems=list(plan.problems)).to_dict()
            result["backup_id"] = None
            return result
        # imported by runs that change the store only: a dry run does without its ~25 ms
        from tasks.snapshots import safety_snapshot

        snapshot = safety_snapshot(catalog, store_id, root, settings, reason="pre-migrate")
        result = apply_plan(plan, run_id=run_id).to_dict()
        result["backup_id"] = snapshot.backup_id
        return result

    return body


@operation_task("aml.migrate.detect")
def detect_versions(self: Task, store: str) -> dict[str, Any]:
    """Report the schema version of every agent and collection of a file store (reads only).

    Args:
        store: path of the file store (e.g. ``.loom/memory``).

    Returns:
        :meth:`aml.migrate.Detection.to_dict` plus ``status`` (``success`` when consistent,
        ``warning`` when mixed, unreadable, behind/ahead of its claim, or mid-migration) and the run
        fields of :func:`tasks.base.run_operation`.
    """
    store_id = normalize_store(store)
    return run_operation(task_id=self.request.id, operation="migrate.detect", store=store_id,
                         arguments={"store": store}, body=detect_body(store_id))


@operation_task("aml.migrate.migrate")
def migrate(self: Task, store: str, version: str | None = None, dry_run: bool = False, force: bool = False,
            rollback: bool = False) -> dict[str, Any]:
    """Migrate a file store to a schema version (both ways), journaled, after a safety snapshot.

    Args:
        store: path of the file store.
        version: target version, e.g. ``"1.2.0"``; ``None`` for the latest (2.0.0).
        dry_run: plan only: counts per agent and collection, lossy items, problems; writes nothing.
        force: carry out downgrades that lose data (they are listed).
        rollback: undo an interrupted migration from its journal instead (``version`` ignored).

    Returns:
        :meth:`aml.migrate.MigrationResult.to_dict` (or :meth:`~aml.migrate.RollbackResult.to_dict`)
        plus ``backup_id`` (the pre-migrate snapshot, ``None`` when nothing was written) and the run
        fields. ``status`` is ``failure`` when refused or when a document was left alone (named in
        ``unparseable``).

    Raises:
        ValueError: unknown version.
        aml.backup.BackupError: the safety snapshot failed; nothing was changed.
    """
    store_id = normalize_store(store)
    if version is not None:
        version = check_version(version)
    return run_operation(task_id=self.request.id, operation="migrate", store=store_id,
                         arguments={"store": store, "version": version, "dry_run": dry_run, "force": force,
                                    "rollback": rollback},
                         body=migrate_body(store_id, version, dry_run=dry_run, force=force, undo=rollback),
                         destructive=True)
