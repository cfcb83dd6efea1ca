"""What every aml task does around its engine call: one code path, inline or on a worker.

:func:`run_operation` records the run in the catalog (``task_runs``: arguments, status, timings,
result summary, error), takes the store's lock for destructive operations, and converts the
outcome into a JSON-serialisable result. ``tasks.<operation>`` modules only validate arguments and
call the engine through it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import logging
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from aml.gcpause import end_startup
from aml.store.guard import WriteRevoked
from aml.store.names import text_names
from aml.store.storeid import normalise_store_id
from models import queries
from models.tables import TaskRun
from workers.app import get_settings
from workers.catalog import session_scope
from workers.locks import LockUnavailable, StoreLocked, store_lock
from workers.settings import Settings

log = logging.getLogger("aml.tasks")

Catalog = Callable[..., contextlib.AbstractContextManager[Session]]
"""Opens a short catalog transaction: ``with catalog() as session: ...`` (``catalog(write=False)``
for reads). Bodies keep transactions short: SQLite holds its write lock for a whole transaction."""

OperationBody = Callable[[Catalog], dict[str, Any]]
"""An operation's body: gets a :data:`Catalog` opener, returns a JSON-serialisable result dict.

The dict may set ``"status"`` to ``"success"``, ``"warning"`` or ``"failure"`` (default success).
"""


normalize_store = normalise_store_id
"""Normalise a store argument into its store id: the engine's one normaliser,
:func:`aml.store.storeid.normalise_store_id` (paths absolute with symlinks resolved, URLs as given
apart from surrounding whitespace; ``ValueError`` for an empty argument)."""


_TRANSIENT: tuple[tuple[str, str], ...] = (
    ("redis.exceptions", "ConnectionError"),
    ("redis.exceptions", "TimeoutError"),
    ("kombu.exceptions", "OperationalError"),
    ("sqlalchemy.exc", "OperationalError"),
    ("sqlalchemy.exc", "DisconnectionError"),
)
"""The errors a later attempt can succeed after, as ``(module, class)``: a broker, lock Redis or catalog that did
not answer (a SQLite catalog busy past its timeout is an ``OperationalError`` too). Never a data error."""


def transient_errors(*, load: bool = False) -> tuple[type[BaseException], ...]:
    """The classes of :data:`_TRANSIENT`.

    Args:
        load: import their modules (the Celery task's ``autoretry_for``, :class:`tasks.retry.AmlTask`). Else
            only the classes of modules this process has imported: an error of a module never imported
            cannot have been raised, and an inline run of the ``aml`` command imports neither redis-py nor
            kombu (:mod:`tasks.registry`).
    """
    found = []
    for module_name, class_name in _TRANSIENT:
        module = importlib.import_module(module_name) if load else sys.modules.get(module_name)
        if module is not None:
            found.append(getattr(module, class_name))
    return tuple(found)


class NotRetried(RuntimeError):
    """A transient error struck a destructive operation after it began changing the store: a blind
    automatic re-run could act on a half-done state (a prune whose removals have no catalog rows yet), so
    the task fails instead and says what to check."""


CAUSE_HEADER = "aml_cause"
"""Message header naming what started a task: the remediation chain's ``{"remediation_id", "rule",
"fingerprint"}`` (:mod:`tasks.remediate`); recorded under ``cause`` in the task run's arguments."""


def _current_request() -> Any:
    """The request of the Celery task running in this thread, or ``None``: none runs, or Celery was never
    imported (an inline run of the ``aml`` command, :mod:`tasks.registry`, which reads no header)."""
    if "celery" not in sys.modules:
        return None
    from celery import current_task

    task = current_task._get_current_object()
    return None if task is None else task.request


def _cause() -> dict[str, Any] | None:
    """The running task's :data:`CAUSE_HEADER`, if any (a worker merges custom headers into the request; an
    inline ``apply(headers=...)`` keeps them in ``request.headers``)."""
    request = _current_request()
    if request is None:
        return None
    cause = getattr(request, CAUSE_HEADER, None) or (getattr(request, "headers", None) or {}).get(CAUSE_HEADER)
    return dict(cause) if isinstance(cause, dict) else None


def _is_eager() -> bool:
    """Whether the running task was applied inline (``task.apply()`` or :meth:`OperationTask.run_inline
    <tasks.registry.OperationTask.run_inline>`), or no task is running at all."""
    request = _current_request()
    return request is None or bool(getattr(request, "is_eager", True))


