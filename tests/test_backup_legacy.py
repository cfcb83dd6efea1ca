"""Point-in-time resolution, and Loom's own backups (Python full/incr, TypeScript tar.gz) from real data."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import tarfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from aml.backup import (
    CorruptionError,
    Repository,
    SnapshotNotFound,
    check,
    create_snapshot,
    find_legacy,
    list_snapshots,
    resolve_at,
    restore,
)
from tests.backup_helpers import diff_states, flip_byte, make_json_store, mutate, small_repo, tree_state
from tests.realdata import extract_loom

PY_FULL, PY_INCR = "full_20261122_104819", "incr_20261122_104825"
TS_ID = "backup-1795344336419-1dxcmnov8"


def test_point_in_time_picks_the_newest_snapshot_at_or_before(tmp_path: Path) -> None:
    store = make_json_store(tmp_path / "store", agents=2, docs=5)
    repo = small_repo(tmp_path / "repo")
    times = [datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, 12, tzinfo=UTC)]
    ids, states = [], []
    for i, t in enumerate(times):
        if i:
            mutate(store, 0.5, seed=i)
        ids.append(create_snapshot(store, repo, incremental=True, snapshot_time=t).backup_id)
        states.append(tree_state(store))
    assert ids == ["full_20260101_000000", "incr_20260201_000000", "incr_20260301_120000"]

    with pytest.raises(SnapshotNotFound):
        resolve_at(repo, times[0] - timedelta(microseconds=1))
    expectations: list[tuple[datetime | str, int]] = [
        (times[0], 0),
        (times[0] + timedelta(days=10), 0),
        (times[1] - timedelta(seconds=1), 0),
        (times[1], 1),
        (datetime(2026, 2, 15), 1),  # naive: UTC
        ("2026-03-01T13:00:00+02:00", 1),  # 11:00 UTC, before the third
        ("2026-03-01T12:00:00Z", 2),
        (datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=-5))), 2),
    ]
    for when, k in expectations:
        assert resolve_at(repo, when) == ids[k], when
    out = tmp_path / "out"
    assert restore(repo, resolve_at(repo, "2026-02-20T00:00:00Z"), out).ok
    assert diff_states(states[1], tree_state(out)) == []


@pytest.fixture
def pyops(tmp_path: Path) -> Path:
    return extract_loom("loom-plain-v1.0-pyops", tmp_path / "project")


def _gz_contents(backup_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(backup_dir))[:-3]: gzip.decompress(p.read_bytes()) for p in sorted(backup_dir.rglob("*.gz"))
    }


def test_python_backups_are_listed(pyops: Path) -> None:
    repo = Repository.for_store(pyops)
    snaps = {s.backup_id: s for s in list_snapshots(repo)}
    assert set(snaps) == {PY_FULL, PY_INCR}
    full, incr = snaps[PY_FULL], snaps[PY_INCR]
    assert full.legacy and full.legacy_origin == "python" and full.backup_type == "full"
    assert full.time == datetime(2026, 11, 22, 10, 48, 19, 384477, tzinfo=UTC)
    assert full.file_count == 13 and "audit" in full.agents
    assert incr.backup_type == "incremental" and incr.parent_backup_id == PY_FULL and incr.file_count == 2
    assert resolve_at(repo, "2026-11-22T10:48:20Z") == PY_FULL
    assert resolve_at(repo, "2026-11-23T00:00:00Z") == PY_INCR


def test_python_backups_restore_their_contents(pyops: Path, tmp_path: Path) -> None:
    repo = Repository.for_store(pyops)
    meta = {b["backup_id"]: b for b in json.loads((repo.path / "backup_metadata.json").read_text())["backups"]}

    out = tmp_path / "full"
    res = restore(repo, PY_FULL, out)
    assert res.ok and res.legacy and res.files_written == 13
    full_files = _gz_contents(repo.path / PY_FULL)
    restored = {k: v[1] or b"" for k, v in tree_state(out).items() if v[0] == "f"}
    assert restored == full_files
    assert {k: hashlib.sha256(v).hexdigest() for k, v in restored.items()} == meta[PY_FULL]["checksums"]
    assert (out / "audit").is_dir()  # the empty agent directory of the backup

    out = tmp_path / "incr"  # the incremental is applied on top of its parent
    assert restore(repo, PY_INCR, out).ok
    restored = {k: v[1] or b"" for k, v in tree_state(out).items() if v[0] == "f"}
    assert restored == {**full_files, **_gz_contents(repo.path / PY_INCR)}
    for rel, digest in meta[PY_INCR]["checksums"].items():
        assert hashlib.sha256(restored[rel]).hexdigest() == digest
    # nothing touched those files after the incremental: it matches the live store exactly
    for rel, content in restored.items():
        assert (pyops / rel).read_bytes() == content, rel


def test_exact_python_restore_only_touches_what_the_scripts_covered(pyops: Path, tmp_path: Path) -> None:
    repo = Repository.for_store(pyops)
    live = tmp_path / "live"
    shutil.copytree(pyops, live, symlinks=True)
    (live / "debugger" / "notes.txt").write_text("not covered by the scripts")
    (live / "debugger" / "metrics.json").write_text("{}")  # covered name, not in the backup
    before = tree_state(live)
    res = restore(repo, PY_FULL, live)
    assert res.ok
    assert res.removed == ["debugger/metrics.json"]
    assert sorted(res.changed) == ["debugger/patterns.json", "frontend-developer/patterns.json"]
    after = tree_state(live)
    for untouched in ("README.md", "config.json", "monitoring/health.json", "debugger/notes.txt"):
        assert after[untouched] == before[untouched]
    assert any(p.startswith("backup/code-reviewer-") for p in after)


def test_typescript_backup_is_listed_and_restores_byte_for_byte(tmp_path: Path) -> None:
    store = extract_loom("loom-gzip-v1.0", tmp_path / "project")
    repo = Repository.for_store(store)
    [ts] = list_snapshots(repo)
    assert ts.backup_id == TS_ID and ts.legacy and ts.legacy_origin == "typescript"
    assert ts.time == datetime(2026, 11, 22, 10, 45, 36, 419000, tzinfo=UTC)
    assert "global" in ts.agents

    out = tmp_path / "out"
    res = restore(repo, TS_ID, out)
    assert res.ok and res.files_written == 13
    expected = tmp_path / "expected"
    expected.mkdir()
    with tarfile.open(repo.path / f"{TS_ID}.tar.gz") as tar:
        tar.extractall(expected, filter="data")
    assert diff_states(tree_state(expected), tree_state(out)) == []
    assert (out / "debugger" / "patterns.json").read_bytes()[:2] == b"\x1f\x8b"  # gzip under .json, as stored

    # the repository can be initialised next to the legacy backup; both are listed; check covers both
    repo.init()
    native = create_snapshot(store, repo, incremental=False)
    assert [s.backup_id for s in list_snapshots(repo)] == [TS_ID, native.backup_id]
    assert check(repo, read_data=True).ok
    [legacy] = find_legacy(repo)
    flip_byte(legacy.location, 1000)
    result = check(repo, read_data=True)
    assert [p.kind for p in result.errors] == ["legacy"] and result.errors[0].snapshots == [TS_ID]
    with pytest.raises(CorruptionError):
        restore(repo, TS_ID, tmp_path / "out2")


def test_legacy_only_folder_can_be_checked(pyops: Path) -> None:
    repo = Repository.for_store(pyops)
    assert not repo.is_initialized()
    result = check(repo, read_data=True)
    assert result.ok and result.snapshots_checked == 2
    flip_byte(repo.path / PY_INCR / "debugger" / "patterns.json.gz", 200)
    result = check(repo, read_data=True)
    assert [p.snapshots for p in result.errors] == [[PY_INCR]]
    assert "debugger/patterns.json" in result.errors[0].message
    with pytest.raises(CorruptionError):
        restore(repo, PY_INCR, pyops.parent / "out")
    assert restore(repo, PY_FULL, pyops.parent / "out").ok
