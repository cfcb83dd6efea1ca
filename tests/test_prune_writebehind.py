"""aml.prune.writebehind: one write in flight, in order, its outcome recorded in the caller's thread."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

import aml.prune.writebehind as writebehind_module
from aml.prune.writebehind import WriteBehind


def _job(n: int, log: list[str], *, seconds: float = 0.02, fail: bool = False) -> int:
    log.append(f"start {n} {threading.current_thread().name}")
    time.sleep(seconds)
    log.append(f"end {n}")
    if fail:
        raise OSError(28, f"No space left on device ({n})")
    return n * 10


def test_jobs_run_one_at_a_time_in_order_in_a_thread_and_are_recorded_here() -> None:
    log: list[str] = []
    done: list[tuple[str, int, str]] = []
    with WriteBehind[str, int]("aml-test-write", lambda c, r: done.append((c, r, threading.current_thread().name))
                               ) as writes:
        for n in range(3):
            writes.submit(f"doc{n}", lambda n=n: _job(n, log), f"doc{n}")  # type: ignore[misc]
            log.append(f"submitted {n}")
    assert [entry.split()[0] + " " + entry.split()[1] for entry in log if not entry.startswith("submitted")] == [
        "start 0", "end 0", "start 1", "end 1", "start 2", "end 2"]
    assert all("aml-test-write" in entry for entry in log if entry.startswith("start"))
    assert log.index("submitted 0") < log.index("end 0"), "the caller went on while the job ran"
    main = threading.main_thread().name
    assert done == [("doc0", 0, main), ("doc1", 10, main), ("doc2", 20, main)]


def test_a_failed_job_is_raised_at_the_next_submit_which_never_runs() -> None:
    log: list[str] = []
    done: list[str] = []
    with pytest.raises(OSError, match=r"\(0\)"), WriteBehind[str, int]("aml-test-write",
                                                                      lambda c, r: done.append(c)) as writes:
        writes.submit("doc0", lambda: _job(0, log, fail=True), "doc0")
        try:
            writes.submit("doc1", lambda: _job(1, log), "doc1")
        finally:
            assert writes.failed == "doc0"
    assert done == [] and not any(entry.startswith("start 1") for entry in log)


@pytest.mark.parametrize("fails", [False, True])
def test_leaving_with_an_error_waits_for_the_write_in_flight(caplog: pytest.LogCaptureFixture, fails: bool) -> None:
    """A success still in flight is recorded; a failure is logged beside the error on its way up."""
    log: list[str] = []
    done: list[str] = []
    with pytest.raises(KeyError), WriteBehind[str, int]("aml-test-write", lambda c, r: done.append(c)) as writes:
        writes.submit("doc0", lambda: _job(0, log, seconds=0.2, fail=fails), "doc0")
        raise KeyError("the caller's own error")
    assert log[-1] == "end 0", "waited for"
    assert done == ([] if fails else ["doc0"])
    assert ("writing doc0 failed as well: OSError" in caplog.text) == fails


def test_without_a_thread_jobs_run_in_the_callers_thread(monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    class NoThreads(concurrent.futures.ThreadPoolExecutor):
        def _adjust_thread_count(self) -> None:
            raise RuntimeError("can't start new thread")

    monkeypatch.setattr(writebehind_module, "ThreadPoolExecutor", NoThreads)
    log: list[str] = []
    done: list[int] = []
    with WriteBehind[str, int]("aml-test-write", lambda c, r: done.append(r)) as writes:
        writes.submit("doc0", lambda: _job(0, log), "doc0")
        writes.submit("doc1", lambda: _job(1, log), "doc1")
        with pytest.raises(OSError):
            writes.submit("doc2", lambda: _job(2, log, fail=True), "doc2")
        assert writes.failed == "doc2"
    assert done == [0, 10]
    assert all(threading.main_thread().name in entry for entry in log if entry.startswith("start"))
    assert caplog.text.count("no thread for the writes") == 1
