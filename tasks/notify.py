"""Alert notifications: claim the alerts that changed state, deliver them (``aml.notify.send``).

After a health or trace run has committed its alerts, :func:`notify_store` claims the store's alerts
due a notification (:func:`models.queries.claim_notifications`: a firing alert once per
``AML_ALERT_REPEAT_INTERVAL``, 4 h by default as Alertmanager's ``repeat_interval``; a resolution once)
and sends one body per configured target (Alertmanager, webhook, e-mail):

- on a worker, one ``aml.notify.send`` task per target on the ``fast`` queue, retried on transient
  failures (timeouts, connection errors, HTTP 429/5xx, SMTP 4xx) with exponential backoff and full
  jitter (2 s, 4 s, ... capped at 600 s; ``AML_ALERT_RETRIES`` retries), never on permanent ones
  (HTTP 4xx, SMTP 5xx). Source: Celery's ``Task.retry`` and the "exponential backoff and jitter" of
  AWS's architecture blog (full jitter: a uniform delay between 0 and the exponential bound);
- inline (the CLI's default, or ``task.apply()``), synchronously, one attempt per target bounded by
  ``AML_ALERT_TIMEOUT`` seconds; when no target received it the claim is released, so the next run
  tries again.

Nothing here raises into the health or trace task: every failure is logged and summarised in the
task's result under ``notifications``. Task arguments carry notices only (no URL, no token): each
worker reads its targets from its own settings, so secrets never reach the broker, the result backend,
the logs or the catalog.
"""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aml.notify import (
    PermanentDeliveryError,
    Target,
    TransientDeliveryError,
    deliver,
    notice,
    scrub,
)
from models import queries
from tasks.registry import operation_task
from workers.app import get_settings
from workers.settings import Settings

if TYPE_CHECKING:
    from celery import Task

log = logging.getLogger(__name__)

RETRY_BASE_S = 2.0
"""First retry bound of ``aml.notify.send``, seconds (doubled per retry)."""

RETRY_CAP_S = 600.0
"""Largest retry bound of ``aml.notify.send``, seconds."""


def targets(settings: Settings) -> list[Target]:
    """The configured targets, in order Alertmanager, webhook, e-mail (e-mail needs recipients too)."""
    found = []
    if settings.alertmanager_url:
        found.append(Target("alertmanager", settings.alertmanager_url))
    if settings.alert_webhook_url:
        token = settings.alert_webhook_token.get_secret_value()
        found.append(Target("webhook", settings.alert_webhook_url, token=token))
    smtp = settings.smtp_url.get_secret_value()
    if smtp and settings.alert_email_to:
        found.append(Target("email", smtp, sender=settings.alert_email_from, recipients=settings.alert_email_to))
    return found


def _target(settings: Settings, kind: str) -> Target | None:
    return next((t for t in targets(settings) if t.kind == kind), None)


def _secrets(settings: Settings) -> list[str]:
    return [s for t in targets(settings) for s in t.secrets]


def notify_store(store_id: str, *, eager: bool, settings: Settings | None = None,
                 now: datetime | None = None) -> dict[str, Any]:
    """Claim ``store_id``'s alerts due a notification and send (inline) or enqueue (worker) them.

    Never raises: a failure is logged and reported in the summary.

    Args:
        eager: deliver here and now (inline runs) instead of enqueueing ``aml.notify.send``.
        now: the instant of the claim (default: now).

    Returns:
        ``{"targets": [kinds], "firing": n, "resolved": n}`` plus, inline, ``"delivered"`` (kind ->
        description) and ``"errors"`` (kind -> secret-free message), on a worker ``"queued"`` (kind -> task
        id); ``{"targets": []}`` when none is configured (nothing is claimed then).
    """
    settings = settings or get_settings()
    summary: dict[str, Any] = {"targets": []}
    try:
        configured = targets(settings)
        summary["targets"] = [t.kind for t in configured]
        if not configured:
            return summary
        from workers.catalog import session_scope

        at = now or datetime.now(UTC)
        with session_scope(settings.catalog_url) as session:
            claimed = queries.claim_notifications(session, store=store_id, repeat_s=settings.alert_repeat_interval,
                                                  now=at)
            notices = [notice(a, now=at, repeat_s=settings.alert_repeat_interval,
                              generator_base=settings.alert_generator_url) for a in claimed]
            ids = [a.id for a in claimed]
        summary["firing"] = sum(1 for n in notices if n["status"] == "firing")
        summary["resolved"] = len(notices) - summary["firing"]
        if not notices:
            return summary
        if eager:
            delivered, errors = {}, {}
            for target in configured:
                try:
                    delivered[target.kind] = deliver(target, notices, timeout=settings.alert_timeout,
                                                     external_url=settings.alert_generator_url)
                except Exception as exc:
                    errors[target.kind] = scrub(f"{type(exc).__name__}: {exc}", target.secrets)
                    log.warning("notification of %d alert(s) of %s to %s failed: %s", len(notices), store_id,
                                target.kind, errors[target.kind])
            summary.update(delivered=delivered, errors=errors)
            if not delivered:
                with session_scope(settings.catalog_url) as session:
                    queries.release_notifications(session, ids)
        else:
            queued = {}
            for target in configured:
                queued[target.kind] = send.apply_async(kwargs={"target": target.kind, "notices": notices}).id
            summary["queued"] = queued
    except Exception as exc:  # a notification never fails the run that raised the alerts
        message = scrub(f"{type(exc).__name__}: {exc}", _secrets(settings))
        log.error("notifications of %s failed: %s", store_id, message)
        summary["error"] = message
    return summary


@operation_task("aml.notify.send", retry=False, acks_late=True)
def send(self: Task, target: str, notices: list[dict[str, Any]]) -> dict[str, Any]:
    """Deliver ``notices`` to one configured target (``alertmanager``, ``webhook`` or ``email``).

    Retries transient failures with exponential backoff and full jitter (a delay uniform in
    [0, min(:data:`RETRY_CAP_S`, :data:`RETRY_BASE_S` x 2^retries)] seconds), at most ``AML_ALERT_RETRIES``
    times; a permanent failure (HTTP 4xx, SMTP 5xx) fails the task at once.

    Returns:
        ``{"target", "alerts": n, "delivered": description}``.

    Raises:
        PermanentDeliveryError: not retried. TransientDeliveryError: the retries are spent.
    """
    settings = get_settings()
    chosen = _target(settings, target)
    if chosen is None:
        log.warning("notification target %s is not configured on this worker: %d alert(s) dropped", target,
                    len(notices))
        return {"target": target, "alerts": len(notices), "delivered": None, "skipped": "not configured"}
    try:
        done = deliver(chosen, notices, timeout=settings.alert_timeout, external_url=settings.alert_generator_url)
    except TransientDeliveryError as exc:
        retries = int(self.request.retries or 0)
        if retries >= settings.alert_retries:
            log.error("notification to %s failed after %d retries: %s", target, retries, exc)
            raise
        delay = random.uniform(0, min(RETRY_CAP_S, RETRY_BASE_S * 2 ** retries))
        log.warning("notification to %s failed (%s): retry %d in %.1f s", target, exc, retries + 1, delay)
        raise self.retry(exc=exc, countdown=delay, max_retries=settings.alert_retries) from None
    except PermanentDeliveryError as exc:
        log.error("notification to %s refused, not retried: %s", target, exc)
        raise
    log.info("notified %s of %d alert(s): %s", target, len(notices), done)
    return {"target": target, "alerts": len(notices), "delivered": done}
