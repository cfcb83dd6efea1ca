"""Benchmark: aml's per-task overhead on a real worker, against a no-op Celery task in the same run.

Starts its own ``redis-server`` on a free port (broker, result backend and lock Redis), writes the sample
store ``aml demo`` writes (:func:`aml.sample.generate_loom_store`, 5 agents, seed 7, one idle agent) and
an embedded SQLite catalog in a scratch directory, then measures:

1. **engine**: :func:`aml.health.monitor.run_health` on the store, called directly in this process
   (no Celery, no catalog): the work ``aml.health.check`` exists to do;
2. **aml**: ``aml.health.check`` on a real ``aml worker -Q fast -c 2`` (prefork), sent by name from a
   plain Celery client: the latency of one task at a time (send to result: p50, p99, mean) and the
   throughput of ``--tasks`` sent at once (tasks/s);
3. **no-op** (the reference): a task that returns at once, on a plain Celery worker (``celery worker``, no
   aml code) with the same broker, the same Celery settings as aml's app (JSON, late acks, prefetch 1,
   events, task tracking) and the same pool (``-c 2``, its own queue), measured the same way.
   Both workers run side by side, and the latency samples of 1.-4. are interleaved (``--tasks`` rounds
   of one sample of each, the order rotating), so that the machine's drift weighs on all alike;
4. **inline**: ``aml.health.check`` applied in this process (``task.apply()``, no broker): the engine plus
   aml's bookkeeping (catalog reads and writes, the result), which splits the overhead in two;
5. **catalog**: rows (per table) and bytes the catalog gained per ``aml.health.check`` run (row counts and
   the database file's size after a WAL checkpoint, before and after the runs of 2. and 4.);
6. **enqueue**: messages/s of :func:`aml.agent.client.enqueue` against plain Celery's ``send_task`` (the
   same task name, queue ``fast``; and with no queue), with no worker consuming: best of ``--rounds``
   rounds of ``--enqueues`` messages each, the methods alternating.

aml's per-task overhead = aml latency - no-op latency - engine time (p50s; means too): what dispatch,
the catalog reads and writes and the result cost beyond Celery's own round trip and the engine's work
(health takes no store lock); of it, *bookkeeping* = inline - engine, and *dispatch* = aml - no-op - inline. Targets
(issue 8): overhead at most 10 ms; ``enqueue`` at least 90 % of ``send_task``'s rate. The machines are
shared and noisy (one effective core): read the ratios and differences, not the absolute times.

Usage::

    .venv/bin/python -m benchmarks.fleet                         # 200 tasks, 5 x 300 enqueues (~1 min)
    .venv/bin/python -m benchmarks.fleet --tasks 500 --enqueues 1000 --rounds 7
    .venv/bin/python -m benchmarks.fleet --tasks 20 --enqueues 50  # a smoke run

Needs ``redis-server`` on the PATH (``apt-get install -y redis-server``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import Celery
from celery.result import AsyncResult

REPO = Path(__file__).resolve().parents[1]
NOOP_TASK = "bench.noop"
"""The reference task's name (registered only by the reference worker)."""

HEALTH_TASK = "aml.health.check"
QUEUE = "fast"
"""aml's queue for health (the aml worker also consumes Celery's default queue, as ``aml worker`` does)."""
REFERENCE_QUEUE = "bench-noop"
"""The reference worker's own queue, so that both workers can run side by side."""
CONCURRENCY = 2
"""Pool processes of both workers (``-c 2``, prefork)."""

REFERENCE_DROPPED = ("aml_settings", "include", "imports", "task_annotations")
"""aml app settings the reference worker does not copy (aml's own, its task modules, its per-task limits);
``beat_*`` and ``redbeat_*`` are dropped too."""


