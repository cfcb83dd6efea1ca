"""The periodic maintenance that cron used to run, as Celery beat entries.

Entries are added per operation as the operations land. Run exactly one ``aml beat``.
The stores maintained are listed in ``AML_STORES`` (comma-separated). ``AML_BEAT_SCHEDULE`` overrides the
times of the entries of named tasks (see :func:`parse_overrides` and :func:`parse_schedule`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from celery import schedules
from celery.schedules import crontab


def parse_schedule(text: str) -> schedules.schedule:
    """Parse one schedule as an operator writes it.

    Args:
        text: a positive number of seconds between two runs (``"300"``, ``"2.5"``), or a five-field cron
            expression, UTC (``"0 3 * * sun"``: minute, hour, day of the month, month, day of the week).

    Returns:
        A Celery interval ``schedule`` or a ``crontab`` (a subclass of it).

    Raises:
        ValueError: neither a positive number nor a valid cron expression.
    """
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        fields = text.split()
        if len(fields) != 5:
            raise ValueError(f"{text!r} is neither seconds nor a cron expression of 5 fields "
                             "(minute hour day-of-month month day-of-week)") from None
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        try:
            return crontab(minute=minute, hour=hour, day_of_week=day_of_week, day_of_month=day_of_month,
                           month_of_year=month_of_year)
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a valid cron expression: {exc}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{text!r}: an interval must be a positive number of seconds")
    return schedules.schedule(timedelta(seconds=seconds))


def parse_overrides(text: str) -> dict[str, str]:
    """Parse ``AML_BEAT_SCHEDULE``: ``TASK=SCHEDULE`` pairs separated by ``;`` (a cron expression has commas).

    Example: ``"aml.health.check=300; aml.backup.auto=30 1 * * *"``. Every schedule is checked with
    :func:`parse_schedule`, every task name against the tasks the schedule has entries for.

    Returns:
        task name -> schedule text (stripped), in the given order.

    Raises:
        ValueError: a pair without ``=``, a task with no beat entry, a task named twice, a bad schedule.
    """
    out: dict[str, str] = {}
    for pair in text.split(";"):
        if not pair.strip():
            continue
        task, sep, when = pair.partition("=")
        task, when = task.strip(), when.strip()
        if not sep or not task or not when:
            raise ValueError(f"{pair.strip()!r} is not TASK=SCHEDULE (e.g. aml.health.check=300)")
        if task in out:
            raise ValueError(f"{task} is given twice")
        out[task] = when
    check_overrides(out)
    return out


def scheduled_tasks() -> frozenset[str]:
    """The task names beat has entries for (given a file store and a Redis store)."""
    return frozenset(entry["task"] for entry in beat_schedule(("/store", "redis://127.0.0.1:6379/0")).values())


def check_overrides(overrides: Mapping[str, str]) -> None:
    """Check that every override names a scheduled task and gives a valid schedule.

    Raises:
        ValueError: an unknown task (the message lists the known ones) or a bad schedule.
    """
    known = scheduled_tasks()
    for task, when in overrides.items():
        if task not in known:
            raise ValueError(f"beat has no entry for task {task!r}: expected one of {', '.join(sorted(known))}")
        parse_schedule(when)


TRACE_INTERVAL_S = 300.0
"""Default seconds between two traces of a Redis keyspace ("trace every few minutes", DESIGN.md)."""

FILE_TRACE_MIN_INTERVAL_S = 3600.0
"""A file store is traced at most hourly: its trace reads every document, a keyspace's only sizes."""


def beat_schedule(stores: tuple[str, ...], overrides: Mapping[str, str] | None = None,
                  trace_interval_s: float = TRACE_INTERVAL_S) -> dict[str, dict[str, Any]]:
    """Build the beat schedule for ``stores``.

    A Redis keyspace (a ``redis://``, ``rediss://`` or ``unix://`` URL in ``stores``) gets one entry: ``trace``
    every ``trace_interval_s`` seconds (``AML_TRACE_INTERVAL``); the file-store operations do not apply to it.
    File stores get the seeds' entries below, and a trace every ``trace_interval_s`` but at most hourly
    (:data:`FILE_TRACE_MIN_INTERVAL_S`).

    Source: the seeds' cron table (daily backup 02:00, weekly prune Sunday 03:00, daily health 06:00
    UTC) and DESIGN.md (a weekly verify: Saturday 05:00 UTC, reading the least recently verified 15 %
    of the packs, so every pack is re-read at least every seven weeks; the catalog's retention daily at
    01:00 UTC). A weekly restore drill (``aml.backup.drill``, the seeds' best practice "Test restores
    occasionally to verify backup integrity"): Sunday 04:30 UTC, after the day's backup and rotate (02:00)
    and the weekly prune (03:00) have finished, off the hours of every other entry, and before health (06:00)
    judges ``restore_tested``; it restores the newest snapshot (that day's backup, or the prune's pre-prune one).

    Args:
        stores: store paths/ids to maintain.
        overrides: task name -> schedule text (:func:`parse_schedule`) replacing the default schedule of
            every entry of that task (``AML_BEAT_SCHEDULE``, already checked by the settings; it wins over
            ``trace_interval_s`` for ``aml.trace.run``).
        trace_interval_s: seconds between two traces of each Redis keyspace.

    Returns:
        Celery ``beat_schedule`` mapping: entry name -> ``{"task", "schedule", "kwargs", "options"}``.

    Raises:
        ValueError: a bad schedule in ``overrides``.
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
        if store.startswith(("redis://", "rediss://", "unix://")):
            schedule[f"trace {store}"] = {
                "task": "aml.trace.run",
                "schedule": schedules.schedule(timedelta(seconds=trace_interval_s)),
                "kwargs": {"store": store, "sniff": None},  # sniff values only where it does not count as an access
                "options": {"queue": "fast"},
            }
            continue
        schedule[f"trace {store}"] = {
            "task": "aml.trace.run",
            "schedule": schedules.schedule(timedelta(seconds=max(trace_interval_s, FILE_TRACE_MIN_INTERVAL_S))),
            "kwargs": {"store": store},
            "options": {"queue": "fast"},
        }
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
        schedule[f"drill {store}"] = {  # weekly restore drill: Sunday 04:30 UTC
            "task": "aml.backup.drill",
            "schedule": crontab(minute="30", hour="4", day_of_week="sun"),
            "kwargs": {"store": store},
            "options": {"queue": "heavy"},
        }
        schedule[f"health {store}"] = {
            "task": "aml.health.check",
            "schedule": crontab(minute="0", hour="6"),
            "kwargs": {"store": store},
            "options": {"queue": "fast"},
        }
    for entry in schedule.values():
        if overrides and entry["task"] in overrides:
            entry["schedule"] = parse_schedule(overrides[entry["task"]])
    return schedule
