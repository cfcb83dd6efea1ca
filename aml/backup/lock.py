"""Repository locks: shared (backup, check, restore) and exclusive (forget, prune, rebuild-index).

A lock is a file ``locks/<random>.json`` holding ``{"exclusive", "operation", "hostname", "pid",
"pid_start", "time"}``. To take a lock, a process writes its own file first, then reads the others:
an exclusive lock conflicts with any other lock, a shared lock with exclusive ones. On conflict it
removes its own file and waits (up to ``wait`` seconds) or raises :class:`LockError`.

A remote repository (:mod:`aml.backup.remote`) keeps its lock files in the storage (``locks/<random>.json``
objects), so that hosts sharing it see each other's locks; a local one in its ``locks/`` directory.

Stale locks are removed: on the same host, a lock whose pid is gone or whose pid now belongs to a
process started at another time (pid reuse); on another host, a lock not refreshed for
:data:`STALE_AFTER` seconds (long operations call :meth:`RepositoryLock.refresh`).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aml.store.atomic import atomic_write
from aml.store.timestamps import require_timestamp, utc_iso_z

from . import remote
from ._common import TMP_PREFIX, hostname
from .errors import LockError
from .storage import StorageError, StorageNotFound

STALE_AFTER = 30 * 60
"""Seconds after which a lock from another host that was not refreshed counts as stale."""
REFRESH_EVERY = 5 * 60
"""Seconds between refreshes of a held lock (see :meth:`RepositoryLock.maybe_refresh`)."""

__all__ = ["REFRESH_EVERY", "STALE_AFTER", "RepositoryLock", "process_start_time"]


def process_start_time(pid: int) -> int | None:
    """Return the start time of process ``pid`` in clock ticks since boot (Linux), or None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    try:
        fields = data[data.rindex(b")") + 2 :].split()
        return int(fields[19])
    except (ValueError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (``kill(pid, 0)``; a process of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RepositoryLock:
    """One lock on a repository; use as a context manager.

    Args:
        root: repository root (``locks/`` is created if missing).
        exclusive: exclusive (forget/prune) or shared (backup/check/restore).
        operation: free text recorded in the lock file (``"backup"``, ``"prune"``...).
        wait: seconds to keep retrying on conflict before raising.

    Attributes:
        removed_stale: lock file names removed as stale while acquiring.
    """

    def __init__(self, root: Path, *, exclusive: bool, operation: str = "", wait: float = 0.0) -> None:
        self.root = Path(root)
        self.exclusive = exclusive
        self.operation = operation
        self.wait = wait
        self.path: Path | None = None
        self.removed_stale: list[str] = []
        self._refreshed = 0.0
        self._stop_refresh: threading.Event | None = None
        self._mutex = threading.Lock()  # a refresh never re-creates a lock file that release removed

    def _doc(self) -> dict[str, Any]:
        pid = os.getpid()
        return {
            "exclusive": self.exclusive,
            "operation": self.operation,
            "hostname": hostname(),
            "pid": pid,
            "pid_start": process_start_time(pid),
            "time": utc_iso_z(datetime.now(UTC)),
        }

    def _is_stale(self, doc: dict[str, Any]) -> bool:
        if doc.get("hostname") == hostname():
            pid = int(doc.get("pid", -1))
            if pid <= 0 or not pid_alive(pid):
                return True
            start = doc.get("pid_start")
            return start is not None and process_start_time(pid) not in (None, start)
        try:
            age = (datetime.now(UTC) - require_timestamp(doc["time"])).total_seconds()
        except (KeyError, ValueError, TypeError):
            return False
        return age > STALE_AFTER

    # where lock files live: the local locks/ directory, or a remote repository's storage
    def _names(self) -> list[str]:
        mirror = remote.mirror_for(self.root)
        if mirror is not None:
            return [o.name[len("locks/"):] for o in mirror.storage.list("locks/")]
        return os.listdir(self.root / "locks")

    def _get(self, name: str) -> bytes:
        mirror = remote.mirror_for(self.root)
        if mirror is not None:
            try:
                return mirror.storage.read(f"locks/{name}")
            except StorageNotFound:
                raise FileNotFoundError(name) from None
        return (self.root / "locks" / name).read_bytes()

    def _put(self, path: Path) -> None:
        data = json.dumps(self._doc()).encode()
        mirror = remote.mirror_for(self.root)
        if mirror is not None:
            mirror.storage.write(f"locks/{path.name}", data, once=False)
        else:
            atomic_write(path, data, fsync=False, sync_dir=False)

    def _drop(self, path: Path) -> None:
        mirror = remote.mirror_for(self.root)
        if mirror is not None:
            mirror.storage.delete(f"locks/{path.name}")
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _conflicts(self) -> list[str]:
        locks_dir = self.root / "locks"
        out = []
        for name in self._names():
            if name.startswith(TMP_PREFIX) or not name.endswith(".json"):
                continue
            path = locks_dir / name
            if self.path is not None and path == self.path:
                continue
            try:
                doc = json.loads(self._get(name))
            except FileNotFoundError:
                continue
            except StorageError as exc:  # a remote lock that cannot be read may be live: never assume it is not
                out.append(f"lock {name} could not be read ({exc})")
                continue
            except (ValueError, OSError):
                continue  # half-written by a crashed process: atomic writes make this rare; ignore
            if self._is_stale(doc):
                self._drop(path)
                self.removed_stale.append(name)
                continue
            if self.exclusive or doc.get("exclusive"):
                kind = "exclusive" if doc.get("exclusive") else "shared"
                out.append(
                    f"{kind} lock {name} by pid {doc.get('pid')} on {doc.get('hostname')} "
                    f"({doc.get('operation') or 'unknown operation'}, since {doc.get('time')})"
                )
        return out

    def acquire(self) -> RepositoryLock:
        """Take the lock.

        Returns:
            self.

        For a remote repository the cache is then brought up to date (:func:`aml.backup.remote.pull`).

        Raises:
            LockError: a conflicting live lock is still held after ``wait`` seconds.
            OSError: if the lock file cannot be written (StorageError for a remote repository).
        """
        locks_dir = self.root / "locks"
        locks_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait
        while True:
            self.path = locks_dir / f"{secrets.token_hex(16)}.json"
            self._put(self.path)
            self._refreshed = time.monotonic()
            conflicts = self._conflicts()
            if not conflicts:
                mirror = remote.mirror_for(self.root)
                if mirror is not None:
                    # what other hosts wrote before this lock was held (a prune must see every snapshot)
                    try:
                        remote.pull(mirror)
                    except BaseException:
                        self.release()
                        raise
                    self._start_refresher()
                return self
            self.release()
            if time.monotonic() >= deadline:
                raise LockError("repository is locked: " + "; ".join(conflicts))
            time.sleep(min(0.05 + random.random() * 0.2, max(0.0, deadline - time.monotonic())))

    def refresh(self) -> None:
        """Rewrite the lock file's time so other hosts do not consider it stale."""
        with self._mutex:
            if self.path is not None:
                self._put(self.path)
                self._refreshed = time.monotonic()

    def _start_refresher(self) -> None:
        """Refresh a remote lock every :data:`REFRESH_EVERY` seconds from a daemon thread until released: other
        hosts judge it by its time alone, and a verify, restore or prune over a network can outlast
        :data:`STALE_AFTER` (restic refreshes its locks the same way)."""
        stop = self._stop_refresh = threading.Event()

        def run() -> None:
            while not stop.wait(REFRESH_EVERY):
                with contextlib.suppress(OSError):  # a failed refresh is retried; the lock stays held
                    self.refresh()

        threading.Thread(target=run, name="aml-lock-refresh", daemon=True).start()

    def maybe_refresh(self) -> None:
        """Refresh if :data:`REFRESH_EVERY` seconds have passed since the last refresh (cheap to call)."""
        if self.path is not None and time.monotonic() - self._refreshed > REFRESH_EVERY:
            self.refresh()

    def release(self) -> None:
        """Remove the lock file (idempotent)."""
        if self._stop_refresh is not None:
            self._stop_refresh.set()
            self._stop_refresh = None
        with self._mutex:
            if self.path is not None:
                self._drop(self.path)
                self.path = None

    def __enter__(self) -> RepositoryLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
