"""Run a task inline (no broker) or on the workers (``apply_async``).

One code path for both (DESIGN.md): the CLI builds the task's keyword arguments and calls
:func:`execute`; the task body is the same either way. Inline, an aml task of the ``aml`` command runs without Celery
(:meth:`tasks.registry.OperationTask.run_inline`, what ``task.apply()`` does, minus Celery's import); in any
other process, and once the command has used Celery, through Celery's ``task.apply()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery


@dataclass
class Outcome:
    """What the CLI gets back: the result dict (inline or waited for) or the id of a queued task."""

    result: dict[str, Any] | None
    task_id: str
    queued: bool


class NoConsumer(RuntimeError):
    """No running worker consumes the queue a task would be sent to (checked with ``inspect``)."""

    def __init__(self, task: str, queue: str) -> None:
        self.task = task
        self.queue = queue
        super().__init__(f"no worker consumes queue {queue!r}, so {task} would never run: start one with "
                         f"`aml worker -Q {queue}` (the task was not sent)")


def queue_of(app: Celery, task_name: str) -> str:
    """The queue ``task_name`` is routed to by ``app``'s routes."""
    return str(app.amqp.router.route({}, task_name)["queue"].name)


def consumers_of(app: Celery, queue: str, timeout: float = 2.0) -> list[str]:
    """Node names of the running workers that consume ``queue`` (Celery's ``inspect active_queues``;
    waits up to ``timeout`` seconds for replies)."""
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    return sorted(node for node, queues in replies.items() if any(q.get("name") == queue for q in queues or []))


def execute(task: Any, kwargs: dict[str, Any], *, enqueue: bool = False, wait: bool = False,
            timeout: float | None = 3600.0) -> Outcome:
    """Run ``task`` with ``kwargs``.

    Args:
        task: a task of ``tasks.*`` (:class:`tasks.registry.OperationTask`), or any Celery task.
        kwargs: its keyword arguments (JSON-serialisable).
        enqueue: send to the workers through the broker instead of running here.
        wait: with ``enqueue``, wait for the result.
        timeout: seconds to wait for an enqueued result.

    Returns:
        An :class:`Outcome`.

    Raises:
        Exception: the task's own exception (inline, or waited for).
        NoConsumer: ``wait`` was asked and no running worker consumes the task's queue (nothing sent).
        celery.exceptions.TimeoutError: the enqueued task did not finish within ``timeout``.
    """
    if not enqueue:
        if getattr(task, "deferred", False) is True:  # an aml task the aml command has not made a Celery task
            result, task_id = task.run_inline(kwargs)
            return Outcome(result, task_id, False)
        eager = task.apply(kwargs=kwargs, throw=True)
        return Outcome(eager.get(), str(eager.id), False)
    if wait:
        queue = queue_of(task.app, task.name)
        if not consumers_of(task.app, queue):
            raise NoConsumer(task.name, queue)
    async_result = task.apply_async(kwargs=kwargs)
    if not wait:
        return Outcome(None, str(async_result.id), True)
    try:
        value = async_result.get(timeout=timeout, propagate=True)
    finally:
        async_result.backend.remove_pending_result(async_result)  # no stale subscription at exit
    return Outcome(value, str(async_result.id), True)
