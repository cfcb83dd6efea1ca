"""How ``aml worker|beat|flower`` start: the arguments they give Celery and the checks they make first.

The CLI (``cli/service.py``) only parses and prints; the rules live here so tests and compose can
use them too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from workers.app import DEFAULT_QUEUE, QUEUES

__all__ = ["ServiceRefused", "flower_auth_given", "protect_flower_metrics", "worker_argv"]


class ServiceRefused(RuntimeError):
    """A service would start unsafe or useless (no auth, no stores); the message says how to proceed."""


def _has_option(args: Sequence[str], *names: str) -> bool:
    return any(a == n or a.startswith(n + "=") or (len(n) == 2 and a.startswith(n) and len(a) > 2)
               for a in args for n in names)


def worker_argv(queues: str, concurrency: int, loglevel: str, extra: Sequence[str], *,
                default_queue: bool = True) -> list[str]:
    """The ``celery worker`` arguments of ``aml worker``.

    Args:
        queues: comma-separated queues (``heavy``, ``fast``); Celery's default queue ``celery`` is added
            unless ``default_queue`` is false, so messages sent by name without a queue are consumed.
        concurrency: pool processes.
        loglevel: Celery log level.
        extra: further ``celery worker`` arguments, passed through.
        default_queue: also consume :data:`workers.app.DEFAULT_QUEUE`.

    Returns:
        The argument list, with a node name unique per queue set on the host (``heavy@%h``,
        ``fast@%h``; ``%h`` is the host name) unless ``extra`` gives ``-n``/``--hostname``.

    Raises:
        ServiceRefused: an unknown queue name.
    """
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in names if q not in QUEUES]
    if not names or unknown:
        raise ServiceRefused(f"unknown queue(s) {', '.join(unknown) or '(none)'}: aml's queues are "
                             f"{', '.join(QUEUES)}")
    own = [q for q in names if q != DEFAULT_QUEUE]
    if default_queue and DEFAULT_QUEUE not in names:
        names.append(DEFAULT_QUEUE)
    argv = ["worker", "-Q", ",".join(names), "-c", str(concurrency), "-l", loglevel]
    if not _has_option(extra, "-n", "--hostname"):
        argv += ["-n", f"{'-'.join(own) or DEFAULT_QUEUE}@%h"]
    return [*argv, *extra]


def flower_auth_given(args: Sequence[str], environ: Mapping[str, str] | None = None) -> bool:
    """Whether Flower is started with authentication: ``--basic-auth``/``--auth`` (or their
    ``FLOWER_BASIC_AUTH``/``FLOWER_AUTH`` variables, Flower's own)."""
    env = os.environ if environ is None else environ
    return _has_option(args, "--basic-auth", "--basic_auth", "--auth") or bool(
        env.get("FLOWER_BASIC_AUTH") or env.get("FLOWER_AUTH"))


def protect_flower_metrics() -> None:
    """Put Flower's ``/metrics`` behind the same authentication as its pages.

    Flower 2.x serves ``/metrics`` (Celery task metrics for Prometheus) without checking credentials
    even when ``--basic-auth`` is set; this wraps its handler with :func:`tornado.web.authenticated`, as
    Flower's other views are. A scraper then passes the basic-auth credentials (Prometheus
    ``basic_auth`` in its scrape config). Must run in the process that starts Flower, before it does.
    """
    import tornado.web
    from flower.views import monitor

    handler = monitor.Metrics
    if getattr(handler.get, "_aml_protected", False):
        return
    wrapped = tornado.web.authenticated(handler.get)
    wrapped._aml_protected = True  # type: ignore[attr-defined]
    handler.get = wrapped
