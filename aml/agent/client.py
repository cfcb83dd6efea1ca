"""Enqueue aml operations from an agent process that installs nothing but Celery.

This module imports only Celery and the standard library (a test runs it where ``aml`` cannot be
imported), so it can also be copied into an agent's code base as it is::

    from aml.agent.client import enqueue
    result = enqueue("health", "/srv/agent/.loom/memory", broker="redis://127.0.0.1:6379/0")
    report = result.get(timeout=60)["report"]

Tasks are sent by name (``aml.<operation>.<action>``) on the queue aml's workers consume for that
operation (``heavy`` or ``fast``), as JSON.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.result import AsyncResult

__all__ = ["ACTIONS", "QUEUES", "enqueue", "make_client_app", "task_name"]

QUEUES: dict[str, str] = {
    "backup": "heavy",
    "compress": "heavy",
    "migrate": "heavy",
    "prune": "heavy",
    "health": "fast",
    "trace": "fast",
    "verify": "fast",
}
"""operation -> the queue its tasks run on (the same routing as ``workers.app.queue_for``)."""

ACTIONS: dict[str, str] = {
    "backup": "create",
    "compress": "all",
    "migrate": "migrate",
    "prune": "run",
    "health": "check",
    "trace": "run",
    "verify": "check",
}
"""operation -> its default action (``enqueue("backup", ...)`` sends ``aml.backup.create``; ``enqueue("trace",
"redis://host:6379/0")`` sends ``aml.trace.run``)."""

_apps: dict[tuple[str, str | None], Celery] = {}


def task_name(operation: str, action: str | None = None) -> str:
    """The registered task name of ``operation`` (``"aml.health.check"`` for ``"health"``).

    Raises:
        ValueError: unknown operation.
    """
    if operation not in QUEUES:
        raise ValueError(f"unknown aml operation {operation!r}: expected one of {', '.join(sorted(QUEUES))}")
    return f"aml.{operation}.{action or ACTIONS[operation]}"


def make_client_app(broker: str | None = None, backend: str | None = None) -> Celery:
    """A Celery app for sending (JSON only); cached per (broker, backend); never made current.

    Args:
        broker: broker URL (default ``$AML_BROKER_URL``, else ``redis://127.0.0.1:6379/0``).
        backend: result backend (default ``$AML_RESULT_BACKEND``, else the broker).
    """
    broker = broker or os.environ.get("AML_BROKER_URL") or "redis://127.0.0.1:6379/0"
    backend = backend or os.environ.get("AML_RESULT_BACKEND") or broker
    key = (broker, backend)
    if key not in _apps:
        app = Celery("aml-client", broker=broker, backend=backend, set_as_current=False)
        app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                        result_accept_content=["json"])
        _apps[key] = app
    return _apps[key]


def enqueue(operation: str, store: str, *, action: str | None = None, broker: str | None = None,
            backend: str | None = None, app: Celery | None = None, countdown: float | None = None,
            **kwargs: Any) -> AsyncResult:
    """Send one aml operation on ``store`` to the workers.

    Args:
        operation: ``backup``, ``compress``, ``migrate``, ``prune``, ``health``, ``trace`` or ``verify``.
        store: the store's path as the workers see it (or a ``redis://`` URL for trace).
        action: the task's action when not the default (e.g. ``"auto"`` for ``aml.backup.auto``).
        broker, backend: used when ``app`` is not given (see :func:`make_client_app`).
        app: send with this Celery app instead (e.g. the agent's own).
        countdown: seconds to wait before the task may run.
        **kwargs: the task's other keyword arguments (JSON-serialisable), e.g. ``dry_run=True``.

    Returns:
        The :class:`celery.result.AsyncResult`; ``.get(timeout=...)`` returns the task's result dict.

    Raises:
        ValueError: unknown operation.
        kombu.exceptions.OperationalError: the broker does not answer.
    """
    name = task_name(operation, action)
    sender = app or make_client_app(broker, backend)
    queue = QUEUES[operation]
    # queue= alone: Celery routes it through the queue's own direct exchange (named as the queue, as aml's
    # workers declare it); naming the exchange and routing key too cost a broker lookup per message
    return sender.send_task(name, kwargs={"store": store, **kwargs}, queue=queue, countdown=countdown)
