"""``aml demo``: write a sample Loom store and run every operation on it, inline.

What ``make demo`` runs. Uses the embedded defaults: the SQLite catalog under ``$AML_HOME`` and no
broker (tasks run with ``task.apply()``). Each step prints one short summary. Operations add their
step to :data:`DEMO_STEPS` (in the order the demo runs them).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aml.sample import SampleSpec, generate_loom_store
from aml.store import atomic_write, decode, encode
from cli.render import console, render_health, styled
from workers.dispatch import execute


@dataclass
class DemoContext:
    """What demo steps share: the demo folder, the store root, and notes for the closing line."""

    directory: Path
    root: Path
    notes: list[str] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)


def run_task(task: Any, **kwargs: Any) -> dict[str, Any]:
    """Run a task inline and return its result dict (raises what the task raised)."""
    outcome = execute(task, kwargs)
    assert outcome.result is not None
    return outcome.result


def step_health(ctx: DemoContext) -> None:
    """monitor health: the six checks, alerts and metrics."""
    from tasks import health as health_tasks

    report = run_task(health_tasks.check, store=str(ctx.root))["report"]
    render_health(report)
    ctx.notes.append(f"health {styled(report['status'])}")


def _append_item(path: Path, item: dict[str, Any]) -> None:
    """Append ``item`` to the JSON list in ``path``, keeping its encoding (an agent learning something)."""
    data, encoding = decode(path.read_bytes())
    items = json.loads(data)
    items.append(item)
    atomic_write(path, encode(json.dumps(items, indent=2).encode(), encoding))


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below ``root``: relative path -> (content, mtime_ns)."""
    out: dict[str, tuple[bytes, int]] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            out[path.relative_to(root).as_posix()] = (path.read_bytes(), path.stat().st_mtime_ns)
    return out


def step_backup(ctx: DemoContext) -> None:
    """backup: a full snapshot, a few changed files, an incremental one, verify, a restore drill, restore to a
    new folder."""
    from tasks import backup as backup_tasks
    from tasks import drill as drill_tasks
    from tasks import verify as verify_tasks

    store = str(ctx.root)
    full = run_task(backup_tasks.create, store=store, description="demo: first snapshot")
    console.print(f"create: {full['backup_id']} ({full['backup_type']}), {full['file_count']} files, "
                  f"{full['total_size_bytes']:,} bytes, {full['stored_bytes']:,} bytes stored in "
                  f"{full['packs_written']} pack(s)")
    agents = sorted(p.name for p in ctx.root.iterdir() if (p / "patterns.json").is_file())
    for n, agent in enumerate(agents[:2]):  # the agents keep working: two documents change
        _append_item(ctx.root / agent / "decisions.json",
                     {"id": f"demo-decision-{n}", "agent": agent, "timestamp": "2026-01-01T00:00:00.000Z",
                      "decision": {"type": "fix-strategy", "question": "Ship the hotfix today?",
                                   "chosenOption": "yes, behind a flag"}, "active": True})
    incr = run_task(backup_tasks.create, store=store, incremental=True)
    console.print(f"create --incremental: {incr['backup_id']} (parent {incr['parent_backup_id']}): "
                  f"{incr['files_read']} changed files read, {incr['files_unchanged']} unchanged skipped, "
                  f"{incr['bytes_added']:,} new bytes")
    checked = run_task(verify_tasks.verify, store=store, read_data=True)
    console.print(f"verify --read-data: {styled(checked['status'])}, "
                  + ", ".join(f"{k} {v}" for k, v in checked["verified"].items()))
    drilled = run_task(drill_tasks.drill, store=store)
    console.print(f"drill: {drilled['backup_id']} restored into a scratch directory, {drilled['files_checked']} of "
                  f"{drilled['files_expected']} files checked against the manifest (size, sha256): "
                  + ("[green]passed[/]" if drilled["passed"] else f"[red]{drilled['drill_status']}[/]")
                  + f", scratch copy {'removed' if drilled.get('scratch_removed') else 'NOT removed'}")
    if not drilled["passed"]:
        why = drilled.get("error") or drilled["failures"][:3]
        raise RuntimeError(f"restore drill {drilled['drill_status']}: {why}")
    target = ctx.directory / "restored"
    if target.exists():
        shutil.rmtree(target)
    restored = run_task(backup_tasks.restore_, store=store, backup_id=incr["backup_id"], target=str(target))
    source, copy = _tree(ctx.root), _tree(target)
    same = source == copy
    console.print(f"restore {incr['backup_id']} -> {target}: {restored['files_written']} files, "
                  f"{restored['bytes_written']:,} bytes; "
                  + (f"[green]byte-identical to the store, mtimes kept[/] ({len(source)} files)" if same
                     else f"[red]differs from the store[/]: {sorted(set(source) ^ set(copy))[:5]}"))
    if not same:
        raise RuntimeError("restored copy differs from the store")
    ctx.notes.append(f"backup: 2 snapshots verified, restore identical ({len(source)} files)")


