"""Backup -> restore round trips: every real Loom store, and hypothesis-generated trees."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aml.backup import Repository, check, create_snapshot, list_snapshots, restore
from tests.backup_helpers import diff_states, small_repo, tree_state
from tests.realdata import LOOM_DIR, extract_loom

LOOM_TARBALLS = sorted(p.name.removesuffix(".tar.gz") for p in LOOM_DIR.glob("*.tar.gz"))


def test_loom_tarballs_present() -> None:
    assert len(LOOM_TARBALLS) >= 6, f"Loom data sets missing from {LOOM_DIR}"


@pytest.mark.parametrize("name", LOOM_TARBALLS)
def test_loom_store_round_trip(name: str, tmp_path: Path) -> None:
    store = extract_loom(name, tmp_path / "project")
    before = tree_state(store)
    repo = Repository.for_store(store)  # the seeds' default: .loom/memory-backup (may hold legacy backups)
    assert repo.path == store.parent / "memory-backup"

    full = create_snapshot(store, repo, incremental=False)
    assert full.backup_type == "full" and full.errors == []
    assert full.file_count == sum(1 for e in before.values() if e[0] == "f")
    assert full.files_read == full.file_count

    incr = create_snapshot(store, repo, incremental=True)
    assert incr.backup_type == "incremental" and incr.parent_backup_id == full.backup_id
    assert incr.files_read == 0 and incr.files_unchanged == full.file_count
    assert incr.objects_added == 0 and incr.packs_written == 0

    result = check(repo, read_data=True)
    assert result.ok, result.to_dict()

    for backup_id in (full.backup_id, incr.backup_id):
        out = tmp_path / f"restore-{backup_id}"
        res = restore(repo, backup_id, out)
        assert res.ok, res.errors
        assert diff_states(before, tree_state(out)) == []
    assert tree_state(store) == before  # backing up never touches the store

    native = [s.backup_id for s in list_snapshots(repo) if not s.legacy]
    assert native == [full.backup_id, incr.backup_id]


# ------------------------------------------------------------------------------------------------
# hypothesis trees

_NAME_CHARS = st.characters(
    codec="utf-8",
    categories=("Lu", "Ll", "Lo", "Nd", "Pc", "Pd", "Zs", "So"),
    include_characters="._-~é漢字🙂",
    exclude_characters="/\x00",
)
_NAMES = st.text(_NAME_CHARS, min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..") and not s.startswith(".aml-tmp-") and len(s.encode()) <= 200
)
_SIZES = st.one_of(
    st.integers(0, 3000),
    st.sampled_from([0, 1, 4096, 65536, 1024 * 1024 + 1, 3 * 1024 * 1024 + 17]),
)


@st.composite
def trees(draw: st.DrawFn) -> dict[str, tuple[str, int, int, int, int]]:
    """path -> (kind, size, seed, mtime_ns, mode); kinds "f" (file) and "d" (directory, maybe empty)."""
    dirs = draw(st.lists(st.lists(_NAMES, min_size=1, max_size=3), max_size=6))
    out: dict[str, tuple[str, int, int, int, int]] = {}
    dir_paths = {""}
    for parts in dirs:
        for i in range(1, len(parts) + 1):
            dir_paths.add("/".join(parts[:i]))
    big_budget = 2
    for d in sorted(dir_paths):
        for name in draw(st.lists(_NAMES, max_size=5, unique=True)):
            path = f"{d}/{name}" if d else name
            if path in dir_paths or any(p.startswith(path + "/") for p in dir_paths):
                continue
            size = draw(_SIZES)
            if size > 100_000:
                if big_budget == 0:
                    size = 100_000
                big_budget -= 1
            mtime = draw(st.integers(0, 2_000_000_000)) * 1_000_000_000 + draw(st.integers(0, 999_999_999))
            mode = draw(st.sampled_from([0o600, 0o644, 0o640, 0o755, 0o444]))
            out[path] = ("f", size, draw(st.integers(0, 2**32)), mtime, mode)
    for d in dir_paths - {""}:
        mtime = draw(st.integers(0, 2_000_000_000)) * 1_000_000_000
        out[d] = ("d", 0, 0, mtime, draw(st.sampled_from([0o755, 0o700, 0o750])))
    return out


def _content(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if seed % 3 == 0:  # compressible
        unit = rng.randbytes(7)
        return (unit * (size // 7 + 1))[:size]
    return rng.randbytes(size)


def _materialise(root: Path, spec: dict[str, tuple[str, int, int, int, int]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for path, (kind, size, seed, _mtime, _mode) in sorted(spec.items()):
        p = root / path
        if kind == "d":
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(_content(size, seed))
    for path, (_kind, _size, _seed, mtime, mode) in sorted(spec.items(), key=lambda kv: -kv[0].count("/")):
        p = root / path
        os.chmod(p, mode)
        os.utime(p, ns=(mtime, mtime))


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@pytest.mark.slow
@given(first=trees(), second=trees())
def test_generated_trees_round_trip(
    first: dict[str, tuple[str, int, int, int, int]], second: dict[str, tuple[str, int, int, int, int]]
) -> None:
    with tempfile.TemporaryDirectory(prefix="aml-hyp-") as tmp:
        base = Path(tmp)
        store = base / "store"
        repo = small_repo(base / "repo", pack_size=256 * 1024, chunk_size=1024 * 1024)

        _materialise(store, first)
        state1 = tree_state(store)
        s1 = create_snapshot(store, repo, incremental=False)
        assert s1.errors == []

        # second state: replace the tree, keeping the unchanged files (same name, size, seed, mtime, mode)
        for p in sorted(store.iterdir()):
            if p.is_dir():
                import shutil

                shutil.rmtree(p)
            else:
                p.unlink()
        _materialise(store, second)
        state2 = tree_state(store)
        s2 = create_snapshot(store, repo, incremental=True)
        assert s2.errors == []

        assert check(repo, read_data=True).ok
        out1, out2 = base / "out1", base / "out2"
        assert restore(repo, s1.backup_id, out1).ok
        assert restore(repo, s2.backup_id, out2).ok
        assert diff_states(state1, tree_state(out1)) == []
        assert diff_states(state2, tree_state(out2)) == []

        # exact restore over a different tree gives exactly the snapshot again
        res = restore(repo, s1.backup_id, out2)
        assert res.ok, res.errors
        assert diff_states(state1, tree_state(out2)) == []
