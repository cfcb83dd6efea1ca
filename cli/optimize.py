"""``aml <memory_path> optimize all|index|compress|warm-cache|gc`` and ``aml <memory_path> query``.

The seeds' ``optimization.py`` commands (``build-index``, ``compress``, ``warm-cache``, ``gc``) as
aml tasks (``tasks/compress.py``, ``tasks/query.py``). Inline by default; ``--enqueue`` sends them to
the workers. ``--dry-run`` (gc, compress, all) writes nothing. Exit codes: 0 ok, 1 warning (e.g.
unparseable documents found and left alone), 2 failure.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

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
from cli.render import console, new_table, print_json, styled

compress_tasks = lazy_module("tasks.compress")
query_tasks = lazy_module("tasks.query")

optimize_app = typer.Typer(help="Compress cold files, garbage-collect records, index and query the store.",
                           no_args_is_help=True)

DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Report what would change; write nothing.")]
AgeOpt = Annotated[float, typer.Option("--age-days", help="Compress files not modified for this many days.")]
CodecOpt = Annotated[str, typer.Option("--codec", help="gzip (readable by Loom's runtime) or zstd (aml-only stores).")]
LevelOpt = Annotated[int | None, typer.Option("--level", help="Codec level (gzip: isal 0-3, default 2; zstd: 3).")]
ScopeOpt = Annotated[str, typer.Option("--scope", help="loom: documents Loom's runtime reads; all: every JSON file.")]
QuarantineOpt = Annotated[bool, typer.Option("--quarantine/--no-quarantine",
                                             help="Copy unparseable documents to <store>/.aml/quarantine/.")]


def _mib(n: int | float) -> str:
    return f"{n / (1024 * 1024):,.2f} MiB"


def _print_compress(r: dict[str, Any]) -> None:
    action = "decompress" if r["mode"] == "decompress" else f"compress ({r['codec']})"
    verb = ("would " if r["dry_run"] else "") + action
    ratio = f", ratio {r['ratio']:.3f}" if r.get("ratio") is not None else ""
    console.print(f"{verb}: {r['files_changed']} of {r['files_seen']} files, {_mib(r['bytes_before'])} -> "
                  f"{_mib(r['bytes_after'])}{ratio}; skipped {json.dumps(r['skipped'])}")
    for e in r["errors"]:
        console.print(f"  [yellow]unparseable, left alone[/]: {e['relpath']}: {e['reason']}")


def _print_gc(r: dict[str, Any]) -> None:
    plan = r["plan"]
    head = "would remove" if r["dry_run"] else "removed"
    n = plan["records_to_remove"] if r["dry_run"] else r["records_removed"]
    console.print(f"gc: {head} {n} of {plan['records_checked']} records in {plan['documents_checked']} collection "
                  f"documents {json.dumps(plan['by_reason'])}")
    if plan["records"]:
        table = new_table()
        for col in ("document", "pointer", "id", "agent", "reason"):
            table.add_column(col, overflow="fold")
        for rec in plan["records"][:50]:
            table.add_row(rec["document"], rec["pointer"], rec["id"] or "-", rec["agent"] or "-",
                          rec["reason"] + (f" of {rec['duplicate_of']}" if rec["duplicate_of"] else ""))
        console.print(table)
    if r.get("snapshot_id"):
        console.print(f"  safety snapshot {r['snapshot_id']} (restore: backup restore --backup-id {r['snapshot_id']})")
    for e in plan["unparseable"]:
        console.print(f"  [yellow]unparseable[/]: {e['relpath']}: {e['reason']}"
                      + (f" at byte {e['offset']}" if e["offset"] is not None else ""))
    for q in r.get("quarantined", []):
        if q.get("copy"):
            console.print(f"  quarantined copy: {q['copy']}")
    for c in plan["id_conflicts"][:10]:
        console.print(f"  [yellow]id conflict[/] (kept): {c['document']} {c['id']} at {', '.join(c['pointers'])}")


def _print_index(r: dict[str, Any]) -> None:
    how = "full" if r["full"] else "incremental"
    console.print(f"index: {r['records']:,} records from {r['documents']:,} files ({how}"
                  f": {r['documents_read']} read, {r['documents_reused']} unchanged, {r['documents_removed']} gone); "
                  f"{_mib(r['index_bytes'])}; Bloom filter {r['bloom_items']:,} ids, {r['bloom_bytes']:,} bytes; "
                  f"{r['duration_s']:.2f} s")


def _print_warm(result: dict[str, Any]) -> None:
    console.print(f"warm-cache: {result['records']:,} records ({_mib(result['bytes'])}) from "
                  f"{result['documents_read']} documents; lowest value {result['min_value']}")
    m = result.get("measurement")
    if m and m["lookups"]:
        rate = m["cache"]["hit_rate"]
        console.print(f"  {m['lookups']} lookups: {m['mean_s'] * 1000:.3f} ms mean, cache hit rate {rate:.0%}")


def _print_all(result: dict[str, Any]) -> None:
    steps = result["steps"]
    _print_gc(steps["gc"])
    _print_compress(steps["compress"])
    if "skipped" in steps["index"]:
        console.print(f"index: skipped ({steps['index']['skipped']})")
    else:
        _print_index(steps["index"])
    console.print(f"optimize all: {styled(result['status'])}")


@optimize_app.command("compress")
def compress(
    ctx: typer.Context,
    age_days: AgeOpt = 30.0,
    codec: CodecOpt = "gzip",
    level: LevelOpt = None,
    decompress: Annotated[bool, typer.Option("--decompress", help="Write compressed documents back as plain.")] = False,
    scope: ScopeOpt = "loom",
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
    enqueue: EnqueueOpt = False,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 3600.0,
) -> None:
    """Compress cold documents in place under their own names (atomic, mtime kept)."""
    result = run_task(compress_tasks.compress, {"store": store_of(ctx), "age_days": age_days, "codec": codec,
                                                "level": level, "decompress": decompress, "scope": scope,
                                                "dry_run": dry_run},
                      enqueue=enqueue, wait=wait, timeout=timeout, as_json=as_json)
    if result is None:
        return
    emit(result, as_json, _print_compress, command="optimize compress")


@optimize_app.command("gc")
def gc(
    ctx: typer.Context,
    dry_run: DryRunOpt = False,
    quarantine: QuarantineOpt = True,
    as_json: JsonOpt = False,
    enqueue: EnqueueOpt = False,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 3600.0,
) -> None:
    """Remove records missing id/agent/timestamp and exact duplicates; quarantine unparseable documents."""
    result = run_task(compress_tasks.gc, {"store": store_of(ctx), "dry_run": dry_run, "quarantine": quarantine},
                      enqueue=enqueue, wait=wait, timeout=timeout, as_json=as_json)
    if result is None:
        return
    emit(result, as_json, _print_gc, command="optimize gc")


@optimize_app.command("index")
def index(
    ctx: typer.Context,
    full: Annotated[bool, typer.Option("--full", help="Re-read every document.")] = False,
    as_json: JsonOpt = False,
    enqueue: EnqueueOpt = False,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 3600.0,
) -> None:
    """Build or update the record index (.aml/index.sqlite) and the Bloom filter of ids."""
    result = run_task(compress_tasks.index, {"store": store_of(ctx), "full": full},
                      enqueue=enqueue, wait=wait, timeout=timeout, as_json=as_json)
    if result is None:
        return
    emit(result, as_json, _print_index)


@optimize_app.command("warm-cache")
def warm_cache(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="Records preloaded at most.")] = 5000,
    max_mb: Annotated[float, typer.Option("--max-mb", help="Budget, MiB (1024² bytes) of record JSON.")] = 10.0,
    agent: Annotated[str | None, typer.Option(help="Only this agent's records.")] = None,
    measure: Annotated[int, typer.Option(help="Lookups timed afterwards (recorded as query metrics).")] = 50,
    as_json: JsonOpt = False,
    enqueue: EnqueueOpt = False,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 3600.0,
) -> None:
    """Preload the highest-value records into the index's warm set."""
    result = run_task(compress_tasks.warm_cache, {"store": store_of(ctx), "limit": limit, "max_mb": max_mb,
                                                  "agent": agent, "measure": measure},
                      enqueue=enqueue, wait=wait, timeout=timeout, as_json=as_json)
    if result is None:
        return
    emit(result, as_json, _print_warm)


