"""The ``aml`` command line.

Two shapes, as the seeds' CLI has them::

    aml <memory_path> monitor health|metrics|alerts|report [--json] [--enqueue [--wait]]
    aml worker | beat | flower | db upgrade|downgrade|current | demo

The first word decides: a service command name, or else the path of a memory store. Operations
run inline by default (the task's own function, as ``task.apply()`` would run it, without importing Celery:
:mod:`tasks.registry`; no broker, embedded SQLite catalog); ``--enqueue`` sends them to the workers. Exit codes:
0 ok, 1 warning, 2 critical/failure.
"""

from __future__ import annotations

import importlib
import sys

import typer

from aml.gcpause import end_startup, exiting, pause_for_startup
from tasks.registry import defer_celery

SERVICE_COMMANDS = frozenset({"worker", "beat", "flower", "exporter", "db", "demo", "trace"})


_STORE_COMMANDS: dict[str, tuple[str, str]] = {
    "monitor": ("cli.monitor", "monitor_app"),
    "backup": ("cli.backup", "backup_app"),
    "optimize": ("cli.optimize", "optimize_app"),
    "prune": ("cli.prune", "prune_app"),
    "migrate": ("cli.migrate", "migrate_app"),
    "trace": ("cli.trace", "trace_app"),
    "query": ("cli.optimize", "query"),
}
"""The store app's commands, in their help order: the module and attribute (a Typer group or a command)."""
STORE_COMMANDS = tuple(_STORE_COMMANDS)


def _add_store_command(app: typer.Typer, name: str) -> None:
    """Register the store command ``name`` on ``app`` (importing its module only now)."""
    module, attr = _STORE_COMMANDS[name]
    obj = getattr(importlib.import_module(module), attr)
    if isinstance(obj, typer.Typer):
        app.add_typer(obj, name=name)
    else:
        app.command(name)(obj)


def build_store_app(only: str | None = None) -> typer.Typer:
    """The ``aml <memory_path> COMMAND`` app: monitor, backup, optimize, prune, migrate, trace, query.

    Built on demand: the service commands (and ``aml --help``) never import the store commands' modules.
    ``only`` (one of :data:`STORE_COMMANDS`) registers that command alone: ``aml <store> monitor health``
    does not import the modules of backup, prune, migrate... (issue 12: a command's start-up pays for
    what it runs)."""
    app = typer.Typer(
        name="aml <memory_path>",
        help="Operations on one memory store: aml <memory_path> COMMAND ...",
        no_args_is_help=True,
        add_completion=False,
    )
    for name in STORE_COMMANDS if only is None else (only,):
        _add_store_command(app, name)

    @app.callback()
    def _store_callback(ctx: typer.Context) -> None:
        """Operations on one memory store (the path given before the command)."""

    return app


def __getattr__(name: str) -> typer.Typer:
    """``cli.main.store_app``: the store app, built on first access (PEP 562)."""
    if name == "store_app":
        app = build_store_app()
        globals()["store_app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``aml`` console script (routes service commands vs store commands)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in SERVICE_COMMANDS or args[0] in ("-h", "--help"):
        from cli.service import service_app

        service_app(args=args, prog_name="aml")
        return
    store, rest = args[0], args[1:]
    # a known command word first: only its module is imported (anything else, e.g. --help or a typo, gets
    # the whole app, for its listing of the commands)
    only = rest[0] if rest and rest[0] in STORE_COMMANDS else None
    if argv is None:  # the process's entry point: a one-shot command (never a worker, never a test's process)
        pause_for_startup()
        defer_celery()  # its tasks become Celery tasks only if it enqueues (tasks.registry)
    try:
        build_store_app(only)(args=rest, prog_name=f"aml {store}", obj={"store": store})
    finally:
        end_startup()
        if argv is None:
            exiting()


if __name__ == "__main__":  # pragma: no cover
    main()
