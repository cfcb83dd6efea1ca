"""The Celery application factory: ``create_app(settings)``. No app is created at import.

The one module that builds an app at import is the entry module :mod:`workers.main`
(``celery -A workers.main worker``; ``aml worker|beat|flower`` use it too).

Configuration follows DESIGN.md (Runtime): JSON only (pickle refused), late acks with
``task_reject_on_worker_lost`` so a killed worker's task is redelivered, prefetch 1, per-operation
soft/hard time limits kept below the Redis ``visibility_timeout``, and two queues: ``heavy`` (backup,
compress, migrate, prune) and ``fast`` (health, trace, verify, notify), each bound to its own direct exchange,
plus Celery's default queue ``celery``, which every aml worker also consumes: a message sent by name
from a plain Celery process (``send_task("aml.health.check", ...)`` without ``queue=``) lands there.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from workers.settings import Settings, load_settings

if TYPE_CHECKING:
    from celery import Celery
    from kombu import Queue

HEAVY_OPERATIONS = ("backup", "compress", "migrate", "prune")
FAST_OPERATIONS = ("health", "trace", "verify", "catalog", "notify")

TIME_LIMITS: dict[str, tuple[int, int]] = {
    "backup": (6 * 3600, 6 * 3600 + 300),
    "compress": (3 * 3600, 3 * 3600 + 300),
    "migrate": (3 * 3600, 3 * 3600 + 300),
    "prune": (3 * 3600, 3 * 3600 + 300),
    "health": (15 * 60, 15 * 60 + 60),
    "trace": (15 * 60, 15 * 60 + 60),
    "verify": (6 * 3600, 6 * 3600 + 300),
    "catalog": (15 * 60, 15 * 60 + 60),
    "notify": (60, 90),
}
"""operation -> (soft, hard) time limit in seconds. The hard limits stay below the default Redis
visibility timeout (12 h), as Celery's Redis transport documentation requires for late acks."""

TASK_MODULES = ["tasks.health", "tasks.backup", "tasks.verify", "tasks.compress", "tasks.query", "tasks.prune",
                "tasks.migrate", "tasks.catalog", "tasks.trace", "tasks.keyspace", "tasks.notify", "tasks.drill"]
"""Modules holding the Celery tasks (imported by workers; the CLI imports them directly)."""


BEAT_LOCK_TIMEOUT_S = 150
"""Seconds a standby beat waits before taking over from a beat that stopped renewing RedBeat's lock."""

DEFAULT_QUEUE = "celery"
"""Celery's own default queue: where ``send_task`` puts a message when no queue is named."""

QUEUES = ("heavy", "fast", DEFAULT_QUEUE)
"""Every queue aml declares; each is bound to a direct exchange of its own name."""


def declare_queues() -> tuple[Queue, ...]:
    """The :class:`kombu.Queue` declarations of :data:`QUEUES`, each on its own direct exchange."""
    from kombu import Exchange, Queue

    return tuple(Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES)


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


