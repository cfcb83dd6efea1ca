"""Celery task of restore drills (``aml.backup.drill``), and the drill evidence health reads.

A drill restores a snapshot of a file store (default: the newest in its repository), or one agent of it,
into a scratch directory under ``$AML_HOME/drills``, checks every file against the manifest (size and
sha256; nothing missing, nothing extra), removes the scratch copy and records the outcome in the catalog's
``restore_drills`` (:mod:`aml.backup.drill`). Health's ``restore_tested`` check reads those rows
(:func:`tasks.backup_evidence.drill_evidence`). Beat runs one per file store weekly, Sunday 04:30 UTC
(``beat_schedule.py``).

Source: the seeds' best practice "Test restores occasionally to verify backup integrity" (Loom
``scripts/aml`` README, Best Practices 6).

The drill reads the repository and never the live store, so it takes no store lock; its operation is
``backup`` (the heavy queue: it restores a whole snapshot). Against a concurrent ``rotate`` it holds a
shared repository lock (see :mod:`aml.backup.drill`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aml.backup import BackupError
from aml.backup.drill import run_drill
from models import queries
from tasks.base import Catalog, run_operation, store_path
from tasks.progress import task_progress
from tasks.registry import operation_task
from tasks.snapshots import is_keyspace, repository_for, store_id_of
from workers.app import get_settings
from workers.settings import Settings

if TYPE_CHECKING:
    from celery import Task

log = logging.getLogger("aml.tasks")

MAX_FAILURES_KEPT = 1000
"""Failures kept in the catalog row and the task result (a damaged index can fail every file of a
snapshot); ``failures_total`` gives the full count."""


def scratch_root(settings: Settings) -> Path:
    """Where drills put their scratch directories: ``$AML_HOME/drills``.

    Under ``AML_HOME`` rather than the system temporary directory: ``/tmp`` is often a RAM-backed tmpfs,
    where restoring a whole store (hundreds of MiB) would take memory from the workers; ``AML_HOME`` is
    aml's own disk space on this host, with private permissions, and a scratch copy left by a killed worker
    is found there and removed by the next drill (:func:`aml.backup.drill.sweep_scratch`).
    """
    return settings.home / "drills"


def _error_result(drill_id: int, backup_id: str | None, agent: str | None, repository: str, error: str,
                  duration_s: float) -> dict[str, Any]:
    return {"drill_id": drill_id, "drill_status": "error", "passed": False, "backup_id": backup_id, "agent": agent,
            "repository": repository, "error": error, "files_expected": 0, "files_checked": 0, "bytes_checked": 0,
            "failures": [], "failures_total": 0, "duration_seconds": round(duration_s, 6), "status": "failure"}


@operation_task("aml.backup.drill")
def drill(self: Task, store: str, backup_id: str | None = None, agent: str | None = None) -> dict[str, Any]:
    """Restore a snapshot (or one agent of it) into a scratch directory, check every file, record the outcome.

    Args:
        store: path of the file store whose repository holds the snapshot.
        backup_id: the snapshot; default the newest of the store in its repository.
        agent: drill only this agent (top-level directory of the snapshot).

    Returns:
        :class:`aml.backup.drill.DrillResult` as a dict (``backup_id, agent, files_expected, files_checked,
        bytes_checked, failures: [{"path", "reason"}], duration_seconds, scratch_removed, passed``, at most
        :data:`MAX_FAILURES_KEPT` failures, ``failures_total``) plus ``drill_id`` (the ``restore_drills``
        row), ``drill_status`` (``passed``, ``failed`` or ``error``: it could not run, ``error`` says why)
        and the task run fields; ``status`` is ``"failure"`` unless the drill passed.

    Raises:
        ValueError: a Redis keyspace (drills are for file stores), or ``agent`` is not a top-level name.
    """
    if is_keyspace(store):
        raise ValueError("restore drills are for file stores; a keyspace snapshot is checked by backup verify")
    if agent is not None and (not agent or "/" in agent or agent in (".", "..") or "\x00" in agent):
        raise ValueError(f"--agent must be a top-level directory name, got {agent!r}")
    store_id = store_id_of(store)

    def body(catalog: Catalog) -> dict[str, Any]:
        root = store_path(store_id)
        settings = get_settings()
        repo = repository_for(root, settings)
        with catalog() as session:
            drill_id = queries.start_restore_drill(session, store=store_id, repository=repo.url,
                                                   backup_id=backup_id, agent=agent, task_id=self.request.id).id
        started = time.monotonic()
        try:
            result = run_drill(repo, backup_id, agent=agent, scratch_root=scratch_root(settings),
                               source=root if settings.backup_root else None, lock_wait=settings.lock_timeout,
                               progress=task_progress(self))
        except (BackupError, OSError) as exc:  # could not run: no snapshot, locked, no space...
            error = f"{type(exc).__name__}: {exc}"
            duration = time.monotonic() - started
            with catalog() as session:
                queries.finish_restore_drill(session, drill_id, status="error", duration_s=round(duration, 6),
                                             error=error)
            return _error_result(drill_id, backup_id, agent, repo.url, error, duration)
        except BaseException as exc:  # a bug, a time limit: the row must not stay "running"
            try:
                with catalog() as session:
                    queries.finish_restore_drill(session, drill_id, status="error",
                                                 duration_s=round(time.monotonic() - started, 6),
                                                 error=f"{type(exc).__name__}: {exc}")
            except Exception:
                log.exception("could not record the end of restore drill %s", drill_id)
            raise
        status = "passed" if result.passed else "failed"
        kept = result.failures[:MAX_FAILURES_KEPT]
        with catalog() as session:
            queries.finish_restore_drill(session, drill_id, status=status, backup_id=result.backup_id,
                                         duration_s=result.duration_seconds, files_checked=result.files_checked,
                                         bytes_checked=result.bytes_checked, failures=kept)
        out = result.to_dict()
        out.update({"failures": kept, "failures_total": len(result.failures), "drill_id": drill_id,
                    "drill_status": status, "status": "success" if result.passed else "failure"})
        return out

    return run_operation(task_id=self.request.id, operation="backup", store=store_id,
                         arguments={"action": "drill", "backup_id": backup_id, "agent": agent}, body=body)
