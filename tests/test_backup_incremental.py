"""Incremental backups read only what changed; contents are stored once; what is never stored."""

from __future__ import annotations

import json
import os
import shutil
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aml.backup import (
    LockError,
    Progress,
    Repository,
    check,
    create_snapshot,
    list_snapshots,
    load_index,
    load_manifest,
    restore,
)
from aml.backup.index import list_pack_ids
from tests.backup_helpers import diff_states, make_json_store, mutate, small_repo, tree_state
from tests.realdata import AITOR_DIR, TINYTROUPE_DIR


def _packs(repo: Repository) -> set[str]:
    return set(list_pack_ids(repo.path))


def test_incremental_reads_only_changed_files(tmp_path: Path) -> None:
    store = make_json_store(tmp_path / "store")
    repo = small_repo(tmp_path / "repo")
    events: list[Progress] = []
    full = create_snapshot(store, repo, incremental=False, progress=events.append)
    n = full.file_count
    final = [e for e in events if e.phase == "backup" and e.final][-1]
    assert final.files_read == n and final.files_unchanged == 0

    events.clear()
    same = create_snapshot(store, repo, incremental=True, progress=events.append)
    final = [e for e in events if e.phase == "backup" and e.final][-1]
    assert (final.files_read, final.bytes_read, final.files_unchanged) == (0, 0, n)
    assert (same.files_read, same.objects_added, same.packs_written) == (0, 0, 0)

    changed = mutate(store, 0.1, seed=3)
    events.clear()
    incr = create_snapshot(store, repo, incremental=True, progress=events.append)
    final = [e for e in events if e.phase == "backup" and e.final][-1]
    assert final.files_read == len(changed) == incr.files_read
    assert incr.files_unchanged == n - len(changed)
    assert incr.objects_added == len(changed)
    assert incr.parent_backup_id == same.backup_id
    assert restore(repo, incr.backup_id, tmp_path / "out").ok
    assert diff_states(tree_state(store), tree_state(tmp_path / "out")) == []


def test_files_whose_objects_the_index_lost_are_read_again(tmp_path: Path) -> None:
    store = make_json_store(tmp_path / "store")
    repo = small_repo(tmp_path / "repo")
    first = create_snapshot(store, repo, incremental=False)
    index_files = set((repo.path / "index").iterdir())
    changed = mutate(store, 0.1, seed=5)
    second = create_snapshot(store, repo, incremental=True)
    assert second.files_read == len(changed)
    # the index file of the second backup is lost: the objects of the changed files are in no index
    (lost,) = set((repo.path / "index").iterdir()) - index_files
    lost.unlink()
    third = create_snapshot(store, repo, incremental=True)
    assert third.parent_backup_id == second.backup_id
    assert third.files_read == len(changed)
    assert third.files_unchanged == first.file_count - len(changed)
    assert restore(repo, third.backup_id, tmp_path / "out").ok
    assert diff_states(tree_state(store), tree_state(tmp_path / "out")) == []


def test_unchanged_metadata_means_not_read(tmp_path: Path) -> None:
    """Proof by content: a file rewritten in place with the same size, mtime and inode is not re-read."""
    store = make_json_store(tmp_path / "store", agents=1, docs=5)
    repo = small_repo(tmp_path / "repo")
    create_snapshot(store, repo, incremental=False)
    target = store / "agent-0" / "doc-000.json"
    old = target.read_bytes()
    st = os.stat(target)
    with open(target, "r+b") as fh:  # same inode, same size
        fh.write(b"X" * len(old))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(target).st_ino == st.st_ino

    incr = create_snapshot(store, repo, incremental=True)
    assert incr.files_read == 0
    m = load_manifest(repo.path, incr.backup_id)
    assert m.files is not None
    i = m.files.path.index("agent-0/doc-000.json")
    import hashlib

    assert m.files.sha256[i] == hashlib.sha256(old).hexdigest()  # the old content: the file was not read

    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # now the mtime differs: read again
    again = create_snapshot(store, repo, incremental=True)
    assert again.files_read == 1
    m = load_manifest(repo.path, again.backup_id)
    assert m.files is not None
    assert m.files.sha256[m.files.path.index("agent-0/doc-000.json")] == hashlib.sha256(b"X" * len(old)).hexdigest()

    full = create_snapshot(store, repo, incremental=False)  # a full backup reads everything
    assert full.files_read == full.file_count


