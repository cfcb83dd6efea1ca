"""Benchmark: ``trace`` of a live Redis against ``redis-cli --memkeys``, and the RDB parser against rdbtools.

Starts its own ``redis-server`` on a free port (nothing else is touched), fills database 0 with
``--keys`` string keys shaped like agent memory (default 1,000,000: session turns as JSON with a 1 h TTL,
their ``:metadata`` companions for 95 % of them, tool-cache pickles with a 1 d TTL, episodes as text with
no TTL), then, interleaved over ``--rounds`` rounds (best time kept):

1. ``redis-cli --memkeys`` (the reference: SCAN + ``MEMORY USAGE`` of every key);
2. aml's live trace (:func:`aml.trace.run.trace_keyspace`, in process: SCAN ``COUNT`` 1000 + one read-only
   Lua call per batch returning type, encoding, ``MEMORY USAGE``, ``PTTL``, ``OBJECT IDLETIME`` and the
   first 16 bytes), both with value sniffing and without;

and reports keys/s and the ratio reference time / aml time (above 1: aml is faster), and the server's
longest single command during each (``SLOWLOG`` over 500 µs, microseconds; "-" when none took that long:
a 0 threshold would log, and slow down, every command a Lua script runs). Then it ``SAVE``s
the keyspace and parses the RDB file with rdb-py (aml's parser, iteration alone), with aml's offline
trace (:func:`aml.trace.run.trace_rdb_file`), and with rdbtools (its parser with a counting callback).
rdbtools stops at RDB version 9; the file holds strings only, whose encoding version 10 did not change, so
rdbtools reads a copy whose header says version 9 (``rdbchecksum no``: no CRC to fix). rdbtools is
optional (``pip install -e '.[bench]'``); without it that row is skipped.

The machines are shared and noisy (one effective core): read the ratios, not the absolute times.

Usage::

    .venv/bin/python -m benchmarks.trace                 # 1,000,000 keys
    .venv/bin/python -m benchmarks.trace --keys 100000 --rounds 1   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from aml.trace.run import TraceOptions, trace_keyspace, trace_rdb_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A private redis-server (no persistence but explicit SAVE) on a free port."""
    port = _free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir), "--rdbchecksum", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def populate(client: redis.Redis, keys: int) -> None:
    """Fill database 0 with ``keys`` agent-memory-shaped string keys (see the module docstring)."""
    agents = ("planner", "researcher", "coder", "critic")
    tools = ("web_search", "sql_query", "http_get", "code_exec")
    pipe = client.pipeline(transaction=False)
    made = 0
    session = uuid.uuid4()
    turn = 0
    while made < keys:
        agent = agents[made % len(agents)]
        kind = made % 20
        if kind < 8:
            if turn % 50 == 0:
                session = uuid.uuid4()
            key = f"mem:agent:{agent}:session:{session}:turn:{turn:04d}"
            pipe.set(key, '{"role": "user", "content": "' + "x" * 150 + '"}', px=3_600_000)
            made += 1
            if turn % 20 != 0 and made < keys:  # 95 % have their companion
                pipe.set(key + ":metadata", f'{{"memory_type": "short_term", "turn": {turn}}}', px=3_600_000)
                made += 1
            turn += 1
        elif kind < 14:
            pipe.set(f"mem:tool_cache:{tools[made % 4]}:{os.urandom(8).hex()}", b"\x80\x04\x95" + os.urandom(90),
                     px=86_400_000)
            made += 1
        else:
            pipe.set(f"mem:episode:{agent}:{made:07d}", "the agent tried " + "y" * 120)
            made += 1
        if len(pipe) >= 10_000:
            pipe.execute()
    pipe.execute()


def longest_command(client: redis.Redis) -> tuple[int, str]:
    """The slowest command since the last ``SLOWLOG RESET``: (microseconds, command name)."""
    entries = client.slowlog_get(1_000_000)
    if not entries:
        return 0, "-"
    worst = max(entries, key=lambda e: e["duration"])
    command = worst["command"]
    name = command.split()[0] if isinstance(command, str) else bytes(command).split()[0].decode()
    return int(worst["duration"]), name


