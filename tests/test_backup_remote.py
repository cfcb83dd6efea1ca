"""Backups to repositories on other hosts (issue 11, part 2): a real SSH server and an S3-compatible server
(moto's server mode), both started by the tests.

The done-when of the issue: on a real Loom store with a symlink and a non-UTF-8 name, an encrypted backup
to each backend restores byte-identical (names, links, mtimes) through another cache (another host); a
wrong password and a flipped byte are each caught with a clear message. Plus: the write order (a backend
that stops answering mid-backup leaves no visible snapshot, only orphans that verify names and rotate
removes), forget/prune on the remote, two hosts sharing one repository, and the task/CLI settings.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aml.backup import (
    Repository,
    RetentionPolicy,
    WrongPassword,
    check,
    create_snapshot,
    restore,
    rotate,
)
from aml.backup import remote as remote_mod
from aml.backup.storage import Storage, StorageOptions, StorageTimeout, open_storage
from tests.realdata import extract_loom
from tests.test_backup_filekinds import tree

PASSWORD = "correct horse battery staple"
BAD_NAME = b"n\xfeote.json"  # not UTF-8


@dataclass
class Backend:
    """One remote repository location and how to reach it."""

    kind: str
    url: str
    options: StorageOptions
    proc_pid: int | None  # the server process to SIGSTOP (S3); None when not applicable

    def storage(self) -> Storage:
        return open_storage(self.url, self.options)


@pytest.fixture(params=["sftp", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    name = f"repo-{tmp_path.name}"
    if request.param == "s3":
        server = request.getfixturevalue("s3_env")
        yield Backend("s3", server.url(server.new_bucket(), name), StorageOptions(timeout=5.0), server.proc.pid)
    else:
        server = request.getfixturevalue("sftp_server")
        yield Backend("sftp", server.url(name), server.options, None)


@pytest.fixture
def loom_store(tmp_path: Path) -> Path:
    """A real Loom store plus a symlink, a dangling absolute symlink and a file with a non-UTF-8 name."""
    store = extract_loom("loom-plain-v1.0", tmp_path / "src")
    agent = store / "code-reviewer"
    (agent / "latest.json").symlink_to("patterns.json")
    (store / "gone").symlink_to("/nonexistent/never.json")
    with open(os.path.join(os.fsencode(agent), BAD_NAME), "wb") as fh:
        fh.write(b'{"note": "written by an agent with a latin-1 name"}\n')
    for p in (agent / "latest.json", store / "gone"):
        os.utime(p, ns=(1_700_000_000_000_000_001,) * 2, follow_symlinks=False)
    return store


def _repo(backend: Backend, cache: Path, password: str | None = PASSWORD) -> Repository:
    return Repository(backend.url, password=password, cache_dir=cache, storage_options=backend.options)


def test_encrypted_backup_restores_byte_identical_on_another_host(backend: Backend, loom_store: Path,
                                                                  tmp_path: Path) -> None:
    repo = _repo(backend, tmp_path / "cache-a").init(encrypt=True)
    assert repo.remote and repo.encrypted
    before = tree(loom_store)
    res = create_snapshot(loom_store, repo, incremental=False)
    assert res.errors == [] and res.link_count == 2 and res.repository == repo.url
    # nothing of the store is in the cache but small metadata, and packs are only in the storage
    assert not any((tmp_path / "cache-a" / "packs").rglob("*")) or all(
        p.is_dir() for p in (tmp_path / "cache-a" / "packs").rglob("*"))
    with backend.storage() as st:
        names = {o.name for o in st.list()}
        assert any(n.startswith("packs/") for n in names) and f"snapshots/{res.backup_id}.json" in names
        assert any(n.startswith("keys/") for n in names) and "config.json" in names
        pack = next(n for n in names if n.startswith("packs/"))
        assert b"latin-1" not in st.read(pack) and b"patterns" not in st.read(pack)  # encrypted at rest
    # another host: an empty cache, the same URL and password
    other = _repo(backend, tmp_path / "cache-b")
    assert other.snapshot_ids() == [res.backup_id]
    out = tmp_path / "out"
    done = restore(other, res.backup_id, out)
    assert done.ok, done.errors
    assert tree(out) == before
    result = check(other, read_data=True)
    assert result.ok, [p.to_dict() for p in result.errors]
    assert result.packs_read >= 1 and result.orphans.get("packs", 0) == 0


@pytest.mark.slow
def test_wrong_password_and_flipped_byte_are_caught(backend: Backend, loom_store: Path, tmp_path: Path) -> None:
    repo = _repo(backend, tmp_path / "cache").init(encrypt=True)
    res = create_snapshot(loom_store, repo, incremental=False)
    with pytest.raises(WrongPassword) as err:
        _repo(backend, tmp_path / "cache-wrong", password="not it").open()
    assert "\n" not in str(err.value) and "wrong password" in str(err.value) and PASSWORD not in str(err.value)
    with backend.storage() as st:
        pack = max((o for o in st.list("packs/")), key=lambda o: o.size).name
        data = bytearray(st.read(pack))
        data[len(data) // 2] ^= 0x01
        st.delete(pack)
        st.write(pack, bytes(data))
    result = check(_repo(backend, tmp_path / "cache-check"), read_data=True)
    assert not result.ok
    assert any(p.location == pack for p in result.errors), [p.to_dict() for p in result.errors]
    assert res.backup_id in result.damaged_snapshots


@pytest.mark.slow
def test_incremental_rotate_and_a_second_host(backend: Backend, loom_store: Path, tmp_path: Path) -> None:
    a = _repo(backend, tmp_path / "cache-a", password=None).init()
    first = create_snapshot(loom_store, a, incremental=False)
    doc = next(p for p in sorted(loom_store.rglob("*.json")) if p.is_file() and not p.is_symlink())
    doc.write_text(doc.read_text() + " ")
    b = _repo(backend, tmp_path / "cache-b", password=None)
    second = create_snapshot(loom_store, b, incremental=True)  # from the other host: sees the first as parent
    assert second.parent_backup_id == first.backup_id and second.files_unchanged > 0
    # the first host's cache catches up when it next locks the repository
    res = rotate(a, RetentionPolicy(keep_last=1), orphan_grace=0)
    assert [s.backup_id for s in res.removed] == [first.backup_id]
    with backend.storage() as st:
        snaps = sorted(o.name for o in st.list("snapshots/") if not o.name.startswith("snapshots/bodies/"))
        assert snaps == [f"snapshots/{second.backup_id}.json"]
        assert len([o for o in st.list("index/")]) == 1
    result = check(_repo(backend, tmp_path / "cache-c", password=None), read_data=True)
    assert result.ok and result.snapshots_checked == 1
    out = tmp_path / "out"
    assert restore(_repo(backend, tmp_path / "cache-d", password=None), second.backup_id, out).ok
    assert tree(out) == tree(loom_store)


@pytest.mark.slow  # ~10 s: waits out the backend's timeouts
def test_backend_that_stops_answering_leaves_no_visible_snapshot(s3_env: Any, loom_store: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The S3 server is stopped for real (SIGSTOP) right before the index is uploaded: the packs are there,
    the upload of the index times out, the backup fails, and the storage shows no snapshot; verify names the
    orphaned packs and rotate removes them."""
    backend = Backend("s3", s3_env.url(s3_env.new_bucket(), "repo"), StorageOptions(timeout=1.0), s3_env.proc.pid)
    repo = _repo(backend, tmp_path / "cache", password=None).init()
    real = remote_mod.published
    stopped: list[str] = []

    def stop_before_index(root: Any, path: Any, data: bytes | None = None) -> None:
        rel = os.path.relpath(path, root)
        if rel.startswith("index/") and not stopped:
            stopped.append(rel)
            os.kill(s3_env.proc.pid, signal.SIGSTOP)
        real(root, path, data)

    monkeypatch.setattr(remote_mod, "published", stop_before_index)
    try:
        with pytest.raises(StorageTimeout) as err:
            create_snapshot(loom_store, repo, incremental=False)
    finally:
        os.kill(s3_env.proc.pid, signal.SIGCONT)
    monkeypatch.setattr(remote_mod, "published", real)
    assert stopped == ["index/" + stopped[0][6:]] and "s3://" in str(err.value)
    with backend.storage() as st:
        names = {o.name for o in st.list()}
    assert not any(n.startswith("snapshots/") for n in names)
    assert any(n.startswith("packs/") for n in names)
    fresh = _repo(backend, tmp_path / "cache-2", password=None)
    assert fresh.open().snapshot_ids() == []
    result = check(fresh)
    assert result.ok and result.orphans["packs"] >= 1
    assert any(w.kind == "pack_unindexed" for w in result.warnings)
    rotate(fresh, RetentionPolicy(keep_last=1), orphan_grace=0)
    with backend.storage() as st:
        assert not any(o.name.startswith("packs/") for o in st.list("packs/"))
    # and a backup after that works
    assert create_snapshot(loom_store, fresh, incremental=False).errors == []


