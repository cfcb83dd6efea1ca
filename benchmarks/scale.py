"""Benchmark: every command on a large Loom store against the cost of parsing the store once (issue 12).

Builds a Loom store with :func:`aml.sample.generate_loom_store` (default 8 agents x (5,000 patterns + 2,500
solutions + 1,875 decisions) = 75,000 records, about 9-10 MB per agent, plain JSON as Loom's runtime writes
it), then runs each command as an operator does (``aml <store> ...`` in a fresh process, inline, SQLite
catalog) and measures its wall time and peak RSS (``getrusage`` of the child). The reference, measured in
the same run: **parse**, a fresh Python process that reads and ``json.loads`` every document of the store
(the floor of any command that reads the store once, interpreter start-up included). Ratio = command time /
parse time, each the best of its runs. A targeted command's parse is run right before each of its runs (undo's is
the one before its prune, which read the whole store): on these machines the same parse took 0.47 s in one minute
and 0.63 s in the next, and the first parse of a run, right after the store is written, took 0.63 s where the
parses beside the commands took 0.42-0.46 s; a single reference taken minutes before a command moved its ratio by
as much as a third with nothing changed in aml.

aml's own modules are compiled to bytecode first (``compileall``, as ``pip install`` does for an installed
package): with ``PYTHONDONTWRITEBYTECODE=1`` (set on these machines and in the Dockerfile) a source checkout
would otherwise recompile every module of aml on every run, about 0.15 s that an installed aml never pays.

Targets (issue 12): health <= 2x, index build <= 3x, prune dry-run <= 2x, prune <= 4x, undo <= 3x, migrate
dry-run <= 2x, ``aml --help`` <= 0.3 s, ``monitor health`` on a small store <= 0.8 s. Each command runs
``--repeat`` times (default 1; prune and undo alternate) and the best time is kept. Each prune after the first
runs, as the first does, with the record index current (an untimed ``optimize index`` once its undo's rewrites are
older than the index's change tick), as a scheduled index build keeps it between prunes: without it, a prune right
after an undo plans from the documents themselves (every one was rewritten), about 0.3 s more on this store.

A second table (:func:`floor_table`) splits each targeted command's time: the same command on an empty store
(start-up, imports, the catalog's run record, output), plus a msgspec parse of the store, is its floor; the rest
is its per-record work. A target below the floor cannot be met by faster per-record code.

Usage::

    .venv/bin/python -m benchmarks.scale                  # 75,000 records
    .venv/bin/python -m benchmarks.scale --agents 2       # a smoke run
    .venv/bin/python -m benchmarks.scale --big-document-mb 200   # and the one-large-document case
    .venv/bin/python -m benchmarks.scale --big-document-mb 20 60 200   # mid-size documents too
    .venv/bin/python -m benchmarks.scale --big-gzip-document-mb 300   # one large gzip document (300 MB decoded)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from aml.optimize.files import CHANGE_TICK_NS, INDEX_FILE
from aml.sample import SampleSpec, generate_loom_store
from aml.store.codec import decode
from benchmarks import index_floor

REPO = Path(__file__).resolve().parent.parent

PARSE = ("import json, os, sys\n"
         "for d, _, fs in os.walk(sys.argv[1]):\n"
         "    for f in fs:\n"
         "        if f.endswith('.json'):\n"
         "            with open(os.path.join(d, f), 'rb') as fh:\n"
         "                json.loads(fh.read())\n")
"""The reference: read and parse every JSON document once, in a fresh interpreter."""

FAST_PARSE = PARSE.replace("import json,", "import msgspec,").replace("json.loads(", "msgspec.json.decode(")
"""The same with msgspec, the parser aml reads with: the least any command that reads the store pays for it."""

TARGETS = {"monitor health": 2.0, "optimize index": 3.0, "prune --dry-run": 2.0, "prune": 4.0,
           "prune undo": 3.0, "migrate --dry-run": 2.0}

FLOOR_COMMANDS = (("monitor health", ["monitor", "health", "--json"]),
                  ("optimize index", ["optimize", "index", "--full"]),
                  ("prune --dry-run", ["prune", "--dry-run", "--json"]),
                  ("migrate --dry-run", ["migrate", "migrate", "--version", "2.0.0", "--dry-run", "--json"]),
                  ("prune", ["prune", "--json"]))
"""The targeted commands timed on an empty store as well (undo's fixed cost is taken as prune's)."""


@dataclass
class Timing:
    """One command: best wall time (seconds), peak RSS of that run (bytes), its output, and the best time of the
    reference parse run right before each of its runs (seconds; ``None`` when none was run with it)."""

    name: str
    seconds: float
    rss: int
    stdout: str
    reference: float | None = None


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _rss_of(argv: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Wall time, peak RSS (bytes; 0 without GNU ``/usr/bin/time``) and stdout of one run."""
    timer = "/usr/bin/time"  # GNU time: %M is the peak RSS of the command alone, KiB
    if not os.path.exists(timer):
        start = time.perf_counter()
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=REPO)
        return time.perf_counter() - start, 0, proc.stdout
    with tempfile.NamedTemporaryFile("r", suffix=".time") as out:
        start = time.perf_counter()
        proc = subprocess.run([timer, "-f", "%M", "-o", out.name, *argv], env=env, capture_output=True, text=True,
                              cwd=REPO)
        elapsed = time.perf_counter() - start
        if proc.returncode not in (0, 1, 2) or ("--json" in argv and not _is_json(proc.stdout)):
            # exit 1/2 report warnings/critical findings; a usage error prints no JSON
            raise RuntimeError(f"{argv} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        kib = int(re.findall(r"\d+", out.read())[-1])
    return elapsed, kib * 1024, proc.stdout


def measure(name: str, argv: list[str], env: dict[str, str], repeat: int,
            reference: list[str] | None = None) -> Timing:
    """Best of ``repeat`` runs of ``argv``: wall time, and the peak RSS of that run; with ``reference`` (a command),
    that command is run right before each run, and its best time is kept in :attr:`Timing.reference`."""
    best: Timing | None = None
    ref: float | None = None
    for _ in range(repeat):
        if reference is not None:
            took = _rss_of(reference, env)[0]
            ref = took if ref is None else min(ref, took)
        seconds, rss, out = _rss_of(argv, env)
        if best is None or seconds < best.seconds:
            best = Timing(name, seconds, rss, out)
    assert best is not None
    best.reference = ref
    return best


def refresh_index(aml: list[str], store: Path, env: dict[str, str]) -> None:
    """Bring the record index up to date with the store (untimed), as a scheduled ``optimize index`` keeps it
    between prunes: after :data:`~aml.optimize.files.CHANGE_TICK_NS` (and a margin) since the last rewrite, so that
    no document is too recently changed to be taken from the index."""
    time.sleep(CHANGE_TICK_NS / 1e9 + 0.3)
    proc = subprocess.run([*aml, str(store), "optimize", "index"], env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"optimize index failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


SOURCES = ("aml", "cli", "models", "tasks", "workers", "config", "beat_schedule.py")
"""aml's own modules and packages, relative to the repository."""


def compile_sources() -> None:
    """Write the bytecode of aml's own modules (``__pycache__``, ignored by git), as an installed package has it."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", *SOURCES], cwd=REPO, check=True, capture_output=True)


PATTERNS_PER_MB = 1126
"""Patterns of :func:`generate_loom_store` per MB of ``patterns.json`` (250,000 make 222 MB)."""


def big_document(work: Path, mb: float, aml: list[str], env: dict[str, str], constant: int, *,
                 gzipped: bool = False) -> list[str]:
    """Time health, prune --dry-run, index build, migrate --dry-run, prune, its undo and a real migration (the
    store's last use) on one ~``mb`` MB document (decoded; ``gzipped``: stored as gzip, as Loom's runtime can
    write it);
    print each peak RSS against the bound ``3 x document + constant`` (``constant``: the small-store health's
    peak RSS, bytes; the document's decoded size).

    Returns:
        The names of the commands over the bound.
    """
    store = work / f"{'big-gzip' if gzipped else 'big'}-{mb:g}" / ".loom" / "memory"
    generate_loom_store(store, SampleSpec(agents=1, patterns=int(mb * PATTERNS_PER_MB), solutions=0, decisions=0,
                                          gzip_every=1 if gzipped else 0, days=365))
    path = max(store.rglob("patterns.json"), key=lambda p: p.stat().st_size)
    doc = len(decode(path.read_bytes())[0])
    bound = 3 * doc + constant
    print(f"\none {'gzip ' if gzipped else ''}document of {doc / 1e6:.0f} MB decoded ({path.stat().st_size / 1e6:.0f} "
          f"MB on disk): peak RSS bound {bound / 1e6:.0f} MB (3 x document + {constant / 1e6:.0f} MB)")
    print(f"{'command':32} {'time s':>8} {'peak RSS MB':>12} {'x doc':>6}")
    over = []
    run_id = ""
    for name, argv in (("monitor health", ["monitor", "health", "--json"]),
                       ("prune --dry-run", ["prune", "--dry-run", "--json"]),
                       ("optimize index", ["optimize", "index", "--full", "--json"]),
                       ("migrate --dry-run", ["migrate", "migrate", "--version", "2.0.0", "--dry-run", "--json"]),
                       ("prune", ["prune", "--json"]),
                       ("prune undo", ["prune", "undo", "RUN", "--json"]),
                       ("migrate", ["migrate", "migrate", "--version", "2.0.0", "--json"])):
        r = measure(name, [*aml, str(store), *[run_id if a == "RUN" else a for a in argv]], env, 1)
        if name == "prune":
            run_id = json.loads(r.stdout)["run_id"]
        mark = "" if r.rss <= bound else " OVER"
        if mark:
            over.append(f"{name} ({doc / 1e6:.0f} MB document)")
        print(f"{name:32} {r.seconds:8.2f} {r.rss / 1e6:12.0f} {r.rss / doc:6.2f}{mark}")
    return over


def floor_table(work: Path, store: Path, aml: list[str], env: dict[str, str], repeat: int, rows: list[Timing],
                parse_argv: list[str]) -> None:
    """Print what each targeted command pays before its per-record work, measured in this run.

    * **empty store**: the command on a Loom store with no agents: interpreter, imports (typer, the engine,
      the SQLAlchemy catalog; no Celery inline), the catalog's run record, the output;
    * **msgspec parse**: reading and decoding every document with the parser aml reads with, in one process,
      less the interpreter's start (``python -c pass``), which the empty-store run already holds;
    * **index writes** (``optimize index`` only, added to its empty-store part): SQLite writing the built index's
      rows into a new database as a build from scratch does, with the rows already made
      (:func:`benchmarks.index_floor.write_seconds`);
    * **floor** = empty store + msgspec parse (+ index writes): a command that read the store in its own process
      and did no work per record at all would take this long.

    Each part is a ratio to the plain parse run right before each of its own runs (as the main table's rows are);
    the index writes' to the best of as many parse runs made right before them.

    Where the floor's ratio to the plain parse is above the target, the target cannot be met by making the
    per-record work faster in one process: only by importing less, parsing faster or reading in worker
    processes (health does: its per-record column can go below zero).

    Args:
        work: the run's scratch directory (an empty store is made under it).
        store: the benchmark's store.
        aml, env: how the commands are run (as in :func:`main`).
        repeat: runs per measurement (at least 3; the best is kept).
        rows: the main table's timings (the targeted ones get a floor row).
        parse_argv: the plain parse, the unit of every ratio.
    """
    empty = work / "empty" / ".loom" / "memory"
    empty.mkdir(parents=True, exist_ok=True)
    times = max(3, repeat)
    bare = measure("interpreter", [sys.executable, "-c", "pass"], env, times).seconds
    fast = measure("msgspec parse", [sys.executable, "-c", FAST_PARSE, str(store)], env, times, parse_argv)
    fast_x = (fast.seconds - bare) / _reference(fast)
    fixed: dict[str, float] = {}  # empty-store time as a ratio to its own parse
    for name, argv in FLOOR_COMMANDS:
        timing = measure(name, [*aml, str(empty), *argv], env, times, parse_argv)
        fixed[name] = timing.seconds / _reference(timing)
    fixed["prune undo"] = fixed["prune"]
    write_reference = min(_rss_of(parse_argv, env)[0] for _ in range(times))
    writes, records = index_floor.write_seconds(store / INDEX_FILE, times)
    fixed["optimize index"] += writes / write_reference
    print(f"\nfloors: msgspec parse of the store {fast.seconds - bare:.2f} s ({fast_x:.2f}x its parse, "
          f"{_reference(fast):.2f} s), interpreter start {bare:.2f} s; optimize index's empty store x includes "
          f"writing the index's {records:,} records again with no row to make, {writes:.2f} s "
          f"({writes / write_reference:.2f}x its parse, {write_reference:.2f} s)")
    print(f"{'command':20} {'time x':>7} {'empty store x':>14} {'floor x':>8} {'target':>7} {'per-record x':>13}")
    for r in rows:
        target = TARGETS.get(r.name)
        if target is None:
            continue
        ratio, floor = r.seconds / _reference(r), fixed[r.name] + fast_x
        mark = "below floor" if floor > target else ""
        print(f"{r.name:20} {ratio:7.2f} {fixed[r.name]:14.2f} {floor:8.2f} {target:7g} {ratio - floor:13.2f} {mark}")


def _reference(timing: Timing) -> float:
    """The parse time ``timing`` was measured with (seconds)."""
    assert timing.reference is not None, f"{timing.name} was measured without its parse"
    return timing.reference


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; exit 1 when a ratio misses its target (``--check``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--patterns", type=int, default=5000)
    ap.add_argument("--solutions", type=int, default=2500)
    ap.add_argument("--decisions", type=int, default=1875)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--big-document-mb", type=float, nargs="+", default=[], metavar="N",
                    help="also run health, prune (dry run, real, undo), optimize index and migrate (dry run, real) "
                         "on a store of one ~N MB patterns.json, for each N given (issue 12: 200; 20 and 60 read a "
                         "mid-size document item by item), and check peak RSS against 3x the document plus the "
                         "small-store constant")
    ap.add_argument("--big-gzip-document-mb", type=float, nargs="+", default=[], metavar="N",
                    help="the same on one gzip patterns.json of ~N MB decoded (issue 12: 300)")
    ap.add_argument("--check", action="store_true", help="exit 1 when a ratio misses its target")
    args = ap.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="aml-scale-"))
    store = work / ".loom" / "memory"
    small = work / "small" / ".loom" / "memory"
    try:
        summary = generate_loom_store(store, SampleSpec(agents=args.agents, patterns=args.patterns,
                                                        solutions=args.solutions, decisions=args.decisions,
                                                        gzip_every=0, days=365))
        generate_loom_store(small, SampleSpec())
        records = sum(a["patterns"] + a["solutions"] + a["decisions"] for a in summary["agents"].values())
        agent_mb = [sum(p.stat().st_size for p in (store / a).glob("*.json")) / 1e6 for a in summary["agents"]]
        env = dict(os.environ, AML_HOME=str(work / "home"), AML_BROKER_URL="redis://127.0.0.1:1/0",
                   AML_LOCK_URL="none", AML_REMEDIATE="off", PYTHONPATH=str(REPO))
        aml = [sys.executable, "-m", "cli.main"]
        print(f"store: {records:,} records in {len(summary['agents'])} agents, {summary['bytes'] / 1e6:.1f} MB "
              f"({min(agent_mb):.1f}-{max(agent_mb):.1f} MB per agent)", flush=True)

        compile_sources()
        parse_argv = [sys.executable, "-c", PARSE, str(store)]
        parse = measure("parse", parse_argv, env, max(3, args.repeat))
        rows: list[Timing] = [parse]
        rows.append(measure("aml --help", [*aml, "--help"], env, 3))
        rows.append(measure("monitor health (small store)", [*aml, str(small), "monitor", "health", "--json"], env, 3))
        rows.append(measure("monitor health", [*aml, str(store), "monitor", "health", "--json"], env, args.repeat,
                            parse_argv))
        rows.append(measure("optimize index", [*aml, str(store), "optimize", "index", "--full"], env, args.repeat,
                            parse_argv))
        rows.append(measure("monitor health (indexed)", [*aml, str(store), "monitor", "health", "--json"], env,
                            args.repeat))
        rows.append(measure("prune --dry-run", [*aml, str(store), "prune", "--dry-run", "--json"], env, args.repeat,
                            parse_argv))
        rows.append(measure("migrate --dry-run", [*aml, str(store), "migrate", "migrate", "--version", "2.0.0",
                                                  "--dry-run", "--json"], env, args.repeat, parse_argv))
        best_prune: Timing | None = None
        best_undo: Timing | None = None
        # the parse of the whole store before each prune is undo's reference too: undo puts the store back to what
        # that parse read, while a parse after the prune reads less
        references: list[float] = []
        for round_ in range(args.repeat):
            if round_:  # the steady state: the undo before rewrote every document; the index is made current again
                refresh_index(aml, store, env)
            pruned = measure("prune", [*aml, str(store), "prune", "--json"], env, 1, parse_argv)
            assert pruned.reference is not None
            references.append(pruned.reference)
            run_id = json.loads(pruned.stdout)["run_id"]
            undone = measure("prune undo", [*aml, str(store), "prune", "undo", run_id, "--json"], env, 1)
            best_prune = pruned if best_prune is None or pruned.seconds < best_prune.seconds else best_prune
            best_undo = undone if best_undo is None or undone.seconds < best_undo.seconds else best_undo
        assert best_prune is not None and best_undo is not None
        best_prune.reference = best_undo.reference = min(references)
        rows += [best_prune, best_undo]

        health = json.loads(next(r for r in rows if r.name == "monitor health (indexed)").stdout)
        perf = health["performance"]
        print(f"\n{'command':32} {'time s':>8} {'parse s':>8} {'peak RSS MB':>12} {'x parse':>8} {'target':>7}")
        missed = []
        for r in rows:
            reference = r.reference or parse.seconds  # the parse of the same rounds, else the first one
            ratio = r.seconds / reference
            target = TARGETS.get(r.name)
            mark = "" if target is None else (f"<= {target:g}" + ("" if ratio <= target else " MISS"))
            if target is not None and ratio > target:
                missed.append(r.name)
            print(f"{r.name:32} {r.seconds:8.2f} {reference:8.2f} {r.rss / 1e6:12.0f} {ratio:8.2f} {mark:>7}")
        print(f"\nindexed lookups: mean {perf['avg_query_time_ms']:.2f} ms, p95 {perf['p95_query_time_ms']:.2f} ms "
              f"(target p95 <= 5 ms); aml --help target <= 0.3 s; small-store health target <= 0.8 s")
        floor_table(work, store, aml, env, args.repeat, rows, parse_argv)
        constant = next(r for r in rows if r.name == "monitor health (small store)").rss
        for mb in args.big_document_mb:
            missed += big_document(work, mb, aml, env, constant)
        for mb in args.big_gzip_document_mb:
            missed += big_document(work, mb, aml, env, constant, gzipped=True)
        return 1 if args.check and missed else 0
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
