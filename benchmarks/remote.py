"""Benchmark: aml's backup engine against restic with both repositories remote (SFTP, S3), in the same run.

The remote counterpart of :mod:`benchmarks.backup`: builds the same store of Loom-like JSON documents
(default 10 agents x 500 documents, about 5,000 files and 44 MB), starts the servers the tests use and
times, for both tools and each backend, against the same server:

1. ``init`` of an encrypted repository (aml ``init(encrypt=True)`` with the password restic gets in
   ``RESTIC_PASSWORD``: restic always encrypts; both derive a key with scrypt here);
2. full backup into the empty repository;
3. incremental backup after 1 % of the files changed;
4. full-data verification (``check(read_data=True)`` vs ``restic check --read-data``): every pack is
   downloaded again;
5. restore of the latest snapshot into an empty local directory, followed by the flush to disk (aml syncs
   once at the end; restic is followed by ``sync``);

and prints both wall times, their ratio (restic / aml: above 1 means aml is faster), both client CPU times
(user + sys of this process / of restic; the servers' CPU is not counted) and the bytes each repository
occupies on the server (sum of object sizes: the repository directory of the sshd, the objects under the
prefix in the S3 bucket). Each tool has its own empty local cache (aml ``cache_dir``, restic
``--cache-dir``); caches are not counted in the sizes. Every restic step is a new process that opens the
repository (connects, derives the key with scrypt, reads its cache and the index); so by default every
aml step opens a new :class:`~aml.backup.Repository` inside the timed step (connect, key derivation,
cache pull), as a CLI call would. ``--keep-open`` opens it once per backend instead, outside the timings,
as :mod:`benchmarks.backup` does.

Backends:

- ``sftp``: a real OpenSSH ``sshd`` on 127.0.0.1 (:func:`tests.sftp_server.start_sshd`), with generated
  host and client keys. aml connects with its SFTP client (key file, known_hosts); restic runs
  ``ssh -p PORT -i KEY -o UserKnownHostsFile=... user@127.0.0.1 -s sftp`` (``-o sftp.command``). The
  "server" writes to the local disk, so this measures the protocol round trips and encryption over ssh.
- ``s3``: moto's server mode (``python -m moto.server``, :func:`tests.s3_server.start_moto`) in its own
  process. moto keeps every object in memory and is a single-threaded Python server, so the S3 numbers
  measure the clients' request path (and moto's own speed) far more than any disk or real network.
  aml uses boto3 (endpoint and fake credentials from ``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID`` ...);
  restic uses ``-r s3:http://127.0.0.1:PORT/bucket/prefix``.

Everything runs on one machine (client, server, disk): read the ratios, not the absolute times.

Usage::

    .venv/bin/python -m benchmarks.remote                          # 10 x 500, both backends
    .venv/bin/python -m benchmarks.remote --agents 4 --docs 300    # a smoke run
    .venv/bin/python -m benchmarks.remote --backend sftp --agents 20 --docs 1000
    .venv/bin/python -m benchmarks.remote --keep-open              # aml opens its repository once

restic (``apt-get install -y restic``), ``/usr/sbin/sshd`` and ``ssh`` (openssh-server/-client) and moto
(``pip install 'moto[server]'``) must be installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aml.backup import Repository, check, create_snapshot, list_snapshots, restore
from aml.backup.storage import StorageOptions
from benchmarks.backup import OPERATIONS, change_one_percent, dir_bytes, prepare_store, timed
from tests.s3_server import AWS_ENV_DROP

DEFAULT_WORKDIR = Path(__file__).resolve().parents[1] / "bench-work-remote"
BACKENDS = ("sftp", "s3")
STEPS = ("init", *OPERATIONS)
TIMEOUT = 120.0
"""aml's per-request timeout (seconds): generous, the machine is shared."""


@dataclass
class Target:
    """One backend's repositories for both tools, and how to measure them on the server."""

    backend: str
    aml_url: str
    aml_options: StorageOptions
    restic_repo: str
    restic_options: list[str]
    stored_bytes: Callable[[str], int]
    """Bytes on the server of ``"aml"`` or ``"restic"``'s repository."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment for both tools while this backend runs."""


