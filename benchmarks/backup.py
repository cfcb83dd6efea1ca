"""Benchmark: aml's backup engine against restic, in the same run, on the same disk.

Builds a store of Loom-like JSON documents (default 50 agents x 2,000 documents, about 100,000 files and
870 MB), then times, for both tools:

1. full backup into an empty repository;
2. incremental backup after 1 % of the files changed;
3. full-data verification (``check(read_data=True)`` vs ``restic check --read-data``);
4. restore of the latest snapshot into an empty directory, including the final flush to disk
   (aml syncs once at the end; restic is followed by ``sync``);

and prints both wall times, both CPU times (user + sys, threads and child processes included), their
ratios (restic / aml: above 1 means aml is faster) and both repository sizes. It also times the floor of a
full backup (``tar | zstd -3`` into one file, issue 11's "physical floor") and of a restore (``tar -x`` of the
store from an uncompressed archive, then ``sync``) on the same store and disk, and prints restic's time over
each: the highest ratio any tool could reach on that row by that measure. The machines are shared
and noisy: read the ratios, not the absolute times; ``--repeat N`` reports the best of N repetitions
(each on fresh repositories, alternating which tool goes first).

Usage::

    .venv/bin/python -m benchmarks.backup                 # 50 x 2000 (~870 MB)
    .venv/bin/python -m benchmarks.backup --agents 20 --docs 1000
    .venv/bin/python -m benchmarks.backup --small         # 5 x 200, a smoke run
    .venv/bin/python -m benchmarks.backup --agents 20 --docs 1000 --repeat 3
    .venv/bin/python -m benchmarks.backup --encrypt       # aml encrypted, as restic always is

restic must be installed (``apt-get install -y restic``). ``RESTIC_PASSWORD`` is set for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from aml.backup import Repository, check, create_snapshot, list_snapshots, restore

DEFAULT_WORKDIR = Path(__file__).resolve().parents[1] / "bench-work"

_VOCABULARY = (
    "agent memory pattern solution decision context refactor component state hook render cache query "
    "index schema migration retry timeout latency error handler async await promise stream buffer "
    "token session user request response validate parse serialize deploy rollback config feature "
    "flag test mock fixture coverage lint type interface module import export bundle build pipeline "
    "release monitor alert metric trace span log debug profile optimize memoize debounce throttle "
    "queue worker"
)
_WORDS = _VOCABULARY.split()
_CATEGORIES = ["performance", "architecture", "testing", "security", "debugging", "refactoring"]


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(_WORDS, k=n))


def _iso(rng: random.Random) -> str:
    return (
        f"2026-{rng.randint(1, 11):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
        f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}Z"
    )


class DocFactory:
    """Makes Loom-like JSON documents quickly: sentences come from pools drawn once per run."""

    def __init__(self, rng: random.Random, pool: int = 4096) -> None:
        self.rng = rng
        self.short = [_text(rng, 12) for _ in range(pool)]
        self.long = [_text(rng, 25) for _ in range(pool)]

    def make(self, agent: str, n: int, target: int = 8700) -> bytes:
        """One document (a pattern with its metrics, evolution and notes), about ``target`` bytes."""
        rng = self.rng
        pick = self.long
        doc: dict[str, Any] = {
            "id": f"{agent}-{n:06d}-{rng.getrandbits(48):012x}",
            "agent": agent,
            "timestamp": _iso(rng),
            "pattern": {
                "type": rng.choice(["solution", "workflow", "antipattern", "optimization"]),
                "category": rng.choice(_CATEGORIES),
                "description": pick[rng.randrange(len(pick))],
                "context": {
                    "language": rng.choice(["typescript", "python", "go"]),
                    "files": [f"src/{rng.choice(_WORDS)}/{rng.choice(_WORDS)}.ts" for _ in range(rng.randint(1, 4))],
                },
                "approach": pick[rng.randrange(len(pick))] + " " + pick[rng.randrange(len(pick))],
                "steps": [self.short[rng.randrange(len(self.short))] for _ in range(rng.randint(3, 8))],
            },
            "metrics": {
                "successRate": round(rng.random(), 4),
                "executionCount": rng.randint(1, 500),
                "avgTimeSavedMs": rng.randint(0, 60000),
                "errorPreventionCount": 0,
            },
            "evolution": {
                "created": _iso(rng),
                "lastUsed": _iso(rng),
                "refinements": rng.randint(0, 20),
                "confidenceScore": round(rng.random(), 4),
            },
            "notes": [],
        }
        base = len(json.dumps(doc, indent=2))
        per_note = 262  # indent=2 JSON of one note, on average
        for _ in range(max(0, (target - base) // per_note)):
            doc["notes"].append(
                {"at": _iso(rng), "text": pick[rng.randrange(len(pick))], "score": round(rng.random(), 3)}
            )
        return json.dumps(doc, indent=2).encode()


def build_store(root: Path, agents: int, docs: int, seed: int = 7) -> tuple[int, int]:
    """Create ``agents`` x ``docs`` JSON files below ``root`` (deterministic). Returns (files, bytes)."""
    factory = DocFactory(random.Random(seed))
    total = 0
    for a in range(agents):
        agent = f"agent-{a:03d}"
        d = root / agent / "patterns"
        d.mkdir(parents=True, exist_ok=True)
        for n in range(docs):
            data = factory.make(agent, n)
            (d / f"p{n:05d}.json").write_bytes(data)
            total += len(data)
    (root / "global").mkdir(exist_ok=True)
    (root / "config.json").write_text(json.dumps({"version": "1.0.0", "agents": agents}))
    return agents * docs, total


def change_one_percent(root: Path, agents: int, docs: int, seed: int = 11) -> int:
    """Rewrite 1 % of the documents (new metrics, one more note). Returns the number changed."""
    rng = random.Random(seed)
    n = max(1, agents * docs // 100)
    picked = rng.sample(range(agents * docs), n)
    for k in picked:
        a, d = divmod(k, docs)
        path = root / f"agent-{a:03d}" / "patterns" / f"p{d:05d}.json"
        doc = json.loads(path.read_bytes())
        doc["metrics"]["executionCount"] += 1
        doc["evolution"]["lastUsed"] = _iso(rng)
        doc["notes"].append({"at": _iso(rng), "text": _text(rng, 25), "score": 0.5})  # ~1 % of the files
        path.write_bytes(json.dumps(doc, indent=2).encode())
    return n


def dir_bytes(path: Path) -> int:
    """Sum of the sizes of the regular files below ``path``."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Run ``fn``; return (wall seconds, CPU seconds of this process and its children, result)."""
    c = _cpu()
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, _cpu() - c, out


