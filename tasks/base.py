"""What every aml task does around its engine call: one code path, inline or on a worker.

:func:`run_operation` records the run in the catalog (``task_runs``: arguments, status, timings,
result summary, error), takes the store's lock for destructive operations, and converts the
outcome into a JSON-serialisable result. ``tasks.<operation>`` modules only validate arguments and
call the engine through it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from models import queries
from models.tables import TaskRun
from workers.app import get_settings
from workers.catalog import session_scope
from workers.locks import StoreLocked, store_lock
from workers.settings import Settings

log = logging.getLogger("aml.tasks")

Catalog = Callable[..., contextlib.AbstractContextManager[Session]]
"""Opens a short catalog transaction: ``with catalog() as session: ...`` (``catalog(write=False)``
for reads). Bodies keep transactions short: SQLite holds its write lock for a whole transaction."""

OperationBody = Callable[[Catalog], dict[str, Any]]
"""An operation's body: gets a :data:`Catalog` opener, returns a JSON-serialisable result dict.

The dict may set ``"status"`` to ``"success"``, ``"warning"`` or ``"failure"`` (default success).
"""


def normalize_store(store: str) -> str:
    """Normalise a store argument into its store id.

    Paths become absolute with symlinks resolved (``os.path.realpath``); URLs (``redis://...``) are
    kept as given apart from surrounding whitespace.

    Raises:
        ValueError: empty store argument.
    """
    store = store.strip()
    if not store:
        raise ValueError("store is empty")
    if "://" in store:
        return store
    return os.path.realpath(os.path.expanduser(store))


@contextlib.contextmanager
def _maybe_lock(settings: Settings, store_id: str, destructive: bool) -> Iterator[None]:
    if not destructive:
        yield
        return
    with store_lock(store_id, redis_url=settings.lock_url, lock_dir=settings.home / "locks",
                    wait_s=settings.lock_timeout):
        yield


def run_operation(
    *,
    task_id: str | None,
    operation: str,
    store: str,
    arguments: dict[str, Any],
    body: OperationBody,
    destructive: bool = False,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Run ``body`` as one recorded operation on ``store``.

    Args:
        task_id: Celery task id (``self.request.id``), recorded with the run.
        operation: operation name (``"health"``, ``"backup"``...).
        store: store id (already normalised).
        arguments: the task's arguments, recorded as JSON.
        body: the operation (see :data:`OperationBody`).
        destructive: take the store's exclusive lock around ``body``.
        settings: runtime settings (default: the app's).

    Returns:
        ``body``'s result dict plus ``{"task_run_id", "operation", "store", "status",
        "duration_s"}``. A store that stays locked gives ``status == "skipped"``.

    Raises:
        Exception: whatever ``body`` raised, after the run is recorded as ``failure``.
    """
    settings = settings or get_settings()
    url = settings.catalog_url
    with session_scope(url) as session:
        run = queries.start_task_run(session, task_id=task_id, operation=operation, store=store,
                                     arguments=arguments)
        run_id = run.id
    started = time.perf_counter()
    try:
        with _maybe_lock(settings, store, destructive):
            result = body(functools.partial(session_scope, url))
    except StoreLocked as exc:
        result = {"status": "skipped", "reason": str(exc)}
    except Exception as exc:
        with session_scope(url) as session:
            failed = session.get(TaskRun, run_id)
            assert failed is not None
            queries.finish_task_run(session, failed, status="failure",
                                    error="".join(traceback.format_exception_only(exc)).strip(),
                                    result={"traceback": traceback.format_exc(limit=20)})
        raise
    status = str(result.get("status", "success"))
    result.update({"task_run_id": run_id, "operation": operation, "store": store, "status": status,
                   "duration_s": round(time.perf_counter() - started, 6)})
    with session_scope(url) as session:
        finished = session.get(TaskRun, run_id)
        assert finished is not None
        queries.finish_task_run(session, finished, status=status, result=_summary(result))
    return result


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    """The part of a result kept in ``task_runs.result``: scalars and small containers only."""
    keep: dict[str, Any] = {}
    for key, value in result.items():
        small = isinstance(value, dict | list) and len(repr(value)) <= 4096
        if value is None or isinstance(value, str | int | float | bool) or small:
            keep[key] = value
    return keep


def store_path(store_id: str) -> Path:
    """The directory of a file store id.

    Raises:
        ValueError: the store id is a URL, not a directory.
    """
    if "://" in store_id:
        raise ValueError(f"{store_id} is not a file store")
    return Path(store_id)
