"""Alert notifications: render alerts for Alertmanager, a JSON webhook and e-mail, and deliver them.

No Celery and no catalog here (``tasks.notify`` claims alerts in the catalog and runs delivery as a
task): :mod:`aml.notify.render` turns alert *notices* (plain dicts) into each target's body,
:mod:`aml.notify.deliver` sends one body with a bounded timeout and says whether a failure is worth a
retry, and never puts a secret (URL password, bearer token, SMTP password) in an error message.
"""

from aml.notify.deliver import (
    DeliveryError,
    PermanentDeliveryError,
    Target,
    TransientDeliveryError,
    deliver,
    redact_url,
    scrub,
)
from aml.notify.render import alertmanager_alerts, email_message, notice, webhook_body

__all__ = [
    "DeliveryError",
    "PermanentDeliveryError",
    "Target",
    "TransientDeliveryError",
    "alertmanager_alerts",
    "deliver",
    "email_message",
    "notice",
    "redact_url",
    "scrub",
    "webhook_body",
]