def restic(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run restic against ``repo``; raise on failure."""
    cmd = ["restic", "-r", str(repo), "--quiet", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc


OPERATIONS = ("full backup", "incremental (1% changed)", "verify (read all data)", "restore + sync")

FULL_BACKUP_FLOOR = "tar -cf - -C {store} . | zstd -3 -q -c > {out}"
"""What issue 11 calls the physical floor of a full backup, as a shell pipeline on the same store and disk: read
every file and compress it all (zstd -3, one stream) into one file. (``zstd -dc | sha256sum`` of that file is no
floor for a verification: coreutils' sha256sum alone takes longer here than aml's whole ``check --read-data``.)"""

RESTORE_FLOOR = "tar -xf {archive} -C {out} && sync"
"""The floor of a restore by the same measure: create every file of the store with its content, mode and mtime
(GNU tar, from an uncompressed archive of the store made beforehand and still in the page cache: no
decompression, no decryption, no hashing), then flush to disk as both tools' restores do."""

def _time_pipeline(line: str) -> tuple[float, float]:
    """``(wall seconds, CPU seconds)`` of one run of the shell pipeline ``line`` (pipefail: any stage failing
    raises ``subprocess.CalledProcessError``)."""
    wall, cpu, _ = timed(partial(subprocess.run, ["bash", "-o", "pipefail", "-c", line], check=True))
    return wall, cpu


def floors(work: Path, store: Path) -> dict[str, tuple[float, float]]:
    """Time :data:`FULL_BACKUP_FLOOR` and :data:`RESTORE_FLOOR` once each on the same store and disk.

    Args:
        work: scratch directory on the store's disk (outputs are written there, then removed).
        store: the store directory.

    Returns:
        ``{"full backup": ..., "restore + sync": ...}`` (the rows they are the floor of) -> ``(wall seconds, CPU
        seconds of the pipeline)``; empty when ``tar`` or ``zstd`` is missing.

    Raises:
        subprocess.CalledProcessError: a pipeline failed.
    """
    if shutil.which("tar") is None or shutil.which("zstd") is None:
        return {}
    q = shlex.quote
    packed, archive, out = work / "floor.tar.zst", work / "floor.tar", work / "floor-restore"
    got: dict[str, tuple[float, float]] = {}
    try:
        got["full backup"] = _time_pipeline(FULL_BACKUP_FLOOR.format(store=q(str(store)), out=q(str(packed))))
        subprocess.run(["tar", "-cf", str(archive), "-C", str(store), "."], check=True)
        out.mkdir()
        subprocess.run(["sync"], check=True)
        got["restore + sync"] = _time_pipeline(RESTORE_FLOOR.format(archive=q(str(archive)), out=q(str(out))))
    finally:
        packed.unlink(missing_ok=True)
        archive.unlink(missing_ok=True)
        shutil.rmtree(out, ignore_errors=True)
    return got


def prepare_store(workdir: Path, agents: int, docs: int) -> tuple[Path, Path, int, int]:
    """A fresh ``workdir/<agents>x<docs>/`` holding a built store (printed, then flushed to disk).

    Returns:
        ``(work directory, store directory, files, bytes)``.
    """
    work = workdir / f"{agents}x{docs}"
    store = work / "store"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t, _, (nfiles, nbytes) = timed(lambda: build_store(store, agents, docs))
    print(f"store: {nfiles} files, {nbytes / 1e6:.1f} MB (built in {t:.1f} s) at {store}", flush=True)
    subprocess.run(["sync"], check=True)
    return work, store, nfiles, nbytes


def run_once(
    work: Path, store: Path, nfiles: int, agents: int, docs: int, rnd: int, with_restic: bool, encrypt: bool = False
) -> tuple[dict[str, dict[str, tuple[float, float]]], dict[str, int]]:
    """One repetition: every operation for both tools on fresh repositories. Returns times and sizes.

    ``encrypt``: aml's repository is encrypted (``backup init --encrypt``, the password restic gets), as
    restic's always is; its key derivation (scrypt, once per repository open) is outside the timed steps."""
    aml_repo, restic_repo = work / f"aml-repo-{rnd}", work / f"restic-repo-{rnd}"
    out_aml, out_restic = work / f"restore-aml-{rnd}", work / f"restore-restic-{rnd}"
    times: dict[str, dict[str, tuple[float, float]]] = {op: {} for op in OPERATIONS}
    password = os.environ["RESTIC_PASSWORD"] if encrypt else None
    repo = Repository(aml_repo, password=password).init(encrypt=encrypt)
    if with_restic:
        restic(restic_repo, "init")
    tools = ["aml", "restic"] if with_restic else ["aml"]
    if rnd % 2:
        tools.reverse()  # alternate who goes first

    def step(op: str, aml_fn: Callable[[], Any], restic_fn: Callable[[], Any]) -> None:
        for tool in tools:
            wall, cpu, _ = timed(aml_fn if tool == "aml" else restic_fn)
            times[op][tool] = (wall, cpu)

    def aml_full() -> None:
        r = create_snapshot(store, repo, incremental=False)
        assert not r.errors, r.errors

    step("full backup", aml_full, lambda: restic(restic_repo, "backup", "--host", "bench", str(store)))
    changed = change_one_percent(store, agents, docs, seed=11 + rnd)

    def aml_incr() -> None:
        r = create_snapshot(store, repo, incremental=True)
        assert r.files_read == changed, (r.files_read, changed)

    step("incremental (1% changed)", aml_incr, lambda: restic(restic_repo, "backup", "--host", "bench", str(store)))

    def aml_check() -> None:
        c = check(repo, read_data=True)
        assert c.ok, c.to_dict()

    step("verify (read all data)", aml_check, lambda: restic(restic_repo, "check", "--read-data"))
    latest = [s for s in list_snapshots(repo) if not s.legacy][-1].backup_id

    def aml_restore() -> None:
        rr = restore(repo, latest, out_aml)
        assert rr.ok and rr.files_written == nfiles + 1, (rr.files_written, rr.errors[:3])

    def restic_restore() -> None:
        restic(restic_repo, "restore", "latest", "--target", str(out_restic))
        subprocess.run(["sync"], check=True)

    step("restore + sync", aml_restore, restic_restore)
    sizes = {"aml": dir_bytes(aml_repo), "restic": dir_bytes(restic_repo) if with_restic else 0}
    for d in (aml_repo, restic_repo, out_aml, out_restic):
        shutil.rmtree(d, ignore_errors=True)
    return times, sizes


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table. Returns the process exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--agents", type=int, default=50, help="agent directories (default 50)")
    ap.add_argument("--docs", type=int, default=2000, help="documents per agent (default 2000)")
    ap.add_argument("--small", action="store_true", help="5 agents x 200 documents")
    ap.add_argument("--repeat", type=int, default=1, help="repetitions; the best time of each is reported")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="scratch directory (same disk)")
    ap.add_argument("--keep", action="store_true", help="keep the store afterwards")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    ap.add_argument("--skip-restic", action="store_true", help="time aml only")
    ap.add_argument("--encrypt", action="store_true", help="aml's repository encrypted too (restic's always is)")
    args = ap.parse_args(argv)
    if args.small:
        args.agents, args.docs = 5, 200
    with_restic = not args.skip_restic
    if with_restic and shutil.which("restic") is None:
        print("restic not found: apt-get update && apt-get install -y restic", file=sys.stderr)
        return 2
    os.environ.setdefault("RESTIC_PASSWORD", "aml-benchmark")

    work, store, nfiles, nbytes = prepare_store(args.workdir, args.agents, args.docs)

    best: dict[str, dict[str, tuple[float, float]]] = {op: {} for op in OPERATIONS}
    sizes: dict[str, int] = {}
    floor: dict[str, tuple[float, float]] = {}
    for rnd in range(max(1, args.repeat)):
        for op, (wall, cpu) in floors(work, store).items():
            old = floor.get(op)
            floor[op] = (min(old[0], wall), min(old[1], cpu)) if old else (wall, cpu)
        times, sizes = run_once(work, store, nfiles, args.agents, args.docs, rnd, with_restic, args.encrypt)
        for op, per_tool in times.items():
            for tool, (wall, cpu) in per_tool.items():
                old = best[op].get(tool)
                best[op][tool] = (min(old[0], wall), min(old[1], cpu)) if old else (wall, cpu)
        print(f"repetition {rnd + 1}: " + ", ".join(f"{op} {v['aml'][0]:.2f}s" for op, v in times.items()), flush=True)

    print()
    print(
        f"{'operation':<28} {'aml s':>8} {'restic s':>9} {'ratio':>7}   {'aml cpu':>8} {'restic cpu':>10} {'ratio':>7}"
    )
    print("-" * 86)
    results = []

    def ratio(x: float, y: float) -> str:
        return f"{x / y:.2f}x" if x and y else "-"

    for op in OPERATIONS:
        a_wall, a_cpu = best[op]["aml"]
        r_wall, r_cpu = best[op].get("restic", (0.0, 0.0))
        print(
            f"{op:<28} {a_wall:>8.2f} {(f'{r_wall:.2f}' if r_wall else '-'):>9} {ratio(r_wall, a_wall):>7}   "
            f"{a_cpu:>8.2f} {(f'{r_cpu:.2f}' if r_cpu else '-'):>10} {ratio(r_cpu, a_cpu):>7}"
        )
        results.append(
            {"operation": op, "aml_s": a_wall, "restic_s": r_wall, "aml_cpu_s": a_cpu, "restic_cpu_s": r_cpu}
        )
    print("-" * 86)
    a_size, r_size = sizes["aml"], sizes.get("restic", 0)
    r_text = f"{r_size / 1e6:.1f}" if r_size else "-"
    print(f"{'repository size (MB)':<28} {a_size / 1e6:>8.1f} {r_text:>9} {ratio(r_size, a_size):>7}")
    print(
        f"store: {nfiles} files, {nbytes / 1e6:.1f} MB; aml {'encrypted' if args.encrypt else 'plain'}; best of "
        f"{max(1, args.repeat)}; ratio = restic / aml "
        "(above 1: aml faster or smaller); cpu = user+sys seconds incl. threads and child processes"
    )
    what = {"full backup": "tar | zstd -3 into one file", "restore + sync": "tar -x of the store, then sync"}
    for op, (f_wall, f_cpu) in floor.items():
        r_wall = best[op].get("restic", (0.0, 0.0))[0]
        print(f"floor of {op} ({what[op]}): {f_wall:.2f} s ({f_cpu:.2f} s cpu); restic / floor "
              f"{ratio(r_wall, f_wall)}, aml / floor {ratio(best[op]['aml'][0], f_wall)}: restic / floor is the "
              "highest ratio reachable on that row by that measure")
    if args.json:
        print(json.dumps({"files": nfiles, "bytes": nbytes, "rows": results, "repo_bytes": sizes,
                          "floors": {op: {"wall_s": w, "cpu_s": c} for op, (w, c) in floor.items()}}, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
