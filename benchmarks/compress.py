"""Benchmark: ``optimize compress`` against the ``gzip -6`` and ``zstd -3`` command-line tools, same run, same files.

Builds a Loom-shaped store with :func:`aml.sample.generate_loom_store` (default 100 agents x (500
patterns + 300 solutions + 200 decisions) = 100,000 records in 300 collection files, all plain JSON,
mtimes spread over a year), makes one copy per contender, then times on the same set of files:

1. aml gzip: ``compress_store(codec="gzip")``: isal (level 2), in place under the same names, each file
   checked to parse first (no index: SQLite's JSON parser, :mod:`aml.store.jsoncheck`), checked by
   decoding the output, written atomically (temp file, fsync, rename; on writer threads while the next
   files are encoded) with its mtime kept, each directory fsynced once;
2. aml gzip without the per-file fsync (what the codec and the checks cost alone);
   aml gzip with a current index (``optimize index`` ran before, as in the monthly ``optimize all``:
   the index vouches for the cold files' JSON, so they are not checked again);
   aml gzip with every file parsed by ``json.loads`` (``quick_check=False``: what compress did before);
   and the whole command, ``aml <store> optimize compress --age-days 0`` in a new process (start-up,
   store lock and catalog row included);
3. aml zstd: the same with zstd level 3;
4. ``gzip -6 -k -n`` on the same files (writes ``.gz`` files next to them), then one ``sync``;
5. ``zstd -3 -q -k`` likewise (``.zst`` files), then one ``sync``;
6. decompression, each right after its compression: aml ``--decompress`` (which also resets the aml
   copies for the next round) and ``gzip -d -k -f`` of the ``.gz`` files.

Last, the ratio the issue sets a target for: aml's time over ``gzip -6``'s on the same files in the same
run (target at most 1.00: aml at least as fast), for each way aml ran.

The table gives, per contender: input and output MiB (1024² bytes), the output/input size ratio,
the best seconds over ``--rounds`` rounds (contenders interleaved, order rotated per round), MiB/s of
plain (uncompressed) bytes, and the time ratio against the aml row of the same codec (reference
time / aml time: above 1 means aml is faster). A second table compares the codecs alone in memory on
the same bytes (isal levels, zlib levels 1 and 6, zstd 3): is isal faster than plain zlib here?
The machines are shared and noisy (one effective core): read the ratios, not the absolute times.

Usage::

    .venv/bin/python -m benchmarks.compress                       # 100,000 records in 300 files
    .venv/bin/python -m benchmarks.compress --agents 2000 --patterns 25 --solutions 15 --decisions 10
                                                                  # 100,000 records in 6,000 small files
    .venv/bin/python -m benchmarks.compress --small               # a smoke run
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import zstandard
from isal import igzip

from aml.optimize import build_index, compress_store
from aml.sample import SampleSpec, generate_loom_store

DEFAULT_WORKDIR = Path(__file__).resolve().parents[1] / "bench-work" / "compress"
MIB = 1024 * 1024
ARG_BATCH = 500
"""Files per command-line invocation (one process per batch, as ``xargs`` would)."""


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, result)`` of ``fn()`` (``time.perf_counter``)."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run_batched(cmd: Sequence[str], paths: Sequence[Path]) -> None:
    """Run ``cmd + paths`` in batches of :data:`ARG_BATCH` paths, failing on a non-zero exit."""
    for i in range(0, len(paths), ARG_BATCH):
        subprocess.run([*cmd, *map(str, paths[i : i + ARG_BATCH])], check=True)


def sync() -> None:
    """Flush every dirty page to disk (what aml's fsyncs buy, for the command-line tools)."""
    os.sync()


def run_and_sync(cmd: Sequence[str], paths: Sequence[Path]) -> None:
    """:func:`run_batched`, then :func:`sync`."""
    run_batched(cmd, paths)
    sync()


def sizes(paths: Sequence[Path]) -> int:
    """Total bytes of ``paths``."""
    return sum(p.stat().st_size for p in paths)


def codec_table(data: bytes, repeats: int = 3) -> list[tuple[str, float, float]]:
    """``(codec, MiB/s, ratio)`` of in-memory compression of ``data``, best of ``repeats``."""
    contenders: list[tuple[str, Callable[[bytes], bytes]]] = [
        ("isal igzip level 1", lambda d: igzip.compress(d, 1, mtime=0)),
        ("isal igzip level 2 (aml default)", lambda d: igzip.compress(d, 2, mtime=0)),
        ("isal igzip level 3", lambda d: igzip.compress(d, 3, mtime=0)),
        ("zlib level 1 (gzip module)", lambda d: gzip.compress(d, 1, mtime=0)),
        ("zlib level 6 (gzip module)", lambda d: gzip.compress(d, 6, mtime=0)),
        ("zstd level 3 (zstandard)", lambda d: zstandard.ZstdCompressor(level=3).compress(d)),
    ]
    out = []
    for name, fn in contenders:
        best, size = float("inf"), 0
        for _ in range(repeats):
            t, res = timed(lambda fn=fn: fn(data))  # type: ignore[misc]
            best, size = min(best, t), len(res)
        out.append((name, len(data) / MIB / best, size / len(data)))
    return out


class Contender:
    """One timed operation on its own copy of the store, with an untimed reset between rounds.

    Attributes:
        name: the row label.
        note: what the row includes.
        seconds: best time over the rounds, seconds.
        out_bytes, in_bytes: output and input sizes of the last round, bytes.
    """

    def __init__(self, name: str, note: str, run: Callable[[], tuple[int, int]], reset: Callable[[], None]) -> None:
        self.name, self.note, self._run, self._reset = name, note, run, reset
        self.seconds = float("inf")
        self.out_bytes = self.in_bytes = 0

    def round(self) -> None:
        """Time one run (keeping the best), then reset the copy untimed."""
        t, (self.in_bytes, self.out_bytes) = timed(self._run)
        self.seconds = min(self.seconds, t)
        self._reset()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the tables. Returns the process exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--agents", type=int, default=100, help="agents (default 100)")
    ap.add_argument("--patterns", type=int, default=500, help="patterns per agent (default 500)")
    ap.add_argument("--solutions", type=int, default=300, help="solutions per agent (default 300)")
    ap.add_argument("--decisions", type=int, default=200, help="decisions per agent (default 200)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each row keeps its best time (default 3)")
    ap.add_argument("--small", action="store_true", help="10 agents x (50+30+20) records")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="scratch directory")
    ap.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args(argv)
    if args.small:
        args.agents, args.patterns, args.solutions, args.decisions = 10, 50, 30, 20
    for tool in ("gzip", "zstd"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install -y {tool}", file=sys.stderr)
            return 2
    work = args.workdir
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    pristine = work / "pristine" / ".loom" / "memory"
    spec = SampleSpec(agents=args.agents, patterns=args.patterns, solutions=args.solutions, decisions=args.decisions,
                      days=365, gzip_every=0, seed=7)
    t_build, made = timed(lambda: generate_loom_store(pristine, spec))
    records = sum(a["patterns"] + a["solutions"] + a["decisions"] for a in made["agents"].values())
    plan = compress_store(pristine, age_days=0, dry_run=True)
    rels = [c.relpath for c in plan.changed]
    print(f"store: {records:,} records, {len(rels):,} files to compress, {plan.bytes_before / MIB:,.1f} MiB "
          f"(built in {t_build:.1f} s) at {pristine}")
    copies = {}
    for name in ("aml-gzip", "aml-gzip-nofsync", "aml-gzip-indexed", "aml-gzip-parse", "aml-command", "aml-zstd",
                 "cli-gzip", "cli-zstd"):
        dest = work / name / ".loom" / "memory"
        shutil.copytree(pristine, dest, copy_function=shutil.copy2)
        copies[name] = dest
    sync()

    def aml(copy: Path, codec: str = "gzip", fsync: bool = True, indexed: bool = False,
            quick: bool = True) -> Callable[[], tuple[int, int]]:
        def run() -> tuple[int, int]:
            res = compress_store(copy, age_days=0, codec=codec, fsync=fsync, quick_check=quick)  # type: ignore[arg-type]
            assert len(res.changed) == len(rels)
            assert (res.parsed_by_index >= len(rels)) if indexed else res.parsed_by_index == 0
            assert (res.checked_quickly >= len(rels)) if quick and not indexed else res.checked_quickly == 0
            return res.bytes_before, res.bytes_after
        return run

    aml_command = [str(Path(sys.executable).with_name("aml"))]
    command_env = {**os.environ, "AML_HOME": str(work / "aml-home")}

    def command(copy: Path) -> Callable[[], tuple[int, int]]:
        paths = [copy / r for r in rels]

        def run() -> tuple[int, int]:
            before = sizes(paths)
            subprocess.run([*aml_command, str(copy), "optimize", "compress", "--age-days", "0"], check=True,
                           env=command_env, stdout=subprocess.DEVNULL)
            return before, sizes(paths)
        return run

    def aml_undo(copy: Path, fsync: bool = True) -> Callable[[], tuple[int, int]]:
        def run() -> tuple[int, int]:
            res = compress_store(copy, decompress=True, fsync=fsync)
            assert len(res.changed) == len(rels)
            return res.bytes_before, res.bytes_after
        return run

    def cli(copy: Path, cmd: list[str], suffix: str) -> Callable[[], tuple[int, int]]:
        paths = [copy / r for r in rels]

        def run() -> tuple[int, int]:
            run_and_sync(cmd, paths)
            return sizes(paths), sizes([Path(f"{p}{suffix}") for p in paths])
        return run

    def cli_unzip(copy: Path) -> Callable[[], tuple[int, int]]:
        gz = [Path(f"{copy / r}.gz") for r in rels]

        def run() -> tuple[int, int]:
            run_and_sync(["gzip", "-d", "-k", "-f"], gz)
            return sizes(gz), sizes([copy / r for r in rels])
        return run

    def remove(copy: Path, suffix: str) -> Callable[[], None]:
        def run() -> None:
            for r in rels:
                Path(f"{copy / r}{suffix}").unlink()
        return run

    def nothing() -> None:
        return None

    def undo(copy: Path) -> Callable[[], None]:
        def run() -> None:
            aml_undo(copy)()
        return run

    def undo_and_index(copy: Path) -> Callable[[], None]:
        def run() -> None:
            aml_undo(copy)()
            build_index(copy)
        return run

    a_gz, a_nf, a_ix, a_zs, c_gz, c_zs = (copies[k] for k in ("aml-gzip", "aml-gzip-nofsync", "aml-gzip-indexed",
                                                                "aml-zstd", "cli-gzip", "cli-zstd"))
    a_parse, a_cmd = copies["aml-gzip-parse"], copies["aml-command"]
    build_index(a_ix)  # untimed: the monthly run finds last month's index; cold files are unchanged since
    # Pairs run back to back in each round: a compression, then the decompression that resets its copy.
    pairs = [
        (Contender("aml compress --codec gzip (isal 2)", "atomic, fsync per file, mtime kept", aml(a_gz), nothing),
         Contender("aml compress --decompress (gzip)", "in place, atomic, fsync per file", aml_undo(a_gz), nothing)),
        (Contender("aml compress gzip, no fsync", "parse + encode + verify + rename", aml(a_nf, fsync=False), nothing),
         Contender("aml --decompress, no fsync", "", aml_undo(a_nf, fsync=False), nothing)),
        (Contender("aml compress gzip, index current", "as row 1, JSON parse vouched for by the index",
                   aml(a_ix, indexed=True), undo_and_index(a_ix)), None),
        (Contender("aml compress gzip, full parse", "as row 1, every file parsed by json.loads (before)",
                   aml(a_parse, quick=False), undo(a_parse)), None),
        (Contender("aml optimize compress (command)", "a new process: start-up, lock, catalog row included",
                   command(a_cmd), undo(a_cmd)), None),
        (Contender("aml compress --codec zstd (3)", "atomic, fsync per file, mtime kept", aml(a_zs, "zstd"), nothing),
         Contender("aml --decompress (zstd)", "", aml_undo(a_zs), nothing)),
        (Contender("gzip -6 (command line)", "-k: .gz beside each file, then sync",
                   cli(c_gz, ["gzip", "-6", "-k", "-n", "-f"], ".gz"), nothing),
         Contender("gzip -d (command line)", "-k -f: over the originals, then sync", cli_unzip(c_gz),
                   remove(c_gz, ".gz"))),
        (Contender("zstd -3 (command line)", "-k: .zst beside each file, then sync",
                   cli(c_zs, ["zstd", "-3", "-q", "-k", "-f"], ".zst"), remove(c_zs, ".zst")), None),
    ]
    for rnd in range(args.rounds):
        order = pairs[rnd % len(pairs):] + pairs[: rnd % len(pairs)]  # rotate: spread the machine's noise
        for first, second in order:
            first.round()
            if second is not None:
                second.round()
        if rnd == 0:  # aml's round trip gave back every file byte for byte
            for copy in (a_gz, a_nf, a_ix, a_zs, a_parse, a_cmd):
                for rel in rels[:: max(1, len(rels) // 50)]:
                    assert (copy / rel).read_bytes() == (pristine / rel).read_bytes()

    rows = [c for pair in pairs for c in pair if c is not None]
    by_name = {c.name: c for c in rows}
    refs = {"gzip -6 (command line)": "aml compress --codec gzip (isal 2)",
            "zstd -3 (command line)": "aml compress --codec zstd (3)",
            "gzip -d (command line)": "aml compress --decompress (gzip)"}
    print()
    print(f"{'contender':<36} {'in MiB':>8} {'out MiB':>8} {'ratio':>7} {'s':>7} {'MiB/s':>8} {'ref/aml':>8}  note")
    print(f"{'':<36} {'':>8} {'':>8} {'out/in':>7} {'best':>7} {'plain':>8}")
    print("-" * 124)
    table = []
    for c in sorted(rows, key=lambda c: ("decompress" in c.name or " -d " in c.name, rows.index(c))):
        ref = refs.get(c.name)
        rel = f"{c.seconds / by_name[ref].seconds:.2f}" if ref else "-"
        ratio = c.out_bytes / c.in_bytes
        speed = max(c.in_bytes, c.out_bytes) / MIB / c.seconds  # plain (uncompressed) bytes per second
        print(f"{c.name:<36} {c.in_bytes / MIB:>8.1f} {c.out_bytes / MIB:>8.2f} {ratio:>7.4f} {c.seconds:>7.2f} "
              f"{speed:>8.1f} {rel:>8}  {c.note}")
        table.append({"contender": c.name, "input_bytes": c.in_bytes, "output_bytes": c.out_bytes, "ratio": ratio,
                      "seconds": c.seconds, "mib_s": speed, "ref_over_aml": rel, "note": c.note})
    print("-" * 124)
    print(f"best of {args.rounds} rounds; ratio = output/input bytes; ref/aml = reference seconds / aml seconds "
          "(>1: aml faster), each reference against the aml row of the same codec")

    gzip6 = by_name["gzip -6 (command line)"].seconds
    targets = [("engine, no index (JSON checked by SQLite's parser)", "aml compress --codec gzip (isal 2)"),
               ("engine, index current", "aml compress gzip, index current"),
               ("engine, every file parsed by json.loads (before)", "aml compress gzip, full parse"),
               ("`aml <store> optimize compress`, start-up included", "aml optimize compress (command)")]
    print()
    print(f"aml time / gzip -6 time on the same {len(rels):,} files (target <= 1.00: aml at least as fast):")
    over_gzip = {}
    for label, row in targets:
        over_gzip[label] = by_name[row].seconds / gzip6
        print(f"  {label:<52} {over_gzip[label]:>5.2f}")

    sample = b"".join((pristine / rel).read_bytes() for rel in rels[: max(1, len(rels) // 10)])
    codecs = codec_table(sample)
    print()
    print(f"codecs in memory on {len(sample) / MIB:.1f} MiB of the same JSON (best of 3):")
    print(f"{'codec':<36} {'MiB/s':>9} {'ratio':>7}")
    for name, speed, ratio in codecs:
        print(f"{name:<36} {speed:>9.1f} {ratio:>7.4f}")
    if args.json:
        print(json.dumps({"records": records, "files": len(rels), "input_bytes": plan.bytes_before, "rows": table,
                          "aml_over_gzip6": over_gzip,
                          "codecs": [{"codec": n, "mib_s": s, "ratio": r} for n, s, r in codecs]}, indent=2))
    if not args.keep:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