def test_remote_repository_through_the_settings(s3_env: Any, loom_store: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``AML_BACKUP_ROOT=s3://...``: the task's repository is the remote one, cached under AML_HOME; the catalog
    and the summary name the URL, never the cache."""
    from tasks.snapshots import repository_for
    from workers.settings import Settings

    url = s3_env.url(s3_env.new_bucket(), "fleet")
    settings = Settings(backup_root=url, home=tmp_path / "home", backup_timeout=7)
    repo = repository_for(loom_store, settings)
    assert repo.remote and repo.url == url and repo.path.is_relative_to(tmp_path / "home" / "backup-cache")
    res = create_snapshot(loom_store, repo, incremental=False)
    assert res.repository == url
    summary = json.loads(open_storage(url).read("backup_metadata.json"))
    assert [b["backup_id"] for b in summary["backups"]] == [res.backup_id]
    assert summary["backups"][0]["backup_path"] == f"{url}/snapshots/{res.backup_id}.json"
    assert remote_mod.mirror_for(repo.path) is not None


@pytest.mark.slow  # ~10 s: three CLI processes over a real sshd
def test_cli_over_sftp_through_the_settings(sftp_server: Any, loom_store: Path, tmp_path: Path) -> None:
    """What an operator runs: ``AML_BACKUP_ROOT=sftp://...`` with the key and known_hosts settings, the real
    console entry point in subprocesses: init --encrypt, create, list, verify --read-data, restore; then a
    wrong password and an unknown host key, each one clear error line and exit 2."""
    import subprocess
    import sys

    from tests.fixtures_runtime import REPO, runtime_env

    home = tmp_path / "home"
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    url = sftp_server.url(f"cli-{tmp_path.name}")
    env = runtime_env(home, "redis://127.0.0.1:1/0") | {
        "AML_LOCK_URL": "none://", "AML_BACKUP_ROOT": url, "AML_BACKUP_PASSWORD_FILE": str(pw),
        "AML_BACKUP_SFTP_KEY_FILE": str(sftp_server.key_file),
        "AML_BACKUP_SFTP_KNOWN_HOSTS": str(sftp_server.known_hosts), "AML_BACKUP_TIMEOUT": "20"}

    def aml(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli.main", str(loom_store), "backup", *args], cwd=REPO,
                              env=env | extra, capture_output=True, text=True, timeout=180)

    init = aml("init", "--encrypt", "--json")
    assert init.returncode == 0, init.stderr
    assert json.loads(init.stdout)["repository"] == url and json.loads(init.stdout)["encrypted"] is True
    created = aml("create", "--json")
    assert created.returncode == 0, created.stderr + created.stdout
    snap = json.loads(created.stdout)
    assert snap["repository"] == url and snap["link_count"] == 2
    listed = json.loads(aml("list", "--json").stdout)
    assert listed["repository"] == url and [s["backup_id"] for s in listed["snapshots"]] == [snap["backup_id"]]
    verified = aml("verify", "--read-data", "--json")
    assert verified.returncode == 0 and json.loads(verified.stdout)["ok"] is True, verified.stdout
    out = tmp_path / "restored"
    restored = aml("restore", "--backup-id", snap["backup_id"], "--target", str(out), "--json")
    assert restored.returncode == 0, restored.stderr + restored.stdout
    assert tree(out) == tree(loom_store)
    assert not any(p.is_file() for p in (home / "backup-cache").rglob("packs/*/*"))  # packs are never cached

    bad = tmp_path / "bad"
    bad.write_text("not the password\n")
    wrong = aml("list", AML_BACKUP_PASSWORD_FILE=str(bad))
    text = wrong.stdout + wrong.stderr
    assert wrong.returncode == 2 and "wrong password" in text and "Traceback" not in text, text
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    unknown = aml("list", AML_BACKUP_SFTP_KNOWN_HOSTS=str(empty))
    text = unknown.stdout + unknown.stderr
    assert unknown.returncode == 2 and "127.0.0.1" in text and "Traceback" not in text, text


@pytest.mark.slow
def test_drill_and_a_keyspace_snapshot_on_a_remote_repository(s3_env: Any, loom_store: Path, tmp_path: Path) -> None:
    """The other users of a repository work on a remote one too: a restore drill of a file snapshot, and a
    Redis keyspace snapshot restored into another database of a private redis-server."""
    import redis

    from aml.backup.drill import run_drill
    from aml.backup.keyspace import create_keyspace_snapshot
    from aml.backup.keyspace_restore import restore_keyspace
    from tests.fixtures_runtime import start_redis_server

    backend = Backend("s3", s3_env.url(s3_env.new_bucket(), "shared"), StorageOptions(timeout=10), None)
    repo = _repo(backend, tmp_path / "cache").init(encrypt=True)
    snap = create_snapshot(loom_store, repo, incremental=False)
    drill = run_drill(_repo(backend, tmp_path / "cache-drill"), snap.backup_id, scratch_root=tmp_path / "scratch")
    assert drill.passed and drill.files_checked > 10 and drill.failures == [] and drill.repository == backend.url

    (tmp_path / "redis").mkdir()
    proc, port = start_redis_server(tmp_path / "redis")
    try:
        source, target = redis.Redis(port=port, db=1), redis.Redis(port=port, db=2)
        for i in range(50):
            source.set(f"agent:mem:{i}", f"value {i}".encode(), ex=3600)
        source.hset("agent:profile", mapping={"name": "coder", "turns": "42"})
        ks = create_keyspace_snapshot(source, repo, source=f"redis://127.0.0.1:{port}/1")
        assert ks.keys == 51 and ks.repository == backend.url
        report = restore_keyspace(_repo(backend, tmp_path / "cache-ks"), ks.backup_id, target,
                                  target=f"redis://127.0.0.1:{port}/2")
        assert report["written"] == 51 and target.get("agent:mem:7") == b"value 7"
        assert target.hgetall("agent:profile") == {b"name": b"coder", b"turns": b"42"}
    finally:
        proc.kill()
        proc.wait()