def step_optimize(ctx: DemoContext) -> None:
    """optimize compress + index + warm-cache, then a query served from the index."""
    from tasks import compress as compress_tasks
    from tasks import query as query_tasks

    comp = run_task(compress_tasks.compress, store=str(ctx.root), age_days=30)
    console.print(f"compress: {comp['files_changed']} cold files to gzip, {comp['bytes_before']:,} -> "
                  f"{comp['bytes_after']:,} bytes (mtimes kept; skipped {comp['skipped']})")
    idx = run_task(compress_tasks.index, store=str(ctx.root))
    console.print(f"index: {idx['records']:,} records, {idx['index_bytes']:,} bytes, "
                  f"Bloom filter {idx['bloom_items']} ids")
    warm = run_task(compress_tasks.warm_cache, store=str(ctx.root))
    rate = warm["measurement"]["cache"]["hit_rate"]
    console.print(f"warm-cache: {warm['records']} records; {warm['measurement']['lookups']} lookups, hit rate "
                  + ("n/a" if rate is None else f"{rate:.0%}"))
    q = run_task(query_tasks.query, store=str(ctx.root), text="retry backoff", min_confidence=0.3, limit=3)
    for h in q["hits"]:
        console.print(f"  {h['agent']}/{h['collection']} {h['kind']} value {h['value']:.2f} "
                      f"at {h['document']}#{h['pointer']}")
    console.print(f"query: {q['count']} hits in {q['elapsed_s'] * 1000:.2f} ms, cache {q['cache']['hits']}/"
                  f"{q['cache']['lookups']} hits")
    ctx.notes.append(f"optimize: {comp['files_changed']} files compressed, {idx['records']} records indexed")


def step_prune(ctx: DemoContext) -> None:
    """prune: a dry run (the plan), the prune itself (pre-prune snapshot first), then its undo."""
    from tasks import prune as prune_tasks

    strategies = ["time_based", "performance_based", "space_based"]
    small = {"agent_limit_mib": 0.05}  # the sample agents are small: a 50 KiB limit shows space pruning
    plan = run_task(prune_tasks.run, store=str(ctx.root), strategies=strategies, dry_run=True, overrides=small)
    counts = plan["plan"]["counts"]
    console.print("(agent limit lowered to 0.05 MiB for the demo, so that space pruning has work)")
    console.print(f"dry run: {counts['total']} of {plan['plan']['records_scanned']} records would go "
                  f"({counts['removed']} removed, {counts['archived']} archived): "
                  + ", ".join(f"{k} {v}" for k, v in counts["by_reason"].items()))
    done = run_task(prune_tasks.run, store=str(ctx.root), strategies=strategies, overrides=small)
    applied = done["applied"] or {"removed": 0, "archived": 0, "bytes_freed": 0, "documents": []}
    console.print(f"prune {done['run_id']}: removed {applied['removed']}, archived {applied['archived']} in "
                  f"{len(applied['documents'])} documents ({applied['bytes_freed']:,} bytes freed); "
                  f"pre-prune snapshot {done['backup_id']}")
    undone = run_task(prune_tasks.undo, store=str(ctx.root), run_id=done["run_id"]) if done["applied"] else None
    if undone is not None:
        console.print(f"undo: restored {undone['restored']} of {undone['records']} records")
    ctx.notes.append(f"prune: {counts['total']} planned, {undone['restored'] if undone else 0} restored by undo")


