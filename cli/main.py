"""The ``aml`` command line.

Two shapes, as the seeds' CLI has them::

    aml <memory_path> monitor health|metrics|alerts|report [--json] [--enqueue [--wait]]
    aml worker | beat | flower | db upgrade|downgrade|current | demo

The first word decides: a service command name, or else the path of a memory store. Operations
run inline by default (``task.apply()``: no broker, embedded SQLite catalog); ``--enqueue`` sends
them to the workers. Exit codes: 0 ok, 1 warning, 2 critical/failure.
"""

from __future__ import annotations

import sys

import typer

SERVICE_COMMANDS = frozenset({"worker", "beat", "flower", "exporter", "db", "demo", "trace"})


def build_store_app() -> typer.Typer:
    """The ``aml <memory_path> COMMAND`` app: monitor, backup, optimize, prune, migrate, trace, query.

    Built on demand: the service commands (and ``aml --help``) never import the store commands' modules."""
    from cli.backup import backup_app
    from cli.migrate import migrate_app
    from cli.monitor import monitor_app
    from cli.optimize import optimize_app
    from cli.optimize import query as query_command
    from cli.prune import prune_app
    from cli.trace import trace_app

    app = typer.Typer(
        name="aml <memory_path>",
        help="Operations on one memory store: aml <memory_path> COMMAND ...",
        no_args_is_help=True,
        add_completion=False,
    )
    app.add_typer(monitor_app, name="monitor")
    app.add_typer(backup_app, name="backup")
    app.add_typer(optimize_app, name="optimize")
    app.add_typer(prune_app, name="prune")
    app.add_typer(migrate_app, name="migrate")
    app.add_typer(trace_app, name="trace")
    app.command("query")(query_command)

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
    build_store_app()(args=rest, prog_name=f"aml {store}", obj={"store": store})


if __name__ == "__main__":  # pragma: no cover
    main()
