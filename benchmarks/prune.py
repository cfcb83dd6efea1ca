"""Benchmark: prune's plan, apply and undo rates against the time to only parse the same documents.

Builds a Loom store with :func:`aml.sample.generate_loom_store` (default 50 agents x (1,000 patterns +
600 solutions + 400 decisions) = 100,000 records in 150 documents, every second agent's files gzip under
their ``.json`` names, as Loom's runtime writes them), then times, in the same run:

* **parse**: read + decode (gzip) + ``json.loads`` of every collection document: the floor any pruner
  that reads the store pays;
* **plan**: :func:`aml.prune.build_plan` with ``time_based``, ``performance_based`` and ``space_based``
  (the dry run): read, classify, record views, value scores, rules;
* **parse (touched)**: the parse floor of only the documents the plan rewrites;
* **apply**: :func:`aml.prune.apply_plan` (re-read, splice, re-encode, atomic write with fsync, decisions
  archived), against *parse (touched)*;
* **undo**: :func:`aml.prune.undo_entries` for everything apply removed (which also resets the store for
  the next repetition).

Each step runs ``--repeat`` times (default 3) and the best time is kept. Rates are records per second:
records read for parse and plan, records held by the rewritten documents for apply and undo (the
records removed are shown too). The machines are shared and noisy: read the ratios to the parse floor,
not the absolute times.

Usage::

    .venv/bin/python -m benchmarks.prune                  # 50 agents, 100,000 records
    .venv/bin/python -m benchmarks.prune --agents 5       # 10,000 records, a smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from aml.prune import MIB, PruneConfig, UndoEntry, apply_plan, build_plan, undo_entries
from aml.sample import SampleSpec, generate_loom_store
from aml.store.codec import decode

DEFAULT_WORKDIR = Path(__file__).resolve().parents[1] / "bench-work" / "prune"
END = datetime(2026, 11, 22, 12, tzinfo=UTC)
STRATEGIES = ["time_based", "performance_based", "space_based"]

T = TypeVar("T")


def best_of(repeat: int, fn: Callable[[], T], reset: Callable[[], None] | None = None) -> tuple[float, T]:
    """Run ``fn`` ``repeat`` times (``reset`` before each but the first); best time and last result."""
    best, result = float("inf"), None
    for n in range(repeat):
        if reset is not None and n:
            reset()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    assert result is not None
    return best, result


def parse_documents(paths: list[Path]) -> int:
    """Read, decode and parse every document; returns the number of records (list items)."""
    count = 0
    for path in paths:
        data, _ = decode(path.read_bytes())
        count += len(json.loads(data))
    return count


def main(argv: list[str] | None = None) -> int:
    """Build the store, run the measurements, print the table (and ``--json``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--patterns", type=int, default=1000)
    ap.add_argument("--solutions", type=int, default=600)
    ap.add_argument("--decisions", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    ap.add_argument("--keep", action="store_true", help="Keep the generated store.")
    ap.add_argument("--json", action="store_true", help="Also print the figures as JSON.")
    args = ap.parse_args(argv)

    work = args.workdir
    if work.exists():
        shutil.rmtree(work)
    root = work / ".loom" / "memory"
    spec = SampleSpec(agents=args.agents, patterns=args.patterns, solutions=args.solutions,
                      decisions=args.decisions, days=365, end=END, seed=11)
    t0 = time.perf_counter()
    made = generate_loom_store(root, spec)
    gen_s = time.perf_counter() - t0
    records = sum(a["patterns"] + a["solutions"] + a["decisions"] for a in made["agents"].values())
    docs = sorted(p for p in root.glob("*/*.json") if p.name in ("patterns.json", "solutions.json", "decisions.json"))
    agent_sizes = sorted(sum(p.stat().st_size for p in (root / a).iterdir()) for a in made["agents"])
    # about half the agents stay over this limit after the time and performance rules: space pruning runs
    limit_mib = agent_sizes[len(agent_sizes) // 2] * 0.5 / MIB
    config = PruneConfig(now=END, agent_limit_mib=limit_mib)
    print(f"store: {args.agents} agents, {records:,} records in {len(docs)} documents, {made['bytes'] / MIB:.1f} MiB "
          f"on disk (generated in {gen_s:.1f} s); space limit {limit_mib:.2f} MiB per agent", file=sys.stderr)

    parse_all(docs)  # warm the page cache
    parse_s, parsed = best_of(args.repeat, lambda: parse_all(docs))
    assert parsed == records
    plan_s, plan = best_of(args.repeat, lambda: build_plan(root, config, STRATEGIES))
    touched = sorted({root / a.document for a in plan.actions})
    touched_records = parse_documents(touched)
    parse_touched_s, _ = best_of(args.repeat, lambda: parse_documents(touched))

    archive = work / "archives"
    state: dict[str, Any] = {}

    def do_apply() -> Any:
        fresh = build_plan(root, config, STRATEGIES)  # mtimes changed after the last undo
        t = time.perf_counter()
        result = apply_plan(fresh, run_id="bench", archive_root=archive)
        state["apply_s"] = min(state.get("apply_s", float("inf")), time.perf_counter() - t)
        state["result"] = result
        entries = [UndoEntry(n, r.action.document, r.action.record_id, r.payload)
                   for n, r in enumerate(result.applied)]
        t = time.perf_counter()
        undone = undo_entries(root, entries, archive_root=archive)
        state["undo_s"] = min(state.get("undo_s", float("inf")), time.perf_counter() - t)
        assert len(undone.restored) == len(entries) and not undone.failed
        return result

    for _ in range(args.repeat):
        do_apply()
    result = state["result"]
    assert not result.conflicts and result.error is None
    removed = len(result.applied)

    rows = [
        ("parse (all documents)", parsed, parse_s, parse_s),
        ("plan: 3 strategies (dry run)", plan.records_scanned, plan_s, parse_s),
        ("parse (touched documents)", touched_records, parse_touched_s, parse_touched_s),
        ("apply (rewrite touched)", touched_records, state["apply_s"], parse_touched_s),
        ("undo (restore all removed)", touched_records, state["undo_s"], parse_touched_s),
    ]
    print(f"\nplan: {len(plan.actions):,} records to prune ({plan.counts()['by_reason']}), "
          f"{len(touched)} documents touched, {removed:,} removed/archived per apply", file=sys.stderr)
    header = f"{'step':<30} {'records':>9} {'seconds':>9} {'records/s':>11} {'x parse':>8}"
    print(header)
    print("-" * len(header))
    figures = []
    for name, n, secs, floor in rows:
        print(f"{name:<30} {n:>9,} {secs:>9.3f} {n / secs:>11,.0f} {secs / floor:>8.2f}")
        figures.append({"step": name, "records": n, "seconds": round(secs, 4),
                        "records_per_s": round(n / secs), "ratio_to_parse": round(secs / floor, 3)})
    print(f"{'(removed per apply)':<30} {removed:>9,} {state['apply_s']:>9.3f} {removed / state['apply_s']:>11,.0f}")
    if args.json:
        print(json.dumps({"records": records, "documents": len(docs), "figures": figures,
                          "removed": removed, "touched_documents": len(touched)}, indent=2))
    if not args.keep:
        shutil.rmtree(work)
    return 0


def parse_all(docs: list[Path]) -> int:
    """:func:`parse_documents` over every collection document."""
    return parse_documents(docs)


if __name__ == "__main__":
    sys.exit(main())
