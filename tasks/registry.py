"""aml's tasks, as Celery tasks that an inline run does not need Celery for.

Every operation's task is declared with :func:`operation_task` instead of Celery's ``shared_task``. In any
process that did not ask otherwise (a worker, a user's Celery app, a test) it *is* ``shared_task``: the task is
registered with every Celery app when its module is imported, exactly as before.

The ``aml`` command asks otherwise (:func:`defer_celery`, the first thing it does): its inline runs call the
task's function directly (:meth:`OperationTask.run_inline`), with the same arguments and the same ``self``
that Celery's ``task.apply()`` gives (``self.request.id``, ``self.request.is_eager``), so the process never
imports Celery, kombu or redis-py (about 0.2 s of a one-shot command's start-up, issue 12). The first time
anything else is asked of a task (``delay``, ``apply_async``, ``app``...), Celery is imported and every aml task
declared so far becomes its Celery task, so an enqueue, or an inline remediation chain that runs other tasks
by name, finds them all registered.
"""

from __future__ import annotations

import importlib
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery, Task

_deferred = False
_celery_loaded = False
_pending: list[OperationTask] = []
_lock = threading.RLock()
"""Serialises making Celery tasks (two threads of a deferred process may first use tasks at once)."""


def defer_celery() -> None:
    """Declare this process a one-shot command: tasks declared from now on are made Celery tasks only when
    first used as such (:class:`OperationTask`). Called by the ``aml`` command before it imports any task."""
    from workers.app import one_shot_process

    global _deferred
    _deferred = True
    one_shot_process()  # its settings: read once, the same for every task (workers.app.get_settings)


def deferring() -> bool:
    """Whether this process is a one-shot command that has not used Celery yet (:func:`defer_celery`): a task
    module then need not import what only registers more Celery tasks."""
    return _deferred and not _celery_loaded


@dataclass
class InlineRequest:
    """What a task reads of ``self.request`` in an inline run: the same fields Celery's eager ``apply()`` sets."""

    id: str
    is_eager: bool = True
    headers: dict[str, Any] | None = None


class InlineTask:
    """The ``self`` of an inline run (:meth:`OperationTask.run_inline`): the task's name, its request, and its
    Celery ``app`` (imported and made on first use, e.g. by an inline remediation chain)."""

    def __init__(self, task: OperationTask, task_id: str) -> None:
        self.name = task.name
        self.request = InlineRequest(task_id)

    @property
    def app(self) -> Celery:
        """The current aml Celery app (:func:`workers.app.current_aml_app`), every aml task registered in it."""
        from workers.app import current_aml_app

        _materialise_pending()
        return current_aml_app()


class OperationTask:
    """One aml task: its function, name and Celery options, and the Celery task made of them
    (:func:`celery.shared_task`, with :class:`tasks.retry.AmlTask` as base unless ``retry=False``).

    Any attribute not defined here (``delay``, ``apply``, ``apply_async``, ``s``, ``run``...) is the Celery
    task's; calling the object calls the Celery task (``Task.__call__``).
    """

    def __init__(self, fun: Callable[..., dict[str, Any]], name: str, *, retry: bool,
                 options: dict[str, Any]) -> None:
        self.fun = fun
        self.name = name
        self._retry = retry  # not ``retry`` or ``options``: those names are the Celery task's (``Task.retry``)
        self._options = options
        self._celery: Task | None = None
        self.__doc__ = fun.__doc__
        self.__wrapped__ = fun

    @property
    def deferred(self) -> bool:
        """Whether the Celery task is not made yet (a deferred process that has not used Celery): an inline run
        then calls the function itself (:meth:`run_inline`), as :func:`workers.dispatch.execute` does."""
        return self._celery is None

    def celery_task(self) -> Task:
        """The Celery task (made now if it was deferred, with every other deferred aml task)."""
        if self._celery is None:
            with _lock:
                _materialise_pending()
                if self._celery is None:
                    self._materialise()
        assert self._celery is not None
        return self._celery

    def _materialise(self) -> None:
        global _celery_loaded
        if self._celery is not None:
            return
        from celery import shared_task

        base: dict[str, Any] = {}
        if self._retry:
            from tasks.retry import AmlTask

            base["base"] = AmlTask
        self._celery = shared_task(bind=True, name=self.name, **base, **self._options)(self.fun)
        _celery_loaded = True

    def run_inline(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Run the task here, as Celery's eager ``apply(kwargs=kwargs, throw=True)`` would, without Celery.

        Returns:
            ``(result, task_id)``: the function's result and the new task id (a UUID4, as Celery makes).

        Raises:
            Exception: whatever the task raised (an inline run never retries: :class:`tasks.retry.AmlTask`).
        """
        task_id = str(uuid.uuid4())
        return self.fun(InlineTask(self, task_id), **kwargs), task_id

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # copy, pickle and inspect probe dunders: not the Celery task's
            raise AttributeError(attr)
        return getattr(self.celery_task(), attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.celery_task()(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled by reference, as its module holds it (Celery pickles a task by name, too)."""
        return _module_attribute, (self.fun.__module__, self.fun.__name__)

    def __repr__(self) -> str:
        return f"<aml task {self.name}{'' if self._celery is not None else ' (not yet a Celery task)'}>"


def _module_attribute(module: str, name: str) -> Any:
    """``module.name``: an unpickled :class:`OperationTask` is the one its module declares."""
    return getattr(importlib.import_module(module), name)


def _materialise_pending() -> None:
    """Make every deferred task its Celery task (importing Celery); later declarations are made at once."""
    with _lock:
        while _pending:
            _pending.pop(0)._materialise()


def operation_task(name: str, *, retry: bool = True, **options: Any) -> Callable[[Callable[..., Any]],
                                                                                OperationTask]:
    """Declare an aml task: ``@operation_task("aml.health.check")`` over ``def check(self, store, ...)``.

    Args:
        name: the Celery task name (``aml.<operation>.<action>``: routes and time limits go by it,
            :mod:`workers.app`).
        retry: use :class:`tasks.retry.AmlTask` (retries on a locked store and transient errors) as the base
            class; ``False``: Celery's plain ``Task`` (a task with its own retry policy, e.g. notify's).
        options: further ``shared_task`` options (``acks_late=True``...).

    Returns:
        A decorator making an :class:`OperationTask` of a function whose first argument is the bound task.
    """

    def decorate(fun: Callable[..., Any]) -> OperationTask:
        task = OperationTask(fun, name, retry=retry, options=options)
        with _lock:
            if deferring():
                _pending.append(task)
                return task
        task._materialise()
        return task

    return decorate
