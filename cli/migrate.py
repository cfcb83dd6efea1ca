"""``aml <memory_path> migrate detect|migrate|migrate-latest``: the seeds' migration commands.

* ``migrate detect``: the version of every agent and collection; says when the store is mixed.
  Exit 0 when consistent, 1 otherwise (mixed, mid-migration, claim differs from the data, unreadable).
* ``migrate migrate [--version V] [--dry-run] [--force] [--rollback]``: to V (default: latest).
* ``migrate migrate-latest [--dry-run]``: to the latest version.

Both migrate commands exit 0 on success and 2 when refused (a lossy downgrade without ``--force``) or
when a document was left alone (named in the output).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from aml.migrate import check_version
from cli.common import (
    EnqueueOpt,
    JsonOpt,
    TimeoutOpt,
    WaitOpt,
    emit,
    run_task,
    store_of,
)
from cli.lazy import lazy_module
from cli.render import console, new_table, styled

migrate_tasks = lazy_module("tasks.migrate")

migrate_app = typer.Typer(help="Schema versions of a Loom store: detect, migrate (both ways), migrate-latest.",
                          no_args_is_help=True)

DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Show what would change; write nothing.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Allow a downgrade that loses data (listed).")]

LISTED = 10
"""Lossy items and problems printed in human output (``--json`` has them all, up to the plan's cap)."""


def _versions(counts: dict[str, int]) -> str:
    return ", ".join(f"{v}: {n}" for v, n in counts.items()) or "-"


def render_detect(result: dict[str, Any]) -> None:
    """Print a detection: the store's version and claim, then one row per agent and collection."""
    version = result["version"] or "empty"
    claim = result["claimed"] or "none (Loom's default 1.0.0)"
    state = "consistent" if result["consistent"] else "[yellow]not consistent[/]"
    console.print(f"[bold]{result['store']}[/]: data {version}; schema_version.json claims {claim}; {state}"
                  f" (latest {result['latest']})")
    table = new_table()
    for col in ("agent", "collection", "items", "version", "encoding"):
        table.add_column(col)
    for agent, collections in result["agents"].items():
        for name, info in collections.items():
            ver = info["version"] or "-"
            table.add_row(agent, name, str(info["items"]),
                          f"[yellow]{_versions(info['versions'])}[/]" if ver == "mixed" else ver, info["encoding"])
    console.print(table)
    for entry in result["outside_scope"]:
        console.print(f"  not migrated (as Loom): {entry['path']} ({entry['items']} items, "
                      f"{entry['version'] or 'empty'})")
    for problem in result["unparseable"]:
        console.print(f"  [red]unreadable[/] {problem['relpath']}: {problem['reason']}")
    j = result["journal"]
    if j and "error" in j:
        console.print(f"  [red]unreadable migration journal[/] {j['path']}: {j['error']}")
    elif j:
        console.print(f"  [yellow]interrupted migration to {j['target']}[/] ({j['written']} of {j['files']} files "
                      "written): run `migrate migrate` again to finish it, or `migrate migrate --rollback`")


def render_migration(result: dict[str, Any]) -> None:
    """Print a migration result: per-agent counts, what was written, lossy items, problems."""
    if "records" not in result:  # a rollback
        outcome = result.get("outcome")
        console.print(f"rollback: {styled(result['status'])} ({outcome}); restored {len(result.get('restored', []))} "
                      f"files, removed {len(result.get('removed', []))}"
                      + (f"; pre-migrate snapshot {result['backup_id']}" if result.get("backup_id") else ""))
        for c in result.get("conflicts", []):
            console.print(f"  [red]conflict[/] {c['path']}: {c['reason']} (--force restores it anyway)")
        return
    table = new_table()
    for col in ("agent", "collection", "items", "from", "changed"):
        table.add_column(col)
    for agent, collections in result["agents"].items():
        for name, info in collections.items():
            table.add_row(agent, name, str(info["items"]), _versions(info["from"]), str(info["changed"]))
    console.print(table)
    outcome = result["outcome"]
    verb = {"dry_run": "would change", "migrated": "changed", "unchanged": "changed",
            "refused": "would change"}.get(outcome, "changed")
    written = len(result["files_to_write"] if outcome in ("dry_run", "refused") else result["files_written"])
    line = (f"{result['source']} -> {result['target']}: {styled(result['status'])} ({outcome}); {verb} "
            f"{result['records_changed']} of {result['records']} records in {written} files")
    if result.get("backup_id"):
        line += f"; pre-migrate snapshot {result['backup_id']}"
    if result.get("records_per_s"):
        line += f"; {result['records_per_s']:,.0f} records/s"
    console.print(line)
    if result["lossy_count"]:
        head = "[red]refused[/]: " if result["refused"] else "[yellow]data lost (--force)[/]: "
        console.print(f"{head}{result['lossy_count']} items cannot be held by {result['target']}:")
        for item in result["lossy"][:LISTED]:
            console.print(f"  {item['path']} #{item['index']} ({item['id']}): {', '.join(item['lost'])}")
        if result["refused"]:
            console.print("  nothing was written; rerun with --force to migrate anyway")
    for problem in result["problems"][:LISTED]:
        console.print(f"  [red]left alone[/] {problem['relpath'] or problem['path']}: {problem['reason']}")



@migrate_app.command("detect")
def detect(
    ctx: typer.Context,
    as_json: JsonOpt = False,
    enqueue: EnqueueOpt = False,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 600.0,
) -> None:
    """Report the schema version of every agent and collection (reads every item; writes nothing)."""
    result = run_task(migrate_tasks.detect_versions, {"store": store_of(ctx)}, enqueue=enqueue, wait=wait,
                      timeout=timeout, as_json=as_json)
    if result is None:
        return
    emit(result, as_json, render_detect)


def _run_migrate(ctx: typer.Context, version: str | None, *, dry_run: bool, force: bool, undo: bool,
                 command: str, as_json: bool, enqueue: bool, wait: bool, timeout: float) -> None:
    kwargs = {"store": store_of(ctx), "version": version, "dry_run": dry_run, "force": force, "rollback": undo}
    result = run_task(migrate_tasks.migrate, kwargs, enqueue=enqueue, wait=wait, timeout=timeout, as_json=as_json)
    if result is None:
        return
    emit(result, as_json, render_migration, command=command)


@migrate_app.command("migrate")
def migrate(
    ctx: typer.Context,
    version: Annotated[str | None, typer.Option("--version", "-v", help="Target version (default: latest).")] = None,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    undo: Annotated[bool, typer.Option("--rollback", help="Undo an interrupted migration instead.")] = False,
    as_json: JsonOpt = False,
    enqueue: EnqueueOpt = False,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 3600.0,
) -> None:
    """Migrate to --version (1.0.0, 1.1.0, 1.2.0, 2.0.0), up or down, after a pre-migrate snapshot."""
    if version is not None:
        try:
            version = check_version(version)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--version") from exc
    command = "migrate migrate --rollback" if undo else "migrate migrate"
    _run_migrate(ctx, version, dry_run=dry_run, force=force, undo=undo, command=command, as_json=as_json,
                 enqueue=enqueue, wait=wait, timeout=timeout)


@migrate_app.command("migrate-latest")
def migrate_latest(
    ctx: typer.Context,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
    enqueue: EnqueueOpt = False,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 3600.0,
) -> None:
    """Migrate to the latest version (2.0.0), after a pre-migrate snapshot."""
    _run_migrate(ctx, None, dry_run=dry_run, force=False, undo=False, command="migrate migrate-latest",
                 as_json=as_json, enqueue=enqueue, wait=wait, timeout=timeout)