def create_app(settings: Settings | None = None, *, set_as_current: bool = False) -> Celery:
    """Create the Celery application for ``settings`` (default: :func:`load_settings`).

    aml's tasks are Celery *shared tasks*: every app created here (or a user's own app that imports
    ``tasks.*``) gets them, under their ``aml.<operation>.<action>`` names.

    Args:
        settings: runtime settings (broker, result backend, catalog, visibility timeout).
        set_as_current: make it Celery's current app (the one shared tasks run on inline). Only the
            entry module and the CLI (the top of their processes) ask for this.

    Returns:
        A configured :class:`celery.Celery`; ``app.conf.aml_settings`` holds the settings.
    """
    from celery import Celery

    from beat_schedule import beat_schedule

    settings = settings or (get_settings() if _one_shot else load_settings())
    app = Celery("aml", broker=settings.broker_url, backend=settings.result_backend, include=TASK_MODULES,
                 set_as_current=set_as_current)
    routes = {f"aml.{op}.*": {"queue": queue_for(op), "exchange": queue_for(op), "routing_key": queue_for(op)}
              for op in HEAVY_OPERATIONS + FAST_OPERATIONS}
    annotations = {}
    for op, (soft, hard) in TIME_LIMITS.items():  # below the visibility timeout, unless that is test-short
        limit_hard = min(hard, settings.visibility_timeout - 60) if settings.visibility_timeout > 600 else hard
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
        broker_transport_options=broker_transport_options(settings),
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        task_queues=declare_queues(),
        task_default_queue=DEFAULT_QUEUE,
        task_default_exchange=DEFAULT_QUEUE,
        task_default_routing_key=DEFAULT_QUEUE,
        task_routes=routes,
        task_annotations=_glob_annotations(annotations),
        enable_utc=True,
        beat_schedule=beat_schedule(settings.stores, settings.beat_schedule, settings.trace_interval),
        timezone="UTC",
    )
    beat_redis = settings.redis_lock_url or (
        settings.broker_url if settings.broker_url.startswith(("redis://", "rediss://", "unix://")) else None)
    if beat_redis:  # RedBeat: the schedule and a lock in Redis, so a second beat on another host never fires twice
        app.conf.update(
            beat_scheduler="redbeat.RedBeatScheduler",
            redbeat_redis_url=beat_redis,
            redbeat_key_prefix="aml:redbeat:",
            redbeat_lock_key="aml:redbeat:lock",
            redbeat_lock_timeout=BEAT_LOCK_TIMEOUT_S,
            beat_max_loop_interval=BEAT_LOCK_TIMEOUT_S // 5,
        )
    app.conf.aml_settings = settings
    return app


REDIS_RESTORE_INTERVAL_S = 5
"""Seconds between two sweeps of Redis's unacked messages by a running worker (kombu's default sweeps
scan only every 10th tick of 10 s: a dead worker's task waited up to 100 s beyond the visibility timeout)."""


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """kombu transport options for the broker.

    Redis: ``visibility_timeout`` (a message unacknowledged that long is given to another worker:
    the recovery bound after a whole worker dies, plus :data:`REDIS_RESTORE_INTERVAL_S`), swept every
    :data:`REDIS_RESTORE_INTERVAL_S` seconds. RabbitMQ needs none: a dead consumer's connection closes
    and its unacknowledged messages are requeued at once.
    """
    if settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        return {"visibility_timeout": settings.visibility_timeout,
                "unacked_restore_interval": REDIS_RESTORE_INTERVAL_S, "unacked_restore_throttle": 1}
    return {}


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


_one_shot = False
_process_settings: Settings | None = None


def one_shot_process() -> None:
    """Declare this process a one-shot command (the ``aml`` command, :func:`tasks.registry.defer_celery`): its
    settings are read once and are the same object for every task it runs, with or without a Celery app."""
    global _one_shot
    _one_shot = True


def get_settings() -> Settings:
    """Return the settings of this process's tasks: in a one-shot command (:func:`one_shot_process`), read once
    from ``AML_*`` (or as :func:`use_settings` set them), the aml app it may make later included; elsewhere those
    of Celery's current app, or ``AML_*`` read now for an app aml did not create."""
    global _process_settings
    if _one_shot:  # no Celery import needed: an inline run of the aml command
        if _process_settings is None:
            _process_settings = load_settings()
        return _process_settings
    from celery import current_app

    settings = current_app.conf.get("aml_settings")
    if isinstance(settings, Settings):
        return settings
    return load_settings()


def use_settings(settings: Settings) -> None:
    """Make ``settings`` those of this process's tasks (the CLI's ``--password-file``): in a one-shot command,
    the process's settings (and its aml app's, if it made one); elsewhere the current aml app's (made now if
    there is none)."""
    global _process_settings
    if not _one_shot:
        current_aml_app().conf["aml_settings"] = settings
        return
    _process_settings = settings
    if "celery" in sys.modules:
        from celery import current_app

        app = current_app._get_current_object()
        if isinstance(app.conf.get("aml_settings"), Settings):
            app.conf["aml_settings"] = settings


def current_aml_app() -> Celery:
    """Celery's current app when aml created it, else a new aml app (from :func:`get_settings` in a one-shot
    command, else ``AML_*``) made current.

    The CLI calls this before it enqueues a task, so a process that imports only ``tasks.*``
    never has its own current app replaced.
    """
    from celery import current_app

    app = current_app._get_current_object()
    if isinstance(app.conf.get("aml_settings"), Settings):
        return app
    return create_app(set_as_current=True)
