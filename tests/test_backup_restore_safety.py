"""Restore never takes the live store or the repository down with it: unsafe targets are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aml.backup import Repository, UnsafePathError, create_snapshot, restore
from tests.backup_helpers import diff_states, make_json_store, small_repo, tree_state


@pytest.fixture
def beside(tmp_path: Path) -> tuple[Path, Repository, str]:
    """The default layout: ``<parent>/store`` and ``<parent>/memory-backup``, plus a neighbour file."""
    parent = tmp_path / "parent"
    store = make_json_store(parent / "store", agents=2, docs=4)
    repo = small_repo(parent / "memory-backup")
    (parent / "neighbour.txt").write_text("must survive")
    return store, repo, create_snapshot(store, repo, incremental=False).backup_id


def _state(parent: Path) -> dict[str, tuple[str, bytes | None, int, int]]:
    """Everything below ``parent`` except repository lock folders (a reader's lock comes and goes)."""
    return {k: v for k, v in tree_state(parent).items() if "locks" not in k.split("/")[:2]}


@pytest.mark.parametrize("kwargs", [{}, {"dry_run": True}, {"exact": False}, {"agent": "agent-0"}])
def test_target_containing_the_live_store_is_refused_and_nothing_is_deleted(
    beside: tuple[Path, Repository, str], kwargs: dict[str, object]
) -> None:
    store, repo, backup_id = beside
    parent = store.parent
    before = _state(parent)
    with pytest.raises(UnsafePathError, match="contains the snapshot's source store") as info:
        restore(repo, backup_id, parent, **kwargs)  # type: ignore[arg-type]
    assert str(parent) in str(info.value)
    assert diff_states(before, _state(parent)) == []
    # the same directory spelled with ".." is the same directory
    with pytest.raises(UnsafePathError, match="source store"):
        restore(repo, backup_id, store / "agent-0" / ".." / "..")
    assert diff_states(before, _state(parent)) == []


def test_symlink_to_an_ancestor_of_the_store_is_refused(beside: tuple[Path, Repository, str], tmp_path: Path) -> None:
    store, repo, backup_id = beside
    link = tmp_path / "link"
    link.symlink_to(tmp_path, target_is_directory=True)  # an ancestor of <parent>/store
    before = _state(store.parent)
    with pytest.raises(UnsafePathError, match="source store"):
        restore(repo, backup_id, link)
    assert diff_states(before, _state(store.parent)) == []
    assert link.is_symlink()


def test_target_containing_the_repository_is_refused(tmp_path: Path) -> None:
    store = make_json_store(tmp_path / "a" / "store", agents=2, docs=3)
    repo = small_repo(tmp_path / "b" / "repo")
    backup_id = create_snapshot(store, repo, incremental=False).backup_id
    (tmp_path / "b" / "other.txt").write_text("must survive")
    before = _state(tmp_path / "b")
    with pytest.raises(UnsafePathError, match="contains the repository") as info:
        restore(repo, backup_id, repo.path.parent)
    assert str(repo.path.parent) in str(info.value)
    assert diff_states(before, _state(tmp_path / "b")) == []
    assert repo.snapshot_ids() == [backup_id]
    # inside the repository: refused as before
    with pytest.raises(UnsafePathError, match="inside the repository"):
        restore(repo, backup_id, repo.path / "restore-here")


def test_the_store_itself_and_a_new_directory_beside_it_are_allowed(beside: tuple[Path, Repository, str]) -> None:
    store, repo, backup_id = beside
    expected = tree_state(store)
    (store / "agent-0" / "extra.json").write_text("{}")
    res = restore(repo, backup_id, store)  # over the live store (the task takes a safety snapshot first)
    assert res.ok and res.removed == ["agent-0/extra.json"]
    assert diff_states(expected, tree_state(store), dir_mtimes=False) == []
    out = store.parent / "restored"
    assert restore(repo, backup_id, out).ok
    assert diff_states(expected, tree_state(out), dir_mtimes=False) == []
    assert (store.parent / "neighbour.txt").read_text() == "must survive"
    assert repo.snapshot_ids() == [backup_id]


def test_restore_task_refuses_the_parent_of_the_store(tmp_path: Path, aml_settings: Any) -> None:
    from tasks import backup

    store = make_json_store(tmp_path / "parent" / "store", agents=2, docs=3)
    snap = backup.create.apply(kwargs={"store": str(store)}, throw=True).get()
    before = _state(store.parent)
    with pytest.raises(UnsafePathError, match="source store"):
        backup.restore_.apply(
            kwargs={"store": str(store), "backup_id": snap["backup_id"], "target": str(store.parent)}, throw=True
        ).get()
    assert diff_states(before, _state(store.parent)) == []
