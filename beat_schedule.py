"""The periodic maintenance that cron used to run, as Celery beat entries.

Entries are added per operation as the operations land. Run exactly one ``aml beat``.
The stores maintained are listed in ``AML_STORES`` (comma-separated).
"""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab


def beat_schedule(stores: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Build the beat schedule for ``stores``.

    Source: the seeds' cron table (daily backup 02:00, weekly prune Sunday 03:00, daily health 06:00
    UTC) and DESIGN.md (a weekly verify: Saturday 05:00 UTC, reading the least recently verified 15 %
    of the packs, so every pack is re-read at least every seven weeks; the catalog's retention daily at
    01:00 UTC).

    Args:
        stores: store paths/ids to maintain.

    Returns:
        Celery ``beat_schedule`` mapping: entry name -> ``{"task", "schedule", "kwargs", "options"}``.
    """
    schedule: dict[str, dict[str, Any]] = {
        "catalog retention": {  # daily 01:00 UTC, before backup (02:00) and health (06:00)
            "task": "aml.catalog.retention",
            "schedule": crontab(minute="0", hour="1"),
            "kwargs": {},
            "options": {"queue": "fast"},
        },
    }
    for store in stores:
        schedule[f"backup auto {store}"] = {
            "task": "aml.backup.auto",
            "schedule": crontab(minute="0", hour="2"),
            "kwargs": {"store": store},
            "options": {"queue": "heavy"},
        }
        schedule[f"verify {store}"] = {
            "task": "aml.verify.check",
            "schedule": crontab(minute="0", hour="5", day_of_week="sat"),
            "kwargs": {"store": store, "read_data_subset": "15%"},
            "options": {"queue": "fast"},
        }
        schedule[f"optimize {store}"] = {  # the seeds' monthly optimize: 1st of the month, 04:00 UTC
            "task": "aml.compress.all",
            "schedule": crontab(minute="0", hour="4", day_of_month="1"),
            "kwargs": {"store": store},
            "options": {"queue": "heavy"},
        }
        schedule[f"prune {store}"] = {  # the seeds' weekly prune: Sunday 03:00 UTC
            "task": "aml.prune.run",
            "schedule": crontab(minute="0", hour="3", day_of_week="sun"),
            "kwargs": {"store": store},
            "options": {"queue": "heavy"},
        }
        schedule[f"health {store}"] = {
            "task": "aml.health.check",
            "schedule": crontab(minute="0", hour="6"),
            "kwargs": {"store": store},
            "options": {"queue": "fast"},
        }
    return schedule
