"""The Celery application: ``create_app(settings)`` and the module-level ``app``.

Run workers with ``celery -A workers.app worker -Q heavy,fast`` (or ``aml worker``).

Configuration follows DESIGN.md (Runtime): JSON only (pickle refused), late acks with
``task_reject_on_worker_lost`` so a killed worker's task is redelivered, prefetch 1, per-operation
soft/hard time limits kept below the Redis ``visibility_timeout``, and two queues: ``heavy`` (backup,
compress, migrate, prune) and ``fast`` (health, trace, verify).
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from beat_schedule import beat_schedule
from workers.settings import Settings, load_settings

HEAVY_OPERATIONS = ("backup", "compress", "migrate", "prune")
FAST_OPERATIONS = ("health", "trace", "verify")

TIME_LIMITS: dict[str, tuple[int, int]] = {
    "backup": (6 * 3600, 6 * 3600 + 300),
    "compress": (3 * 3600, 3 * 3600 + 300),
    "migrate": (3 * 3600, 3 * 3600 + 300),
    "prune": (3 * 3600, 3 * 3600 + 300),
    "health": (15 * 60, 15 * 60 + 60),
    "trace": (15 * 60, 15 * 60 + 60),
    "verify": (6 * 3600, 6 * 3600 + 300),
}
"""operation -> (soft, hard) time limit in seconds. The hard limits stay below the default Redis
visibility timeout (12 h), as Celery's Redis transport documentation requires for late acks."""

TASK_MODULES = ["tasks.health", "tasks.backup", "tasks.verify", "tasks.compress", "tasks.query", "tasks.prune",
                "tasks.migrate"]
"""Modules holding the Celery tasks (imported by workers; the CLI imports them directly)."""


def queue_for(operation: str) -> str:
    """Return the queue name (``"heavy"`` or ``"fast"``) for an operation name.

    Raises:
        KeyError: unknown operation.
    """
    if operation in HEAVY_OPERATIONS:
        return "heavy"
    if operation in FAST_OPERATIONS:
        return "fast"
    raise KeyError(f"unknown operation {operation!r}")


def create_app(settings: Settings | None = None, *, set_as_current: bool = True) -> Celery:
    """Create the Celery application for ``settings`` (default: :func:`load_settings`).

    aml's tasks are Celery *shared tasks*: every app created here (or a user's own app that imports
    ``tasks.*``) gets them, under their ``aml.<operation>.<action>`` names.

    Args:
        settings: runtime settings (broker, result backend, catalog, visibility timeout).
        set_as_current: make it Celery's current app (the one shared tasks run on inline).

    Returns:
        A configured :class:`celery.Celery`; ``app.conf.aml_settings`` holds the settings.
    """
    settings = settings or load_settings()
    app = Celery("aml", broker=settings.broker_url, backend=settings.result_backend, include=TASK_MODULES,
                 set_as_current=set_as_current)
    routes = {f"aml.{op}.*": {"queue": queue_for(op)} for op in HEAVY_OPERATIONS + FAST_OPERATIONS}
    annotations = {}
    for op, (soft, hard) in TIME_LIMITS.items():
        limit_hard = min(hard, settings.visibility_timeout - 60)
        annotations[f"aml.{op}.*"] = {"soft_time_limit": min(soft, limit_hard - 30), "time_limit": limit_hard}
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        result_expires=7 * 24 * 3600,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        task_queues=(Queue("heavy"), Queue("fast")),
        task_default_queue="fast",
        task_routes=routes,
        task_annotations=_glob_annotations(annotations),
        enable_utc=True,
        beat_schedule=beat_schedule(settings.stores),
        timezone="UTC",
    )
    app.conf.aml_settings = settings
    return app


def _glob_annotations(by_glob: dict[str, dict[str, int]]) -> list[object]:
    """Celery annotations keyed by task-name glob (Celery's own dict form needs exact names)."""
    import fnmatch

    from celery.app.task import Task

    class _ByGlob:
        def annotate(self, task: Task) -> dict[str, int] | None:
            for pattern, values in by_glob.items():
                if fnmatch.fnmatchcase(task.name, pattern):
                    return values
            return None

    return [_ByGlob()]


app = create_app()
"""The application for ``celery -A workers.app``; configured from ``AML_*`` variables at import."""


def get_settings() -> Settings:
    """Return the settings of Celery's current app (``AML_*`` variables for an app aml did not create)."""
    from celery import current_app

    settings = current_app.conf.get("aml_settings")
    if isinstance(settings, Settings):
        return settings
    return load_settings()
