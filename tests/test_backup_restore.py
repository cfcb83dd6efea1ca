"""Restore: scope, exactness, dry runs, and never writing outside the target."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import zstandard

from aml.backup import (
    BackupError,
    Repository,
    UnsafePathError,
    create_snapshot,
    load_manifest,
    restore,
    write_manifest,
)
from aml.backup._common import canonical_json
from aml.backup.manifest import Manifest
from tests.backup_helpers import diff_states, make_json_store, small_repo, tree_state


@pytest.fixture
def snap(tmp_path: Path) -> tuple[Path, Repository, str]:
    store = make_json_store(tmp_path / "store", agents=3, docs=6)
    repo = small_repo(tmp_path / "repo")
    return store, repo, create_snapshot(store, repo, incremental=False).backup_id


def _outside(tmp_path: Path) -> tuple[Path, dict[str, tuple[str, bytes | None, int, int]]]:
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "victim.txt").write_text("must survive")
    return outside, tree_state(outside)


def _crafted(repo: Repository, backup_id: str, new_id: str, rename: dict[str, str]) -> str:
    m = load_manifest(repo.path, backup_id)
    assert m.files is not None
    m.files.path = [rename.get(p, p) for p in m.files.path]
    m.backup_id = new_id
    return write_manifest(repo.path, m)


@pytest.mark.parametrize("evil", ["../escaped.json", "/tmp/absolute.json", "agent-0/../../x.json", "agent-0//x", "."])
def test_crafted_manifest_paths_are_refused_before_anything_is_written(
    snap: tuple[Path, Repository, str], tmp_path: Path, evil: str
) -> None:
    _store, repo, backup_id = snap
    outside, before = _outside(tmp_path)
    bad = _crafted(repo, backup_id, "full_20000101_000000", {"agent-1/doc-002.json": evil})
    target = tmp_path / "target"
    with pytest.raises(UnsafePathError):
        restore(repo, bad, target)
    assert not target.exists()
    assert tree_state(outside) == before
    assert not (tmp_path / "escaped.json").exists() and not Path("/tmp/absolute.json").exists()


def test_manifest_using_a_file_as_a_directory_is_refused(snap: tuple[Path, Repository, str], tmp_path: Path) -> None:
    _store, repo, backup_id = snap
    bad = _crafted(repo, backup_id, "full_20000101_000001", {"agent-1/doc-002.json": "config.json/inner.json"})
    with pytest.raises(UnsafePathError, match="as a directory"):
        restore(repo, bad, tmp_path / "target")
    assert not (tmp_path / "target").exists()


def test_manifest_declaring_symlinks_is_refused(snap: tuple[Path, Repository, str], tmp_path: Path) -> None:
    _store, repo, backup_id = snap
    outside, before = _outside(tmp_path)
    m = load_manifest(repo.path, backup_id)
    body = json.loads(zstandard.ZstdDecompressor().decompress((repo.bodies_dir / f"{m.body_sha256}.zst").read_bytes()))
    body["symlinks"] = {"path": ["agent-0"], "target": [str(outside)]}  # a symlink component for agent-0/...
    raw = zstandard.ZstdCompressor().compress(json.dumps(body).encode())
    sha = hashlib.sha256(raw).hexdigest()
    (repo.bodies_dir / f"{sha}.zst").write_bytes(raw)
    crafted = Manifest.from_header({**m.header(), "backup_id": "full_20000101_000002"})
    crafted.body_sha256, crafted.body_size = sha, len(raw)
    doc = crafted.header()
    doc["sha256"] = hashlib.sha256(canonical_json(doc)).hexdigest()
    (repo.snapshots_dir / "full_20000101_000002.json").write_text(json.dumps(doc))
    target = tmp_path / "target"
    with pytest.raises(UnsafePathError, match="symlinks"):
        restore(repo, "full_20000101_000002", target)
    assert not target.exists()
    assert tree_state(outside) == before


def test_symlinks_in_the_target_are_never_followed(snap: tuple[Path, Repository, str], tmp_path: Path) -> None:
    store, repo, backup_id = snap
    outside, before = _outside(tmp_path)
    target = tmp_path / "target"
    target.mkdir()
    (target / "agent-0").symlink_to(outside, target_is_directory=True)  # a directory component
    (target / "agent-1").mkdir()
    (target / "agent-1" / "doc-000.json").symlink_to(outside / "victim.txt")  # a file

    # not exact: the files below the symlinked directory are refused, nothing is written through it
    res = restore(repo, backup_id, target, exact=False)
    assert res.errors and all(e["path"].split("/")[0] == "agent-0" for e in res.errors)
    assert all("symlink" in e["reason"] for e in res.errors)
    assert tree_state(outside) == before
    assert (target / "agent-0").is_symlink()

    # exact: the links themselves are replaced (never what they point to), the result is the snapshot
    res = restore(repo, backup_id, target)
    assert res.ok, res.errors
    assert tree_state(outside) == before
    assert not (target / "agent-0").is_symlink()
    assert diff_states(tree_state(store), tree_state(target)) == []


def test_exact_restore_is_scoped_and_dry_run_writes_nothing(snap: tuple[Path, Repository, str], tmp_path: Path) -> None:
    store, repo, backup_id = snap
    target = tmp_path / "target"
    assert restore(repo, backup_id, target).ok
    (target / "agent-1" / "extra.json").write_text("{}")
    (target / "agent-2" / "extra.json").write_text("{}")
    (target / "agent-1" / "doc-001.json").write_text("changed")
    (target / "agent-1" / "doc-002.json").unlink()
    os.utime(target / "agent-1" / "doc-003.json", ns=(1, 1))
    before = tree_state(target)

    dry = restore(repo, backup_id, target, agent="agent-1", dry_run=True)
    assert (dry.added, dry.changed, dry.removed) == (
        ["agent-1/doc-002.json"],
        ["agent-1/doc-001.json"],
        ["agent-1/extra.json"],
    )
    assert dry.metadata == ["agent-1/doc-003.json"]
    assert tree_state(target) == before

    res = restore(repo, backup_id, target, agent="agent-1")
    assert res.ok and res.files_written == 2
    after = tree_state(target)
    assert "agent-2/extra.json" in after  # outside the scope: untouched
    expected = {**tree_state(store), "agent-2/extra.json": after["agent-2/extra.json"]}
    assert diff_states(expected, after, dir_mtimes=False) == []

    # paths: globs relative to the store root, exact only among matching paths
    (target / "agent-0" / "doc-000.json").write_text("x")
    (target / "agent-0" / "doc-009.json").write_text("x")
    res = restore(repo, backup_id, target, paths=["agent-0/doc-00*"])
    assert res.changed == ["agent-0/doc-000.json"] and res.removed == ["agent-0/doc-009.json"]
    assert (target / "agent-2" / "extra.json").exists()

    # not exact: extra files stay
    res = restore(repo, backup_id, target, exact=False)
    assert res.removed == [] and (target / "agent-2" / "extra.json").exists()


def test_repository_inside_the_store_is_excluded_and_never_removed(tmp_path: Path) -> None:
    store = make_json_store(tmp_path / "store", agents=2, docs=4)
    repo = small_repo(store / ".aml-backup")
    snap = create_snapshot(store, repo, incremental=False)
    m = load_manifest(repo.path, snap.backup_id)
    assert m.files is not None and not any(p.startswith(".aml-backup") for p in m.files.path)
    (store / "agent-0" / "extra.json").write_text("{}")
    res = restore(repo, snap.backup_id, store)  # exact, over the live store that holds the repository
    assert res.ok and res.removed == ["agent-0/extra.json"]
    assert (repo.path / "config.json").exists() and repo.snapshot_ids() == [snap.backup_id]
    with pytest.raises(BackupError, match="inside the repository"):
        restore(repo, snap.backup_id, repo.path / "archives" / "x")


def test_a_fresh_target_gets_files_under_their_own_names_a_used_one_through_renames(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    """Into a missing or empty target files are created under their own names (no rename: the costly part of
    creating a file); into a target that has content every file goes through a temporary name, so a file
    there is never seen torn; and a direct write never clobbers a name that appeared meanwhile."""
    import aml.backup.fileswriter as fw
    from aml.backup import create_snapshot, restore
    from aml.backup._fs import DirFds

    store = make_json_store(tmp_path / "store", agents=2, docs=6)
    repo = small_repo(tmp_path / "repo")
    snap = create_snapshot(store, repo, incremental=False)
    renames: list[str] = []
    real_rename = os.rename

    def counting_rename(src, dst, *args, **kwargs):
        renames.append(str(dst))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(fw.os, "rename", counting_rename)
    fresh = tmp_path / "fresh"
    assert restore(repo, snap.backup_id, fresh).ok
    assert renames == [] and tree_state(fresh) == tree_state(store)
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("the target's own file")
    assert restore(repo, snap.backup_id, used, exact=False).ok
    assert len(renames) == snap.file_count  # every file renamed into place
    assert (used / "keep.txt").read_text() == "the target's own file"
    assert not [p for p in used.rglob("*") if p.name.startswith(".aml-tmp-")]

    # a name taken between the plan and the write: replaced whole through a temporary name, never opened
    target = tmp_path / "race"
    target.mkdir()
    (target / "doc.json").write_text("someone else's")
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with DirFds(fd, create=True) as fds:
            fw.FilesWriter(fds, direct=True).write("doc.json", b'{"restored": true}', 0o644, 1_700_000_000 * 10**9)
    finally:
        os.close(fd)
    assert (target / "doc.json").read_bytes() == b'{"restored": true}'
    assert (target / "doc.json").stat().st_mtime_ns == 1_700_000_000 * 10**9
