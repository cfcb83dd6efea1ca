"""Loom Python legacy incrementals whose parent is not recorded, and a damaged ``backup_metadata.json``.

Real layout: ``loom-plain-v1.0-pyops`` holds ``full_20261122_104819/`` (13 files) and
``incr_20261122_104825/`` (debugger and frontend-developer patterns), described by
``backup_metadata.json``. An exact restore of an incremental applied alone would remove every covered
file it does not hold (the agents' solutions, decisions...): the chain must reach a full, or the exact
restore is refused.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from aml.backup import BackupError, Repository, create_snapshot, find_legacy, list_snapshots, restore
from aml.backup.summary import salvage_entries, update_summary
from tests.backup_helpers import tree_state
from tests.realdata import extract_loom

PY_FULL, PY_INCR = "full_20261122_104819", "incr_20261122_104825"


@pytest.fixture
def pyops(tmp_path: Path) -> Path:
    return extract_loom("loom-plain-v1.0-pyops", tmp_path / "project")


def _summary(repo: Repository) -> dict:
    return json.loads((repo.path / "backup_metadata.json").read_text())


def _drop_entries(repo: Repository, *ids: str) -> None:
    doc = _summary(repo)
    doc["backups"] = [b for b in doc["backups"] if b["backup_id"] not in ids]
    (repo.path / "backup_metadata.json").write_text(json.dumps(doc, indent=2))


def _files(root: Path) -> dict[str, bytes]:
    return {k: v[1] or b"" for k, v in tree_state(root).items() if v[0] == "f"}


def _gz_contents(backup_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(backup_dir))[:-3]: gzip.decompress(p.read_bytes()) for p in backup_dir.rglob("*.gz")}


def _live_copy(pyops: Path, dest: Path) -> Path:
    shutil.copytree(pyops, dest, symlinks=True)
    return dest


@pytest.mark.parametrize("unrecorded", [(PY_INCR,), (PY_FULL, PY_INCR)], ids=["incr-entry-missing", "no-entries"])
def test_unrecorded_incremental_chains_to_the_older_full(
    pyops: Path, tmp_path: Path, unrecorded: tuple[str, ...]
) -> None:
    repo = Repository.for_store(pyops)
    _drop_entries(repo, *unrecorded)
    legacy = {b.backup_id: b for b in find_legacy(repo)}
    assert legacy[PY_INCR].parent_backup_id == PY_FULL and legacy[PY_INCR].parent_inferred
    assert not legacy[PY_FULL].parent_inferred
    assert {s.backup_id: s.parent_backup_id for s in list_snapshots(repo)}[PY_INCR] == PY_FULL

    expected = {**_gz_contents(repo.path / PY_FULL), **_gz_contents(repo.path / PY_INCR)}
    out = tmp_path / "out"
    assert restore(repo, PY_INCR, out).ok
    assert _files(out) == expected

    # exact restore over the live store: the agents' other files stay (they come from the full)
    live = _live_copy(pyops, tmp_path / "live")
    before = _files(live)
    res = restore(repo, PY_INCR, live)
    assert res.ok and res.removed == [] and res.changed == []
    assert _files(live) == before


def test_unrecorded_incrementals_chain_through_each_other(pyops: Path, tmp_path: Path) -> None:
    repo = Repository.for_store(pyops)
    _drop_entries(repo, PY_INCR)
    middle = repo.path / "incr_20261122_104822"
    (middle / "code-reviewer").mkdir(parents=True)
    (middle / "code-reviewer" / "decisions.json.gz").write_bytes(gzip.compress(b'{"decisions": ["middle"]}'))
    legacy = {b.backup_id: b for b in find_legacy(repo)}
    assert legacy[PY_INCR].parent_backup_id == middle.name
    assert legacy[middle.name].parent_backup_id == PY_FULL

    out = tmp_path / "out"
    assert restore(repo, PY_INCR, out).ok
    got = _files(out)
    assert got["code-reviewer/decisions.json"] == b'{"decisions": ["middle"]}'  # the change in between
    assert got["debugger/patterns.json"] == gzip.decompress(
        (repo.path / PY_INCR / "debugger" / "patterns.json.gz").read_bytes()
    )
    assert len(got) == 13


def test_incremental_without_an_older_full_refuses_exact_restore(pyops: Path, tmp_path: Path) -> None:
    repo = Repository.for_store(pyops)
    _drop_entries(repo, PY_FULL, PY_INCR)
    shutil.rmtree(repo.path / PY_FULL)
    [incr] = find_legacy(repo)
    assert incr.backup_id == PY_INCR and incr.parent_backup_id is None

    live = _live_copy(pyops, tmp_path / "live")
    before = tree_state(live)
    with pytest.raises(BackupError, match="no known full backup"):
        restore(repo, PY_INCR, live)
    with pytest.raises(BackupError, match="exact=False"):
        restore(repo, PY_INCR, live, dry_run=True)
    assert tree_state(live) == before  # nothing written, nothing removed

    (live / "debugger" / "patterns.json").write_text("{}")
    res = restore(repo, PY_INCR, live, exact=False)  # only its own files: allowed
    assert res.ok and res.removed == [] and res.changed == ["debugger/patterns.json"]
    after = _files(live)
    assert after["debugger/patterns.json"] == _gz_contents(repo.path / PY_INCR)["debugger/patterns.json"]
    assert after["debugger/solutions.json"] == before["debugger/solutions.json"][1]

    out = tmp_path / "fresh"  # an exact restore into an empty directory removes nothing: fine
    assert restore(repo, PY_INCR, out).ok
    assert set(_files(out)) == {"debugger/patterns.json", "frontend-developer/patterns.json"}


def test_truncated_summary_keeps_legacy_entries(pyops: Path, tmp_path: Path) -> None:
    repo = Repository.for_store(pyops)
    raw = (repo.path / "backup_metadata.json").read_bytes()
    damaged = raw[: raw.index(b'"incr_20261122_104825"') + 60]  # cut inside the incremental's entry
    (repo.path / "backup_metadata.json").write_bytes(damaged)

    # listing before any rewrite: the full keeps its checksums, the incremental is found by its directory
    legacy = {b.backup_id: b for b in find_legacy(repo)}
    assert len(legacy[PY_FULL].checksums) == 13
    assert legacy[PY_INCR].parent_backup_id == PY_FULL and legacy[PY_INCR].parent_inferred

    repo.init()
    snap = create_snapshot(pyops, repo, incremental=False)  # rewrites backup_metadata.json
    [aside] = sorted(repo.path.glob("backup_metadata.json.corrupt-*"))
    assert aside.read_bytes() == damaged  # kept as it was
    ids = [b["backup_id"] for b in _summary(repo)["backups"]]
    assert ids == [PY_FULL, snap.backup_id]
    full_entry = _summary(repo)["backups"][0]
    assert full_entry == json.loads(raw)["backups"][0]  # carried over unchanged
    assert [s.backup_id for s in list_snapshots(repo)] == [PY_FULL, PY_INCR, snap.backup_id]

    live = _live_copy(pyops, tmp_path / "live")
    res = restore(repo, PY_INCR, live)
    assert res.ok and res.removed == []


def test_damaged_summary_salvages_entries_after_the_damage(pyops: Path) -> None:
    repo = Repository.for_store(pyops)
    raw = (repo.path / "backup_metadata.json").read_bytes()
    at = raw.index(b'"total_size_bytes": 78392')
    damaged = raw[:at] + b"\x00garbage{" + raw[at + 5 :]
    assert {e["backup_id"] for e in salvage_entries(damaged)} == {PY_INCR}
    (repo.path / "backup_metadata.json").write_bytes(damaged)

    legacy = {b.backup_id: b for b in find_legacy(repo)}
    assert legacy[PY_INCR].parent_backup_id == PY_FULL and not legacy[PY_INCR].parent_inferred
    assert len(legacy[PY_INCR].checksums) == 2
    assert legacy[PY_FULL].checksums == {}  # its entry is lost: found by its directory

    update_summary(repo.path)
    update_summary(repo.path)  # the new file parses: nothing more is set aside
    assert [p.read_bytes() for p in repo.path.glob("backup_metadata.json.corrupt-*")] == [damaged]
    assert [b["backup_id"] for b in _summary(repo)["backups"]] == [PY_INCR]


def test_repeated_damage_never_overwrites_an_earlier_copy(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    for n in range(3):
        (root / "backup_metadata.json").write_bytes(b"not json %d" % n)
        update_summary(root)
    kept = sorted(p.read_bytes() for p in root.glob("backup_metadata.json.corrupt-*"))
    assert kept == [b"not json 0", b"not json 1", b"not json 2"]
    assert json.loads((root / "backup_metadata.json").read_text()) == {"version": "1.0.0", "backups": []}


def test_salvage_ignores_non_entries() -> None:
    assert salvage_entries(b"") == []
    assert salvage_entries(b'{"backup_id": 3, "timestamp": "x"} {"backup_id": "a"}') == []
    doc = b'{"backups": [{"backup_id": "a", "timestamp": "t"}, {"backup_id": "a", "timestamp": "u"}]}'
    assert salvage_entries(doc) == [{"backup_id": "a", "timestamp": "u"}]


def test_typescript_incremental_without_parent_chains_to_the_older_backup(tmp_path: Path) -> None:
    store = extract_loom("loom-gzip-v1.0", tmp_path / "project")
    repo = Repository.for_store(store)
    [base] = find_legacy(repo)
    incr_id = "backup-1795344999999-zz9incr"
    member = tmp_path / "member"
    (member / "debugger").mkdir(parents=True)
    (member / "debugger" / "patterns.json").write_bytes(b'{"patterns": []}')
    with tarfile.open(repo.path / f"{incr_id}.tar.gz", "w:gz") as tar:
        tar.add(member / "debugger", arcname="debugger")
    meta = {"id": incr_id, "timestamp": "2026-11-22T10:56:39.999Z", "agents": ["debugger"], "type": "incremental"}
    (repo.path / f"{incr_id}.meta.json").write_text(json.dumps(meta))

    legacy = {b.backup_id: b for b in find_legacy(repo)}
    assert legacy[incr_id].parent_backup_id == base.backup_id and legacy[incr_id].parent_inferred
    out = tmp_path / "out"
    assert restore(repo, incr_id, out).ok
    got = _files(out)
    assert len(got) == 13 and got["debugger/patterns.json"] == b'{"patterns": []}'
