"""``aml <redis-url> trace`` and ``aml trace --rdb FILE``: memory use per key pattern, and its anomalies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from cli.common import EnqueueOpt, JsonOpt, TimeoutOpt, WaitOpt, emit, run_task, store_of
from cli.progressbar import progress_bar
from cli.render import console, err_console, new_table, print_json, styled

trace_app = typer.Typer(help="Memory use of a Redis keyspace per key pattern: sizes, TTLs, idle time, "
                        "value encodings, anomalies.", invoke_without_command=True)

clean_app = typer.Typer(help="Remove the keys of a pattern, after a snapshot of them; `undo RUN_ID` puts them "
                        "back.", invoke_without_command=True)
trace_app.add_typer(clean_app, name="clean")

FamilyOpt = Annotated[list[str] | None, typer.Option(
    "--family", help="A key family glob (repeatable; first match wins); default AML_TRACE_FAMILIES.")]
TopOpt = Annotated[int, typer.Option("--top", help="Patterns shown (largest first); --json has all.")]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GiB"


def _render_files(report: dict[str, Any], top: int) -> None:
    console.print(f"[bold]{escape(report['store'])}[/] trace: {report['keys']:,} records, {_size(report['bytes'])} "
                  f"of records ({_size(report['bytes_on_disk'])} on disk) in {len(report['agents'])} agents, "
                  f"{report['duration_s']:.2f} s" + (f"; {report['document_errors']} documents failed to read"
                                                     if report["document_errors"] else ""), soft_wrap=True)
    table = new_table()
    for col in ("agent/collection", "records", "bytes", "avg", "unused"):
        table.add_column(col, overflow="fold")
    for name, p in list(report["patterns"].items())[:top]:
        table.add_row(escape(name), f"{p['keys']:,}", _size(p["bytes"]), _size(p["avg_bytes"]), f"{p['unused']:,}")
    console.print(table)


def render_trace(report: dict[str, Any], top: int = 25) -> None:
    """Print a trace report: totals, the largest patterns, companions and anomalies."""
    if report["source"] == "files":
        _render_files(report, top)
    else:
        _render_keyspace(report, top)
    hidden = report["pattern_count"] - min(top, report["pattern_count"])
    if hidden:
        console.print(f"  ... {hidden} smaller {'subjects' if report['source'] == 'files' else 'patterns'} "
                      "(--top N, or --json)")
    companions = report["companions"]
    if companions:
        orphans = sum(c["orphans"] for c in companions)
        console.print(f"  companion keys: {len(companions)} families with a companion key, "
                      f"{sum(1 for c in companions if c['orphans'])} with orphans ({orphans:,} keys lack theirs)",
                      soft_wrap=True)
    for a in report["anomalies"]:
        console.print(f"  {styled(a['severity'])} {a['kind']}: {escape(a['message'])}", soft_wrap=True)
    if not report["anomalies"]:
        console.print("  no anomalies")


def _render_keyspace(report: dict[str, Any], top: int) -> None:
    where = report.get("server") or report.get("rdb") or {}
    head = (f"[bold]{escape(report['store'])}[/] trace: {report['keys']:,} keys, {_size(report['bytes'])} in "
            f"{report['pattern_count']} patterns, {report['duration_s']:.2f} s")
    if report["source"] == "redis":
        head += (f" (Redis {where.get('redis_version', '?')}, {where.get('keys', 0):,} keys in db{where.get('db', 0)}, "
                 f"used_memory {_size(where.get('used_memory', 0))}, policy {where.get('maxmemory_policy', '?')})")
    else:
        head += f" (RDB version {where.get('version')}, {report['expired']:,} keys already expired)"
    console.print(head, soft_wrap=True)
    if report["error"]:
        err_console.print(f"[red]partial trace[/]: {escape(report['error'])}", soft_wrap=True)
    elif report.get("sampled"):
        console.print("  sampled: totals per pattern are scaled to the keyspace in --json (keys_estimated)")
    values = ", ".join(f"{k} {v:,}" for k, v in report["values"].items())
    console.print(f"  values: {values}; with TTL {report['with_ttl']:,}, without {report['without_ttl']:,}",
                  soft_wrap=True)
    table = new_table()
    for col in ("pattern", "keys", "bytes", "TTL none/1h/1d/1w/+", "idle avg", "values"):
        table.add_column(col, overflow="fold", ratio=3 if col == "pattern" else 1)
    for name, p in list(report["patterns"].items())[:top]:
        ttl = "/".join(str(p["ttl"][b]) for b in ("none", "le_1h", "le_1d", "le_1w", "longer"))
        idle = "-" if p["idle_avg_s"] is None else f"{p['idle_avg_s']:,.0f} s"
        values = " ".join(f"{k}:{v}" for k, v in p["values"].items() if k != "unknown") or " ".join(p["types"])
        table.add_row(escape(name), f"{p['keys']:,}", _size(p["bytes"]), ttl, idle, values)
    console.print(table)


@trace_app.callback()
def trace(
    ctx: typer.Context,
    pattern: Annotated[str | None, typer.Option("--pattern", help="Trace only keys matching this glob "
                                                "(SCAN MATCH).")] = None,
    sample: Annotated[int | None, typer.Option("--sample", min=1, help="Trace at most N keys.")] = None,
    family: FamilyOpt = None,
    sniff: Annotated[bool, typer.Option("--sniff/--no-sniff", help="Read the first 16 bytes of string values "
                                        "to tell JSON/text/pickle (on Redis < 7.2 this counts as an access).")] = True,
    top: TopOpt = 25,
    as_json: JsonOpt = False,
    enqueue: EnqueueOpt = False,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 600.0,
) -> None:
    """Trace a Redis keyspace (aml redis://host:port/db trace: per key pattern, keys, bytes, TTLs, idle
    time, value encodings) or a file store (aml <memory_path> trace: records and bytes per agent and
    collection); anomalies become alerts, growth is measured against the previous trace. Read-only. Exit
    0, or 1 when anomalies were found or the trace is partial."""
    if ctx.invoked_subcommand is not None:
        return
    from tasks import trace as trace_tasks

    kwargs = {"store": store_of(ctx), "pattern": pattern, "sample": sample, "families": family or None,
              "sniff": sniff}
    with progress_bar(not as_json and not enqueue):
        result = run_task(trace_tasks.run, kwargs, enqueue=enqueue, wait=wait, timeout=timeout, as_json=as_json)
    if result is None:
        return
    emit(result["report"] | {"status": result["status"]} if not as_json else result, as_json,
         lambda r: render_trace(r, top))


def trace_rdb_command(
    rdb: Annotated[Path, typer.Option("--rdb", help="An RDB file (dump.rdb) to trace offline.")],
    db: Annotated[int, typer.Option("--db", min=0, help="The database to read.")] = 0,
    family: FamilyOpt = None,
    now: Annotated[float | None, typer.Option("--now", help="Measure TTLs from this Unix time (default now).")]
    = None,
    top: TopOpt = 25,
    as_json: JsonOpt = False,
) -> None:
    """Trace an RDB file without a server (aml trace --rdb dump.rdb): the same report, keys whose expiry
    has passed counted as expired. Nothing is recorded in the catalog. Exit 0, 1 with anomalies, 2 when
    the file is not a readable RDB file."""
    from aml.trace.rdbfile import RdbError
    from aml.trace.run import trace_rdb_file
    from tasks.trace import trace_options
    from workers.app import get_settings

    options = trace_options(get_settings(), families=tuple(family) if family else None)
    try:
        report = trace_rdb_file(rdb, options, db=db, now=now)
    except RdbError as exc:
        err_console.print(f"[red]error[/]: {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    if as_json:
        print_json(report)
    else:
        render_trace(report, top)
    raise typer.Exit(1 if report["anomalies"] else 0)


@clean_app.callback()
def clean(
    ctx: typer.Context,
    pattern: Annotated[str | None, typer.Option("--pattern", help="Glob of the keys to remove (required).")] = None,
    ttl_zero_only: Annotated[bool, typer.Option("--ttl-zero-only", help="Only keys whose TTL has run to zero.")]
    = False,
    no_ttl: Annotated[bool, typer.Option("--no-ttl", help="Only keys with no TTL.")] = False,
    idle_days: Annotated[float | None, typer.Option("--idle-days", min=0, help="Only keys idle this many days "
                                                    "or more.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Remove nothing; list what would go.")] = False,
    as_json: JsonOpt = False,
    enqueue: EnqueueOpt = False,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 3600.0,
) -> None:
    """Remove keys from a Redis keyspace (aml redis://... trace clean --pattern GLOB): a snapshot of them
    first, then UNLINK in batches; the run is recorded in the catalog and `trace clean undo RUN_ID` puts the
    keys back."""
    if ctx.invoked_subcommand is not None:
        return
    if not pattern:
        raise typer.BadParameter("give --pattern GLOB ('*' for every key)", param_hint="--pattern")
    from tasks import trace as trace_tasks

    kwargs = {"store": store_of(ctx), "pattern": pattern, "ttl_zero_only": ttl_zero_only, "no_ttl": no_ttl,
              "idle_days": idle_days, "dry_run": dry_run}
    result = run_task(trace_tasks.clean_keys, kwargs, enqueue=enqueue, wait=wait, timeout=timeout, as_json=as_json)
    if result is None:
        return

    def render(r: dict[str, Any]) -> None:
        examples = ", ".join(escape(e) for e in r["examples"])
        if r["dry_run"]:
            console.print(f"would remove {r['selected']:,} {escape(r['criteria'])}"
                          + (f" (e.g. {examples})" if examples else ""), soft_wrap=True)
            return
        console.print(f"removed {r['removed']:,} of {r['selected']:,} {escape(r['criteria'])}", soft_wrap=True)
        if r["snapshot"]:
            console.print(f"  snapshot: {r['snapshot']}; undo: aml {escape(r['store'])} trace clean undo "
                          f"{r['task_run_id']}", soft_wrap=True)

    emit(result, as_json, render, command="trace clean")


@clean_app.command("undo")
def undo(
    ctx: typer.Context,
    run_id: Annotated[int, typer.Argument(help="The task run id of the clean (printed by trace clean).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Write nothing; say what would be put back.")] = False,
    as_json: JsonOpt = False,
    enqueue: EnqueueOpt = False,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 3600.0,
) -> None:
    """Put back the keys a trace clean removed (keys created again since are left alone; keys whose expiry
    time has passed are skipped)."""
    from tasks import trace as trace_tasks

    result = run_task(trace_tasks.undo_clean_keys, {"store": store_of(ctx), "run_id": run_id, "dry_run": dry_run},
                      enqueue=enqueue, wait=wait, timeout=timeout, as_json=as_json)
    if result is None:
        return

    def render(r: dict[str, Any]) -> None:
        verb = "would put back" if r["dry_run"] else "put back"
        count = r["would_write"] if r["dry_run"] else r["written"]
        console.print(f"{verb} {count:,} keys of clean run {r['undone_run']}; {r['existing_skipped']:,} left "
                      f"alone (created again since), {r['expired_skipped']:,} skipped as expired", soft_wrap=True)

    emit(result, as_json, render, command="trace clean undo")
