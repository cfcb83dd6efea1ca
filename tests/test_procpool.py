"""Work spread over forked worker processes (aml.procpool): results in order, no item lost when a worker is
killed, errors raised here, threads where forking is not possible; verify's packs and the backup scan find
the same in processes as here, and verify runs inside a real prefork Celery worker."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from aml import procpool
from aml.backup import Repository, check, create_snapshot, load_index
from aml.backup.pack import pack_path
from aml.procpool import ordered_map, usable_cpus
from tests.backup_helpers import flip_byte, make_json_store, small_repo
from tests.fixtures_runtime import REPO, runtime_env, spawn_worker, stop_process

PARENT = os.getpid()
TWO_CPUS = pytest.mark.skipif(usable_cpus() < 2, reason="one usable CPU: ordered_map uses a thread")


def _square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def _die_in_a_worker_on_3(x: int) -> tuple[int, int]:
    if x == 3 and os.getpid() != PARENT:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x, os.getpid()


def _raise_on_2(x: int) -> int:
    if x == 2:
        raise ValueError(f"bad item {x}")
    return x


def _touch(directory: str, x: int) -> int:
    time.sleep(0.05)
    Path(directory, str(x)).touch()
    return x


@TWO_CPUS
def test_results_come_in_order_from_worker_processes() -> None:
    with ordered_map(_square_and_pid, list(range(40)), workers=2) as results:
        got = list(results)
    assert [v for v, _ in got] == [x * x for x in range(40)]
    pids = {pid for _, pid in got}
    assert PARENT not in pids and 1 <= len(pids) <= 2


@TWO_CPUS
def test_a_killed_worker_process_loses_no_item(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="aml.procpool"), \
            ordered_map(_die_in_a_worker_on_3, list(range(8)), workers=2) as results:
        got = list(results)
    assert [v for v, _ in got] == [x * x for x in range(8)]
    assert got[3][1] == PARENT  # the item whose worker died was computed here
    assert "a worker process died" in caplog.text


@TWO_CPUS
@pytest.mark.parametrize("forks_that_succeed", [0, 1])
def test_workers_that_cannot_be_forked_leave_the_work_to_threads(
        forks_that_succeed: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    real_fork = os.fork
    forks: list[int] = []

    def fork_at_a_process_limit() -> int:  # fork(2) failing with EAGAIN: a fault a root test cannot cause for real
        if len(forks) >= forks_that_succeed:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        pid = real_fork()
        forks.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork_at_a_process_limit)
    with caplog.at_level(logging.WARNING, logger="aml.procpool"), \
            ordered_map(_square_and_pid, list(range(8)), workers=2) as results:
        got = list(results)
    assert got == [(x * x, PARENT) for x in range(8)]  # all computed here, by threads
    assert "cannot fork worker processes" in caplog.text
    assert not multiprocessing.active_children()  # the worker forked before the failure was stopped


@pytest.mark.parametrize("processes", [True, False])
def test_an_error_of_the_function_is_raised_at_its_item(processes: bool) -> None:
    seen = []
    with pytest.raises(ValueError, match="bad item 2"), \
            ordered_map(_raise_on_2, [0, 1, 2, 3], workers=2, processes=processes) as results:
        for value in results:
            seen.append(value)
    assert seen == [0, 1]


def test_processes_false_runs_in_threads_of_this_process() -> None:
    with ordered_map(_square_and_pid, list(range(10)), workers=2, processes=False) as results:
        got = list(results)
    assert got == [(x * x, PARENT) for x in range(10)]


def _in_a_daemon(conn: Any) -> None:
    with ordered_map(_square_and_pid, list(range(6)), workers=2) as results:
        conn.send((os.getpid(), list(results)))


def test_a_daemonic_process_uses_threads() -> None:
    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_in_a_daemon, args=(there,), daemon=True)
    proc.start()
    assert here.poll(60), "the daemonic process sent nothing"
    pid, got = here.recv()
    proc.join(30)
    assert proc.exitcode == 0
    assert got == [(x * x, pid) for x in range(6)]


@pytest.mark.parametrize("processes", [True, False])
def test_leaving_early_cancels_the_items_not_started(tmp_path: Path, processes: bool) -> None:
    import functools

    with ordered_map(functools.partial(_touch, str(tmp_path)), list(range(60)), workers=2,
                     processes=processes) as results:
        assert next(results) == 0
    assert 1 <= len(list(tmp_path.iterdir())) < 60


def _findings(repo: Repository) -> dict[str, Any]:
    out = check(repo, read_data=True).to_dict()
    out.pop("duration_seconds")
    return out


@TWO_CPUS
def test_processes_and_threads_find_the_same_damage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_json_store(tmp_path / "store", agents=4, docs=30)
    repo = small_repo(tmp_path / "repo", pack_size=8 * 1024)
    create_snapshot(store, repo, incremental=False)
    index = load_index(repo.path)
    assert len(index.packs) >= 6
    packs = sorted(index.pack_entries)
    # one object's frame damaged in the third pack, the trailer of the fifth
    oid, off, ln, _ = index.pack_entries[packs[2]][1]
    flip_byte(pack_path(repo.path, packs[2]), off + ln // 2)
    fifth = pack_path(repo.path, packs[4])
    flip_byte(fifth, fifth.stat().st_size - 2)
    monkeypatch.setattr(procpool, "PARALLEL_MIN_BYTES", 0)  # a small repository: processes all the same
    in_processes = _findings(repo)
    monkeypatch.setattr(procpool, "fork_workers_possible", lambda: False)
    in_threads = _findings(repo)
    assert in_processes == in_threads
    kinds = {(p["kind"], p["location"].rsplit("/", 1)[-1]) for p in in_processes["errors"]}
    assert ("object_corrupt", packs[2]) in kinds
    assert any(pack == packs[4] for _, pack in kinds)
    corrupt = next(p for p in in_processes["errors"] if p["location"].endswith(packs[2]))
    assert oid in corrupt["objects"] and corrupt["files"]
    assert in_processes["packs_read"] == len(packs)


@pytest.mark.slow
@TWO_CPUS
def test_verify_read_data_in_a_prefork_worker_names_the_damage(tmp_path: Path, redis_server: Any) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = runtime_env(home, redis_server.url(5))
    env["AML_BACKUP_ROOT"] = str(tmp_path / "repos")
    store = make_json_store(tmp_path / "store", agents=6, docs=40)

    def aml(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli.main", str(store), *args, "--json"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)

    made = aml("backup", "create")
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    repo_path = Path(json.loads(made.stdout)["repository"])
    index = load_index(repo_path)
    pack_id = sorted(index.pack_entries)[0]
    oid, off, ln, _ = index.pack_entries[pack_id][0]
    flip_byte(pack_path(repo_path, pack_id), off + ln // 2)
    worker = spawn_worker(env, tmp_path / "worker.log", "--pool", "prefork")
    try:
        got = aml("backup", "verify", "--read-data", "--enqueue", "--wait", "--timeout", "240")
    finally:
        stop_process(worker)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert got.returncode == 2, got.stdout[-2000:] + got.stderr[-2000:] + log[-3000:]
    result = json.loads(got.stdout)
    corrupt = [p for p in result["errors"] if p["kind"] == "object_corrupt"]
    assert corrupt and oid in corrupt[0]["objects"], result["errors"]
    assert result["packs_read"] == len(index.packs)
    assert "daemonic" not in log and "Traceback" not in log


def _tricky_store(root: Path) -> Path:
    for top in ("alpha", "beta", "gamma", "delta"):
        for sub in ("", "x", "x/y"):
            d = root / top / sub
            d.mkdir(parents=True, exist_ok=True)
            (d / "a.json").write_text("{}")
            (d / "b.tmp").write_text("skip me")
            (d / ".aml-tmp-123").write_text("temporary")
        os.symlink("alpha/a.json", root / f"link-{top}")
        os.symlink("../a.json", root / top / "x" / "up")
        os.mkfifo(root / top / "x" / "fifo")
        (root / top / "empty").mkdir()
    (root / "top.json").write_text("[]")
    (root / "repo" / "packs").mkdir(parents=True)
    (root / "repo" / "packs" / "p").write_bytes(b"pack")
    os.mkfifo(root / "fifo-at-top")
    return root


@TWO_CPUS
def test_the_scan_in_worker_processes_equals_the_scan_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aml.backup import archiver
    from aml.backup.archiver import _scan
    from aml.backup.excludes import Excludes

    root = _tricky_store(tmp_path / "store")

    def scan() -> Any:
        s = _scan(str(root), [root / "repo"], Excludes(["*.tmp", "gamma/x"], defaults=True))
        return s.files, s.dirs, s.links, s.errors, s.skipped_temp, s.excluded

    monkeypatch.setattr(archiver, "SCAN_PARALLEL_AFTER", 0)  # a small store: every tree to the processes
    assert procpool.worker_processes(2, 4) == 2  # the four top-level directories go to two processes
    in_processes = scan()
    monkeypatch.setattr(procpool, "fork_workers_possible", lambda: False)
    here = scan()
    assert in_processes == here
    files, dirs, links, errors, skipped, excluded = here
    assert [f[0] for f in files] == sorted(f[0] for f in files) and len(files) == 3 + 3 + 1 + 3 + 1  # gamma/x excluded
    assert "repo" not in {d[0] for d in dirs} and "delta/empty" in {d[0] for d in dirs}
    assert {x[0] for x in links} == {f"link-{t}" for t in ("alpha", "beta", "gamma", "delta")} | {
        f"{t}/x/up" for t in ("alpha", "beta", "delta")}
    assert [e["path"] for e in errors] == ["alpha/x/fifo", "beta/x/fifo", "delta/x/fifo", "fifo-at-top"]
    assert skipped == 10 and excluded == 10 + 1  # the .tmp files and gamma/x


def _summary(doc: Any) -> tuple[str, str, str | None, int, int]:
    return doc.relpath, doc.kind, None if doc.error is None else doc.error.code, doc.size_bytes, os.getpid()


def test_map_documents_gives_iter_documents_in_order(tmp_path: Path) -> None:
    from aml.store import FileStore

    root = _tricky_store(tmp_path / "store")
    (root / "alpha" / "patterns.json").write_text('[{"id": "p1"}, {"id": "p2"}]')
    (root / "beta" / "broken.json").write_text('{"id": ')
    (root / "big.json").write_text(json.dumps([{"id": str(i)} for i in range(200)]))
    store = FileStore(root)
    want = [_summary(d)[:4] for d in store.iter_documents(check_types=True)]
    got = list(store.map_documents(_summary, check_types=True, parallel_max_bytes=1024, min_bytes_for_processes=0))
    assert [g[:4] for g in got] == want
    codes = {g[0]: g[2] for g in got}
    assert codes["beta/broken.json"] is not None and codes["link-alpha"] == "symlink"
    here = {g[0] for g in got if g[4] == PARENT}
    assert "big.json" in here and "link-alpha" in here and "fifo-at-top" in here  # large, or not a file
    if usable_cpus() >= 2:
        assert "alpha/patterns.json" not in here  # small documents went to the workers
    # a store of a few kilobytes is not worth forking for (PARALLEL_MIN_BYTES): all of it read in this process
    assert {g[4] for g in store.map_documents(_summary, check_types=True)} == {PARENT}


_KILLED_PARENT = """
import os, sys, time
from pathlib import Path
from aml.procpool import ordered_map

def slow(x):
    Path(sys.argv[1], str(os.getpid())).touch()
    time.sleep(60)
    return x

if __name__ == "__main__":
    with ordered_map(slow, list(range(4)), workers=2) as results:
        list(results)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@TWO_CPUS
def test_worker_processes_die_with_a_killed_parent(tmp_path: Path) -> None:
    marks = tmp_path / "pids"
    marks.mkdir()
    script = tmp_path / "parent.py"
    script.write_text(_KILLED_PARENT)
    proc = subprocess.Popen([sys.executable, str(script), str(marks)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while len(list(marks.iterdir())) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    workers = [int(p.name) for p in marks.iterdir()]
    proc.kill()
    proc.communicate(timeout=10)  # returns: no worker holds the parent's output pipes open
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers)
