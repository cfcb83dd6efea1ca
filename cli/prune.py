"""``aml <memory_path> prune [...]`` and ``aml <memory_path> prune undo <run_id>``: the seeds' prune command.

The seeds' form works as they wrote it: ``--strategies`` and ``--agents`` take several values after
one flag (``--strategies time_based performance_based``), as argparse's ``nargs='+'`` does; repeating
the flag works too.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from aml.prune.config import DEFAULT_STRATEGIES, STRATEGIES
from cli.common import (
    EnqueueOpt,
    JsonOpt,
    TimeoutOpt,
    WaitOpt,
    emit,
    exit_for_status,
    exit_if_skipped,
    run_task,
    store_of,
)
from cli.lazy import lazy_module
from cli.render import console, new_table, print_json, styled

prune_tasks = lazy_module("tasks.prune")

MULTI_VALUE_OPTIONS = ("--strategies", "--agents")
"""Options that take every following word up to the next option (argparse ``nargs='+'``)."""

SUBCOMMANDS = frozenset({"undo"})


def expand_multi_values(args: list[str]) -> list[str]:
    """Rewrite ``--strategies a b`` as ``--strategies a --strategies b`` (the same for ``--agents``).

    Words after such an option are taken as its values until the next word starting with ``-`` or a
    sub-command name (``undo``)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        flag, eq, inline = word.partition("=")
        if flag in MULTI_VALUE_OPTIONS:
            values = [inline] if eq else []
            i += 1
            while i < len(args) and not args[i].startswith("-") and (args[i] not in SUBCOMMANDS or not values):
                values.append(args[i])
                i += 1
            if not values:
                out.append(flag)  # let click report the missing value
            for v in values:
                out.extend([flag, v])
            continue
        if word == "--":
            out.extend(args[i:])
            break
        out.append(word)
        i += 1
    return out


