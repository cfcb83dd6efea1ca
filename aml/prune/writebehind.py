"""Writing beside the work: prune undo's write-behind, and prune's one write-ahead thread.

Undo rewrites a store's documents one at a time. A document's write (its new bytes, their fsync, the rename, the
directory's fsync) mostly waits on the disk, while the next document's work (its rows read from the catalog, its
text read, its records found) is the process's own, so running the two side by side takes about the longer of them
instead of their sum (issue 12: undo of 27,394 records in 24 documents, 1.25-1.39 s before, 1.06-1.16 s after,
interleaved runs).

:class:`WriteBehind` keeps exactly one write in flight: :meth:`WriteBehind.submit` first waits for the one before
(and raises its error, if any, instead of starting another), so documents are still published in order, one at
a time, and a failed write stops the run before the next document is touched. What a write did is handed to its
``on_done`` callback, in the caller's thread, only once the write has succeeded.

Prune's apply does not write behind: each document's publication already waits on its write-ahead (the catalog's
rows), the longest step, and the machine's cores are already busy with it and the workers that locate the next
documents; a write-behind apply measured no faster (medians 1.74 s against 1.83 s, five interleaved runs each). It
runs its write-ahead in a :class:`OneThread`, started once per run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Generic, TypeVar

__all__ = ["OneThread", "WriteBehind"]

log = logging.getLogger(__name__)

C = TypeVar("C")
R = TypeVar("R")


class OneThread:
    """One worker thread for a run, started on first use; where no thread can be started (a process limit such as a
    container's ``pids.max``: CPython raises ``RuntimeError``), :meth:`submit` says so once, and the caller runs
    every job itself for the rest of the run.

    A failed start leaves the job it was for queued in the executor: it is cancelled there and then, so that a
    thread started later could never run it a second time.

    Args:
        name: the thread's name (prefix), seen in logs and profiles.
        what: what the thread does, for the warning (``"the writes"``).
    """

    def __init__(self, name: str, what: str) -> None:
        self._name, self._what = name, what
        self._pool: ThreadPoolExecutor | None = None
        self._inline = False

    def submit(self, job: Callable[[], R]) -> Future[R] | None:
        """Start ``job`` in the thread (queued behind the one running); ``None``: no thread, run it yourself."""
        if self._inline:
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        try:
            return self._pool.submit(job)
        except RuntimeError as exc:  # "can't start new thread": the job stays queued, never to run
            log.warning("%s: no thread for %s (%s); they run in the task's thread", self._name, self._what, exc)
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool, self._inline = None, True
            return None

    def close(self) -> None:
        """Wait for the jobs started and stop the thread."""
        if self._pool is not None:
            self._pool.shutdown()


class WriteBehind(Generic[C, R]):
    """Runs write jobs in one thread of its own, one at a time, each while the caller prepares the next.

    Args:
        thread_name: the thread's name (prefix), seen in logs and profiles.
        on_done: called in the caller's thread with a job's context and result once the job has succeeded.

    Attributes:
        failed: the label of the job whose error :meth:`wait` (or :meth:`submit`) raised last, else ``None``.

    Use as a context manager. Leaving the block normally waits for the last job (raising its error); leaving it
    with an error waits for the job in flight too (nothing is written once the caller has gone on), hands a
    success to ``on_done`` and logs a failure, so that the error on its way up is the one reported. When no thread
    can be started (a process limit such as a container's ``pids.max``), jobs run in the caller's thread.
    """

    def __init__(self, thread_name: str, on_done: Callable[[C, R], None]) -> None:
        self._name = thread_name
        self._on_done = on_done
        self._thread = OneThread(thread_name, "the writes")
        self._pending: tuple[str, C, Future[R]] | None = None
        self.failed: str | None = None

    def __enter__(self) -> WriteBehind[C, R]:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if kind is None:
                self.wait()
            elif self._pending is not None:
                label, context, future = self._pending
                self._pending = None
                error = future.exception()  # waits for it
                if error is None:
                    self._on_done(context, future.result())
                else:
                    log.error("%s: writing %s failed as well: %s: %s", self._name, label, type(error).__name__, error)
        finally:
            self._thread.close()

    def submit(self, label: str, job: Callable[[], R], context: C) -> None:
        """Wait for the job in flight (:meth:`wait`: its error is raised here, and ``job`` never runs), then start
        ``job`` (``label`` names it in errors and logs; ``context`` goes to ``on_done`` with its result)."""
        self.wait()
        started = self._thread.submit(job)
        if started is not None:
            self._pending = (label, context, started)
            return
        try:
            result = job()
        except BaseException:
            self.failed = label
            raise
        self._on_done(context, result)

    def wait(self) -> None:
        """Wait for the job in flight, if any: on success hand it to ``on_done``; else raise its error (and set
        :attr:`failed`)."""
        if self._pending is None:
            return
        label, context, future = self._pending
        self._pending = None
        try:
            result = future.result()
        except BaseException:
            self.failed = label
            raise
        self._on_done(context, result)
