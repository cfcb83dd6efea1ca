"""Service commands: ``aml worker|beat|flower|db|demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workers.render import console, err_console

service_app = typer.Typer(
    name="aml",
    help="aml: maintenance for AI agents' memory.\n\nStore operations: aml <memory_path> COMMAND ... "
    "(monitor, backup, prune, optimize, query, migrate). Service commands below.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="The catalog's schema (Alembic migrations).", no_args_is_help=True)
service_app.add_typer(db_app, name="db")


def _catalog_url() -> str:
    from workers.app import get_settings

    return get_settings().catalog_url


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
    queues: Annotated[str, typer.Option("--queues", "-Q", help="Queues to consume.")] = "heavy,fast",
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="Worker processes.")] = 1,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "info",
) -> None:
    """Start a Celery worker (extra arguments go to `celery worker`)."""
    from workers.app import app

    _require_current_catalog()
    app.worker_main(["worker", "-Q", queues, "-c", str(concurrency), "-l", loglevel, *ctx.args])


@service_app.command("beat", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def beat(ctx: typer.Context, loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "info") -> None:
    """Start Celery beat with the maintenance schedule (run exactly one)."""
    from workers.app import app

    app.start(["beat", "-l", loglevel, *ctx.args])


@service_app.command("flower", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def flower(ctx: typer.Context) -> None:
    """Start Flower (pass --basic-auth=user:password in production)."""
    from workers.app import app

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
    from workers.demo import run_demo

    raise typer.Exit(run_demo(directory, seed=seed))