class PruneGroup(TyperGroup):
    """The ``prune`` group: accepts several values after ``--strategies``/``--agents``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: typer's (vendored) click Context
        return super().parse_args(ctx, expand_multi_values(list(args)))


prune_app = typer.Typer(cls=PruneGroup, invoke_without_command=True, no_args_is_help=False,
                        help="Remove or archive low-value records (plan, --dry-run, safety snapshot, undo).")

StrategiesOpt = Annotated[
    list[str] | None,
    typer.Option("--strategies", help=f"Strategies ({', '.join(STRATEGIES)}); several may follow the flag. "
                                      f"Default: {' '.join(DEFAULT_STRATEGIES)}."),
]



def _value(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def render_plan(result: dict[str, Any], limit: int) -> None:
    """Print a prune result: the plan as a table (at most ``limit`` rows), counts, and what was done."""
    plan = result["plan"]
    counts = plan["counts"]
    table = new_table(
                  title=f"prune plan: {counts['total']} records ({counts['removed']} to remove, "
                        f"{counts['archived']} to archive) of {plan['records_scanned']} scanned")
    for col in ("agent", "collection", "record", "reason", "value", "action"):
        table.add_column(col, justify="right" if col == "value" else "left")
    actions = plan["actions"]
    for a in actions[:limit]:
        record = a["record_id"] if len(a["record_id"]) <= 40 else "…" + a["record_id"][-39:]
        table.add_row(a["agent"], a["collection"], record, a["reason"], _value(a["value"]), a["action"])
    console.print(table)
    more = counts["total"] - min(limit, len(actions))
    if more > 0:
        console.print(f"  … {more} more (use --json for every row, or --limit)")
    if plan.get("sessions"):
        console.print(f"  sessions (mode {plan.get('session_mode')}): " + "; ".join(
            f"{doc} {s['limits']['max_messages']}/{s['limits']['max_tool_executions']}/"
            f"{s['limits']['max_reasoning_steps']} -{sum(s['removed'].values())}"
            for doc, s in plan["sessions"].items()), soft_wrap=True)
    if counts["by_reason"]:
        console.print("  by reason: " + ", ".join(f"{k} {v}" for k, v in counts["by_reason"].items()))
    if plan.get("documents_from_index"):
        console.print(f"  {plan['documents_from_index']} unchanged documents taken from the record index, unread "
                      "(--no-index reads them)")
    if plan["preserved"]:
        console.print(f"  kept for their value (≥ {plan['config']['high_value_threshold']}): {len(plan['preserved'])}")
    for err in plan["errors"]:
        console.print(f"  [yellow]not read[/] {err['relpath'] or err['path']}: {err['reason']}")
    if result["dry_run"]:
        console.print("dry run: nothing was changed")
        return
    resumed = result.get("resumed")
    if resumed:
        console.print(f"resumed run: {resumed['kept']} records removed by an earlier attempt of this run (undo "
                      f"puts them back too); {resumed['dropped']} rows of a rewrite it never made dropped")
    applied = result.get("applied")
    if applied is None:
        console.print("nothing to prune")
        return
    console.print(f"{styled(result['status'])}: removed {applied['removed']}, archived {applied['archived']} in "
                  f"{len(applied['documents'])} documents, {applied['bytes_freed']:,} bytes freed; pre-prune "
                  f"snapshot [bold]{result['backup_id']}[/]", soft_wrap=True)
    for c in applied["conflicts"]:
        console.print(f"  [yellow]left alone[/] {c['document']}: {c['reason']}")
    if applied.get("error"):
        console.print(f"  [red]stopped[/]: {applied['error']}")
    console.print(f"undo with: aml {result['store']} prune undo {result['run_id']}", soft_wrap=True)


@prune_app.callback(invoke_without_command=True)
def prune(
    ctx: typer.Context,
    strategies: StrategiesOpt = None,
    agents: Annotated[list[str] | None, typer.Option("--agents", help="Only these agents (several may follow).")]
    = None,
    aggressive: Annotated[bool, typer.Option("--aggressive", help="Seeds' aggressive thresholds: 60/120 days, "
                                                                  "success < 30 %.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and change nothing.")] = False,
    agent_limit_mib: Annotated[float | None, typer.Option(help="Space-based: agent limit in MiB (1024² bytes); "
                                                               "default 80.")] = None,
    store_limit_mib: Annotated[float | None, typer.Option(help="Space-based: store limit in MiB; default 800.")]
    = None,
    limits: Annotated[list[str] | None, typer.Option(
        "--limits", help="Aitor session limits MESSAGES/TOOLS/STEPS (e.g. 150/40/120) or "
                         "max_messages=150,max_tool_executions=40,max_reasoning_steps=120; prefix AGENT: for one "
                         "agent; repeatable. A session's <id>.limits.json sidecar wins over per-agent limits, "
                         "which win over general ones; --limits wins over AML_SESSION_LIMITS; Aitor's "
                         "100/50/100 apply last.")] = None,
    fifo: Annotated[bool, typer.Option(
        "--fifo", help="Sessions: Aitor 1.1.2's own rule, mode 'fifo' (the oldest messages, tool executions and "
                       "reasoning steps go first, whatever the role). Default mode 'managed': the seed's "
                       "ManagedReactAgent.prune_memory rule by whole exchanges (system messages kept, the last N "
                       "others, duplicate exchanges removed; no user/assistant pair is broken).")] = False,
    now: Annotated[str | None, typer.Option(help="Reference instant (ISO 8601) for ages; default now.",
                                            hidden=True)] = None,
    limit: Annotated[int, typer.Option(help="Rows of the plan table shown.")] = 50,
    no_index: Annotated[bool, typer.Option(
        "--no-index", help="Read every document. By default the live Loom collections that the record index "
                           "(optimize index) holds unchanged, same size, mtime and inode, are taken from it "
                           "unread.")] = False,
    as_json: JsonOpt = False,
    enqueue: EnqueueOpt = False,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 3 * 3600.0,
) -> None:
    """Plan and prune: `aml <memory_path> prune [--strategies time_based performance_based space_based]
    [--aggressive] [--limits 150/40/120] [--fifo] [--dry-run] [--json]`.

    Aitor sessions are pruned in mode 'managed' (default: whole exchanges, the seed's
    ManagedReactAgent.prune_memory rule) or 'fifo' (--fifo: Aitor 1.1.2's own oldest-first rule)."""
    if ctx.invoked_subcommand is not None:
        return
    overrides = {k: v for k, v in (("agent_limit_mib", agent_limit_mib), ("store_limit_mib", store_limit_mib))
                 if v is not None}
    kwargs = {"store": store_of(ctx), "strategies": strategies or None, "aggressive": aggressive,
              "dry_run": dry_run, "agents": agents or None, "now": now, "overrides": overrides or None,
              "limits": limits or None, "fifo": fifo}
    if no_index:
        kwargs["use_index"] = False
    result = run_task(prune_tasks.run, kwargs, enqueue=enqueue, wait=wait, timeout=timeout, as_json=as_json)
    if result is None:
        return
    emit(result, as_json, lambda r: render_plan(r, limit), command="prune")


@prune_app.command("undo")
def undo(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The prune run to undo (printed by `prune`).")],
    as_json: JsonOpt = False,
    enqueue: EnqueueOpt = False,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 3 * 3600.0,
) -> None:
    """Put back exactly the records a prune run removed or archived (later changes are kept)."""
    result = run_task(prune_tasks.undo, {"store": store_of(ctx), "run_id": run_id}, enqueue=enqueue, wait=wait,
                      timeout=timeout, as_json=as_json)
    if result is None:
        return
    exit_if_skipped(result, "prune undo", as_json)
    if as_json:
        print_json(result)
    else:
        console.print(f"{styled(result['status'])}: undo of {result['run_id']}: restored {result['restored']} of "
                      f"{result['records']} records ({result['already_present']} already present, "
                      f"{result['already_undone']} undone before); pre-undo snapshot {result['backup_id'] or '-'}")
        for f in result["failed"]:
            console.print(f"  [yellow]not restored[/] {f['document']}: {f['reason']}")
        if result.get("restore_hint"):
            console.print(f"  {result['restore_hint']}")
        for a in result.get("archive_errors") or []:
            console.print(f"  [yellow]archive not updated[/] {a['archive']}: {a['reason']}")
    exit_for_status(result)