def test_contents_are_stored_once(tmp_path: Path) -> None:
    store = tmp_path / "store"
    for agent in ("a", "b", "c"):
        (store / agent).mkdir(parents=True)
        (store / agent / "same.json").write_text('{"same": true}' * 100)
        (store / agent / "own.json").write_text(json.dumps({"agent": agent}))
    repo = small_repo(tmp_path / "repo")
    first = create_snapshot(store, repo, incremental=False)
    assert first.file_count == 6 and first.objects_added == 4
    packs = _packs(repo)
    second = create_snapshot(store, repo, incremental=False)  # full again: reads all, stores nothing new
    assert second.files_read == 6 and second.objects_added == 0 and second.packs_written == 0
    assert _packs(repo) == packs
    assert len(load_index(repo.path)) == 4


def test_links_are_stored_as_links_special_and_temp_files_never(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not part of the store")
    store = make_json_store(tmp_path / "store", agents=1, docs=3)
    (store / "agent-0" / "link.json").symlink_to(outside / "secret.txt")
    (store / "linkdir").symlink_to(outside, target_is_directory=True)
    (store / "agent-0" / ".aml-tmp-abc123").write_text("half-written")
    os.mkfifo(store / "agent-0" / "pipe")
    repo = small_repo(tmp_path / "repo")
    res = create_snapshot(store, repo, incremental=False)
    errors = {e["path"]: e["reason"] for e in res.errors}
    assert set(errors) == {"agent-0/pipe"}
    assert res.skipped_temp == 1 and res.link_count == 2
    m = load_manifest(repo.path, res.backup_id)
    assert m.files is not None and m.dirs is not None and m.links is not None
    # the links themselves, never what they point to
    assert dict(zip(m.links.path, m.links.target, strict=True)) == {
        "agent-0/link.json": str(outside / "secret.txt"), "linkdir": str(outside)}
    assert not any("secret" in p or "link" in p or "pipe" in p or "aml-tmp" in p for p in m.files.path + m.dirs.path)
    assert m.errors == res.errors
    out = tmp_path / "out"
    assert restore(repo, res.backup_id, out).ok
    assert (out / "linkdir").is_symlink() and os.readlink(out / "linkdir") == str(outside)
    assert os.readlink(out / "agent-0" / "link.json") == str(outside / "secret.txt")
    assert not (out / "agent-0" / "pipe").exists()


def test_ids_follow_the_seeds_form_with_suffixes(tmp_path: Path) -> None:
    store = make_json_store(tmp_path / "store", agents=1, docs=2)
    repo = small_repo(tmp_path / "repo")
    when = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)
    ids = [create_snapshot(store, repo, incremental=False, snapshot_time=when).backup_id for _ in range(3)]
    assert ids == ["full_20260504_030201", "full_20260504_030201_2", "full_20260504_030201_3"]
    incr = create_snapshot(store, repo, incremental=True, snapshot_time=when).backup_id
    assert incr == "incr_20260504_030201"
    assert [s.backup_id for s in list_snapshots(repo)] == sorted([*ids, incr])


def test_summary_file_keeps_the_seeds_format(tmp_path: Path) -> None:
    store = make_json_store(tmp_path / "store", agents=2, docs=3)
    repo = Repository.for_store(store)
    repo.path.mkdir()
    legacy_entry = {
        "backup_id": "full_20200101_000000",
        "backup_type": "full",
        "timestamp": "2020-01-01T00:00:00.000001",
        "source_path": "/old",
        "backup_path": "/old/full_20200101_000000",
        "agents": [],
        "total_size_bytes": 0,
        "file_count": 0,
        "checksums": {},
        "parent_backup_id": None,
        "compressed": True,
        "encrypted": False,
    }
    (repo.path / "backup_metadata.json").write_text(json.dumps({"version": "1.0.0", "backups": [legacy_entry]}))
    res = create_snapshot(store, repo, incremental=False)  # initialises the repository next to it
    doc = json.loads((repo.path / "backup_metadata.json").read_text())
    assert doc["version"] == "1.0.0"
    assert doc["backups"][0] == legacy_entry
    entry = doc["backups"][1]
    assert set(entry) == set(legacy_entry)  # exactly the seeds' BackupMetadata fields
    assert entry["backup_id"] == res.backup_id and entry["backup_type"] == "full"
    assert entry["timestamp"].endswith("Z") and entry["file_count"] == res.file_count
    assert entry["agents"] == ["agent-0", "agent-1"]
    assert len(entry["checksums"]) == res.file_count  # small snapshot: per-file checksums inline


