"""Files that change while the archiver reads them (DESIGN.md, The backup repository).

A snapshot never claims bytes it did not store: the manifest entry's size and sha256 always describe
exactly the stored bytes. A file found changed after its read is read again from its start (streaming
into ``chunk_size`` objects whatever it grew to); if it is still changing it is stored as read and
named in the result's ``warnings`` (restic's behaviour).

A real file changing mid-read cannot be timed deterministically, so these tests wrap ``os.read`` to
modify the file right after a read of it returns.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from aml.backup import check, create_snapshot, restore
from aml.backup.manifest import load_manifest
from tests.backup_helpers import small_repo

CHUNK = 1024
OLD_NS = 1_700_000_000_000_000_000


def _make_store(root: Path, files: dict[str, bytes]) -> Path:
    (root / "agent-a").mkdir(parents=True)
    for name, data in files.items():
        p = root / "agent-a" / name
        p.write_bytes(data)
        os.utime(p, ns=(OLD_NS, OLD_NS))  # any later write moves mtime, whatever the clock granularity
    return root


def _hook_reads(monkeypatch: pytest.MonkeyPatch, target: Path, after_read: Callable[[int], None]) -> list[int]:
    """Call ``after_read(n)`` (n = 0, 1, ...) after each ``os.read`` of ``target`` returns."""
    ino = os.stat(target).st_ino
    real_read = os.read
    calls: list[int] = []

    def read(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        if os.fstat(fd).st_ino == ino:
            after_read(len(calls))
            calls.append(len(data))
        return data

    monkeypatch.setattr(os, "read", read)
    return calls


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


def _entry(repo_path: Path, backup_id: str, rel: str) -> tuple[int, str]:
    m = load_manifest(repo_path, backup_id)
    assert m.files is not None
    i = m.files.path.index(rel)
    return m.files.size[i], m.files.sha256[i]


def _restored_matches_manifest(repo_path: Path, backup_id: str, rel: str, out: Path) -> bytes:
    res = restore(repo_path, backup_id, out)
    assert res.ok, res.errors
    data = (out / rel).read_bytes()
    size, sha = _entry(repo_path, backup_id, rel)
    assert len(data) == size
    assert hashlib.sha256(data).hexdigest() == sha
    return data


def test_unchanged_files_take_the_hot_path_without_warnings(tmp_path: Path) -> None:
    store = _make_store(tmp_path / "store", {"a.json": b"x" * 600, "big.bin": os.urandom(3 * CHUNK + 7)})
    repo = small_repo(tmp_path / "repo", chunk_size=CHUNK)
    r = create_snapshot(store, repo, incremental=False)
    assert r.errors == [] and r.warnings == []
    assert load_manifest(repo.path, r.backup_id).stats["files_changed_during_read"] == 0
    data = _restored_matches_manifest(repo.path, r.backup_id, "agent-a/big.bin", tmp_path / "out")
    assert data == (store / "agent-a/big.bin").read_bytes()


def test_small_file_growing_past_chunk_size_once_is_reread_and_chunked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rel = "agent-a/grows.json"
    store = _make_store(tmp_path / "store", {"grows.json": b"a" * 600, "other.json": b"{}"})
    target = store / rel
    repo = small_repo(tmp_path / "repo", chunk_size=CHUNK)
    extra = os.urandom(3 * CHUNK + 100)
    _hook_reads(monkeypatch, target, lambda n: _append(target, extra) if n == 0 else None)

    r = create_snapshot(store, repo, incremental=False)
    monkeypatch.undo()

    assert r.errors == []
    assert r.warnings == []  # the second read was stable: a consistent (newer) copy, stored whole
    size, sha = _entry(repo.path, r.backup_id, rel)
    current = target.read_bytes()
    assert size == len(current) == 600 + len(extra)
    assert sha == hashlib.sha256(current).hexdigest()
    m = load_manifest(repo.path, r.backup_id)
    assert m.files is not None
    assert len(m.files.objects_of(m.files.path.index(rel))) == 4  # split into chunk_size objects
    assert r.total_size_bytes == size + 2
    out = tmp_path / "out"
    assert _restored_matches_manifest(repo.path, r.backup_id, rel, out) == current
    assert os.stat(out / rel).st_mtime_ns == os.stat(target).st_mtime_ns  # described as it was read
    assert check(repo, read_data=True).ok


def test_file_still_growing_is_stored_as_read_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rel = "agent-a/log.jsonl"
    store = _make_store(tmp_path / "store", {"log.jsonl": b"line\n" * 100, "other.json": b"{}"})
    target = store / rel
    repo = small_repo(tmp_path / "repo", chunk_size=CHUNK)
    _hook_reads(monkeypatch, target, lambda n: _append(target, b"more\n" * 300) if n < 20 else None)

    r = create_snapshot(store, repo, incremental=False)
    monkeypatch.undo()

    assert r.errors == []
    assert [w["path"] for w in r.warnings] == [rel]
    assert "changed while being read" in r.warnings[0]["reason"]
    assert load_manifest(repo.path, r.backup_id).stats["files_changed_during_read"] == 1
    data = _restored_matches_manifest(repo.path, r.backup_id, rel, tmp_path / "out")
    current = target.read_bytes()
    assert len(data) > 500 and current.startswith(data)
    assert check(repo, read_data=True).ok

    # the entry keeps the scan's mtime: the next incremental reads the file again
    r2 = create_snapshot(store, repo, incremental=True)
    assert r2.backup_type == "incremental" and r2.files_read == 1 and r2.warnings == []
    assert _restored_matches_manifest(repo.path, r2.backup_id, rel, tmp_path / "out2") == current


def test_large_file_truncated_while_being_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rel = "agent-a/big.bin"
    original = os.urandom(5 * CHUNK)
    store = _make_store(tmp_path / "store", {"big.bin": original})
    target = store / rel
    repo = small_repo(tmp_path / "repo", chunk_size=CHUNK)

    def shrink(n: int) -> None:
        if n == 0:
            os.truncate(target, CHUNK + 300)

    calls = _hook_reads(monkeypatch, target, shrink)
    r = create_snapshot(store, repo, incremental=False)
    monkeypatch.undo()

    assert calls  # the hook ran
    assert [w["path"] for w in r.warnings] == [rel]
    data = _restored_matches_manifest(repo.path, r.backup_id, rel, tmp_path / "out")
    assert data == original[: CHUNK + 300]
    assert r.total_size_bytes == CHUNK + 300


def test_small_file_truncated_to_empty_after_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rel = "agent-a/a.json"
    store = _make_store(tmp_path / "store", {"a.json": b"z" * 700})
    target = store / rel
    repo = small_repo(tmp_path / "repo", chunk_size=CHUNK)
    _hook_reads(monkeypatch, target, lambda n: os.truncate(target, 0) if n == 0 else None)

    r = create_snapshot(store, repo, incremental=False)
    monkeypatch.undo()

    assert r.errors == []
    size, sha = _entry(repo.path, r.backup_id, rel)
    assert (size, sha) == (0, hashlib.sha256(b"").hexdigest())  # the stable re-read saw an empty file
    assert _restored_matches_manifest(repo.path, r.backup_id, rel, tmp_path / "out") == b""
