"""Celery task of the ``verify`` operation: prove that a store's backups are intact.

Runs :func:`aml.backup.check` on the store's repository (structure; ``read_data`` re-hashes every
object; ``read_data_subset`` a rotating share so a daily run covers everything over time) and
records each snapshot's verification state in the catalog. A snapshot that failed verification no
longer counts as a recent backup for health.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery import Task, shared_task

from aml.backup import check, list_snapshots
from models import queries
from tasks.base import Catalog, normalize_store, run_operation, store_path
from tasks.progress import task_progress
from tasks.snapshots import repository_for
from workers.app import get_settings


@shared_task(bind=True, name="aml.verify.check")
def verify(self: Task, store: str, backup_id: str | None = None, read_data: bool = False,
           read_data_subset: str | None = None) -> dict[str, Any]:
    """Check a store's backup repository and record the result per snapshot.

    Args:
        store: store path.
        backup_id: report on this snapshot only (the whole repository is still checked, since
            snapshots share packs).
        read_data: decompress and re-hash every object.
        read_data_subset: ``"10%"``/``"0.1"`` (rotating, least recently read packs first) or ``"n/N"``.

    Returns:
        :class:`aml.backup.CheckResult` as a dict plus ``verified`` (snapshot id -> ``"ok"`` or
        ``"failed"``) and the task run fields; ``status`` is ``"failure"`` when damage was found.

    Raises:
        aml.backup.RepositoryNotFound: the store has no repository.
    """
    store_id = normalize_store(store)

    def body(catalog: Catalog) -> dict[str, Any]:
        repo = repository_for(store_path(store_id), get_settings())
        result = check(repo, read_data=read_data or read_data_subset is not None,
                       read_data_subset=read_data_subset, progress=task_progress(self))
        now = datetime.now(UTC)
        states: dict[str, str] = {}
        with catalog() as session:
            for info in list_snapshots(repo):
                if backup_id is not None and info.backup_id != backup_id:
                    continue
                damaged = info.backup_id in result.damaged_snapshots
                states[info.backup_id] = "failed" if damaged else "ok"
                detail = {"read_data": result.read_data, "subset": result.subset,
                          "paths": result.damaged_snapshots.get(info.backup_id, [])[:100]}
                queries.set_backup_verification(session, backup_id=info.backup_id, status=states[info.backup_id],
                                                detail=detail, verified_at=now)
        if backup_id is not None and backup_id not in states:
            raise ValueError(f"no snapshot {backup_id} in {repo.path}")
        out = result.to_dict()
        out["verified"] = states
        failed = any(s == "failed" for s in states.values()) or (backup_id is None and not result.ok)
        out["status"] = "failure" if failed else "success"
        return out

    return run_operation(task_id=self.request.id, operation="verify", store=store_id,
                         arguments={"backup_id": backup_id, "read_data": read_data,
                                    "read_data_subset": read_data_subset}, body=body)
