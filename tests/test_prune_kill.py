"""A prune killed at random moments (SIGKILL) leaves every document as before or as after, never torn,
and the pre-prune snapshot restorable."""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

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
