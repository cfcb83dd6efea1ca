"""Celery task of the ``verify`` operation: prove that a store's backups are intact.

Runs :func:`aml.backup.check` on the store's repository (structure; ``read_data`` re-hashes every
object; ``read_data_subset`` a rotating share so a daily run covers everything over time) and
records each snapshot's verification state in the catalog. A snapshot that failed verification no
longer counts as a recent backup for health.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aml.backup import check, list_snapshots
from models import queries
from tasks.base import Catalog, run_operation
from tasks.progress import task_progress
from tasks.registry import operation_task
from tasks.snapshots import repository_of, store_id_of
from workers.app import get_settings

if TYPE_CHECKING:
    from celery import Task


@operation_task("aml.verify.check")
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
        :class:`aml.backup.CheckResult` as a dict (with ``orphans``: packs in no index, left by killed
        backups: count, bytes, ages, and how many are older than ``AML_BACKUP_ORPHAN_GRACE_HOURS`` so that
        the next rotate removes them) plus ``verified`` (snapshot id -> ``"ok"`` or
        ``"failed"``; a snapshot whose manifest is damaged is listed by the id of its file and
        ``"failed"``) and the task run fields; ``status`` is ``"failure"`` when damage was found
        (for ``backup_id``: damage affecting that snapshot). Each snapshot's catalog row gets the state,
        with ``{"read_data", "subset", "paths", "problems": [{"kind", "location", "message"}]}`` as
        detail.

    Raises:
        aml.backup.RepositoryNotFound: the store has no repository.
        ValueError: ``backup_id`` is neither a listed snapshot nor a damaged one.
    """
    store_id = store_id_of(store)

    def body(catalog: Catalog) -> dict[str, Any]:
        settings = get_settings()
        repo = repository_of(store_id, settings)
        result = check(repo, read_data=read_data or read_data_subset is not None,
                       read_data_subset=read_data_subset, progress=task_progress(self),
                       orphan_grace=settings.backup_orphan_grace_hours * 3600)
        now = datetime.now(UTC)
        states: dict[str, str] = {}
        # every listed snapshot, plus those check() found damaged that listing cannot parse (a damaged
        # manifest header): they are named by their file name, snapshots/<backup_id>.json
        ids = [info.backup_id for info in list_snapshots(repo)]
        ids += sorted(set(result.damaged_snapshots) - set(ids))
        with catalog() as session:
            for bid in ids:
                if backup_id is not None and bid != backup_id:
                    continue
                damaged = bid in result.damaged_snapshots
                states[bid] = "failed" if damaged else "ok"
                detail = {"read_data": result.read_data, "subset": result.subset,
                          "paths": result.damaged_snapshots.get(bid, [])[:100],
                          "problems": [{"kind": p.kind, "location": p.location, "message": p.message}
                                       for p in result.errors if bid in p.snapshots][:20]}
                queries.set_backup_verification(session, backup_id=bid, status=states[bid],
                                                detail=detail, verified_at=now, repository=repo.url)
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
