"""Deliver one notification body to one target: HTTP POST (Alertmanager, webhook) or SMTP.

Each attempt is bounded by a timeout (seconds). Failures are classified for the caller's retry policy:

- :class:`TransientDeliveryError`: worth retrying later: timeouts, refused or reset connections, name
  resolution failures, HTTP 429 and 5xx, SMTP 4xx replies and dropped SMTP connections;
- :class:`PermanentDeliveryError`: retrying cannot help: HTTP 4xx other than 429 (a bad body, a wrong
  token), SMTP 5xx replies (authentication refused, recipient unknown), a malformed URL.

Secrets never leave this module in an error: messages name a target by :func:`redact_url` (scheme, host,
port and path: no user, password or query) and are passed through :func:`scrub`, which replaces every
secret of the target (URL passwords, the bearer token) by ``***``.
"""

from __future__ import annotations

import base64
import json
import smtplib
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

KINDS = ("alertmanager", "webhook", "email")
"""The notification targets, in delivery order."""

ALERTMANAGER_PATH = "/api/v2/alerts"
"""Alertmanager's push endpoint (API v2)."""


class DeliveryError(Exception):
    """A notification was not delivered; the message holds no secret."""


class TransientDeliveryError(DeliveryError):
    """A failure a later attempt may not meet (timeouts, connection errors, HTTP 429/5xx, SMTP 4xx)."""


class PermanentDeliveryError(DeliveryError):
    """A failure every attempt would meet (HTTP 4xx but 429, SMTP 5xx, a bad URL)."""


@dataclass(frozen=True)
class Target:
    """One configured notification target.

    Attributes:
        kind: ``alertmanager``, ``webhook`` or ``email``.
        url: the Alertmanager base URL, the webhook URL, or the ``smtp://``/``smtps://`` URL (may hold a
            password: never print it, use :attr:`safe_url`).
        token: the webhook's bearer token (``""``: none).
        sender / recipients: e-mail only.
    """

    kind: str
    url: str = field(repr=False)
    token: str = field(default="", repr=False)
    sender: str = ""
    recipients: tuple[str, ...] = ()

    @property
    def safe_url(self) -> str:
        """The URL without user, password or query (what logs and results may show)."""
        return redact_url(self.url)

    @property
    def secrets(self) -> list[str]:
        """Strings that must never be shown: the token, the URL's password (raw and decoded), its query."""
        parts = urlsplit(self.url)
        found = [self.token, parts.password or "", unquote(parts.password or ""), parts.query]
        return [s for s in found if s]


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path`` of ``url``: user, password, query and fragment dropped.

    >>> redact_url("smtp://alerts:s3cret@mail.example.org:587")
    'smtp://mail.example.org:587'
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every non-empty secret replaced by ``***`` (longest first)."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def deliver(target: Target, notices: Sequence[dict[str, Any]], *, timeout: float, external_url: str = "") -> str:
    """Send ``notices`` to ``target`` in one request or message.

    Args:
        timeout: seconds for the connection and each read/write of the attempt.
        external_url: the webhook body's ``externalURL``.

    Returns:
        A short, secret-free description of what was sent (``"HTTP 200"``, ``"250 to 2 recipient(s)"``).

    Raises:
        TransientDeliveryError / PermanentDeliveryError: see the module's documentation.
    """
    from aml.notify.render import alertmanager_alerts, email_message, webhook_body

    try:
        if target.kind == "alertmanager":
            url = target.url.rstrip("/") + ALERTMANAGER_PATH
            return _post_json(target, url, alertmanager_alerts(notices), timeout)
        if target.kind == "webhook":
            return _post_json(target, target.url, webhook_body(notices, external_url=external_url), timeout)
        if target.kind == "email":
            msg = email_message(notices, sender=target.sender, recipients=target.recipients)
            return _send_mail(target, msg, timeout)
        raise PermanentDeliveryError(f"unknown notification target {target.kind!r}")
    except DeliveryError as exc:
        raise type(exc)(scrub(str(exc), target.secrets)) from None