def timed(client: redis.Redis, fn: Callable[[], Any]) -> tuple[float, tuple[int, str], Any]:
    client.slowlog_reset()
    started = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - started
    return elapsed, longest_command(client), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        raise SystemExit("needs redis-server and redis-cli (Debian: apt-get install redis-server redis-tools)")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="aml-bench-trace-"))
    workdir.mkdir(parents=True, exist_ok=True)
    proc, port = start_server(workdir)
    client = redis.Redis(port=port)
    try:
        started = time.perf_counter()
        populate(client, args.keys)
        dbsize = int(client.dbsize())
        print(f"populated {dbsize:,} keys in {time.perf_counter() - started:.1f} s "
              f"(used_memory {int(client.info('memory')['used_memory']) / 2**20:.0f} MiB)")
        client.config_set("slowlog-log-slower-than", 500)  # 0 would log (and slow) every command a script runs
        client.config_set("slowlog-max-len", 1_000_000)
        url = f"redis://127.0.0.1:{port}/0"
        best: dict[str, tuple[float, tuple[int, str]]] = {}
        contenders: dict[str, Callable[[], Any]] = {
            "redis-cli --memkeys": lambda: subprocess.run(["redis-cli", "-p", str(port), "--memkeys"], check=True,
                                                          stdout=subprocess.DEVNULL),
            "aml trace": lambda: trace_keyspace(url, TraceOptions()),
            "aml trace --no-sniff": lambda: trace_keyspace(url, TraceOptions(sniff=False)),
        }
        for round_ in range(args.rounds):
            names = list(contenders)
            names = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in names:
                elapsed, worst, result = timed(client, contenders[name])
                if isinstance(result, dict):
                    assert result["keys"] == dbsize and not result["partial"], result["error"]
                if name not in best or elapsed < best[name][0]:
                    best[name] = (elapsed, worst)
        reference = best["redis-cli --memkeys"][0]
        print(f"\nlive trace of {dbsize:,} keys, best of {args.rounds}")
        print(f"{'contender':<24} {'seconds':>8} {'keys/s':>10} {'ratio':>7} {'longest command':>24}")
        for name, (elapsed, (micros, command)) in best.items():
            print(f"{name:<24} {elapsed:8.2f} {dbsize / elapsed:10,.0f} {reference / elapsed:7.2f} "
                  f"{f'{micros:,} us {command}':>24}")
        client.config_set("slowlog-log-slower-than", 10_000)
        client.save()
        rdb_file = workdir / "dump.rdb"
        rdb_bench(rdb_file, dbsize, args.rounds)
    finally:
        proc.kill()
        proc.wait()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def rdb_bench(rdb_file: Path, dbsize: int, rounds: int) -> None:
    """Time rdb-py, aml's offline trace and rdbtools on the same RDB file."""
    import rdb

    def rdbpy() -> int:
        return sum(1 for item in rdb.RdbDecoder(str(rdb_file)) if item["type"] == "string")

    contenders: dict[str, Callable[[], int]] = {
        "rdb-py (iterate)": rdbpy,
        "aml trace --rdb": lambda: int(trace_rdb_file(rdb_file)["keys"]),
    }
    try:
        from rdbtools import RdbCallback, RdbParser
    except ImportError:
        print("rdbtools not installed (pip install -e '.[bench]'): its row is skipped")
    else:
        v9 = rdb_file.with_name("dump-v9.rdb")
        data = rdb_file.read_bytes()
        assert data[:9] == b"REDIS0010", data[:9]
        v9.write_bytes(b"REDIS0009" + data[9:])

        class Count(RdbCallback):
            def __init__(self) -> None:
                super().__init__(string_escape=None)
                self.keys = 0

            def set(self, key: bytes, value: bytes, expiry: Any, info: Any) -> None:
                self.keys += 1

        def rdbtools_parse() -> int:
            counter = Count()
            RdbParser(counter).parse(str(v9))
            return counter.keys

        contenders["rdbtools (parse)"] = rdbtools_parse
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, fn in contenders.items():
            started = time.perf_counter()
            assert fn() == dbsize, name
            elapsed = time.perf_counter() - started
            best[name] = min(elapsed, best.get(name, elapsed))
    reference = best.get("rdbtools (parse)")
    print(f"\nRDB file of {dbsize:,} keys, {rdb_file.stat().st_size / 2**20:.0f} MiB, best of {rounds}")
    print(f"{'contender':<24} {'seconds':>8} {'keys/s':>10} {'vs rdbtools':>12}")
    for name, elapsed in best.items():
        ratio = f"{reference / elapsed:12.2f}" if reference else f"{'-':>12}"
        print(f"{name:<24} {elapsed:8.2f} {dbsize / elapsed:10,.0f} {ratio}")


if __name__ == "__main__":
    main()
