"""Repository locks: shared (backup, check, restore) and exclusive (forget, prune, rebuild-index).

A lock is a file ``locks/<random>.json`` holding ``{"exclusive", "operation", "hostname", "pid",
"pid_start", "time"}``. To take a lock, a process writes its own file first, then reads the others:
an exclusive lock conflicts with any other lock, a shared lock with exclusive ones. On conflict it
removes its own file and waits (up to ``wait`` seconds) or raises :class:`LockError`.

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
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aml.store.atomic import atomic_write
from aml.store.timestamps import require_timestamp, utc_iso_z

from ._common import TMP_PREFIX, hostname
from .errors import LockError

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

    def _conflicts(self) -> list[str]:
        locks_dir = self.root / "locks"
        out = []
        for name in os.listdir(locks_dir):
            if name.startswith(TMP_PREFIX) or not name.endswith(".json"):
                continue
            path = locks_dir / name
            if self.path is not None and path == self.path:
                continue
            try:
                doc = json.loads(path.read_bytes())
            except FileNotFoundError:
                continue
            except (ValueError, OSError):
                continue  # half-written by a crashed process: atomic writes make this rare; ignore
            if self._is_stale(doc):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
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

        Raises:
            LockError: a conflicting live lock is still held after ``wait`` seconds.
            OSError: if the lock file cannot be written.
        """
        locks_dir = self.root / "locks"
        locks_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait
        while True:
            self.path = locks_dir / f"{secrets.token_hex(16)}.json"
            atomic_write(self.path, json.dumps(self._doc()).encode(), fsync=False, sync_dir=False)
            self._refreshed = time.monotonic()
            conflicts = self._conflicts()
            if not conflicts:
                return self
            self.release()
            if time.monotonic() >= deadline:
                raise LockError("repository is locked: " + "; ".join(conflicts))
            time.sleep(min(0.05 + random.random() * 0.2, max(0.0, deadline - time.monotonic())))

    def refresh(self) -> None:
        """Rewrite the lock file's time so other hosts do not consider it stale."""
        if self.path is not None:
            atomic_write(self.path, json.dumps(self._doc()).encode(), fsync=False, sync_dir=False)
            self._refreshed = time.monotonic()

    def maybe_refresh(self) -> None:
        """Refresh if :data:`REFRESH_EVERY` seconds have passed since the last refresh (cheap to call)."""
        if self.path is not None and time.monotonic() - self._refreshed > REFRESH_EVERY:
            self.refresh()

    def release(self) -> None:
        """Remove the lock file (idempotent)."""
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.path = None

    def __enter__(self) -> RepositoryLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
