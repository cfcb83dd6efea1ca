"""The Celery base class of aml's tasks: their retry policy (imported only where Celery runs them,
:mod:`tasks.registry`)."""

from __future__ import annotations

from typing import Any

from celery import Task

from tasks.base import transient_errors
from workers.locks import LockUnavailable, StoreLocked

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = transient_errors(load=True)
"""Errors a later attempt can succeed after (:func:`tasks.base.transient_errors`): a broker, lock Redis or
catalog that did not answer. Never a data error."""


class AmlTask(Task):
    """Base class of every aml task: a store held by a live operation (:class:`StoreLocked`), an
    unreachable lock Redis and transient broker/catalog errors (before a destructive body starts:
    :class:`tasks.base.NotRetried`) are retried with exponential backoff and
    full jitter (2 s, 4 s, ... capped at 300 s; 10 retries, about 20 minutes in all), on the workers.
    An inline run (``task.apply()``, or the ``aml`` command's own, :mod:`tasks.registry`) never retries: it
    raises the error, or reports the lock as skipped.

    Source: Celery's ``autoretry_for`` / ``retry_backoff`` / ``retry_jitter`` (the "exponential backoff
    and jitter" of AWS's architecture blog, which Celery's documentation cites).
    """

    autoretry_for = (StoreLocked, LockUnavailable, *TRANSIENT_ERRORS)
    retry_backoff = 2
    retry_backoff_max = 300
    retry_jitter = True
    max_retries = 10

    def retry(self, args: Any = None, kwargs: Any = None, exc: BaseException | None = None, throw: bool = True,
              eta: Any = None, countdown: float | None = None, max_retries: int | None = None,
              **options: Any) -> Any:
        """Celery's retry on a worker; an inline run re-raises ``exc`` instead of re-running at once."""
        if self.request.is_eager and exc is not None:
            raise exc
        return super().retry(args=args, kwargs=kwargs, exc=exc, throw=throw, eta=eta, countdown=countdown,
                             max_retries=max_retries, **options)
