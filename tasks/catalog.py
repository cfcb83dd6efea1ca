"""Celery task of the ``catalog`` operation: retention of the catalog's own history.

``aml.catalog.retention`` applies :func:`models.retention.apply_retention` with the settings
``AML_METRICS_RAW_DAYS`` (metric samples kept raw, then rolled up to hourly means),
``AML_METRICS_HOURLY_DAYS`` (hourly means kept) and ``AML_TASK_RUNS_DAYS`` (finished task runs
kept). The run is recorded in ``task_runs`` like every operation; its store id is the catalog URL
with the password masked (the catalog is what it maintains).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

from models.retention import apply_retention
from tasks.base import Catalog, run_operation
from tasks.registry import operation_task
from workers.app import get_settings

if TYPE_CHECKING:
    from celery import Task


def catalog_store_id(url: str) -> str:
    """The store id of the catalog at ``url``: the URL with its password masked (``***``)."""
    return make_url(url).render_as_string(hide_password=True)


@operation_task("aml.catalog.retention")
def retention(
    self: Task,
    raw_days: float | None = None,
    hourly_days: float | None = None,
    task_runs_days: float | None = None,
    now: str | None = None,
) -> dict[str, Any]:
    """Roll old metric samples up to hourly means, expire old roll-ups and old finished task runs.

    Args:
        raw_days: days samples stay raw (default ``AML_METRICS_RAW_DAYS``).
        hourly_days: days hourly means stay (default ``AML_METRICS_HOURLY_DAYS``).
        task_runs_days: days finished task runs stay (default ``AML_TASK_RUNS_DAYS``); runs that
            prune actions refer to are kept (``prune undo``).
        now: ISO 8601 reference instant (default: now), for reproducible runs.

    Returns:
        ``{"samples_rolled_up", "hourly_rows_written", "samples_deleted", "task_runs_deleted",
        "raw_cutoff", "hourly_cutoff", "task_runs_cutoff", "status", "task_run_id", ...}``.

    Raises:
        ValueError: a negative number of days, ``hourly_days < raw_days``, or a bad ``now``.
    """
    settings = get_settings()
    raw = settings.metrics_raw_days if raw_days is None else float(raw_days)
    hourly = settings.metrics_hourly_days if hourly_days is None else float(hourly_days)
    runs = settings.task_runs_days if task_runs_days is None else float(task_runs_days)
    at = datetime.fromisoformat(now.replace("Z", "+00:00")) if now else None

    def body(catalog: Catalog) -> dict[str, Any]:
        with catalog() as session:  # one transaction: the roll-up and its deletes commit together
            result = apply_retention(session, now=at, raw_days=raw, hourly_days=hourly, task_runs_days=runs)
        return result.to_dict()

    return run_operation(
        task_id=self.request.id,
        operation="catalog",
        store=catalog_store_id(settings.catalog_url),
        arguments={"raw_days": raw, "hourly_days": hourly, "task_runs_days": runs, "now": now},
        body=body,
        settings=settings,
    )
