"""Service commands: ``aml worker|beat|flower|db|demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.exporter import exporter
from cli.render import console, err_console
from cli.trace import trace_rdb_command

service_app = typer.Typer(
    name="aml",
    help="aml: maintenance for AI agents' memory.\n\nStore operations: aml <memory_path> COMMAND ... "
    "(monitor, backup, prune, optimize, query, migrate). Service commands below.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="The catalog's schema (Alembic migrations).", no_args_is_help=True)
service_app.add_typer(db_app, name="db")
service_app.command("exporter")(exporter)
service_app.command("trace")(trace_rdb_command)


def _catalog_url() -> str:
    """The configured catalog URL; exits 2 with the reason when it names no lasting catalog."""
    from workers import catalog
    from workers.app import get_settings

    url = get_settings().catalog_url
    try:
        catalog.check_catalog_url(url)
    except catalog.CatalogError as exc:
        err_console.print(f"[red]error[/]: {exc}")
        raise typer.Exit(2) from None
    return url


def _require_current_catalog() -> None:
    """Refuse to start a worker against a catalog that is behind the code's migrations."""
    from workers import catalog

    url = _catalog_url()
    if url.startswith("sqlite"):
        catalog.ensure_catalog(url)
        return
    current, head = catalog.current_revision(url), catalog.head_revision()
    if current != head:
        err_console.print(f"[red]catalog {url} is at revision {current or 'none'}, the code needs {head}[/]: "
                          "run `aml db upgrade` first")
        raise typer.Exit(2)


@service_app.command("worker", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(
    ctx: typer.Context,
    queues: Annotated[str, typer.Option("--queues", "-Q", help="Queues to consume: heavy, fast.")] = "heavy,fast",
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="Worker processes.")] = 1,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "info",
    default_queue: Annotated[bool, typer.Option(
        "--default-queue/--no-default-queue",
        help="Also consume Celery's default queue `celery` (tasks sent by name without a queue).")] = True,
) -> None:
    """Start a Celery worker named `<queues>@<host>` (extra arguments go to `celery worker`)."""
    from workers.service import ServiceRefused, worker_argv

    try:
        argv = worker_argv(queues, concurrency, loglevel, ctx.args, default_queue=default_queue)
    except ServiceRefused as exc:
        err_console.print(f"[red]refused[/]: {exc}")
        raise typer.Exit(2) from None
    _require_current_catalog()
    from workers.main import app

    app.worker_main(argv)


@service_app.command("beat", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def beat(
    ctx: typer.Context,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "info",
    allow_empty: Annotated[bool, typer.Option("--allow-empty", help="Start even when AML_STORES is empty.")] = False,
) -> None:
    """Start Celery beat with the maintenance schedule of the stores in AML_STORES."""
    from workers.main import app

    settings = app.conf.aml_settings
    if not settings.stores and not allow_empty:
        err_console.print("[red]refused[/]: AML_STORES is empty, so beat would schedule nothing: set "
                          "AML_STORES=/path/a/.loom/memory,/path/b/.loom/memory (or pass --allow-empty)")
        raise typer.Exit(2)
    app.start(["beat", "-l", loglevel, *ctx.args])


@service_app.command("flower", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def flower(
    ctx: typer.Context,
    unsafe_no_auth: Annotated[bool, typer.Option(
        "--unsafe-no-auth", help="Start without authentication (anyone who reaches the port controls workers).")
    ] = False,
) -> None:
    """Start Flower; refuses without --basic-auth=user:password (or --auth) unless --unsafe-no-auth."""
    from workers.service import flower_auth_given, protect_flower_metrics

    if not flower_auth_given(ctx.args) and not unsafe_no_auth:
        err_console.print("[red]refused[/]: Flower without authentication lets anyone who reaches its port "
                          "revoke tasks and shut workers down: pass --basic-auth=user:password "
                          "(or set FLOWER_BASIC_AUTH), or --unsafe-no-auth to accept that")
        raise typer.Exit(2)
    if unsafe_no_auth and not flower_auth_given(ctx.args):
        err_console.print("[yellow]warning[/]: Flower is starting without authentication")
    protect_flower_metrics()
    from workers.main import app

    app.start(["flower", *ctx.args])


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Upgrade the catalog to ``revision`` (default: head)."""
    from workers import catalog

    url = _catalog_url()
    catalog.upgrade(url, revision)
    console.print(f"catalog {url} at revision {catalog.current_revision(url)}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision, e.g. -1 or base.")]) -> None:
    """Downgrade the catalog to ``revision``."""
    from workers import catalog

    url = _catalog_url()
    catalog.downgrade(url, revision)
    console.print(f"catalog {url} at revision {catalog.current_revision(url) or 'base'}")


@db_app.command("current")
def db_current() -> None:
    """Print the catalog's revision and the code's head revision."""
    from workers import catalog

    url = _catalog_url()
    console.print(f"catalog {url}: {catalog.current_revision(url) or 'none'} (head {catalog.head_revision()})")


@service_app.command("demo")
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where the sample store is written.")] = Path("demo"),
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 7,
) -> None:
    """Write a sample Loom store into DIR and run every operation on it, inline."""
    from cli.demo import run_demo

    raise typer.Exit(run_demo(directory, seed=seed))