def test_locks(tmp_path: Path) -> None:
    store = make_json_store(tmp_path / "store", agents=1, docs=2)
    repo = small_repo(tmp_path / "repo")
    # a stale lock left by a killed process on this host is removed
    dead = {"exclusive": True, "operation": "prune", "hostname": socket.gethostname(), "pid": 2**22 + 12345}
    dead["time"] = "2026-01-01T00:00:00Z"
    (repo.locks_dir / "dead.json").write_text(json.dumps(dead))
    create_snapshot(store, repo, incremental=False)
    assert not (repo.locks_dir / "dead.json").exists()
    # a live exclusive lock blocks a backup, a live shared one does not block another shared one
    with repo.lock(exclusive=True, operation="prune"), pytest.raises(LockError, match="exclusive lock"):
        create_snapshot(store, repo, incremental=True)
    with repo.lock(exclusive=False, operation="backup"):
        create_snapshot(store, repo, incremental=True)
        with pytest.raises(LockError):
            repo.lock(exclusive=True).acquire()
    assert check(repo).ok
    assert [p.name for p in repo.locks_dir.glob("*.json")] == []


def test_summary_is_reconciled_with_the_snapshots(tmp_path: Path) -> None:
    store = make_json_store(tmp_path / "store", agents=1, docs=2)
    repo = small_repo(tmp_path / "repo")
    first = create_snapshot(store, repo, incremental=False).backup_id
    summary = repo.path / "backup_metadata.json"
    summary.write_text(json.dumps({"version": "1.0.0", "backups": []}))  # as if killed before the update
    second = create_snapshot(store, repo, incremental=True).backup_id
    ids = [b["backup_id"] for b in json.loads(summary.read_text())["backups"]]
    assert sorted(ids) == sorted([first, second])
    (repo.snapshots_dir / f"{first}.json").unlink()  # forgotten by hand
    third = create_snapshot(store, repo, incremental=True).backup_id
    ids = [b["backup_id"] for b in json.loads(summary.read_text())["backups"]]
    assert sorted(ids) == sorted([second, third])


def test_summary_lists_no_folder_of_specs_or_sessions(tmp_path: Path) -> None:
    """Issue 10, part 5: a folder of real TinyTroupe specs or of loose Aitor sessions is not an agent."""
    specs = sorted(TINYTROUPE_DIR.glob("*.json"))  # the persona specs and the simulation cache
    sessions = sorted(AITOR_DIR.glob("*.json"))
    if not any(s.name.endswith(".agent.json") for s in specs) or not sessions:
        pytest.skip("shared TinyTroupe specs or Aitor sessions absent")
    store = tmp_path / "store"
    make_json_store(store, agents=1, docs=2)  # agent-0/doc-NNN.json: Loom-like, no Loom file name
    (store / "frontend-developer").mkdir()
    (store / "frontend-developer" / "patterns.json").write_text("[]")
    (store / "personas").mkdir()
    for spec in specs:
        shutil.copy(spec, store / "personas" / spec.name)
    (store / "personas" / "README.md").write_text("# personas\n")  # not JSON: does not make it an agent
    (store / "chats").mkdir()
    for session in sessions:
        shutil.copy(session, store / "chats" / session.name)
    (store / "mixed").mkdir()  # a session beside other JSON: still listed
    shutil.copy(sessions[0], store / "mixed" / sessions[0].name)
    (store / "mixed" / "notes.json").write_text('{"note": 1}')
    res = create_snapshot(store, small_repo(tmp_path / "repo"), incremental=False)
    expected = ["agent-0", "frontend-developer", "mixed"]
    assert res.agents == expected
    doc = json.loads((tmp_path / "repo" / "backup_metadata.json").read_text())
    assert doc["backups"][-1]["agents"] == expected
    assert load_manifest(tmp_path / "repo", res.backup_id).agents == expected
    assert res.file_count == 4 + 1 + len(specs) + 1 + len(sessions) + 2  # everything is still backed up
