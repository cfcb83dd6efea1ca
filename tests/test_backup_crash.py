"""A backup killed with SIGKILL at any moment never leaves a visible broken snapshot."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aml.backup import check, create_snapshot, list_snapshots, prune_unreferenced, restore
from tests.backup_helpers import diff_states, make_json_store, mutate, small_repo, tree_state

ROOT = Path(__file__).resolve().parents[1]
CHILD = (  # says "R" once imported, so that kills land in the backup itself, not in interpreter start-up
    "import sys\n"
    "from aml.backup import create_snapshot\n"
    "sys.stdout.write('R'); sys.stdout.flush()\n"
    "create_snapshot(sys.argv[1], sys.argv[2], incremental=sys.argv[3] == '1')\n"
)


def _start(store: Path, repo: Path, incremental: bool, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a backup child and return once it has imported aml and is about to back up."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(store), str(repo), "1" if incremental else "0"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.read(1) == b"R"
    return proc


@pytest.mark.slow
def test_sigkill_during_backup_never_leaves_a_broken_snapshot(tmp_path: Path) -> None:
    store = make_json_store(tmp_path / "store", agents=6, docs=60, seed=5)
    repo = small_repo(tmp_path / "repo", pack_size=4 * 1024)  # many packs per run: kills land between them
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    deadline = time.monotonic() + 45
    # how long does an uninterrupted backup take (after start-up)?
    proc = _start(store, repo.path, False, env)
    t0 = time.monotonic()
    assert proc.wait() == 0
    duration = time.monotonic() - t0
    mutate(store, 0.3, seed=99)
    kills = completed = torn = 0
    leftovers: set[str] = set()
    for i in range(20):
        if time.monotonic() > deadline:
            break
        proc = _start(store, repo.path, bool(i % 3), env)
        time.sleep(rng.uniform(0.0, 0.6) * duration)  # incrementals are shorter than the full run timed
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        _, err = proc.communicate()
        if proc.returncode == 0:
            completed += 1
        else:
            assert proc.returncode == -signal.SIGKILL, err.decode()

        # every listed snapshot passes a full read-back check (interrupted runs leave only warnings)
        listed = [s.backup_id for s in list_snapshots(repo) if not s.legacy]
        result = check(repo, read_data=True)
        assert result.ok, (i, listed, [p.to_dict() for p in result.errors])
        assert {w.kind for w in result.warnings} <= {"pack_unindexed", "body_unreferenced"}
        now_left = {w.location for w in result.warnings}
        torn += bool(now_left - leftovers)  # this kill left a pack (or body) no snapshot references
        leftovers = now_left
        mutate(store, 0.3, seed=i)
    assert kills >= 10, f"only {kills} kills: the child finished too fast to test anything"
    assert torn >= 1, "no kill landed between a pack write and its snapshot: the test proved nothing"

    # the next backup succeeds, prune cleans the leftovers, and the result restores exactly
    final = create_snapshot(store, repo, incremental=True)
    pr = prune_unreferenced(repo, orphan_grace=0)  # no backup runs now: its leftovers may go at once
    assert pr.packs_after <= pr.packs_before
    result = check(repo, read_data=True)
    assert result.ok and result.warnings == [], result.to_dict()
    out = tmp_path / "out"
    assert restore(repo, final.backup_id, out).ok
    assert diff_states(tree_state(store), tree_state(out)) == []
