"""Orphan packs (issue 11, part 5): ``verify`` reports the packs no index names (count, bytes, ages) and
``rotate`` removes those older than ``AML_BACKUP_ORPHAN_GRACE_HOURS``, never a younger one (a running
backup writes all its packs before the one index naming them).

An interrupted backup is made for real: a backup process killed with SIGKILL once its first pack is on
disk; and, where a precise age is needed, packs written exactly as the archiver writes them
(:class:`~aml.backup.pack.PackWriter`, no index), aged with ``os.utime``.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aml.backup import ORPHAN_GRACE, Repository, check, create_snapshot, list_snapshots, restore, rotate
from aml.backup.index import list_pack_ids
from aml.backup.pack import PackWriter, pack_path
from tests.backup_helpers import diff_states, make_json_store, small_repo, tree_state
from tests.fixtures_runtime import REPO, runtime_env

HOUR = 3600


def interrupted_backup_packs(repo: Repository, n_objects: int = 40, seed: int = 0) -> list[str]:
    """Write packs the way a backup does (objects not yet in the repository, zstd, fsynced), and stop
    before its index: what a backup killed mid-run leaves. Returns the pack ids."""
    rng = random.Random(seed)
    writer = PackWriter(repo.path, target_size=repo.config.pack_size, level=repo.config.compression_level)
    try:
        for _ in range(n_objects):
            data = rng.randbytes(4096)
            writer.add(hashlib.sha256(data).hexdigest(), data)
        packs = writer.flush()
    finally:
        writer.close()
    return [p.id for p in packs]


def age(repo: Repository, pack_id: str, hours: float) -> None:
    t = time.time() - hours * HOUR
    os.utime(pack_path(repo.path, pack_id), (t, t))


def test_verify_reports_orphans_and_rotate_removes_only_old_ones(tmp_path: Path) -> None:
    store = make_json_store(tmp_path / "store", agents=2, docs=5)
    repo = small_repo(tmp_path / "repo")
    snap = create_snapshot(store, repo, incremental=False)
    kept_packs = set(list_pack_ids(repo.path))
    orphans = interrupted_backup_packs(repo)
    assert len(orphans) >= 2
    old, young = orphans[0], orphans[1:]
    age(repo, old, 30)
    age(repo, young[0], 2)
    sizes = {p: os.stat(pack_path(repo.path, p)).st_size for p in orphans}

    result = check(repo)
    assert result.ok  # leftovers are warnings, not damage
    o = result.orphans
    assert o["packs"] == len(orphans) and o["bytes"] == sum(sizes.values())
    assert 30 * HOUR - 60 < o["oldest_age_seconds"] < 30 * HOUR + 60 and o["newest_age_seconds"] < 60
    assert o["removable_packs"] == 1 and o["removable_bytes"] == sizes[old]
    assert o["grace_seconds"] == ORPHAN_GRACE == 24 * HOUR
    assert {w.location for w in result.warnings if w.kind == "pack_unindexed"} == {
        f"packs/{p[:2]}/{p}" for p in orphans}

    dry = rotate(repo, dry_run=True)
    assert dry.prune is not None and dry.prune.unindexed_packs_deleted == 1 and set(list_pack_ids(repo.path)) == (
        kept_packs | set(orphans))
    done = rotate(repo)
    assert done.prune is not None
    assert done.prune.unindexed_packs_deleted == 1 and done.prune.unindexed_bytes_deleted == sizes[old]
    assert done.prune.unindexed_packs_kept == len(young)
    assert set(list_pack_ids(repo.path)) == kept_packs | set(young)
    # a shorter grace (the setting) takes the rest; the snapshot is untouched throughout
    again = rotate(repo, orphan_grace=HOUR)
    assert again.prune is not None and again.prune.unindexed_packs_deleted == 1  # the 2 h old one
    assert rotate(repo, orphan_grace=0).prune.unindexed_packs_kept == 0  # type: ignore[union-attr]
    assert set(list_pack_ids(repo.path)) == kept_packs
    after = check(repo, read_data=True)
    assert after.ok and after.orphans["packs"] == 0 and after.warnings == []
    out = tmp_path / "out"
    assert restore(repo, snap.backup_id, out).ok
    assert diff_states(tree_state(store), tree_state(out)) == []


def test_a_young_orphan_body_and_temp_file_are_kept_too(tmp_path: Path) -> None:
    store = make_json_store(tmp_path / "store", agents=1, docs=3)
    repo = small_repo(tmp_path / "repo")
    create_snapshot(store, repo, incremental=False)
    body = repo.bodies_dir / f"{'ab' * 32}.zst"  # a backup between its body and its header
    body.write_bytes(b"not yet referenced")
    temp = repo.packs_dir / "00" / ".aml-tmp-pack-being-written"
    temp.write_bytes(b"half a pack")
    res = rotate(repo)
    assert res.prune is not None and res.prune.bodies_deleted == 0 and res.prune.temp_files_deleted == 0
    assert body.exists() and temp.exists()
    for p in (body, temp):
        t = time.time() - 25 * HOUR
        os.utime(p, (t, t))
    res = rotate(repo)
    assert res.prune is not None and res.prune.bodies_deleted == 1 and res.prune.temp_files_deleted == 1
    assert not body.exists() and not temp.exists()


def test_a_killed_backup_leaves_orphans_that_verify_names(tmp_path: Path, aml_settings, monkeypatch) -> None:
    """SIGKILL a real backup process once its first pack is on disk: no snapshot, packs in no index; the
    verify task reports them; rotate keeps them within the grace period and removes them after it."""
    from tasks import backup, verify
    from workers.app import current_aml_app

    store = tmp_path / "store"
    rng = random.Random(7)
    for a in range(4):
        (store / f"agent-{a}").mkdir(parents=True)
        for n in range(800):
            (store / f"agent-{a}" / f"doc-{n:04d}.json").write_bytes(rng.randbytes(4096))  # incompressible
    repo = Repository(store.parent / "memory-backup").init(pack_size=64 * 1024)
    code = ("import sys; from aml.backup import create_snapshot\n"
            "create_snapshot(sys.argv[1], sys.argv[2], incremental=False)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", code, str(store), str(repo.path)], env=env)
        deadline = time.monotonic() + 120
        while not list_pack_ids(repo.path) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode == -signal.SIGKILL and not repo.snapshot_ids():
            break
        for p in list_pack_ids(repo.path):  # it finished before the kill: try again from nothing
            pack_path(repo.path, p).unlink()
        for sid in repo.snapshot_ids():
            (repo.snapshots_dir / f"{sid}.json").unlink()
    else:
        pytest.skip("the backup always finished before it could be killed")
    left = list_pack_ids(repo.path)
    assert left and list_snapshots(repo) == []

    report = verify.verify.apply(kwargs={"store": str(store)}, throw=True).get()
    assert report["status"] == "success"
    o = report["orphans"]
    assert o["packs"] == len(left) and o["bytes"] == sum(os.stat(pack_path(repo.path, p)).st_size for p in left)
    assert o["removable_packs"] == 0 and o["newest_age_seconds"] < 600

    rotated = backup.rotate_.apply(kwargs={"store": str(store)}, throw=True).get()
    assert rotated["prune"]["unindexed_packs_kept"] == len(left) and list_pack_ids(repo.path) == left
    # AML_BACKUP_ORPHAN_GRACE_HOURS decides: with 0 the leftovers go
    monkeypatch.setitem(current_aml_app().conf, "aml_settings", aml_settings.replace(backup_orphan_grace_hours=0.0))
    rotated = backup.rotate_.apply(kwargs={"store": str(store)}, throw=True).get()
    assert rotated["prune"]["unindexed_packs_deleted"] == len(left) and list_pack_ids(repo.path) == []
    assert verify.verify.apply(kwargs={"store": str(store)}, throw=True).get()["orphans"]["packs"] == 0


def test_cli_verify_prints_the_orphans(tmp_path: Path) -> None:
    store = make_json_store(tmp_path / "store", agents=1, docs=3)
    repo = Repository(store.parent / "memory-backup").init()
    create_snapshot(store, repo, incremental=False)
    orphans = interrupted_backup_packs(repo, n_objects=8)
    age(repo, orphans[0], 48)
    env = runtime_env(tmp_path / "home", "redis://127.0.0.1:1/0")
    env["AML_LOCK_URL"] = "none://"
    out = subprocess.run([sys.executable, "-m", "cli.main", str(store), "backup", "verify"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"orphan packs: {len(orphans)} in no index" in out.stdout, out.stdout
    assert "1 (" in out.stdout and "older than 24 h" in out.stdout
