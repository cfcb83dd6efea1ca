"""Run a task inline (``task.apply()``, no broker) or on the workers (``apply_async``).

One code path for both (DESIGN.md): the CLI builds the task's keyword arguments and calls
:func:`execute`; the task body is the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Task


@dataclass
class Outcome:
    """What the CLI gets back: the result dict (inline or waited for) or the id of a queued task."""

    result: dict[str, Any] | None
    task_id: str
    queued: bool


def execute(task: Task, kwargs: dict[str, Any], *, enqueue: bool = False, wait: bool = False,
            timeout: float | None = 3600.0) -> Outcome:
    """Run ``task`` with ``kwargs``.

    Args:
        task: a Celery task of ``tasks.*``.
        kwargs: its keyword arguments (JSON-serialisable).
        enqueue: send to the workers through the broker instead of running here.
        wait: with ``enqueue``, wait for the result.
        timeout: seconds to wait for an enqueued result.

    Returns:
        An :class:`Outcome`.

    Raises:
        Exception: the task's own exception (inline, or waited for).
        celery.exceptions.TimeoutError: the enqueued task did not finish within ``timeout``.
    """
    if not enqueue:
        eager = task.apply(kwargs=kwargs, throw=True)
        return Outcome(eager.get(), str(eager.id), False)
    async_result = task.apply_async(kwargs=kwargs)
    if not wait:
        return Outcome(None, str(async_result.id), True)
    value = async_result.get(timeout=timeout, propagate=True)
    return Outcome(value, str(async_result.id), True)
