"""Per-store locks never fail open: real flock on the store's directory, a real Redis, real process kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from tests.fixtures_runtime import REPO, RedisServer, _free_port


def _hold_in_thread(store: Path, url: str | None, **kw):
    from workers.locks import store_lock

    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with store_lock(str(store), redis_url=url, store_dir=store, wait_s=1, **kw):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(10)
    return t, release


@pytest.mark.parametrize("layers", ["file", "file+redis"])
def test_lock_excludes_a_second_holder_and_frees_on_exit(layers: str, tmp_path: Path,
                                                         redis_server: RedisServer) -> None:
    from workers.locks import StoreLocked, store_lock

    url = redis_server.url(5) if "redis" in layers else None
    store, other = tmp_path / "a", tmp_path / "b"
    store.mkdir()
    other.mkdir()
    before = sorted(os.listdir(store)), store.stat().st_mtime_ns
    t, release = _hold_in_thread(store, url)
    assert (sorted(os.listdir(store)), store.stat().st_mtime_ns) == before  # nothing is written into the store
    start = time.monotonic()
    with pytest.raises(StoreLocked) as err, store_lock(str(store), redis_url=url, store_dir=store, wait_s=0.5):
        pass
    assert time.monotonic() - start >= 0.4
    assert str(store) in str(err.value) and f"pid {os.getpid()}" in str(err.value)
    with store_lock(str(other), redis_url=url, store_dir=other, wait_s=0.5) as info:  # another store is independent
        assert info.backend == ("redis" if url else "file")
    release.set()
    t.join()
    with store_lock(str(store), redis_url=url, store_dir=store, wait_s=1):
        pass
    if url:
        from workers.locks import lock_key

        assert not redis.Redis.from_url(url).exists(lock_key(str(store)))


def test_settings_that_disagree_still_exclude_each_other(tmp_path: Path, redis_server: RedisServer) -> None:
    """A process using Redis and one configured without it (another AML_HOME, AML_LOCK_URL=none) still meet
    at the store directory's flock."""
    from workers.locks import StoreLocked, store_lock

    store = tmp_path / "s"
    store.mkdir()
    t, release = _hold_in_thread(store, redis_server.url(5))
    with pytest.raises(StoreLocked), store_lock(str(store), redis_url=None, store_dir=store, wait_s=0.3):
        pass
    release.set()
    t.join()


def test_configured_redis_down_refuses(tmp_path: Path) -> None:
    from workers.locks import LockUnavailable, store_lock

    dead = f"redis://:hunter2@127.0.0.1:{_free_port()}/0"
    with pytest.raises(LockUnavailable) as err, store_lock(str(tmp_path), redis_url=dead, store_dir=tmp_path):
        pytest.fail("ran unlocked")
    assert "refusing to run unlocked" in str(err.value) and "hunter2" not in str(err.value)


def test_dead_owner_is_taken_over_at_once(tmp_path: Path, redis_server: RedisServer) -> None:
    """kill -9 of the holder: its file lock is freed by the kernel and its lease (30 s) taken over at once."""
    from workers.locks import lock_key, store_lock

    url = redis_server.url(5)
    script = ("import sys, time\nfrom pathlib import Path\nfrom workers.locks import store_lock\n"
              f"with store_lock({str(tmp_path)!r}, redis_url={url!r}, store_dir=Path({str(tmp_path)!r}), "
              "lease_s=30, task_id='t-1'):\n    print('held', flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"held"
    client = redis.Redis.from_url(url)
    assert json.loads(client.get(lock_key(str(tmp_path))))["task"] == "t-1"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert client.pttl(lock_key(str(tmp_path))) > 20_000  # the dead owner's lease is still there
    start = time.monotonic()
    with store_lock(str(tmp_path), redis_url=url, store_dir=tmp_path, wait_s=10, lease_s=30) as info:
        took = time.monotonic() - start
        assert info.took_over is not None and f"pid {proc.pid}" in info.took_over and "t-1" in info.took_over
    assert took < 2.0


def test_lost_lease_stops_the_next_write(tmp_path: Path, redis_server: RedisServer) -> None:
    """Another process takes the key (the lease was lost): the next atomic write raises, the file is untouched."""
    from aml.store.atomic import atomic_write
    from aml.store.guard import WriteRevoked, check_write
    from workers.locks import lock_key, store_lock

    url = redis_server.url(5)
    target = tmp_path / "doc.json"
    target.write_text("old")
    with store_lock(str(tmp_path), redis_url=url, store_dir=tmp_path, lease_s=0.6) as info:
        atomic_write(target, b"first")
        redis.Redis.from_url(url).set(lock_key(str(tmp_path)), "someone else")
        assert info.lost.wait(5)
        with pytest.raises(WriteRevoked, match="lost"):
            atomic_write(target, b"second")
    assert target.read_bytes() == b"first"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".aml-tmp-")]
    check_write()  # outside the operation, writes are allowed again


def test_cli_prune_refuses_when_the_lock_redis_is_down(tmp_path: Path, aml_settings, monkeypatch) -> None:
    from typer.testing import CliRunner

    from cli.main import store_app
    from tests.backup_helpers import tree_state
    from tests.realdata import extract_loom
    from workers.app import current_aml_app

    store = extract_loom("loom-plain-v1.0", tmp_path)
    before = tree_state(store)
    dead = f"redis://127.0.0.1:{_free_port()}/0"
    monkeypatch.setitem(current_aml_app().conf, "aml_settings", aml_settings.replace(lock_url=dead))
    res = CliRunner().invoke(store_app, ["prune", "--strategies", "time_based"], obj={"store": str(store)})
    assert res.exit_code == 69, res.output
    assert "refusing to run unlocked" in res.output and "Traceback" not in res.output
    assert tree_state(store) == before


@pytest.mark.slow
def test_silent_redis_loses_the_lock_before_the_lease_ends(tmp_path: Path) -> None:
    """A lock Redis that stops answering (SIGSTOP: a real hang, not a refused connection) makes the holder
    stop writing within half the lease plus one bounded call, so before anyone else could take the lease."""
    import shutil

    from aml.store.atomic import atomic_write
    from aml.store.guard import WriteRevoked
    from workers.locks import store_lock

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary")
    port = _free_port()
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                               "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.RedisError:
                time.sleep(0.05)
        lease = 3.0
        store = tmp_path / "store"
        store.mkdir()
        target = store / "doc.json"
        with store_lock(str(store), redis_url=url, store_dir=store, lease_s=lease) as info:
            acquired = time.monotonic()
            os.kill(server.pid, signal.SIGSTOP)
            assert info.lost.wait(lease)
            assert time.monotonic() - acquired < lease  # before the lease could expire
            with pytest.raises(WriteRevoked, match="stopped answering"):
                atomic_write(target, b"late")
            os.kill(server.pid, signal.SIGCONT)
        assert not target.exists()
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.terminate()
        server.wait(timeout=10)
