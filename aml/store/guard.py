"""The write guard: a process-wide check every store write makes just before it commits.

A destructive operation holds its store's lock as a lease that must be renewed (``workers.locks``).
If the lease is lost (the lock expired, another process took it, Redis stopped answering for longer
than the lease), the lock's holder calls :func:`revoke` and the next store write raises
:class:`WriteRevoked` instead of committing, so two processes never write one store at once.
The engine stays free of Celery and Redis: it only asks this module.

The guard is process-wide, not per-thread (writers may use worker threads): aml runs one
destructive operation per process (a prefork pool child, or the CLI).
"""

from __future__ import annotations

import threading

__all__ = ["WriteRevoked", "check_write", "guarded", "revoke"]


class WriteRevoked(RuntimeError):
    """The store's lock was lost: no further write may commit in this operation."""


_state = threading.Lock()
_revoked: str | None = None
_depth = 0


def check_write() -> None:
    """Raise :class:`WriteRevoked` if the current operation's lock was lost; otherwise return.

    Called by :func:`aml.store.atomic.atomic_open` before it renames a new file into place, and by the
    other writers of a store (restore, migrate rollback) before each rename or unlink.
    """
    reason = _revoked
    if reason is not None:
        raise WriteRevoked(f"store writes stopped: {reason}")


def revoke(reason: str) -> None:
    """Stop every later write of the operation in progress (``reason`` is named in the error)."""
    global _revoked
    with _state:
        if _depth > 0:
            _revoked = reason


class guarded:
    """Context manager marking an operation under a lock: :func:`revoke` applies inside it only;
    leaving the outermost block clears a revocation."""

    def __enter__(self) -> guarded:
        global _depth
        with _state:
            _depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        global _depth, _revoked
        with _state:
            _depth -= 1
            if _depth == 0:
                _revoked = None
