"""Per-store locks: two destructive operations never run on one store at once, and never fail open.

A store's lock has two layers, taken in this order and both held for the whole operation:

1. **An exclusive ``flock`` on the store's directory**: every process on the host that can write the
   store sees it, whatever its ``AML_HOME`` or settings, and nothing is written into the store for it.
   The kernel frees it the instant its holder dies, so a dead owner's lock is taken over at once.
2. **A Redis lease** (``aml:lock:<sha256(store id)[:32]>``, ``SET NX PX``), when a lock Redis is
   configured (``AML_LOCK_URL``, or a Redis ``AML_BROKER_URL``): the lock for processes on other hosts.
   The value names its owner (host, pid, task id, kernel boot id, pid namespace); the lease is short
   (``AML_LOCK_LEASE``, 30 s) and renewed every third of it. A lease whose owner is a dead process of
   this host's boot and pid namespace is taken over at once; a dead owner elsewhere frees it within one
   lease. If the lease cannot be renewed (taken over, or Redis silent for half the lease, with every
   call bounded by a sixth of it) the lock is *lost* before the lease ends: :func:`aml.store.guard.revoke`
   stops the operation before its next store write.

If the configured Redis does not answer, :class:`LockUnavailable` is raised: the operation refuses to
run rather than run unlocked. A store held by a live owner past the wait time raises
:class:`StoreLocked`, which the tasks turn into a retry with backoff.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aml.store import guard

if TYPE_CHECKING:
    import redis

__all__ = ["LockInfo", "LockUnavailable", "StoreLocked", "lock_key", "store_lock"]

POLL_S = 0.1
"""Seconds between two attempts on a held lock."""


class StoreLocked(RuntimeError):
    """The store's lock is held by a live operation and did not free within the wait time."""

    def __init__(self, store_id: str, waited_s: float, holder: str | None) -> None:
        self.store_id = store_id
        self.waited_s = waited_s
        self.holder = holder
        super().__init__(
            f"store {store_id} is locked by another operation ({holder or 'unknown holder'}); "
            f"waited {waited_s:.1f} s"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # picklable/serialisable with its arguments
        return (StoreLocked, (self.store_id, self.waited_s, self.holder))


class LockUnavailable(RuntimeError):
    """The configured lock Redis does not answer: a destructive operation must not run unlocked."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"the lock Redis {redact(url)} does not answer ({reason}): refusing to run unlocked; "
                         "start it, or set AML_LOCK_URL=none to rely on the store's lock file alone (one host)")

    def __reduce__(self) -> tuple[Any, ...]:
        return (LockUnavailable, (self.url, self.reason))


@dataclass
class LockInfo:
    """A held lock: its layers (``"file"``, ``"redis"``), the lock file and Redis key, the owner."""

    backends: list[str]
    path: str | None
    key: str | None
    owner: dict[str, Any]
    lost: threading.Event = field(default_factory=threading.Event)
    took_over: str | None = None

    @property
    def backend(self) -> str:
        """The layer that excludes other hosts: ``"redis"`` when a Redis lease is held, else ``"file"``."""
        return "redis" if "redis" in self.backends else "file"


def redact(url: str) -> str:
    """``url`` without its password (``redis://:secret@h`` -> ``redis://:***@h``)."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def lock_key(store_id: str) -> str:
    """Redis key of a store's lock: ``aml:lock:<sha256(store id)[:32]>``."""
    return "aml:lock:" + hashlib.sha256(store_id.encode()).hexdigest()[:32]


def _owner(task_id: str | None) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "task": task_id, "since": round(time.time(), 3),
            "boot": _read("/proc/sys/kernel/random/boot_id"), "pidns": _pid_namespace()}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _same_pid_space(holder: dict[str, Any], me: dict[str, Any]) -> bool:
    """Whether ``holder``'s pid can be checked from here: same host name, same kernel boot and same pid
    namespace (containers sharing a host name have their own pids; a pid is never judged across them)."""
    return (holder.get("host") == me["host"] and me["boot"] is not None and holder.get("boot") == me["boot"]
            and me["pidns"] is not None and holder.get("pidns") == me["pidns"])


def _describe(owner: dict[str, Any] | None) -> str | None:
    if not owner:
        return None
    text = f"pid {owner.get('pid')} on {owner.get('host')}"
    if owner.get("task"):
        text += f", task {owner['task']}"
    return text


def _pid_dead(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@contextlib.contextmanager
def store_lock(
    store_id: str,
    *,
    redis_url: str | None,
    store_dir: Path | None,
    wait_s: float = 60.0,
    lease_s: float = 30.0,
    task_id: str | None = None,
) -> Iterator[LockInfo]:
    """Hold the exclusive lock of ``store_id`` for the duration of the block.

    Args:
        store_id: normalised store id (path or URL).
        redis_url: the lock Redis, or ``None`` for the store's lock file alone.
        store_dir: the store's directory (its lock file lives there); ``None`` for a store that is
            not a directory (a Redis keyspace), which then needs ``redis_url``.
        wait_s: seconds to wait for a live owner to release before giving up.
        lease_s: the Redis lease, seconds; renewed every ``lease_s / 3``.
        task_id: the Celery task id recorded as part of the owner.

    Yields:
        :class:`LockInfo`; its ``lost`` event is set (and store writes stop) if the lease is lost.

    Raises:
        StoreLocked: a live owner held the lock for ``wait_s``.
        LockUnavailable: ``redis_url`` is set and does not answer.
        ValueError: neither ``store_dir`` nor ``redis_url`` is given.
    """
    if store_dir is None and redis_url is None:
        raise ValueError(f"store {store_id} has no directory for a lock file and no lock Redis is configured")
    client = _connect(redis_url, lease_s) if redis_url else None
    owner = _owner(task_id)
    info = LockInfo([], None, None, owner)
    deadline = time.monotonic() + wait_s
    with contextlib.ExitStack() as stack:
        stack.enter_context(guard.guarded())  # first: a lease lost at any point after this stops writes
        if store_dir is not None:
            info.path = stack.enter_context(_dir_lock(store_id, store_dir, deadline))
            info.backends.append("file")
        if client is not None:
            assert redis_url is not None
            stack.enter_context(_redis_lease(client, redis_url, store_id, info, deadline, lease_s))
            info.backends.append("redis")
        yield info


def _connect(url: str, lease_s: float) -> redis.Redis:
    import redis  # only a Redis lock needs redis-py: a file lock's process never imports it
    from redis.exceptions import RedisError

    # a renewal call may hang this long: a sixth of the lease keeps "lost" declared before the lease ends
    timeout = max(0.2, min(5.0, lease_s / 6))
    client = redis.Redis.from_url(url, socket_connect_timeout=min(2.0, timeout), socket_timeout=timeout)
    try:
        client.ping()
    except RedisError as exc:
        raise LockUnavailable(url, str(exc) or type(exc).__name__) from None
    return client


@contextlib.contextmanager
def _dir_lock(store_id: str, store_dir: Path, deadline: float) -> Iterator[str]:
    """An exclusive ``flock`` on the store's directory itself: nothing is created in the store (its
    files and mtimes stay as they are), every process on the host sees it, and the kernel releases it
    when the holder dies. The holder's pid is read from ``/proc/locks`` for the message."""
    start = time.monotonic()
    try:
        fd = os.open(store_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot open the store directory {store_dir} to lock it: {exc.strerror}") from None
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreLocked(store_id, time.monotonic() - start, _flock_holder(fd)) from None
                time.sleep(POLL_S)
        yield str(store_dir)
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _flock_holder(fd: int) -> str | None:
    """``pid N on this host`` for the process holding a flock on ``fd``'s inode (from ``/proc/locks``)."""
    st = os.fstat(fd)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == ident and parts[4].isdigit():
            return f"pid {parts[4]} on {socket.gethostname()}"
    return None


_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
"""Replace the lease only if it still holds the dead owner's exact value (compare-and-set)."""


@contextlib.contextmanager
def _redis_lease(client: redis.Redis, url: str, store_id: str, info: LockInfo, deadline: float,
                 lease_s: float) -> Iterator[None]:
    from redis.exceptions import LockError, RedisError

    key = lock_key(store_id)
    token = json.dumps(info.owner, sort_keys=True)
    lock = client.lock(key, timeout=lease_s, blocking=False, thread_local=False)
    start = time.monotonic()
    while True:
        attempt = time.monotonic()  # the lease runs from (at the latest) here
        try:
            if lock.acquire(token=token):
                break
            current = client.get(key)
        except RedisError as exc:
            raise LockUnavailable(url, str(exc) or type(exc).__name__) from None
        holder = _parse(current)
        if current is not None and holder and _same_pid_space(holder, info.owner) and _pid_dead(holder.get("pid")):
            try:
                if client.eval(_TAKE_OVER, 1, key, current, token, int(lease_s * 1000)):
                    lock.local.token = token.encode()
                    info.took_over = _describe(holder)
                    break
            except RedisError as exc:
                raise LockUnavailable(url, str(exc) or type(exc).__name__) from None
            continue
        if time.monotonic() >= deadline:
            raise StoreLocked(store_id, time.monotonic() - start, _describe(holder) or "another host")
        time.sleep(POLL_S)
    info.key = key
    stop = threading.Event()

    def renew() -> None:
        """Extend every third of the lease; after a failure retry each second, and declare the lock lost
        once half the lease has passed since the last extension *started* (so, with calls bounded by a
        sixth of the lease, writes stop before the lease can expire and another holder take it)."""
        last_ok, pause = attempt, lease_s / 3
        while not stop.wait(pause):
            started = time.monotonic()
            try:
                lock.extend(lease_s, replace_ttl=True)
                last_ok, pause = started, lease_s / 3
            except LockError as exc:  # the lease is no longer ours: taken over or expired
                _lose(info, f"the lock of {store_id} was lost ({exc})")
                return
            except RedisError as exc:
                if time.monotonic() - last_ok >= lease_s / 2:
                    _lose(info, f"the lock Redis stopped answering for {time.monotonic() - last_ok:.0f} s ({exc})")
                    return
                pause = min(1.0, lease_s / 6)

    thread = threading.Thread(target=renew, name=f"aml-lease-{key}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=lease_s)
        with contextlib.suppress(LockError, RedisError):
            lock.release()


def _lose(info: LockInfo, reason: str) -> None:
    info.lost.set()
    guard.revoke(reason)


def _parse(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        return {"host": None, "pid": None, "task": None, "raw": value.decode(errors="replace")
                if isinstance(value, bytes) else str(value)}
    return parsed if isinstance(parsed, dict) else None
