"""A prune killed at random moments (SIGKILL) leaves every document as before or as after, never torn,
and the pre-prune snapshot restorable; a prune crashed (in process) at any write, then run again under the
same task id or not, leaves one undo row per record it removed, so ``prune undo`` gives the store back."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest

from aml.backup import Repository, restore
from aml.store import TMP_PREFIX
from tests.fixtures_runtime import REPO
from tests.realdata import extract_loom

ITERATIONS = 15

SCRIPT = r"""
import sys
from datetime import UTC, datetime
from pathlib import Path

from aml.backup import create_snapshot
from aml.prune import PruneConfig, apply_plan, build_plan

root, repo = Path(sys.argv[1]), Path(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()  # "go": the parent starts the clock here (imports are done)
config = PruneConfig(now=datetime(2026, 11, 23, tzinfo=UTC), agent_limit_mib=0.1)
plan = build_plan(root, config, ["time_based", "performance_based", "space_based"])
snapshot = create_snapshot(root, repo, incremental=True, tags=["pre-prune"])
print("snapshot", snapshot.backup_id, flush=True)
result = apply_plan(plan, run_id="killed", archive_root=repo / "archives")
print("done", len(result.applied), flush=True)
"""


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def spawn(root: Path, repo: Path) -> subprocess.Popen[str]:
    """Start the pruning process; it imports, says ``ready`` and waits for ``go`` on stdin."""
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(root), str(repo)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def go(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.stdin.write("go\n")
    proc.stdin.flush()


@pytest.mark.slow
def test_sigkill_at_random_moments_never_tears_a_document(tmp_path: Path) -> None:
    base = extract_loom("loom-gzip-v1.0", tmp_path / "base")
    shutil.rmtree(base.parent / "memory-backup")  # the repository gets created by the run itself
    before = files(base)

    # one complete run gives the "after" state and how long the work takes (imports excluded)
    ref = tmp_path / "ref" / "memory"
    shutil.copytree(base, ref)
    proc = spawn(ref, tmp_path / "ref" / "repo")
    go(proc)
    t0 = time.monotonic()
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("snapshot")
    snapshot_s = time.monotonic() - t0
    assert proc.stdout.readline().startswith("done")
    apply_s = time.monotonic() - t0 - snapshot_s
    assert proc.wait(timeout=60) == 0
    after = files(ref)
    changed = {k for k in before if after[k] != before[k]}
    assert changed, "the run changes documents"

    def prepare(n: int) -> tuple[Path, subprocess.Popen[str]]:
        work = tmp_path / f"k{n}"
        shutil.copytree(base, work / "memory")
        return work, spawn(work / "memory", work / "repo")

    rng = random.Random(20261123)
    outcomes = {"before": 0, "after": 0, "partial": 0}
    pending = prepare(0)
    for n in range(ITERATIONS):
        work, proc = pending
        root, repo = work / "memory", work / "repo"
        go(proc)
        if n % 3 == 0:  # somewhere while planning or taking the snapshot
            time.sleep(rng.uniform(0, snapshot_s))
        else:  # somewhere while rewriting (or just after)
            assert proc.stdout is not None
            proc.stdout.readline()
            time.sleep(rng.uniform(0, apply_s * 1.2))
        proc.kill()
        proc.wait(timeout=30)
        if n + 1 < ITERATIONS:
            pending = prepare(n + 1)  # its imports overlap with the checks below
        now = files(root)
        leftovers = set(now) - set(before)
        assert all(Path(p).name.startswith(TMP_PREFIX) for p in leftovers), leftovers
        assert set(before) <= set(now), "no document disappears"
        done = set()
        for rel in before:
            assert now[rel] in (before[rel], after[rel]), f"iteration {n}: {rel} is torn"
            if rel in changed and now[rel] == after[rel]:
                done.add(rel)
        outcomes["before" if not done else "after" if done == changed else "partial"] += 1
        # a decision is never lost: a rewritten decisions.json implies its archive file is complete
        for rel in done:
            if rel.endswith("decisions.json"):
                agent = rel.split("/")[0]
                archived = json.loads(gzip.decompress((repo / "archives" / agent / "decisions_killed.json.gz")
                                                      .read_bytes()))
                kept = {d["id"] for d in json.loads(gzip.decompress(now[rel]))}
                original = {d["id"] for d in json.loads(gzip.decompress(before[rel]))}
                assert original == kept | {d["id"] for d in archived}
        # the pre-prune snapshot, once it exists, restores the store as it was
        snapshots = Repository(repo).snapshot_ids() if (repo / "config.json").exists() else []
        if snapshots:
            target = work / "restored"
            restore(Repository(repo), snapshots[-1], target)
            assert files(target) == before
        else:
            assert not done, "documents are rewritten only after the snapshot exists"
        shutil.rmtree(work)
    print(f"prune kill test: {outcomes} over {ITERATIONS} kills (plan + snapshot {snapshot_s:.2f} s, "
          f"rewrites {apply_s:.2f} s)")
    assert outcomes["partial"] + outcomes["after"] > 0, "some kills land after rewrites began"


# -- in process: a crash at any write, the same task id run again, then undo ---------------------------------

NOW = "2026-11-23T00:00:00Z"
STRATEGIES = ["time_based", "performance_based", "space_based"]


class Crash(BaseException):
    """What SIGKILL does to the running task, in process: no ``except Exception`` catches it, so nothing
    after the crash point runs (no catalog row written later, no task run finished, no cleanup)."""


def crash_at(monkeypatch: pytest.MonkeyPatch, n: int, when: str,
             error: Callable[[str], BaseException] = Crash) -> list[str]:
    """Make the prune crash once (raise ``error(message)``), at its ``n``-th atomic write (archives and
    documents, in order), ``before`` the write (the file is untouched) or ``after`` it (the file is
    published). Returns the paths written until the crash; later writes are not counted."""
    import aml.prune.apply
    import aml.prune.archive
    from aml.store import atomic

    written: list[str] = []
    crashed: list[bool] = []

    def write(path: Path, data: bytes, **kwargs: object) -> None:
        if crashed:
            atomic.atomic_write(path, data, **kwargs)  # type: ignore[arg-type]
            return
        if len(written) == n and when == "before":
            crashed.append(True)
            raise error(f"killed before writing {path}")
        atomic.atomic_write(path, data, **kwargs)  # type: ignore[arg-type]
        written.append(str(path))
        if len(written) == n + 1 and when == "after":
            crashed.append(True)
            raise error(f"killed after writing {path}")

    @contextlib.contextmanager
    def opened(path: Path, **kwargs: Any) -> Iterator[BinaryIO]:
        # a document: its bytes are written and its rows written ahead inside the block; "before" dies
        # after that, before the rename (the file untouched), "after" once the file is published
        if not crashed and len(written) == n and when == "before":
            with tempfile.TemporaryFile() as scratch:  # a real file: the bytes are synced inside the block
                yield cast(BinaryIO, scratch)
            crashed.append(True)
            raise error(f"killed before writing {path}")
        with atomic.atomic_open(path, **kwargs) as fh:
            yield fh
        if crashed:
            return
        written.append(str(path))
        if len(written) == n + 1 and when == "after":
            crashed.append(True)
            raise error(f"killed after writing {path}")

    monkeypatch.setattr(aml.prune.apply, "atomic_open", opened)
    monkeypatch.setattr(aml.prune.archive, "atomic_write", write)
    return written


def record_keys(store: Path) -> set[tuple[str, str]]:
    """``(document, record id)`` of every record in the store's Loom collections."""
    out = set()
    for path in sorted(store.rglob("*.json")):
        raw = path.read_bytes()
        doc = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
        if isinstance(doc, list):
            rel = path.relative_to(store).as_posix()
            out |= {(rel, str(i["id"])) for i in doc if isinstance(i, dict) and "id" in i}
    return out


@pytest.mark.parametrize(("n", "when", "rerun"), [
    (0, "after", True),    # the first decisions archived, its document not rewritten
    (1, "before", True),   # the first document's rows written ahead, the document not rewritten
    (6, "after", True),    # four documents rewritten (the fleet test's case: the records they lost need rows)
    (6, "before", False),  # never run again: undo works from the killed attempt's rows alone
    (9, "after", False),
])
def test_crash_at_any_write_then_same_task_id_again_then_undo_is_exact(
        tmp_path: Path, aml_settings: object, monkeypatch: pytest.MonkeyPatch, n: int, when: str,
        rerun: bool) -> None:
    """A prune that dies at any write leaves rows for every record it removed (written ahead of each
    document's rewrite); the redelivered attempt (same task id) keeps them, drops the rows of a rewrite
    that never happened, and prunes the rest; ``prune undo`` then gives back the original bytes."""
    from models import queries
    from tasks import prune
    from workers.catalog import session_scope

    store = extract_loom("loom-gzip-v1.0", tmp_path)
    before = files(store)
    keys_before = record_keys(store)
    kwargs = {"store": str(store), "strategies": STRATEGIES, "now": NOW, "overrides": {"agent_limit_mib": 0.02}}
    run_id = f"killed-{n}-{when}"
    written = crash_at(monkeypatch, n, when)
    with pytest.raises(Crash):
        prune.run.apply(kwargs=kwargs, task_id=run_id, throw=True)
    assert len(written) == n + (when == "after")
    gone = keys_before - record_keys(store)
    if n >= 2:
        assert gone, "the killed attempt removed records"

    def rows() -> set[tuple[str, str]]:
        with session_scope(aml_settings.catalog_url) as session:  # type: ignore[attr-defined]
            found = [(r.document_path, r.record_id) for r in queries.prune_actions_for_run(session, run_id)]
        assert len(found) == len(set(found)), "one row per record"
        return set(found)

    ahead = rows()
    assert gone <= ahead, "every record the killed attempt removed has its row"
    if when == "before" and n in (1, 6):  # killed between a document's rows and its rewrite
        assert ahead - gone, "rows written ahead for records still in the store"
    if rerun:
        result = prune.run.apply(kwargs=kwargs, task_id=run_id, throw=True).get()
        assert result["status"] == "success", result
        resumed = {"kept": len(gone), "dropped": len(ahead - gone)}
        gone = keys_before - record_keys(store)
        assert rows() == gone, "the run owns exactly the records gone from the store, each once"
    undone = prune.undo.apply(kwargs={"store": str(store), "run_id": run_id}, throw=True).get()
    assert undone["status"] == "success" and not undone["failed"], undone
    assert undone["restored"] == len(gone)
    assert files(store) == before, "every record back, byte for byte"
    if rerun:  # the redelivered attempt adopted the killed one's removals and dropped its unpublished rows
        assert result["resumed"] == (resumed if any(resumed.values()) else None)
    archives = store.parent / "memory-backup" / "archives"
    assert not list(archives.rglob(f"decisions_{run_id}.json.gz")), "restored decisions leave the archive"


@pytest.mark.parametrize("when", ["before", "after"])
def test_failed_document_write_keeps_exactly_the_rows_of_removed_records(
        tmp_path: Path, aml_settings: object, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """A write that fails (disk full before the rename; or the directory's fsync after it, the document
    replaced all the same) stops the run: the rows written ahead for that document are kept if and only
    if its records left it, and undo is exact."""
    from models import queries
    from tasks import prune
    from workers.catalog import session_scope

    store = extract_loom("loom-gzip-v1.0", tmp_path)
    before = files(store)
    keys_before = record_keys(store)
    crash_at(monkeypatch, 6, when, lambda message: OSError(28, "No space left on device"))
    result = prune.run.apply(kwargs={"store": str(store), "strategies": STRATEGIES, "now": NOW,
                                     "overrides": {"agent_limit_mib": 0.02}}, throw=True).get()
    assert result["status"] == "failure" and "No space left" in result["error"], result
    gone = keys_before - record_keys(store)
    with session_scope(aml_settings.catalog_url) as session:  # type: ignore[attr-defined]
        rows = [(r.document_path, r.record_id) for r in queries.prune_actions_for_run(session, result["run_id"])]
    assert len(rows) == len(set(rows)) and set(rows) == gone
    assert ("debugger/patterns.json" in {d for d, _ in gone}) == (when == "after")
    undone = prune.undo.apply(kwargs={"store": str(store), "run_id": result["run_id"]}, throw=True).get()
    assert undone["restored"] == len(gone) and not undone["failed"], undone
    assert files(store) == before
