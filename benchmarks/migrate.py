"""Benchmark: ``migrate`` 1.0.0 -> 2.0.0 against only parsing and re-serialising the same documents.

Builds a Loom-shaped store (:func:`aml.sample.generate_loom_store`; default 50 agents x (1,000
patterns + 600 solutions + 400 decisions) = 100,000 records, every second agent's files gzip under
``.json`` names as Loom's runtime writes them), then times, in the same run and on the same disk:

1. **parse + re-serialise** (the reference): read every collection file, decode (gzip or plain), parse
   the JSON, serialise it again in its own layout and encode it again; nothing written;
2. the same plus an **atomic write** of each file (temp file, fsync, rename; directories fsynced once):
   what any safe rewrite of the store costs;
3. aml's **plan** only (``--dry-run``: read each file once and migrate its items in one streaming pass;
   nothing is serialised, see :mod:`aml.migrate.plan`);
4. aml's **migrate 1.0.0 -> 2.0.0** end to end (plan, journal, originals, atomic rewrites,
   ``schema_version.json``);
5. aml's **migrate 2.0.0 -> 1.0.0** (the downgrade, with its loss check: every item walks back up).

It prints seconds, records per second, milliseconds per 1,000 records (the seeds quote 50-150 ms per
1,000 items for Loom's migration) and each time's ratio to the reference (1). The machines are
shared and noisy: read the ratios, not the absolute times.

Usage::

    .venv/bin/python -m benchmarks.migrate                    # 100,000 records
    .venv/bin/python -m benchmarks.migrate --agents 10        # 20,000 records
    .venv/bin/python -m benchmarks.migrate --small            # 4 x 500, a smoke run
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
from typing import Any

from aml.migrate import build_plan, detect, migrate
from aml.migrate.files import collection_files, load_collection, render
from aml.sample import SampleSpec, generate_loom_store
from aml.store import FileStore, atomic_write, fsync_dir

DEFAULT_WORKDIR = Path(__file__).resolve().parents[1] / "bench-work" / "migrate"


def reserialise(root: Path, *, write: bool) -> int:
    """Parse and re-serialise every collection file of ``root`` (the reference); returns records."""
    store = FileStore(root)
    agents = frozenset(store.agents())
    records = 0
    touched: set[Path] = set()
    for relpath, _, _ in collection_files(store):
        loaded = load_collection(root, relpath, agents)
        data = render(loaded, dict(enumerate(loaded.data)))  # every item serialised anew
        records += len(loaded.data)
        if write:
            atomic_write(root / relpath, data, sync_dir=False)
            touched.add((root / relpath).parent)
    for directory in touched:
        fsync_dir(directory)
    return records


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, result)`` of one call."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table. Returns the process exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--patterns", type=int, default=1000, help="patterns per agent")
    ap.add_argument("--solutions", type=int, default=600, help="solutions per agent")
    ap.add_argument("--decisions", type=int, default=400, help="decisions per agent")
    ap.add_argument("--gzip-every", type=int, default=2, help="every n-th agent's files are gzip (0: none)")
    ap.add_argument("--small", action="store_true", help="4 agents x 500 records (smoke run)")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args(argv)
    if args.small:
        args.agents, args.patterns, args.solutions, args.decisions = 4, 250, 150, 100

    work: Path = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    source = work / "source" / ".loom" / "memory"
    spec = SampleSpec(agents=args.agents, patterns=args.patterns, solutions=args.solutions,
                      decisions=args.decisions, days=365, gzip_every=args.gzip_every,
                      end=datetime(2026, 11, 22, tzinfo=UTC), seed=7)
    t_build, made = timed(lambda: generate_loom_store(source, spec))
    records = sum(a["patterns"] + a["solutions"] + a["decisions"] for a in made["agents"].values())
    nfiles = len(collection_files(FileStore(source)))
    print(f"store: {records:,} records in {nfiles} files, {made['bytes'] / 1e6:.1f} MB on disk "
          f"(built in {t_build:.1f} s) at {source}")

    rows: list[tuple[str, float]] = []
    t, n = timed(lambda: reserialise(source, write=False))
    assert n == records
    rows.append(("parse + re-serialise (reference)", t))

    copy = work / "rewrite"
    shutil.copytree(source, copy)
    rows.append(("parse + re-serialise + atomic write", timed(lambda: reserialise(copy, write=True))[0]))

    t, plan = timed(lambda: build_plan(source, "2.0.0"))
    assert sum(f.changed for f in plan.files) == records
    rows.append(("aml plan 1.0.0 -> 2.0.0 (--dry-run)", t))
    del plan

    target = work / "migrated"
    shutil.copytree(source, target)
    t, result = timed(lambda: migrate(target, "2.0.0"))
    assert result.status == "success" and sum(f.changed for f in result.plan.files) == records
    rows.append(("aml migrate 1.0.0 -> 2.0.0", t))
    found = detect(target)
    assert found.consistent and found.version == "2.0.0"

    t, result = timed(lambda: migrate(target, "1.0.0"))
    assert result.status == "success" and not result.plan.lossy
    rows.append(("aml migrate 2.0.0 -> 1.0.0 (loss-checked)", t))

    reference = rows[0][1]
    print()
    print(f"{'operation':<44} {'s':>8} {'records/s':>11} {'ms/1000':>8} {'x ref':>7}")
    print("-" * 82)
    out = []
    for name, seconds in rows:
        rate = records / seconds
        per_k = seconds / records * 1000 * 1000
        print(f"{name:<44} {seconds:>8.2f} {rate:>11,.0f} {per_k:>8.1f} {seconds / reference:>7.2f}")
        out.append({"operation": name, "seconds": round(seconds, 4), "records_per_s": round(rate, 1),
                    "ms_per_1000": round(per_k, 2), "ratio_to_reference": round(seconds / reference, 3)})
    print("-" * 82)
    print(f"{records:,} records; 'x ref' = time / parse+re-serialise time (lower is better); the seeds quote "
          "50-150 ms per 1,000 items")
    if args.json:
        print(json.dumps({"records": records, "files": nfiles, "bytes": made["bytes"], "results": out}, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
