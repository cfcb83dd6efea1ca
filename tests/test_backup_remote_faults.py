"""Faults of a remote repository that a real server cannot be made to produce on demand: a storage whose
reads of some objects fail (injected in a :class:`LocalStorage` used as the remote). The servers themselves
(sshd, moto) are exercised in ``test_backup_remote.py``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from aml.backup import LockError, Repository, check, create_snapshot, remote, restore
from aml.backup import lock as lock_mod
from aml.backup.storage import StorageExists, StorageTimeout
from aml.backup.storage.local import LocalStorage
from tests.backup_helpers import make_json_store, tree_state


class FlakyStorage(LocalStorage):
    """A local directory as a remote storage; reads of names starting with ``failing`` time out."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.url = f"flaky://{root}"
        self.failing: tuple[str, ...] = ()

    def read(self, name: str) -> bytes:
        if self.failing and name.startswith(self.failing):
            raise StorageTimeout("did not answer within 1 s", url=self.url, name=name)
        return super().read(name)


@pytest.fixture
def flaky(tmp_path: Path) -> FlakyStorage:
    return FlakyStorage(tmp_path / "remote")


def _repo(storage: FlakyStorage, cache: Path) -> Repository:
    return Repository(storage.url, storage=storage, cache_dir=cache)


def test_a_storage_that_stops_answering_fails_verify_and_restore_instead_of_calling_data_damaged(
        flaky: FlakyStorage, tmp_path: Path) -> None:
    store = make_json_store(tmp_path / "store", agents=2, docs=10)
    res = create_snapshot(store, _repo(flaky, tmp_path / "cache").init(), incremental=False)
    assert check(_repo(flaky, tmp_path / "cache"), read_data=True).ok
    flaky.failing = ("packs/",)
    with pytest.raises(StorageTimeout, match="packs/"):
        check(_repo(flaky, tmp_path / "cache2"), read_data=True)
    with pytest.raises(StorageTimeout):
        restore(_repo(flaky, tmp_path / "cache3"), res.backup_id, tmp_path / "out")
    flaky.failing = ()
    out = tmp_path / "out2"
    assert restore(_repo(flaky, tmp_path / "cache3"), res.backup_id, out).ok
    assert tree_state(out) == tree_state(store)


def test_a_lock_of_another_host_that_cannot_be_read_blocks_an_exclusive_lock(flaky: FlakyStorage,
                                                                            tmp_path: Path) -> None:
    repo = _repo(flaky, tmp_path / "cache").init()
    other = {"exclusive": False, "operation": "backup", "hostname": "elsewhere", "pid": 1, "pid_start": None,
             "time": "2099-01-01T00:00:00Z"}
    flaky.write("locks/feedface.json", json.dumps(other).encode(), once=False)
    flaky.failing = ("locks/feedface",)
    with pytest.raises(LockError, match="could not be read"), repo.lock(exclusive=True, operation="prune"):
        pass
    flaky.failing = ()
    with pytest.raises(LockError, match=r"shared lock feedface\.json"), repo.lock(exclusive=True):
        pass
    flaky.delete("locks/feedface.json")
    with repo.lock(exclusive=True):
        assert [o.name for o in flaky.list("locks/")] != []
    assert list(flaky.list("locks/")) == []


def test_a_held_remote_lock_is_refreshed_in_the_background_and_gone_after_release(
        flaky: FlakyStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock_mod, "REFRESH_EVERY", 0.05)
    repo = _repo(flaky, tmp_path / "cache").init()
    with repo.lock(exclusive=False, operation="verify"):
        (name,) = [o.name for o in flaky.list("locks/")]
        first = json.loads(flaky.read(name))["time"]
        deadline = time.monotonic() + 10
        while json.loads(flaky.read(name))["time"] == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert json.loads(flaky.read(name))["time"] != first
    time.sleep(0.2)  # a refresh racing the release must not bring the lock back
    assert list(flaky.list("locks/")) == []


def test_a_retried_write_that_finds_its_own_object_succeeds(flaky: FlakyStorage, tmp_path: Path) -> None:
    repo = _repo(flaky, tmp_path / "cache").init()
    header = repo.path / "snapshots" / "full_x.json"
    header.write_bytes(b"sealed header")
    remote.published(repo.path, header, b"sealed header")
    remote.published(repo.path, header, b"sealed header")  # the same bytes: a retry of our own write
    with pytest.raises(StorageExists):
        remote.published(repo.path, header, b"another host's header")
    assert flaky.read("snapshots/full_x.json") == b"sealed header"


def test_pull_keeps_what_another_process_is_writing_and_drops_what_the_storage_lost(flaky: FlakyStorage,
                                                                                    tmp_path: Path) -> None:
    import os

    repo = _repo(flaky, tmp_path / "cache").init()
    cache = repo.path
    pending = cache / "packs" / "ab" / (".aml-tmp-" + "x")
    pending.parent.mkdir(parents=True, exist_ok=True)
    pending.write_bytes(b"being written")
    stale = cache / "packs" / "cd" / ("cd" + "0" * 62)
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"an upload that failed long ago")
    os.utime(stale, (time.time() - 2 * remote.TEMP_GRACE,) * 2)
    gone = cache / "index" / ("ee" * 32 + ".json")
    gone.write_bytes(b"an index another host's prune deleted")
    archived = cache / "archives" / "agent" / "decisions_1.json.gz"
    archived.parent.mkdir(parents=True, exist_ok=True)
    archived.write_bytes(b"never touched")
    repo.refresh()
    assert pending.exists() and not stale.exists() and not gone.exists() and archived.exists()


def test_prune_archives_of_a_store_with_a_remote_repository_live_under_aml_home(tmp_path: Path) -> None:
    from tasks.snapshots import archive_root
    from workers.settings import Settings

    store = tmp_path / "p" / "memory"
    store.mkdir(parents=True)
    remote_settings = Settings(backup_root="s3://bucket/prefix", home=tmp_path / "home")
    assert archive_root(store, remote_settings).is_relative_to(tmp_path / "home" / "prune-archives")
    assert archive_root(store, remote_settings) == archive_root(store, remote_settings)
    local_settings = Settings(home=tmp_path / "home")
    assert archive_root(store, local_settings) == tmp_path / "p" / "memory-backup" / "archives"


def test_pull_ignores_names_that_would_leave_the_cache(flaky: FlakyStorage, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from aml.backup.storage import ObjectInfo

    repo = _repo(flaky, tmp_path / "cache").init()
    real_list = flaky.list

    def hostile(prefix: str = ""):
        yield from real_list(prefix)
        yield ObjectInfo("index/../../escape.json", 3, 0.0)
        yield ObjectInfo("/etc/escape.json", 3, 0.0)

    monkeypatch.setattr(flaky, "list", hostile)
    repo.refresh()
    assert not (tmp_path / "escape.json").exists() and repo.open().config.id
