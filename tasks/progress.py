"""Progress of long tasks: a rich bar when inline, Celery task state (seen in Flower) on a worker.

The engine reports :class:`aml.backup.progress.Progress` events. :func:`task_progress` turns them into
either a call of the process-local sink the CLI installed (:func:`progress_sink`, inline runs) or a
``PROGRESS`` state update of the running Celery task (at most one per second).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from aml.backup.progress import Progress, ProgressCallback

if TYPE_CHECKING:
    from celery import Task

_SINK: contextvars.ContextVar[Callable[[Progress], None] | None] = contextvars.ContextVar("aml_progress_sink",
                                                                                         default=None)


@contextlib.contextmanager
def progress_sink(sink: Callable[[Progress], None]) -> Iterator[None]:
    """Route the progress of tasks run inline in this context to ``sink`` (the CLI's progress bar)."""
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)


def task_progress(task: Task | None, *, interval_s: float = 1.0) -> ProgressCallback | None:
    """The progress callback for an engine call made by ``task``.

    Returns:
        The CLI's sink when one is installed (inline run), else a callback updating the Celery task's
        state to ``PROGRESS`` with the event as ``meta`` (throttled to one per ``interval_s``), else
        ``None`` (eager run without a sink).
    """
    sink = _SINK.get()
    if sink is not None:
        return sink
    if task is None or task.request.is_eager or not task.request.id:
        return None
    next_at = 0.0

    def update(event: Progress) -> None:
        nonlocal next_at
        now = time.monotonic()
        if event.final or now >= next_at:
            next_at = now + interval_s
            meta: dict[str, Any] = event.to_dict()
            task.update_state(state="PROGRESS", meta=meta)

    return update
