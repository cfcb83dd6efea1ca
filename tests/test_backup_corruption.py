"""Any flipped bit in a pack, an index file or a manifest is found and named by ``check``."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from aml.backup import (
    CorruptionError,
    Repository,
    check,
    create_snapshot,
    list_snapshots,
    load_index,
    load_manifest,
    prune_unreferenced,
    rebuild_index,
    restore,
)
from aml.backup.index import list_index_ids, list_pack_ids
from aml.backup.listing import list_damaged_snapshots
from aml.backup.pack import FOOTER, pack_path
from tests.backup_helpers import diff_states, flip_byte, make_json_store, mutate, small_repo, tree_state


@dataclass
class Setup:
    store: Path
    repo: Repository
    s1: str
    s2: str
    changed: list[str]


@pytest.fixture
def two_snapshots(tmp_path: Path) -> Setup:
    store = make_json_store(tmp_path / "store", agents=4, docs=30)
    repo = small_repo(tmp_path / "repo", pack_size=24 * 1024)
    s1 = create_snapshot(store, repo, incremental=False).backup_id
    changed = mutate(store, 0.1, seed=7)
    s2 = create_snapshot(store, repo, incremental=True).backup_id
    assert check(repo, read_data=True).ok
    return Setup(store, repo, s1, s2, changed)


def _object_of(repo: Repository, backup_id: str, path: str) -> str:
    m = load_manifest(repo.path, backup_id)
    assert m.files is not None
    return m.files.sha256[m.files.path.index(path)]


def test_flipped_bit_in_a_pack_names_pack_objects_snapshots_and_files(two_snapshots: Setup, tmp_path: Path) -> None:
    t = two_snapshots
    victim = next(p for p in ["agent-1/doc-005.json", "agent-2/doc-011.json"] if p not in t.changed)
    oid = _object_of(t.repo, t.s1, victim)
    pack_id, off, length, _size = load_index(t.repo.path).objects[oid]
    flip_byte(pack_path(t.repo.path, pack_id), off + length // 2)

    assert check(t.repo).ok  # structure alone cannot see it
    result = check(t.repo, read_data=True)
    assert not result.ok
    [prob] = [p for p in result.errors if p.kind == "object_corrupt"]
    assert prob.location == f"packs/{pack_id[:2]}/{pack_id}"
    assert prob.objects == [oid]
    assert sorted(prob.snapshots) == sorted([t.s1, t.s2])
    assert sorted(prob.files) == sorted([f"{t.s1}:{victim}", f"{t.s2}:{victim}"])
    assert result.damaged_snapshots == {t.s1: [victim], t.s2: [victim]}

    # restore writes every other file and reports the damaged one instead of writing bad bytes
    out = tmp_path / "out"
    res = restore(t.repo, t.s2, out)
    assert [e["path"] for e in res.errors] == [victim]
    assert not (out / victim).exists()
    expected = {k: v for k, v in tree_state(t.store).items() if k != victim}
    assert diff_states(expected, tree_state(out)) == []

    # prune never copies or deletes around damaged data
    with pytest.raises(CorruptionError):
        from aml.backup import forget

        forget(t.repo, backup_ids=[t.s1])


def test_flipped_bit_in_a_pack_trailer_is_named_without_affected_files(two_snapshots: Setup) -> None:
    t = two_snapshots
    pack_id = list_pack_ids(t.repo.path)[0]
    path = pack_path(t.repo.path, pack_id)
    flip_byte(path, path.stat().st_size - FOOTER.size - 3)  # inside the trailer's object table
    result = check(t.repo, read_data=True)
    [prob] = result.errors
    assert prob.kind == "pack_hash" and pack_id in prob.location
    assert prob.files == [] and result.damaged_snapshots == {}
    # the objects are intact: rewriting the pack repairs the repository
    pr = prune_unreferenced(t.repo, repack=[pack_id])
    assert pr.packs_repacked == 1 and pr.objects_removed == 0
    # same objects, same order: the rewritten pack is the original one, byte for byte
    assert hashlib.sha256(path.read_bytes()).hexdigest() == pack_id
    assert check(t.repo, read_data=True).ok
    out = t.store.parent / "out"
    assert restore(t.repo, t.s2, out).ok
    assert diff_states(tree_state(t.store), tree_state(out)) == []


def test_flipped_bit_in_an_index_file_is_found_even_when_it_still_parses(two_snapshots: Setup) -> None:
    t = two_snapshots
    index_ids = list_index_ids(t.repo.path)
    assert len(index_ids) == 2  # one per backup
    # the index file written by the second backup describes the changed files' new objects
    victim = t.changed[0]
    new_oid = _object_of(t.repo, t.s2, victim)
    idx_path = next(
        t.repo.path / "index" / f"{i}.json"
        for i in index_ids
        if new_oid in (t.repo.path / "index" / f"{i}.json").read_text()
    )
    text = idx_path.read_text()
    pos = text.index(new_oid)
    swapped = "0" if text[pos] != "0" else "1"
    idx_path.chmod(0o644)
    idx_path.write_text(text[:pos] + swapped + text[pos + 1 :])  # still valid JSON, one hex digit changed
    json.loads(idx_path.read_text())

    result = check(t.repo, read_data=True)
    assert not result.ok
    kinds = {p.kind for p in result.errors}
    assert "index_corrupt" in kinds
    [prob] = [p for p in result.errors if p.kind == "index_corrupt"]
    assert prob.location == f"index/{idx_path.stem}.json"
    # every object only that file locates is at risk: the snapshot that needs them is named
    assert prob.snapshots == [t.s2]
    assert len(prob.objects) == len(t.changed)
    assert sorted(f.split(":", 1)[1] for f in prob.files) == sorted(set(t.changed) - {victim})
    # the object whose id was altered is now in no trusted index: named with its file
    [missing] = [p for p in result.errors if p.kind == "object_missing"]
    assert missing.objects == [new_oid] and missing.files == [f"{t.s2}:{victim}"]
    assert sorted(result.damaged_snapshots[t.s2]) == sorted(t.changed)
    assert t.s1 not in result.damaged_snapshots

    with pytest.raises(CorruptionError, match="damaged index"):
        prune_unreferenced(t.repo)
    new_id, unreadable, damaged = rebuild_index(t.repo.path)  # the packs' trailers rebuild it
    assert unreadable == [] and damaged == []
    assert list_index_ids(t.repo.path) == [new_id]
    assert check(t.repo, read_data=True).ok


def test_flipped_bit_in_a_manifest_header_is_found_even_when_it_still_parses(two_snapshots: Setup) -> None:
    t = two_snapshots
    header = t.repo.snapshots_dir / f"{t.s1}.json"
    text = header.read_text()
    count = re.search(r'"file_count": (\d+)', text)
    assert count is not None
    header.chmod(0o644)
    header.write_text(text.replace(count.group(0), f'"file_count": {int(count.group(1)) + 1}'))
    result = check(t.repo, read_data=True)
    [prob] = result.errors
    assert prob.kind == "manifest_corrupt" and prob.snapshots == [t.s1]
    assert result.damaged_snapshots == {t.s1: ["<manifest>"]}
    assert t.s1 not in [s.backup_id for s in list_snapshots(t.repo)]  # never listed as restorable
    [damaged] = list_damaged_snapshots(t.repo)  # ... but not hidden either
    assert (damaged.backup_id, damaged.location) == (t.s1, f"snapshots/{t.s1}.json")
    assert "checksum" in damaged.reason
    with pytest.raises(CorruptionError):
        restore(t.repo, t.s1, t.store.parent / "out")


def test_flipped_bit_in_a_manifest_body_is_found(two_snapshots: Setup) -> None:
    t = two_snapshots
    m = load_manifest(t.repo.path, t.s2)
    body = t.repo.bodies_dir / f"{m.body_sha256}.zst"
    flip_byte(body, body.stat().st_size // 2)
    result = check(t.repo)
    [prob] = result.errors
    assert prob.kind == "body_corrupt" and prob.snapshots == [t.s2]
    assert prob.location == f"snapshots/bodies/{m.body_sha256}.zst"


def test_missing_or_truncated_pack_is_found_by_the_structure_check(two_snapshots: Setup) -> None:
    t = two_snapshots
    victim = next(p for p in ["agent-0/doc-001.json", "agent-3/doc-020.json"] if p not in t.changed)
    oid = _object_of(t.repo, t.s1, victim)
    pack_id = load_index(t.repo.path).objects[oid][0]
    path = pack_path(t.repo.path, pack_id)
    path.unlink()
    result = check(t.repo)
    [prob] = result.errors
    assert prob.kind == "pack_missing" and oid in prob.objects
    assert f"{t.s1}:{victim}" in prob.files and f"{t.s2}:{victim}" in prob.files
    with pytest.raises(CorruptionError, match="nothing was written"):
        restore(t.repo, t.s1, t.store.parent / "out")


def test_truncated_pack_names_its_snapshots_and_files_without_reading_data(two_snapshots: Setup) -> None:
    t = two_snapshots
    victim = next(p for p in ["agent-0/doc-001.json", "agent-3/doc-020.json"] if p not in t.changed)
    oid = _object_of(t.repo, t.s1, victim)
    index = load_index(t.repo.path)
    pack_id = index.objects[oid][0]
    in_pack = {o for o, loc in index.objects.items() if loc[0] == pack_id}
    path = pack_path(t.repo.path, pack_id)
    size = path.stat().st_size
    path.chmod(0o644)
    with open(path, "r+b") as fh:
        fh.truncate(size - 5)

    result = check(t.repo)  # structure only
    assert not result.ok
    [prob] = result.errors
    assert prob.kind == "pack_size" and prob.location == f"packs/{pack_id[:2]}/{pack_id}"
    assert f"{size - 5} bytes" in prob.message and str(size) in prob.message
    assert oid in prob.objects and set(prob.objects) <= in_pack
    assert sorted(prob.snapshots) == sorted([t.s1, t.s2])
    assert f"{t.s1}:{victim}" in prob.files and f"{t.s2}:{victim}" in prob.files
    assert victim in result.damaged_snapshots[t.s1] and victim in result.damaged_snapshots[t.s2]
    # every file named is one whose object the index places in that pack
    for f in prob.files:
        bid, rel = f.split(":", 1)
        assert _object_of(t.repo, bid, rel) in in_pack
    # read-data does not report it a second time
    assert [p.kind for p in check(t.repo, read_data=True).errors] == ["pack_size"]
    with pytest.raises(CorruptionError, match="nothing was written"):
        restore(t.repo, t.s1, t.store.parent / "out")


def test_lost_index_is_rebuilt_from_the_packs(two_snapshots: Setup) -> None:
    t = two_snapshots
    for i in list_index_ids(t.repo.path):
        (t.repo.path / "index" / f"{i}.json").unlink()
    result = check(t.repo)
    assert {p.kind for p in result.errors} == {"object_missing"}
    assert {w.kind for w in result.warnings} == {"pack_unindexed"}
    rebuild_index(t.repo.path)
    assert check(t.repo, read_data=True).ok


def test_rotating_subset_covers_every_pack(two_snapshots: Setup) -> None:
    t = two_snapshots
    packs = set(list_pack_ids(t.repo.path))
    assert len(packs) >= 4
    first = check(t.repo, read_data_subset=0.5)
    second = check(t.repo, read_data_subset="50%")
    assert first.ok and second.ok
    state = json.loads((t.repo.path / "verify_state.json").read_text())["packs"]
    assert set(state) == packs
    assert first.packs_read + second.packs_read == len(packs)
    groups = [check(t.repo, read_data_subset=f"{n}/3").packs_read for n in (1, 2, 3)]
    assert sum(groups) == len(packs)