@contextlib.contextmanager
def _maybe_lock(settings: Settings, store_id: str, destructive: bool, task_id: str | None,
                create_store: bool) -> Iterator[None]:
    if not destructive:
        yield
        return
    store_dir = None if "://" in store_id else Path(store_id)
    if store_dir is not None and create_store:  # e.g. a restore after the store was lost: lock what it fills
        store_dir.mkdir(parents=True, exist_ok=True)
    if store_dir is None and settings.redis_lock_url is None:
        # a keyspace has no directory of its own: its lock file lives under AML_HOME (one host only; a lock
        # Redis, AML_LOCK_URL, makes it hold across hosts)
        digest = hashlib.sha256(store_id.encode()).hexdigest()[:24]
        store_dir = settings.home / "locks" / digest
        store_dir.mkdir(parents=True, exist_ok=True)
    with store_lock(store_id, redis_url=settings.redis_lock_url, store_dir=store_dir, wait_s=settings.lock_timeout,
                    lease_s=settings.lock_lease, task_id=task_id) as info:
        if info.took_over:
            log.warning("took over the lock of %s from its dead owner (%s)", store_id, info.took_over)
        yield
        if info.lost.is_set():
            raise WriteRevoked(f"the lock of {store_id} was lost during the operation; later writes were stopped")


def run_operation(
    *,
    task_id: str | None,
    operation: str,
    store: str,
    arguments: dict[str, Any],
    body: OperationBody,
    destructive: bool = False,
    create_store: bool = False,
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
        create_store: create a missing store directory before locking it (restore over a lost store).
        settings: runtime settings (default: the app's).

    Returns:
        ``body``'s result dict plus ``{"task_run_id", "operation", "store", "status",
        "duration_s"}``. Inline, a store that stays locked gives ``status == "skipped"``. File names whose
        bytes are not valid UTF-8 are escaped (``\\xNN``, :func:`aml.store.names.text_names`): a result is
        text, for people and JSON consumers; the backup repository keeps the exact names.

    Raises:
        StoreLocked: on a worker, a live operation held the store (the task retries with backoff).
        LockUnavailable: the configured lock Redis does not answer (recorded as ``failure``).
        aml.store.guard.WriteRevoked: the lock's lease was lost; the writes after the loss did not happen.
        NotRetried: on a worker, a transient error struck a destructive operation after its body began
            (instead of the error itself, which the task would retry).
        Exception: whatever ``body`` raised, after the run is recorded as ``failure``.
    """
    settings = settings or get_settings()
    url = settings.catalog_url
    cause = _cause()
    if cause is not None:
        arguments = {**arguments, "cause": cause}
    with session_scope(url) as session:
        run = queries.start_task_run(session, task_id=task_id, operation=operation, store=store,
                                     arguments=arguments)
        run_id = run.id
    started = time.perf_counter()
    body_started = False

    def begin(catalog: Catalog) -> dict[str, Any]:
        nonlocal body_started
        body_started = True
        end_startup()  # a one-shot aml process has imported what it runs: the cyclic collector back on
        return body(catalog)

    try:
        with _maybe_lock(settings, store, destructive, task_id, create_store):
            result = begin(functools.partial(session_scope, url))
    except (StoreLocked, LockUnavailable) as exc:
        eager = _is_eager()
        locked = isinstance(exc, StoreLocked)
        # a locked store is "skipped" (retried on a worker); a down lock Redis is a refusal: "failure"
        _finish_run(url, run, status="skipped" if locked else "failure",
                    error=str(exc) + ("" if eager or not locked else " (retried with backoff while retries remain)"))
        if not (eager and locked):
            raise
        result = {"status": "skipped", "reason": str(exc)}
    except Exception as exc:
        try:
            _finish_run(url, run, status="failure", error="".join(traceback.format_exception_only(exc)).strip(),
                        result={"traceback": traceback.format_exc(limit=20)})
        except transient_errors():
            log.exception("could not record the failure of %s on %s", operation, store)
        if destructive and body_started and isinstance(exc, transient_errors()) and not _is_eager():
            raise NotRetried(f"{operation} on {store} stopped after it began changing the store ({exc}); not "
                             "retried automatically: check the store and its task run, then run it again") from exc
        raise
    result = text_names(result)
    status = str(result.get("status", "success"))
    result.update({"task_run_id": run_id, "operation": operation, "store": store, "status": status,
                   "duration_s": round(time.perf_counter() - started, 6)})
    try:
        _finish_run(url, run, status=status, result=_summary(result))
    except transient_errors() as exc:
        if destructive and not _is_eager():
            raise NotRetried(f"{operation} on {store} finished ({status}) but its task run could not be recorded "
                             f"({exc}); not re-run automatically") from exc
        raise
    return result


def _finish_run(url: str, run: TaskRun, *, status: str, result: dict[str, Any] | None = None,
                error: str | None = None) -> None:
    """Record the outcome of ``run`` (:func:`models.queries.finish_task_run`) in a transaction of its own.

    ``run`` is the row :func:`run_operation` started, as it committed it (detached, attributes loaded): it is
    attached to the new session as it is, not read again, so the finish is a single ``UPDATE`` by primary key
    of the columns it sets (status, finish time, duration, result, error)."""
    with session_scope(url) as session:
        session.add(run)
        queries.finish_task_run(session, run, status=status, result=result, error=error)


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