@optimize_app.command("all")
def optimize_all(
    ctx: typer.Context,
    dry_run: DryRunOpt = False,
    age_days: AgeOpt = 30.0,
    codec: CodecOpt = "gzip",
    level: LevelOpt = None,
    scope: ScopeOpt = "loom",
    quarantine: QuarantineOpt = True,
    as_json: JsonOpt = False,
    enqueue: EnqueueOpt = False,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 3600.0,
) -> None:
    """gc, compress and index, in that order (index is skipped with --dry-run)."""
    result = run_task(compress_tasks.optimize_all, {"store": store_of(ctx), "dry_run": dry_run, "age_days": age_days,
                                                    "codec": codec, "level": level, "scope": scope,
                                                    "quarantine": quarantine},
                      enqueue=enqueue, wait=wait, timeout=timeout, as_json=as_json)
    if result is None:
        return
    emit(result, as_json, _print_all, command="optimize all")


def query(
    ctx: typer.Context,
    agent: Annotated[str | None, typer.Option(help="Only this agent.")] = None,
    kind: Annotated[str | None, typer.Option(help="Record type (e.g. css-layout) or collection (pattern...).")] = None,
    collection: Annotated[str | None, typer.Option(help="Exactly this collection (patterns, solutions...).")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Required tag (repeatable: all required).")] = None,
    min_confidence: Annotated[float | None, typer.Option("--min-confidence", help="Confidence at least, 0-1.")] = None,
    min_success: Annotated[float | None, typer.Option("--min-success", help="Success rate at least, 0-1.")] = None,
    text: Annotated[str | None, typer.Option(help="Full-text search: every word must match (word* = prefix).")] = None,
    record_id: Annotated[str | None, typer.Option("--id", help="The record with this id.")] = None,
    active_only: Annotated[bool, typer.Option("--active-only", help="Leave out deactivated records.")] = False,
    limit: Annotated[int, typer.Option(help="Maximum results.")] = 20,
    no_items: Annotated[bool, typer.Option("--no-items", help="Index rows only; do not fetch the records.")] = False,
    as_json: JsonOpt = False,
    enqueue: EnqueueOpt = False,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 60.0,
) -> None:
    """Query the store's records from its index (run `optimize index` first)."""
    kwargs = {"store": store_of(ctx), "agent": agent, "kind": kind, "collection": collection, "tags": list(tag or []),
              "min_confidence": min_confidence, "min_success_rate": min_success, "text": text, "record_id": record_id,
              "active_only": active_only, "limit": limit, "with_items": not no_items}
    result = run_task(query_tasks.query, kwargs, enqueue=enqueue, wait=wait, timeout=timeout, as_json=as_json)
    if result is None:
        return
    if as_json:
        print_json(result)
        return
    table = new_table()
    for col in ("agent", "collection", "kind", "id", "conf", "success", "value", "location"):
        table.add_column(col, overflow="fold")
    for h in result["hits"]:
        table.add_row(h["agent"], h["collection"], h["kind"], h["id"], _ratio(h["confidence"]),
                      _ratio(h["success_rate"]), f"{h['value']:.3f}", f"{h['document']}#{h['pointer']}")
    console.print(table)
    cache = result["cache"]
    rate = "n/a" if cache["hit_rate"] is None else f"{cache['hit_rate']:.0%}"
    more = " (more: raise --limit)" if result["truncated"] else ""
    console.print(f"{result['count']} records{more} in {result['elapsed_s'] * 1000:.2f} ms; cache hits "
                  f"{cache['hits']}/{cache['lookups']} ({rate})")


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"
