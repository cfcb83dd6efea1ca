"""Per-store locks: two destructive operations never run on one store at once.

The lock is a Redis key ``aml:lock:<store id>`` taken with ``SET NX PX`` (redis-py's
:class:`redis.lock.Lock`) and renewed by a background thread while the operation runs, so a crashed
holder frees the store after ``ttl`` seconds. When no Redis answers (the CLI's inline mode on a
machine without a broker) the lock falls back to an exclusive ``flock`` on a file under
``$AML_HOME/locks/``, which serialises operations on this host.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.exceptions import LockError, RedisError


class StoreLocked(RuntimeError):
    """The store's lock is held by another operation and did not free within the wait time."""

    def __init__(self, store_id: str, waited_s: float, holder: str | None) -> None:
        self.store_id = store_id
        self.waited_s = waited_s
        self.holder = holder
        super().__init__(
            f"store {store_id} is locked by another operation ({holder or 'unknown holder'}); "
            f"waited {waited_s:.0f} s"
        )


@dataclass
class LockInfo:
    """What a held lock is: ``backend`` ("redis" or "file"), the key or file, the holder token."""

    backend: str
    name: str
    holder: str


def lock_key(store_id: str) -> str:
    """Redis key of a store's lock: ``aml:lock:<sha256(store id)[:32]>``."""
    return "aml:lock:" + hashlib.sha256(store_id.encode()).hexdigest()[:32]


def _holder() -> str:
    return f"{os.uname().nodename}:{os.getpid()}:{threading.get_ident()}"


@contextlib.contextmanager
def store_lock(
    store_id: str,
    *,
    redis_url: str | None,
    lock_dir: Path,
    wait_s: float = 60.0,
    ttl_s: float = 120.0,
) -> Iterator[LockInfo]:
    """Hold the exclusive lock of ``store_id`` for the duration of the block.

    Args:
        store_id: normalised store id (path or URL).
        redis_url: Redis used for locks; ``None`` or unreachable selects the file lock.
        lock_dir: directory for file locks (created if needed).
        wait_s: seconds to wait for a held lock before giving up.
        ttl_s: Redis lock expiry in seconds; renewed every ``ttl_s / 3`` while held.

    Yields:
        :class:`LockInfo` describing the lock taken.

    Raises:
        StoreLocked: the lock was not acquired within ``wait_s``.
    """
    client = _redis_or_none(redis_url)
    if client is not None:
        with _redis_lock(client, store_id, wait_s, ttl_s) as info:
            yield info
    else:
        with _file_lock(store_id, lock_dir, wait_s) as info:
            yield info


def _redis_or_none(url: str | None) -> redis.Redis | None:
    if not url or not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10)
    try:
        client.ping()
    except RedisError:
        return None
    return client


@contextlib.contextmanager
def _redis_lock(client: redis.Redis, store_id: str, wait_s: float, ttl_s: float) -> Iterator[LockInfo]:
    key = lock_key(store_id)
    holder = _holder()
    lock = client.lock(key, timeout=ttl_s, blocking=True, blocking_timeout=wait_s, thread_local=False)
    start = time.monotonic()
    if not lock.acquire(token=holder):
        current = client.get(key)
        holder_now = current.decode() if isinstance(current, bytes) else current
        raise StoreLocked(store_id, time.monotonic() - start, holder_now)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl_s / 3):
            try:
                lock.extend(ttl_s, replace_ttl=True)
            except (LockError, RedisError):
                return

    thread = threading.Thread(target=renew, name=f"aml-lock-renew-{key}", daemon=True)
    thread.start()
    try:
        yield LockInfo("redis", key, holder)
    finally:
        stop.set()
        thread.join(timeout=5)
        with contextlib.suppress(LockError, RedisError):
            lock.release()


@contextlib.contextmanager
def _file_lock(store_id: str, lock_dir: Path, wait_s: float) -> Iterator[LockInfo]:
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / (lock_key(store_id).split(":")[-1] + ".lock")
    holder = _holder()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    start = time.monotonic()
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - start >= wait_s:
                    other = os.pread(fd, 256, 0).decode(errors="replace").strip() or None
                    raise StoreLocked(store_id, time.monotonic() - start, other) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder} {store_id}\n".encode(), 0)
        try:
            yield LockInfo("file", str(path), holder)
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
