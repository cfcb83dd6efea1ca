"""Python's cyclic garbage collector paused around work that makes objects by the million and no cycles.

Parsed JSON, record views, spans, index rows and a snapshot's entries hold no reference cycles, so the
collector's full passes, which the sheer number of objects of a large document (or of a 100,000-file store)
triggers, only cost time: about a quarter of ``monitor health`` and ``optimize index`` and 40 % of a prune or an
undo on a 75,000-record store, a seventh to a fifth of an incremental backup and of a verify of 100,000 files
(issues 11 and 12). Reference counting still frees every object as soon as it is unused.

A one-shot ``aml`` process also pauses it while it imports (:func:`pause_for_startup`).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic collector off for the block, and back on after it (whatever happens in the block) if it was on.

    The switch is process-wide: other threads run without cycle collection meanwhile (cycles they make are
    collected after the block)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_startup = {"paused": False}


def pause_for_startup() -> None:
    """Turn the cyclic collector off while a command-line process imports what it runs.

    A CLI run imports Celery, SQLAlchemy, pydantic and aml's engines (some 400,000 objects, none of them garbage),
    and the collector's full passes over that growing heap cost 0.15-0.2 s of a ``monitor health`` (issue 12:
    0.86 -> 0.73 s on a small store). :func:`end_startup` turns it back on once what the command runs is imported:
    as an operation's body begins (``tasks.base.run_operation``), as a task is enqueued, as a repository is opened,
    or as the command ends.
    For a process's entry point only (the ``aml`` console script), never in a worker or a test process."""
    if gc.isenabled():
        gc.disable()
        _startup["paused"] = True


def end_startup() -> None:
    """End :func:`pause_for_startup`: the objects made so far (modules, classes, the app) are moved to the
    collector's permanent generation (:func:`gc.freeze`: later full passes no longer walk them) and the collector
    is turned back on. Does nothing when the start-up was not paused, or was already ended."""
    if _startup["paused"]:
        _startup["paused"] = False
        gc.freeze()
        gc.enable()


def exiting() -> None:
    """Spare the interpreter's last full collection the objects still alive when a one-shot process ends.

    CPython collects cycles once more while it shuts down, the collector on or off, walking every object still
    tracked; after :func:`gc.freeze` it walks none of them (the process's memory goes back to the system as it
    exits either way). The young generations are collected first (cheap), so the cycles the command's last work
    left are finalized as before. The trade-off: an older cycle's finalizers (``__del__``, a generator's
    ``finally``) no longer run at exit. aml has none; its writes are complete (fsync, rename, commit) before a
    command returns, and files and connections are closed by reference counting or at interpreter shutdown. For a
    process's entry point, as it ends (the ``aml`` console script)."""
    gc.collect(1)
    gc.freeze()