@contextmanager
def sftp_target(work: Path) -> Iterator[Target]:
    """Start the test sshd below ``work``; yield both tools' repositories on it; stop it."""
    from tests.sftp_server import start_sshd

    server = start_sshd(work / "sshd")
    try:
        ssh = (
            f"ssh -F /dev/null -p {server.port} -i {server.key_file} -o UserKnownHostsFile={server.known_hosts} "
            f"-o IdentitiesOnly=yes -o BatchMode=yes {server.user}@127.0.0.1 -s sftp"
        )
        yield Target(
            backend="sftp",
            aml_url=server.url("aml"),
            aml_options=StorageOptions(
                timeout=TIMEOUT, sftp_key_file=server.key_file, sftp_known_hosts=server.known_hosts
            ),
            restic_repo=f"sftp:{server.user}@127.0.0.1:{server.root}/restic",
            restic_options=["-o", f"sftp.command={ssh}"],
            stored_bytes=lambda tool: dir_bytes(server.root / tool),
        )
    finally:
        server.stop()


@contextmanager
def s3_target(work: Path) -> Iterator[Target]:
    """Start moto below ``work``; yield both tools' repositories in one new bucket on it; stop it."""
    from tests.s3_server import start_moto

    server = start_moto(work / "moto")
    try:
        bucket = server.new_bucket()

        def stored(tool: str) -> int:
            client = server.client()
            try:
                pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{tool}/")
                return sum(obj["Size"] for page in pages for obj in page.get("Contents", []))
            finally:
                client.close()

        yield Target(
            backend="s3",
            aml_url=server.url(bucket, "aml"),
            aml_options=StorageOptions(timeout=TIMEOUT),
            restic_repo=f"s3:{server.endpoint}/{bucket}/restic",
            restic_options=["-o", "s3.region=us-east-1"],
            stored_bytes=stored,
            env=server.env,
        )
    finally:
        server.stop()