def step_migrate(ctx: DemoContext) -> None:
    """migrate: detect, a dry run to 2.0.0, the migration (pre-migrate snapshot first), and back to 1.0.0."""
    from tasks import migrate as migrate_tasks

    found = run_task(migrate_tasks.detect_versions, store=str(ctx.root))
    console.print(f"detect: data {found['version']}, claimed {found['claimed'] or 'none'}, "
                  + ", ".join(f"{v}: {n}" for v, n in found["versions"].items()))
    dry = run_task(migrate_tasks.migrate, store=str(ctx.root), version="2.0.0", dry_run=True)
    console.print(f"dry run: {dry['records_changed']} of {dry['records']} records in {len(dry['files_to_write'])} "
                  "files would change")
    for version in ("2.0.0", "1.0.0"):
        done = run_task(migrate_tasks.migrate, store=str(ctx.root), version=version)
        console.print(f"{done['source']} -> {version}: {styled(done['status'])}, {done['records_changed']} records "
                      f"in {len(done['files_written'])} files; pre-migrate snapshot {done['backup_id']}")
    ctx.notes.append(f"migrate: {dry['records']} records to 2.0.0 and back to 1.0.0")


def step_trace(ctx: DemoContext) -> None:
    """trace: records and bytes per agent and collection, recorded as a time series (a second trace
    compares with the first: growth)."""
    from tasks import trace as trace_tasks

    report = run_task(trace_tasks.run, store=str(ctx.root))["report"]
    top = list(report["patterns"].items())[:3]
    console.print(f"trace: {report['keys']:,} records, {report['bytes']:,} bytes of records in "
                  f"{report['pattern_count']} agent/collection series; largest: "
                  + ", ".join(f"{name} ({p['keys']} records, {p['bytes']:,} bytes)" for name, p in top))
    for a in report["anomalies"][:3]:
        console.print(f"  {styled(a['severity'])} {a['kind']}: {a['message']}")
    again = run_task(trace_tasks.run, store=str(ctx.root))["report"]
    console.print(f"trace again: compared with the previous trace: {again['compared_with_previous']}, "
                  f"{sum(1 for a in again['anomalies'] if a['kind'] == 'rapid_growth')} growing series; "
                  f"time series in the catalog (trace_items, trace_bytes) and memory_tracer_timeseries.jsonl")
    ctx.notes.append(f"trace: {report['keys']} records in {report['pattern_count']} series")


def step_health_after(ctx: DemoContext) -> None:
    """monitor health again: the backups and the index now exist, and the alerts they raised resolve."""
    from tasks import health as health_tasks

    report = run_task(health_tasks.check, store=str(ctx.root))["report"]
    render_health(report)
    ctx.notes.append(f"health after maintenance {styled(report['status'])}")


DEMO_STEPS: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("monitor health", step_health),
    ("backup", step_backup),
    ("optimize", step_optimize),
    ("prune", step_prune),
    ("migrate", step_migrate),
    ("trace", step_trace),
    ("monitor health (after maintenance)", step_health_after),
]
"""(title, step) in the order the demo runs them."""


def run_demo(directory: Path, *, seed: int = 7) -> int:
    """Generate ``directory/.loom/memory`` afresh and run every step of :data:`DEMO_STEPS` on it.

    Args:
        directory: demo folder (its ``.loom`` is replaced).
        seed: generator seed.

    Returns:
        Exit code: 0 when every step ran (health warnings on a fresh store are expected), 2 if a
        step failed.
    """
    root = directory / ".loom" / "memory"
    if (directory / ".loom").exists():
        shutil.rmtree(directory / ".loom")
    console.rule("[bold]sample store")
    made = generate_loom_store(root, SampleSpec(agents=5, seed=seed, idle_agents=1))
    n = sum(a["patterns"] + a["solutions"] + a["decisions"] for a in made["agents"].values())
    gz = sum(1 for a in made["agents"].values() if a["gzip"])
    console.print(f"wrote {root}: {len(made['agents'])} agents, {n} records, {made['bytes']:,} bytes "
                  f"({gz} agents stored as gzip under .json names, as Loom's runtime writes them)")
    ctx = DemoContext(directory, root)
    failed: list[str] = []
    for title, step in DEMO_STEPS:
        console.rule(f"[bold]{title}")
        try:
            step(ctx)
        except Exception as exc:  # show every step's outcome; the exit code says a step failed
            console.print(f"[red]{title} failed[/]: {exc}")
            failed.append(title)
    console.rule()
    console.print("demo done: " + "; ".join(ctx.notes))
    if failed:
        console.print(f"[red]failed steps[/]: {', '.join(failed)}")
        return 2
    return 0