# --------------------------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A private ``redis-server`` on a free port (no persistence); yields ``redis://127.0.0.1:<port>``."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: apt-get install -y redis-server")
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def worker(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A worker subprocess (own process group); yields once it logs ``ready.``; SIGTERM (then SIGKILL) after."""
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=fh, stderr=fh, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while b"ready." not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def reference_app() -> Celery:
    """The reference: a plain Celery app with aml's Celery settings (from ``AML_*``) and one no-op task."""
    from workers.app import create_app
    from workers.settings import load_settings

    settings = load_settings()
    aml_app = create_app(settings)
    app = Celery("noop", broker=settings.broker_url, backend=settings.result_backend, set_as_current=True)
    defaults = Celery("defaults", set_as_current=False).conf
    app.conf.update({key: value for key, value in aml_app.conf.items()
                     if defaults.get(key) != value and key not in REFERENCE_DROPPED
                     and not key.startswith(("beat_", "redbeat_", "broker_url", "result_backend"))})

    @app.task(name=NOOP_TASK)
    def noop(store: str) -> dict[str, str]:
        """Return at once: the reference's task body costs nothing."""
        return {"store": store, "status": "success"}

    return app


def run_reference_worker(argv: list[str]) -> None:
    """Run the reference worker in this process (``python -m benchmarks.fleet --reference-worker ...``)."""
    reference_app().worker_main(["worker", *argv])


# ---------------------------------------------------------------------------------------------- measures


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    """p50, p99 and mean of durations given in seconds, as milliseconds."""
    return {"p50_ms": percentile(seconds, 0.50) * 1e3, "p99_ms": percentile(seconds, 0.99) * 1e3,
            "mean_ms": statistics.fmean(seconds) * 1e3}


def client_app(broker: str) -> Celery:
    """A plain Celery client (JSON), as an agent process would have; never made current."""
    app = Celery("bench-client", broker=broker, backend=broker, set_as_current=False)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    result_accept_content=["json"])
    return app


def check_result(result: Any) -> None:
    """A task result must be a finished, non-failed run (health may report a warning: no backup yet)."""
    if not isinstance(result, dict) or result.get("status") not in ("success", "warning"):
        raise RuntimeError(f"unexpected task result: {str(result)[:500]}")


def task_sampler(app: Celery, task: str, queue: str, store: str) -> Callable[[], float]:
    """A function that sends ``task`` on ``queue``, waits for its result and returns the latency, seconds."""
    def one() -> float:
        t0 = time.perf_counter()
        check_result(app.send_task(task, kwargs={"store": store}, queue=queue).get(timeout=120))
        return time.perf_counter() - t0

    return one


def interleaved(samplers: dict[str, Callable[[], float]], n: int) -> dict[str, list[float]]:
    """``n`` samples of each sampler, one of each per round, the order rotating every round."""
    names = list(samplers)
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(n):
        for name in names[i % len(names):] + names[:i % len(names)]:
            out[name].append(samplers[name]())
    return out


def throughput(app: Celery, task: str, queue: str, store: str, n: int) -> float:
    """Tasks/s of ``n`` tasks sent at once, from the first send to the last result."""
    t0 = time.perf_counter()
    pending = [app.send_task(task, kwargs={"store": store}, queue=queue) for _ in range(n)]
    for res in pending:
        check_result(res.get(timeout=600))
    return n / (time.perf_counter() - t0)


def engine_sampler(store: Path) -> Callable[[], float]:
    """A function that runs the health engine on ``store`` in this process and returns its time, seconds."""
    from aml.health.monitor import run_health
    from workers.settings import load_settings

    thresholds = load_settings().thresholds

    def one() -> float:
        t0 = time.perf_counter()
        run_health(store, thresholds=thresholds, lookup_sample=50)  # the task's default lookup_sample
        return time.perf_counter() - t0

    return one


def inline_sampler(store: str) -> Callable[[], float]:
    """A function that applies ``aml.health.check`` in this process (no broker) and returns its time, seconds."""
    from tasks.health import check
    from workers.app import current_aml_app

    current_aml_app()  # an aml app from AML_*, made current: the catalog the workers use

    def one() -> float:
        t0 = time.perf_counter()
        check_result(check.apply(kwargs={"store": store}, throw=True).get())
        return time.perf_counter() - t0

    return one


def catalog_state(db: Path) -> tuple[dict[str, int], int, int]:
    """Row count per table, and the database and WAL file sizes in bytes, after a WAL checkpoint."""
    with sqlite3.connect(db, timeout=30) as conn:
        wal = db.with_name(db.name + "-wal")
        wal_bytes = wal.stat().st_size if wal.exists() else 0
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                             "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        rows = {t: int(conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0]) for t in tables}
    return rows, db.stat().st_size, wal_bytes


