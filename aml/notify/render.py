"""Alert notices and the bodies each notification target receives.

A *notice* is the JSON-safe form of one alert at the instant it is notified (:func:`notice`): the
catalog's alert fields plus ``status`` (``firing``/``resolved``), ``starts_at``, ``ends_at`` and
``generator_url``. Notices travel as Celery task arguments, so they hold no secret.

Bodies follow Alertmanager's formats, so any receiver that speaks them works unchanged:

- :func:`alertmanager_alerts`: the list ``POST /api/v2/alerts`` takes (Alertmanager's OpenAPI
  ``postableAlerts``: ``labels``, ``annotations``, ``startsAt``, ``endsAt``, ``generatorURL``).
- :func:`webhook_body`: the body of Alertmanager's own ``webhook_config`` receiver (``version`` "4",
  ``status``, ``receiver``, ``groupLabels``, ``commonLabels``, ``commonAnnotations``, ``externalURL``,
  ``alerts[]`` with ``status``, ``labels``, ``annotations``, ``startsAt``, ``endsAt``, ``generatorURL``,
  ``fingerprint``), plus an ``aml`` object per alert (count, first/last seen, details).
- :func:`email_message`: a plain-text :class:`email.message.EmailMessage`.

Source: https://prometheus.io/docs/alerting/latest/clients/ (push API, ``endsAt``) and
https://prometheus.io/docs/alerting/latest/configuration/#webhook_config (webhook body).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any
from urllib.parse import quote

from aml.store.timestamps import utc_iso_z

ZERO_TIME = "0001-01-01T00:00:00Z"
"""How Alertmanager's webhook writes the ``endsAt`` of a firing alert (Go's zero time)."""


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return utc_iso_z(value)


def notice(alert: Any, *, now: datetime, repeat_s: float, generator_base: str) -> dict[str, Any]:
    """The notice of one alert (a ``models.tables.Alert`` or anything with its attributes).

    ``ends_at`` is ``resolved_at`` for a resolved alert. For a firing one it is ``now`` + 2 x the repeat
    interval: Alertmanager considers an alert resolved at its ``endsAt`` (or ``resolve_timeout``, 5 min,
    after the last push when unset), and aml pushes a firing alert only once per repeat interval, so the
    alert must stay valid until the next push with a margin, as Prometheus does (it sends ``endsAt`` = 4 x
    its resend interval ahead). If aml stops, Alertmanager resolves the alert on its own after that.

    Args:
        now: the instant of the notification.
        repeat_s: the repeat interval, seconds.
        generator_base: base of ``generator_url`` (``<base>/alerts/<fingerprint>``).
    """
    resolved = alert.resolved_at is not None
    ends = alert.resolved_at if resolved else now + timedelta(seconds=2 * repeat_s)
    return {
        "status": "resolved" if resolved else "firing",
        "fingerprint": alert.fingerprint, "store": alert.store, "agent": alert.agent, "check": alert.check,
        "severity": alert.severity, "message": alert.message, "details": dict(alert.details or {}),
        "count": alert.count, "first_seen": _iso(alert.first_seen), "last_seen": _iso(alert.last_seen),
        "resolved_at": _iso(alert.resolved_at), "starts_at": _iso(alert.first_seen), "ends_at": _iso(ends),
        "generator_url": f"{generator_base.rstrip('/')}/alerts/{quote(alert.fingerprint, safe='')}",
    }


def alert_labels(n: Mapping[str, Any]) -> dict[str, str]:
    """Alertmanager labels of a notice: ``alertname`` (the check), ``store``, ``agent`` (when there is
    one: an empty label is no label to Alertmanager), ``severity``, ``fingerprint``, ``service`` = ``aml``."""
    out = {"alertname": str(n["check"]), "service": "aml", "store": str(n["store"]), "severity": str(n["severity"]),
           "fingerprint": str(n["fingerprint"])}
    if n.get("agent"):
        out["agent"] = str(n["agent"])
    return out


def alert_annotations(n: Mapping[str, Any]) -> dict[str, str]:
    """Alertmanager annotations of a notice: ``summary`` and ``description`` (the message; the
    description adds the count and the details as JSON)."""
    details = json.dumps(n.get("details") or {}, sort_keys=True, default=str)
    return {"summary": str(n["message"]),
            "description": f"{n['message']} (seen {n['count']} time(s) since {n['first_seen']}; details {details})"}


def alertmanager_alerts(notices: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The JSON list for ``POST /api/v2/alerts``, one element per notice."""
    return [{"labels": alert_labels(n), "annotations": alert_annotations(n), "startsAt": n["starts_at"],
             "endsAt": n["ends_at"], "generatorURL": n["generator_url"]} for n in notices]


