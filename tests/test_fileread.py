"""A full backup's files read, hashed and compressed by worker processes (aml.backup.fileread)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from aml import procpool
from aml.backup import archiver, create_snapshot, fileread, load_index, load_manifest, restore
from aml.backup.fileread import BATCH_BYTES, BATCH_FILES, _batches, read_ahead
from aml.procpool import usable_cpus
from tests.backup_helpers import make_json_store, small_repo

TWO_CPUS = pytest.mark.skipif(usable_cpus() < 2, reason="one usable CPU: the archiver reads every file itself")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _store(root: Path) -> Path:
    """A JSON store plus what takes the archiver's other paths: a file above the chunk size, an empty file,
    the same content in several files (one batch and across batches), a symlink."""
    make_json_store(root, agents=4, docs=40)
    (root / "big.bin").write_bytes(os.urandom(200_000))  # > the 64 KiB chunk size below: chunked here
    (root / "empty.json").write_bytes(b"")
    same = b'{"same": "content"}' * 50
    for where in ("agent-0/dup-a.json", "agent-0/dup-b.json", "agent-3/dup-c.json"):
        (root / where).write_bytes(same)
    os.symlink("agent-0/doc-000.json", root / "link.json")
    return root


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and not p.is_symlink()}


def _table(repo: Any, backup_id: str) -> tuple[Any, ...]:
    f = load_manifest(repo.path, backup_id).files
    assert f is not None
    return f.path, f.sha256, f.size, f.mtime_ns, f.mode, f.chunks


@TWO_CPUS
def test_a_backup_read_by_worker_processes_equals_one_read_here(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path / "store")
    monkeypatch.setattr(fileread, "PARALLEL_MIN_BYTES", 0)  # a small store: the workers all the same
    monkeypatch.setattr(fileread, "BATCH_FILES", 7)  # many batches: duplicates within one and across
    calls: list[bool] = []  # per backup: whether worker processes read its files
    real = fileread.read_ahead

    @contextlib.contextmanager
    def spy(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with real(*args, **kwargs) as ready:
            calls.append(ready is not None)
            yield ready

    monkeypatch.setattr(archiver, "read_ahead", spy)
    with_workers = small_repo(tmp_path / "a", pack_size=16 * 1024, chunk_size=64 * 1024)
    a = create_snapshot(store, with_workers, incremental=False)

    def fork_at_a_process_limit() -> int:  # EAGAIN: the batches go to two threads of this process instead
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    with monkeypatch.context() as m:
        m.setattr(os, "fork", fork_at_a_process_limit)
        in_threads = small_repo(tmp_path / "c", pack_size=16 * 1024, chunk_size=64 * 1024)
        c = create_snapshot(store, in_threads, incremental=False)
    monkeypatch.setattr(procpool, "fork_workers_possible", lambda: False)
    here = small_repo(tmp_path / "b", pack_size=16 * 1024, chunk_size=64 * 1024)
    b = create_snapshot(store, here, incremental=False)
    assert calls == [True, True, False] and not a.errors and not b.errors and not c.errors
    assert _table(in_threads, c.backup_id) == _table(here, b.backup_id)
    assert sorted(load_index(in_threads.path).packs) == sorted(load_index(here.path).packs)
    assert (a.files_read, a.objects_added, a.bytes_added, a.stored_bytes, a.packs_written) == (
        b.files_read, b.objects_added, b.bytes_added, b.stored_bytes, b.packs_written)
    assert _table(with_workers, a.backup_id) == _table(here, b.backup_id)
    # the same objects in the same order in the same packs: byte-identical pack files
    assert sorted(load_index(with_workers.path).packs) == sorted(load_index(here.path).packs)
    assert a.objects_added == len({_sha(d) for d in _tree(store).values() if len(d) <= 64 * 1024}) + 4
    out = tmp_path / "out"
    assert restore(with_workers, a.backup_id, out).ok
    assert _tree(out) == _tree(store) and os.readlink(out / "link.json") == "agent-0/doc-000.json"


def test_read_ahead_leaves_every_file_not_as_scanned_to_the_archiver(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "store"
    (root / "d").mkdir(parents=True)
    contents = {f"d/f{k}.json": (b'{"k": %d}' % k) * (50 if k == 4 else 3) for k in range(6)}
    for rel, data in contents.items():
        (root / rel).write_bytes(data)
    (root / "d" / "f6.json").write_bytes(contents["d/f0.json"])  # the same content as f0
    os.symlink("f1.json", root / "d" / "link.json")
    real = [(rel, st.st_size, st.st_mtime_ns, st.st_mode & 0o7777, st.st_ino)
            for rel in [*contents, "d/f6.json"] for st in [os.stat(root / rel)]]
    link_st = os.lstat(root / "d" / "link.json")
    files = [
        real[0],                                              # as scanned: read here
        real[6],                                              # f0's content again: no second frame
        (real[1][0], real[1][1] + 1, *real[1][2:]),           # another size: not as scanned
        (real[2][0], real[2][1], real[2][2] + 1, *real[2][3:]),  # another mtime
        ("d/gone.json", 10, 0, 0o644, 1),                     # no longer there
        real[4],                                              # above the chunk size given below
        ("d/link.json", 7, link_st.st_mtime_ns, 0o777, link_st.st_ino),  # a symlink now: never followed
        real[5],                                              # already in the repository: no frame
        (real[3][0], real[3][1], real[3][2], real[3][3], real[3][4] + 1),  # another inode
    ]
    monkeypatch.setattr(fileread, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(fileread, "BATCH_FILES", 2)  # five batches, for two worker processes
    known = {_sha(contents["d/f5.json"])}
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with read_ahead(fd, files, list(range(len(files))), known=known, object_id=_sha, dictionary=None, level=3,
                        chunk_size=len(contents["d/f4.json"]) - 1) as ready:
            if usable_cpus() < 2:
                assert ready is None  # one CPU: nothing forked, the archiver reads every file
                return
            assert ready is not None
            got = list(ready)
    finally:
        os.close(fd)
    assert len(got) == len(files)
    assert [g is None for g in got] == [False, False, True, True, True, True, True, False, True]
    first, dup, stored = got[0], got[1], got[7]
    assert first is not None and dup is not None and stored is not None
    assert first[0] == _sha(contents["d/f0.json"]) and first[2] == len(contents["d/f0.json"]) and first[1]
    assert zstandard.ZstdDecompressor().decompress(first[1]) == contents["d/f0.json"]
    assert dup == (first[0], None, first[2])  # deduplicated within its batch
    assert stored == (_sha(contents["d/f5.json"]), None, len(contents["d/f5.json"]))


def test_read_ahead_keeps_small_work_in_this_process(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_bytes(b"{}")
    st_ = os.stat(tmp_path / "a.json")
    files = [("a.json", 2, st_.st_mtime_ns, 0o644, st_.st_ino)]
    with read_ahead(0, files, [0], known=set(), object_id=_sha, dictionary=None, level=3, chunk_size=1 << 20) as r:
        assert r is None  # under PARALLEL_MIN_BYTES: no pool is started


@TWO_CPUS
def test_a_file_rewritten_after_the_scan_is_read_again_by_the_archiver(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_json_store(tmp_path / "store", agents=3, docs=20)
    victim = store / "agent-1" / "doc-005.json"
    monkeypatch.setattr(fileread, "PARALLEL_MIN_BYTES", 0)
    real_scan = archiver._scan

    def scan_then_rewrite(*args: Any) -> Any:
        out = real_scan(*args)
        victim.write_bytes(b'{"rewritten": "after the scan, before the read"}')  # a real change, at that moment
        os.utime(victim, ns=(1, 1))
        return out

    monkeypatch.setattr(archiver, "_scan", scan_then_rewrite)
    repo = small_repo(tmp_path / "repo")
    r = create_snapshot(store, repo, incremental=False)
    assert not r.errors and not r.warnings  # a stable second read: stored as read, no warning
    table = load_manifest(repo.path, r.backup_id).files
    assert table is not None
    i = table.path.index("agent-1/doc-005.json")
    assert table.sha256[i] == _sha(victim.read_bytes()) and table.mtime_ns[i] == 1
    out = tmp_path / "out"
    assert restore(repo, r.backup_id, out).ok
    assert (out / "agent-1" / "doc-005.json").read_bytes() == victim.read_bytes()


@given(st.lists(st.integers(min_value=0, max_value=2 * BATCH_BYTES), max_size=600), st.data())
def test_batches_cover_the_files_in_order_within_their_bounds(sizes: list[int], data: st.DataObject) -> None:
    files = [(f"f{k}", size, 0, 0o644, k) for k, size in enumerate(sizes)]
    todo = sorted(data.draw(st.sets(st.integers(0, max(0, len(files) - 1)))) if files else [])
    spans = _batches(files, todo)
    assert [k for a, b in spans for k in range(a, b)] == list(range(len(todo)))
    for a, b in spans:
        assert 0 < b - a <= BATCH_FILES
        assert b - a == 1 or sum(files[n][1] for n in todo[a:b]) <= BATCH_BYTES