@contextmanager
def patched_environ(env: dict[str, str], drop: tuple[str, ...] = ()) -> Iterator[None]:
    """Set ``env`` (and remove ``drop``) in ``os.environ`` for the block; restore it afterwards."""
    saved = dict(os.environ)
    for key in drop:
        os.environ.pop(key, None)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_restic(target: Target, cache: Path, *args: str) -> None:
    """Run restic on ``target``'s repository with its own cache directory; raise on failure."""
    cmd = ["restic", "-r", target.restic_repo, *target.restic_options, "--cache-dir", str(cache), "--quiet", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")


def run_backend(
    target: Target,
    work: Path,
    store: Path,
    nfiles: int,
    agents: int,
    docs: int,
    seed: int,
    aml_first: bool,
    keep_open: bool = False,
) -> tuple[dict[str, dict[str, tuple[float, float]]], dict[str, int]]:
    """Every step for both tools on ``target``. Returns {step: {tool: (wall, cpu)}} and the stored bytes.

    ``keep_open``: aml uses the repository opened by ``init`` for every step (else each step opens its own,
    timed, and closes it)."""
    password = os.environ["RESTIC_PASSWORD"]
    name = target.backend
    aml_cache, restic_cache = work / f"cache-aml-{name}", work / f"cache-restic-{name}"
    out_aml, out_restic = work / f"restore-aml-{name}", work / f"restore-restic-{name}"
    times: dict[str, dict[str, tuple[float, float]]] = {step: {} for step in STEPS}
    tools = ["aml", "restic"] if aml_first else ["restic", "aml"]
    repo = Repository(target.aml_url, password=password, cache_dir=aml_cache, storage_options=target.aml_options)

    @contextmanager
    def opened() -> Iterator[Repository]:
        if keep_open:
            yield repo
            return
        fresh = Repository(
            target.aml_url, password=password, cache_dir=aml_cache, storage_options=target.aml_options
        ).open()
        try:
            yield fresh
        finally:
            if fresh.storage is not None:
                fresh.storage.close()

    def step(label: str, aml_fn: Callable[[], Any], restic_fn: Callable[[], Any]) -> None:
        for tool in tools:
            wall, cpu, _ = timed(aml_fn if tool == "aml" else restic_fn)
            times[label][tool] = (wall, cpu)
        print(f"  {name} {label}: " + ", ".join(f"{t} {times[label][t][0]:.2f}s" for t in tools), flush=True)

    def restic_backup() -> None:
        run_restic(target, restic_cache, "backup", "--host", "bench", str(store))

    try:
        step("init", lambda: repo.init(encrypt=True), lambda: run_restic(target, restic_cache, "init"))

        def aml_full() -> None:
            with opened() as rp:
                r = create_snapshot(store, rp, incremental=False)
            assert not r.errors, r.errors

        step(OPERATIONS[0], aml_full, restic_backup)
        changed = change_one_percent(store, agents, docs, seed=seed)

        def aml_incr() -> None:
            with opened() as rp:
                r = create_snapshot(store, rp, incremental=True)
            assert r.files_read == changed, (r.files_read, changed)

        step(OPERATIONS[1], aml_incr, restic_backup)

        def aml_check() -> None:
            with opened() as rp:
                c = check(rp, read_data=True)
            assert c.ok, c.to_dict()

        step(OPERATIONS[2], aml_check, lambda: run_restic(target, restic_cache, "check", "--read-data"))
        latest = [s for s in list_snapshots(repo) if not s.legacy][-1].backup_id

        def aml_restore() -> None:
            with opened() as rp:
                rr = restore(rp, latest, out_aml)
            assert rr.ok and rr.files_written == nfiles + 1, (rr.files_written, rr.errors[:3])

        def restic_restore() -> None:
            run_restic(target, restic_cache, "restore", "latest", "--target", str(out_restic))
            subprocess.run(["sync"], check=True)

        step(OPERATIONS[3], aml_restore, restic_restore)
        sizes = {tool: target.stored_bytes(tool) for tool in ("aml", "restic")}
    finally:
        if repo.storage is not None:
            repo.storage.close()
        for d in (aml_cache, restic_cache, out_aml, out_restic):
            shutil.rmtree(d, ignore_errors=True)
    return times, sizes


def print_table(backend: str, times: dict[str, dict[str, tuple[float, float]]], sizes: dict[str, int]) -> None:
    """One backend's results: wall and client CPU times, their ratios, and the bytes on the server."""

    def ratio(x: float, y: float) -> str:
        return f"{x / y:.2f}x" if x and y else "-"

    print(f"\n{backend}")
    head = f"{'operation':<28} {'restic s':>9} {'aml s':>8} {'ratio':>7}   "
    print(head + f"{'restic cpu':>10} {'aml cpu':>8} {'ratio':>7}")
    print("-" * 86)
    for label in STEPS:
        r_wall, r_cpu = times[label]["restic"]
        a_wall, a_cpu = times[label]["aml"]
        print(
            f"{label:<28} {r_wall:>9.2f} {a_wall:>8.2f} {ratio(r_wall, a_wall):>7}   "
            f"{r_cpu:>10.2f} {a_cpu:>8.2f} {ratio(r_cpu, a_cpu):>7}"
        )
    print("-" * 86)
    r_size, a_size = sizes["restic"], sizes["aml"]
    print(f"{'stored on server (MB)':<28} {r_size / 1e6:>9.2f} {a_size / 1e6:>8.2f} {ratio(r_size, a_size):>7}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one table per backend. Returns the process exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--agents", type=int, default=10, help="agent directories (default 10)")
    ap.add_argument("--docs", type=int, default=500, help="documents per agent (default 500)")
    ap.add_argument("--backend", choices=(*BACKENDS, "both"), default="both", help="which remote (default both)")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="scratch directory")
    ap.add_argument("--keep", action="store_true", help="keep the store afterwards")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    ap.add_argument("--keep-open", action="store_true", help="aml opens its repository once, untimed")
    args = ap.parse_args(argv)
    missing = [tool for tool in ("restic", "ssh") if shutil.which(tool) is None]
    if missing:
        print(f"not found: {', '.join(missing)} (apt-get install -y restic openssh-client)", file=sys.stderr)
        return 2
    os.environ.setdefault("RESTIC_PASSWORD", "aml-benchmark")
    backends = BACKENDS if args.backend == "both" else (args.backend,)

    work, store, nfiles, nbytes = prepare_store(args.workdir, args.agents, args.docs)

    starters = {"sftp": sftp_target, "s3": s3_target}
    results: dict[str, Any] = {}
    try:
        for i, backend in enumerate(backends):
            with starters[backend](work) as target, patched_environ(target.env, AWS_ENV_DROP if target.env else ()):
                times, sizes = run_backend(
                    target,
                    work,
                    store,
                    nfiles,
                    args.agents,
                    args.docs,
                    seed=11 + i,
                    aml_first=i % 2 == 0,
                    keep_open=args.keep_open,
                )
            results[backend] = {"times": times, "stored_bytes": sizes}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    for backend, res in results.items():
        print_table(backend, res["times"], res["stored_bytes"])
    print(
        f"\nstore: {nfiles} files, {nbytes / 1e6:.1f} MB; both encrypted; aml "
        f"{'opened once' if args.keep_open else 'opens the repository in every step'}; "
        "ratio = restic / aml (above 1: aml faster or smaller); "
        "cpu = user+sys seconds of the client (this process for aml, restic's process), servers not included"
    )
    if args.json:
        print(json.dumps({"files": nfiles, "bytes": nbytes, "backends": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