def _common(dicts: Sequence[dict[str, str]]) -> dict[str, str]:
    if not dicts:
        return {}
    first = dicts[0]
    return {k: v for k, v in first.items() if all(d.get(k) == v for d in dicts[1:])}


def webhook_body(notices: Sequence[Mapping[str, Any]], *, external_url: str) -> dict[str, Any]:
    """The webhook's JSON body (Alertmanager's webhook format, version 4).

    ``status`` is ``firing`` when any notice fires, else ``resolved``; a firing alert's ``endsAt`` is
    :data:`ZERO_TIME`, as Alertmanager writes it; ``groupLabels`` is ``{"store": ...}`` (one body per
    store and run).
    """
    alerts = []
    for n in notices:
        alerts.append({
            "status": n["status"], "labels": alert_labels(n), "annotations": alert_annotations(n),
            "startsAt": n["starts_at"],
            "endsAt": n["resolved_at"] or ZERO_TIME, "generatorURL": n["generator_url"],
            "fingerprint": n["fingerprint"],
            "aml": {"count": n["count"], "first_seen": n["first_seen"], "last_seen": n["last_seen"],
                    "details": n["details"]},
        })
    firing = any(n["status"] == "firing" for n in notices)
    stores = sorted({str(n["store"]) for n in notices})
    return {
        "version": "4", "groupKey": "aml:" + ",".join(stores), "truncatedAlerts": 0,
        "status": "firing" if firing else "resolved", "receiver": "aml",
        "groupLabels": {"store": stores[0]} if len(stores) == 1 else {},
        "commonLabels": _common([a["labels"] for a in alerts]),
        "commonAnnotations": _common([a["annotations"] for a in alerts]),
        "externalURL": external_url, "alerts": alerts,
    }


def email_message(notices: Sequence[Mapping[str, Any]], *, sender: str, recipients: Sequence[str],
                  now: datetime | None = None) -> EmailMessage:
    """A plain-text e-mail listing the notices, subject ``[aml] FIRING 2, RESOLVED 1: <store>``."""
    firing = [n for n in notices if n["status"] == "firing"]
    resolved = [n for n in notices if n["status"] == "resolved"]
    parts = ([f"FIRING {len(firing)}"] if firing else []) + ([f"RESOLVED {len(resolved)}"] if resolved else [])
    stores = sorted({str(n["store"]) for n in notices})
    msg = EmailMessage()
    msg["Subject"] = f"[aml] {', '.join(parts)}: {', '.join(stores)}"
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = format_datetime(now or datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    lines = []
    for n in [*firing, *resolved]:
        who = f"{n['store']}" + (f" / {n['agent']}" if n.get("agent") else "")
        lines.append(f"[{n['status'].upper()}] {n['severity']} {n['check']} on {who}")
        lines.append(f"  {n['message']}")
        lines.append(f"  since {n['starts_at']}, seen {n['count']} time(s), last {n['last_seen']}"
                     + (f", resolved {n['resolved_at']}" if n["resolved_at"] else ""))
        if n.get("details"):
            lines.append("  details: " + json.dumps(n["details"], sort_keys=True, default=str))
        lines.append(f"  {n['generator_url']}")
        lines.append("")
    msg.set_content("\n".join(lines))
    return msg