def _post_json(target: Target, url: str, body: Any, timeout: float) -> str:
    """POST ``body`` as JSON; credentials in the URL become a Basic ``Authorization`` header."""
    try:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PermanentDeliveryError(f"{target.kind}: {redact_url(url)} is not an http(s) URL")
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        netloc += f":{parts.port}" if parts.port else ""
    except ValueError as exc:
        raise PermanentDeliveryError(f"{target.kind}: unparsable URL ({exc.__class__.__name__})") from None
    headers = {"Content-Type": "application/json", "User-Agent": "aml-notify/1"}
    if target.token:
        headers["Authorization"] = f"Bearer {target.token}"
    elif parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    plain = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    request = urllib.request.Request(plain, data=json.dumps(body).encode(), headers=headers, method="POST")
    where = f"{target.kind} {redact_url(url)}"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(65536)
            return f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        code = exc.code
        exc.close()
        if code == 429 or code >= 500:
            raise TransientDeliveryError(f"{where}: HTTP {code}") from None
        raise PermanentDeliveryError(f"{where}: HTTP {code} (not retried)") from None
    except urllib.error.URLError as exc:
        raise TransientDeliveryError(f"{where}: {_reason(exc.reason)}") from None
    except (TimeoutError, OSError, ValueError) as exc:  # a read timeout, a reset connection, http.client errors
        raise TransientDeliveryError(f"{where}: {_reason(exc)}") from None


def _reason(reason: object) -> str:
    if isinstance(reason, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(reason, socket.gaierror):
        return f"name does not resolve ({reason.strerror or reason})"
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}"
    return str(reason)


def _send_mail(target: Target, msg: EmailMessage, timeout: float) -> str:
    """Send ``msg`` through ``smtp://`` (STARTTLS when the server offers it) or ``smtps://`` (TLS from the
    start, port 465 by default); log in when the URL names a user."""
    if not target.recipients:
        raise PermanentDeliveryError("email: no recipients (AML_ALERT_EMAIL_TO)")
    try:
        parts = urlsplit(target.url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise PermanentDeliveryError(f"email: unparsable SMTP URL ({exc.__class__.__name__})") from None
    if parts.scheme not in ("smtp", "smtps") or not host:
        raise PermanentDeliveryError(f"email: {redact_url(target.url)} is not an smtp:// or smtps:// URL")
    where = f"email {redact_url(target.url)}"
    context = ssl.create_default_context()
    try:
        client: smtplib.SMTP
        if parts.scheme == "smtps":
            client = smtplib.SMTP_SSL(host, port or 465, timeout=timeout, context=context)
        else:
            client = smtplib.SMTP(host, port or 25, timeout=timeout)
        with client:
            client.ehlo()
            if parts.scheme == "smtp" and client.has_extn("starttls"):
                client.starttls(context=context)
                client.ehlo()
            if parts.username:
                client.login(unquote(parts.username), unquote(parts.password or ""))
            refused = client.send_message(msg, from_addr=target.sender, to_addrs=list(target.recipients))
    except smtplib.SMTPRecipientsRefused as exc:
        codes = sorted({code for code, _ in exc.recipients.values()})
        cls = TransientDeliveryError if all(400 <= c < 500 for c in codes) else PermanentDeliveryError
        raise cls(f"{where}: every recipient refused (SMTP {codes})") from None
    except smtplib.SMTPResponseException as exc:
        cls = TransientDeliveryError if 400 <= exc.smtp_code < 500 else PermanentDeliveryError
        text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        raise cls(f"{where}: SMTP {exc.smtp_code} {text}") from None
    except smtplib.SMTPNotSupportedError as exc:
        raise PermanentDeliveryError(f"{where}: {exc}") from None
    except (smtplib.SMTPException, OSError) as exc:  # dropped connection, refused, timeout, TLS failure
        raise TransientDeliveryError(f"{where}: {_reason(exc)}") from None
    sent = len(target.recipients) - len(refused)
    return f"250 to {sent} recipient(s)" + (f", {len(refused)} refused" if refused else "")
