"""Spreading one operation's CPU-bound work over the machine's cores with forked worker processes.

The repository's hot loops (decompressing and re-hashing every object of a pack, say) are many short
calls into C. Threads overlap only the part of each call that releases the interpreter lock; the rest
of the loop waits for it, so a second thread gains little. Worker processes each have their own
interpreter: :func:`ordered_map` runs a function over items in processes forked from this one (they
inherit everything already loaded, an unlocked repository key included, so they start in milliseconds)
and yields the results in the order of the items, as ``map`` does. Its users: ``verify --read-data``
(one pack per item, :mod:`aml.backup.checker`), the backup's scan (one top-level directory per item,
:mod:`aml.backup.archiver`) and reads (a batch of files per item, :mod:`aml.backup.fileread`),
``optimize index`` (one document per item, :mod:`aml.optimize.index`) and prune's plan (one document
per item, :meth:`aml.store.FileStore.map_documents`).

It falls back to threads of this process, with the same results, where forking workers is not possible
or not useful:

* one usable CPU (:func:`usable_cpus`), or one item;
* no ``fork`` start method (not Linux or another Unix);
* this process is a daemonic :mod:`multiprocessing` process, which may not have children: a pool child
  of a prefork Celery worker is one (the worker's ``--concurrency`` processes are already how the
  operator spreads aml's tasks over the machine's cores).

At most two items per worker are handed out ahead of the result being read, so results waiting to be
read take bounded memory however many items there are.

Where the workers cannot be forked when the pool starts (``fork`` fails with ``EAGAIN`` at a process limit,
such as a container's ``pids.max``, or ``ENOMEM``), threads of this process do the work instead, with a
warning. A worker process that dies (killed, out of memory) loses no item: the items whose results had not come
back are computed again in this process (:class:`concurrent.futures.process.BrokenProcessPool` is
caught and logged). An exception raised by the function itself is re-raised here, as ``map`` does.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import BrokenExecutor, Executor, Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["MAX_PROCESSES", "PARALLEL_MIN_BYTES", "fork_workers_possible", "ordered_map", "usable_cpus",
           "worker_processes"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_R = TypeVar("_R")

MAX_PROCESSES = 4
"""At most this many worker processes, whatever the CPU count: the work is also bounded by the disk."""

PARALLEL_MIN_BYTES = 32 * 1024 * 1024
"""Work on less input than this (bytes) is done by the task's own process: starting and stopping a pool
of forked workers costs tens of milliseconds, what reading and parsing a few megabytes costs. Callers
compare their input's size with it."""


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as a container's cpuset limits it), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (not Linux)
        return max(1, os.cpu_count() or 1)


def fork_workers_possible() -> bool:
    """Whether this process can fork worker processes: the ``fork`` start method exists and this is not a
    daemonic :mod:`multiprocessing` process (those may not have children)."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return False
    return not multiprocessing.current_process().daemon


def worker_processes(workers: int, items: int) -> int:
    """How many worker processes :func:`ordered_map` forks for ``items`` items with ``workers``: 0 where it
    uses threads instead (so a caller whose work gains nothing from threads can do it itself)."""
    count = min(workers, MAX_PROCESSES, usable_cpus(), items)
    return count if count > 1 and fork_workers_possible() else 0


PR_SET_PDEATHSIG = 1
"""``prctl`` option: the signal the kernel sends this process when its parent dies (Linux, prctl(2))."""


def _die_with_parent(parent: int) -> None:
    """A worker process's first step: be killed with the process that forked it (``PR_SET_PDEATHSIG``), so a
    task killed mid-work (``SIGKILL``, a worker's time limit) leaves no worker process behind, waiting
    forever for more work and holding the task's output pipes open. Without ``prctl`` (not Linux) there is
    no such guarantee."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


@contextlib.contextmanager
def ordered_map(fn: Callable[[_T], _R], items: Sequence[_T], *, workers: int,
                processes: bool = True) -> Iterator[Iterator[_R]]:
    """Start computing ``fn(item)`` for every item, by up to ``workers`` forked processes (or threads: see
    the module docstring), and give the results in the order of ``items``.

    The work starts when the context is entered, so the caller can do something else before it reads the
    first result. Leaving the context cancels the items not yet started and waits for the running ones.

    Args:
        fn: a module-level function (or a ``functools.partial`` of one) whose arguments and result pickle.
        items: the inputs.
        workers: the most processes (or threads) to use; processes are also capped at
            :data:`MAX_PROCESSES`, the usable CPUs and the number of items.
        processes: False to use threads of this process whatever the machine (work that needs this
            process's own connections, say).

    Yields:
        An iterator of ``fn(item)``, item by item, each as soon as it (and those before it) is ready; it
        raises what ``fn`` raised, at the first item whose call raised.
    """
    count = worker_processes(workers, len(items)) if processes else 0
    pool: Executor | None = None
    futures: collections.deque[Future[_R]] = collections.deque()
    if count:
        from concurrent.futures import ProcessPoolExecutor  # here: a command that forks none does not import it

        pool = ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_die_with_parent, initargs=(os.getpid(),))
        try:
            futures.append(pool.submit(fn, items[0]))  # forks every worker (the "fork" pool starts them at once)
        except OSError as exc:  # fork(2) failed: EAGAIN at a process limit (a container's pids.max), ENOMEM
            log.warning("cannot fork worker processes (%s); threads of this process do the work", exc)
            _abandon(pool)
            pool = None
    if pool is None:
        count = max(1, min(workers, len(items)))
        pool = ThreadPoolExecutor(count, thread_name_prefix="aml-worker")
    try:
        ahead = AHEAD_PER_WORKER * count
        futures.extend(pool.submit(fn, item) for item in items[len(futures):ahead])
        yield _results(pool, fn, items, futures, ahead)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _abandon(pool: Executor) -> None:
    """Stop a process pool whose start failed half-way: the workers already forked (if any) are killed, since
    without the pool's manager thread nothing would ever tell them to exit."""
    started = dict(getattr(pool, "_processes", None) or {})  # concurrent.futures' own record of its workers
    for proc in started.values():
        proc.kill()
        proc.join()
    pool.shutdown(wait=False, cancel_futures=True)


AHEAD_PER_WORKER = 2
"""Items handed out per worker ahead of the result being read (one running, one queued)."""


def _results(pool: Executor, fn: Callable[[_T], _R], items: Sequence[_T], futures: collections.deque[Future[_R]],
             submitted: int) -> Iterator[_R]:
    """The results of ``futures`` (items ``0..submitted - 1``, in order), handing out one more item as each
    result is read. Once the pool is broken (a worker process died: its futures raise, and it takes no
    more items), the items from the first one without a result on are computed here."""
    for i in range(len(items)):
        try:
            if not futures:  # the pool refused the next item (below): it is broken
                raise BrokenExecutor("the pool no longer takes items")
            result = futures.popleft().result()
        except BrokenExecutor as exc:  # BrokenProcessPool: a worker process died
            log.warning("a worker process died (%s); the %d remaining items are computed in this process",
                        exc, len(items) - i)
            for item in items[i:]:
                yield fn(item)
            return
        if submitted < len(items):
            with contextlib.suppress(BrokenExecutor):  # a broken pool: that item is computed here, above
                futures.append(pool.submit(fn, items[submitted]))
                submitted += 1
        yield result