def enqueue_figures(broker: str, store: str, per_round: int, rounds: int) -> dict[str, float]:
    """Messages/s of aml's ``enqueue`` and of plain ``send_task`` (queue ``fast``, and none): best of ``rounds``.

    Nothing consumes ``broker`` (its own Redis database): the messages only pile up.
    """
    from aml.agent.client import enqueue, make_client_app

    plain = Celery("plain", broker=broker, backend=broker, set_as_current=False)
    aml_client = make_client_app(broker, broker)
    methods: dict[str, Callable[[], AsyncResult]] = {
        "aml enqueue()": lambda: enqueue("health", store, app=aml_client),
        "send_task(queue=fast)": lambda: plain.send_task(HEALTH_TASK, kwargs={"store": store}, queue=QUEUE),
        "send_task()": lambda: plain.send_task(HEALTH_TASK, kwargs={"store": store}),
    }
    for send in methods.values():  # connections, exchange declarations
        for _ in range(20):
            send()
    best = dict.fromkeys(methods, 0.0)
    names = list(methods)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
        for name in order:
            send = methods[name]
            t0 = time.perf_counter()
            for _ in range(per_round):
                send()
            best[name] = max(best[name], per_round / (time.perf_counter() - t0))
    return best


# ------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table. Returns the process exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--tasks", type=int, default=200, help="tasks per latency run and per throughput batch "
                    "(default 200)")
    ap.add_argument("--enqueues", type=int, default=300, help="messages per enqueue round (default 300)")
    ap.add_argument("--rounds", type=int, default=5, help="enqueue rounds; the best is kept (default 5)")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory and the worker logs")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    ap.add_argument("--reference-worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.reference_worker is not None:
        run_reference_worker(args.reference_worker)
        return 0
    if args.tasks < 1 or args.enqueues < 1 or args.rounds < 1:
        ap.error("--tasks, --enqueues and --rounds must be at least 1")

    from aml.sample import SampleSpec, generate_loom_store

    work = Path(tempfile.mkdtemp(prefix="aml-fleet-")) if args.workdir is None else args.workdir
    if args.workdir is not None:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    try:
        root = work / "demo" / ".loom" / "memory"
        made = generate_loom_store(root, SampleSpec(agents=5, seed=7, idle_agents=1))  # what `aml demo` writes
        records = sum(a["patterns"] + a["solutions"] + a["decisions"] for a in made["agents"].values())
        store = os.path.realpath(root)
        home = work / "home"
        home.mkdir()
        db = home / "catalog.db"
        print(f"store: {len(made['agents'])} agents, {records} records, {made['bytes']:,} bytes (aml demo's); "
              f"{args.tasks} tasks per run, {args.rounds} x {args.enqueues} enqueues", file=sys.stderr, flush=True)

        with redis_server(work) as redis_url:
            env = {**os.environ, "PYTHONPATH": str(REPO), "AML_HOME": str(home), "AML_CATALOG_URL": f"sqlite:///{db}",
                   "AML_BROKER_URL": f"{redis_url}/0", "AML_RESULT_BACKEND": f"{redis_url}/0",
                   "AML_LOCK_URL": f"{redis_url}/0"}
            os.environ.update({k: v for k, v in env.items() if k.startswith("AML_")})
            client = client_app(env["AML_BROKER_URL"])

            aml_argv = [sys.executable, "-m", "cli.main", "worker", "-Q", QUEUE, "-c", str(CONCURRENCY)]
            ref_argv = [sys.executable, "-m", "benchmarks.fleet", "--reference-worker", "-Q", REFERENCE_QUEUE,
                        "-c", str(CONCURRENCY), "-l", "info", "-n", "noop@%h"]
            with worker(aml_argv, env, work / "aml-worker.log"), \
                    worker(ref_argv, env, work / "reference-worker.log"):
                samplers = {"engine": engine_sampler(root), "inline": inline_sampler(store),
                            "aml": task_sampler(client, HEALTH_TASK, QUEUE, store),
                            "noop": task_sampler(client, NOOP_TASK, REFERENCE_QUEUE, store)}
                interleaved(samplers, 2 * CONCURRENCY + 3)  # warm-up: imports, connections, caches
                rows_before, bytes_before, _ = catalog_state(db)
                samples = interleaved(samplers, args.tasks)
                engine, inline, aml, noop = (summary_ms(samples[k]) for k in ("engine", "inline", "aml", "noop"))
                print(f"latency p50: engine {engine['p50_ms']:.1f} ms, inline {inline['p50_ms']:.1f} ms, aml "
                      f"{aml['p50_ms']:.1f} ms, no-op {noop['p50_ms']:.1f} ms", file=sys.stderr, flush=True)
                aml["tasks_per_s"] = throughput(client, HEALTH_TASK, QUEUE, store, args.tasks)
                noop["tasks_per_s"] = throughput(client, NOOP_TASK, REFERENCE_QUEUE, store, args.tasks)
                wal_peak = catalog_state(db)[2]
            rows_after, bytes_after, _ = catalog_state(db)
            runs = rows_after.get("task_runs", 0) - rows_before.get("task_runs", 0)

            enq = enqueue_figures(f"{redis_url}/1", store, args.enqueues, args.rounds)
            client.close()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    overhead = {k: aml[k] - noop[k] - engine[k] for k in ("p50_ms", "mean_ms")}
    bookkeeping = {k: inline[k] - engine[k] for k in ("p50_ms", "mean_ms")}
    dispatch = {k: aml[k] - noop[k] - inline[k] for k in ("p50_ms", "mean_ms")}
    per_run_rows = {t: (rows_after[t] - rows_before.get(t, 0)) / runs for t in rows_after
                    if rows_after[t] != rows_before.get(t, 0)}
    per_run_bytes = (bytes_after - bytes_before) / runs
    enqueue_ratio = enq["aml enqueue()"] / enq["send_task(queue=fast)"]

    print()
    print(f"{'aml.health.check on aml worker -c 2':<40} {'aml':>9} {'no-op':>9} {'ratio':>8}")
    print("-" * 70)
    for label, key in (("latency p50 (ms)", "p50_ms"), ("latency p99 (ms)", "p99_ms"),
                       ("latency mean (ms)", "mean_ms")):
        print(f"{label:<40} {aml[key]:>9.1f} {noop[key]:>9.1f} {aml[key] / noop[key]:>7.1f}x")
    print(f"{'throughput (tasks/s)':<40} {aml['tasks_per_s']:>9.1f} {noop['tasks_per_s']:>9.1f} "
          f"{aml['tasks_per_s'] / noop['tasks_per_s']:>7.2f}x")
    print(f"{'engine inline p50 / mean (ms)':<40} {engine['p50_ms']:>9.1f} {engine['mean_ms']:>9.1f}")
    print(f"{'inline task p50 / mean (ms)':<40} {inline['p50_ms']:>9.1f} {inline['mean_ms']:>9.1f}")
    for label, key in (("overhead p50 (ms), target <= 10", "p50_ms"), ("overhead mean (ms), target <= 10", "mean_ms")):
        verdict = "met" if overhead[key] <= 10 else "MISSED"
        print(f"{label:<40} {overhead[key]:>9.1f} {verdict:>9}")
    print(f"{'  bookkeeping p50 / mean (ms)':<40} {bookkeeping['p50_ms']:>9.1f} {bookkeeping['mean_ms']:>9.1f}")
    print(f"{'  dispatch p50 / mean (ms)':<40} {dispatch['p50_ms']:>9.1f} {dispatch['mean_ms']:>9.1f}")
    print("-" * 70)
    print(f"{'catalog rows per run':<40} {sum(per_run_rows.values()):>9.1f}   "
          + ", ".join(f"{t} {v:g}" for t, v in sorted(per_run_rows.items())))
    print(f"{'catalog bytes per run (after checkpoint)':<40} {per_run_bytes:>9.0f}   "
          f"({runs} runs; WAL peaked at {wal_peak / 1e6:.1f} MB before its checkpoint)")
    print("-" * 70)
    print(f"{'enqueue (messages/s, best of ' + str(args.rounds) + ')':<40} {'rate':>9} {'ratio':>9}")
    for name, rate in enq.items():
        print(f"{name:<40} {rate:>9.0f} {rate / enq['send_task(queue=fast)']:>8.2f}x")
    verdict = "met" if enqueue_ratio >= 0.9 else "MISSED"
    print(f"{'aml enqueue / send_task, target >= 0.90':<40} {enqueue_ratio:>9.2f} {verdict:>9}")
    print("-" * 70)
    print("ratio (tasks) = aml / no-op; latency = send to result, one task at a time; throughput = "
          f"{args.tasks} tasks sent at once;\noverhead = aml - no-op - engine (engine: run_health called in-process), "
          "= bookkeeping (inline task - engine: catalog, result)\n  + dispatch (aml - no-op - inline); "
          "ratio (enqueue) = rate / send_task(queue=fast) rate")
    if args.json:
        print(json.dumps({"tasks": args.tasks, "aml": aml, "noop": noop, "engine": engine, "inline": inline,
                          "overhead": overhead, "bookkeeping": bookkeeping, "dispatch": dispatch,
                          "catalog_rows_per_run": per_run_rows, "catalog_bytes_per_run": per_run_bytes,
                          "catalog_runs": runs, "wal_peak_bytes": wal_peak, "enqueue_per_s": enq,
                          "enqueue_ratio": enqueue_ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
