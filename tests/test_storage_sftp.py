"""The SFTP backend of the repository storage interface, against a real OpenSSH server (tests.sftp_server)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from aml.backup.storage import StorageError, StorageExists, StorageOptions, StorageTimeout, open_storage
from aml.backup.storage.sftp import SFTPStorage
from aml.store.atomic import TMP_PREFIX
from tests.sftp_server import SFTPServer
from tests.storage_contract import StorageContract


class TestSFTPStorage(StorageContract):
    @pytest.fixture
    def storage(self, sftp_storage: SFTPStorage) -> SFTPStorage:
        return sftp_storage


def _server_path(server: SFTPServer, storage: SFTPStorage, name: str = "") -> Path:
    path = Path(storage.root) / name if name else Path(storage.root)
    assert str(path).startswith(str(server.root))
    return path


def test_open_storage_and_url_parsing(sftp_server: SFTPServer) -> None:
    storage = open_storage(sftp_server.url("opened"), sftp_server.options)
    assert isinstance(storage, SFTPStorage)
    with storage:
        storage.write("config.json", b"{}")
        assert (sftp_server.root / "opened" / "config.json").read_bytes() == b"{}"
    s = SFTPStorage("sftp://bob:p%40ss@example.org/srv/backup/", StorageOptions())
    assert (s.user, s.host, s.port, s.root) == ("bob", "example.org", 22, "/srv/backup")
    assert "p%40ss" not in s.url and "p@ss" not in s.url
    with pytest.raises(StorageError, match="absolute path"):
        SFTPStorage("sftp://example.org", StorageOptions())
    with pytest.raises(StorageError, match="malformed"):
        SFTPStorage("sftp://example.org:notaport/x", StorageOptions())


def test_big_objects_and_ranges(sftp_storage: SFTPStorage) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    sftp_storage.write("packs/bi/big", data)
    assert sftp_storage.read("packs/bi/big") == data
    assert sftp_storage.read_range("packs/bi/big", 100_000, 1_000_000) == data[100_000:1_100_000]
    assert sftp_storage.read_range("packs/bi/big", len(data) - 10, 1_000_000) == data[-10:]
    assert sftp_storage.read_range("packs/bi/big", len(data) + 5, 1_000_000) == b""
    assert sftp_storage.read_range("packs/bi/big", 5, 0) == b""
    info = sftp_storage.stat("packs/bi/big")
    assert info is not None and info.size == len(data)


def test_list_prefix_without_slash(sftp_storage: SFTPStorage) -> None:
    sftp_storage.write("snapshots/s1.json", b"1")
    sftp_storage.write("snapshots/bodies/b1.zst", b"2")
    sftp_storage.write("snapshot_other", b"3")
    sftp_storage.write("packs/aa/p", b"4")
    assert {o.name for o in sftp_storage.list("snap")} == {"snapshots/s1.json", "snapshots/bodies/b1.zst",
                                                           "snapshot_other"}
    assert {o.name for o in sftp_storage.list("snapshots/s")} == {"snapshots/s1.json"}
    assert list(sftp_storage.list("nothing/here/")) == []


def test_unknown_host_key_refused(sftp_server: SFTPServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    options = replace(sftp_server.options, sftp_known_hosts=str(empty))
    with SFTPStorage(sftp_server.url("unknown-host"), options) as storage, pytest.raises(StorageError) as err:
        storage.stat("config.json")
    message = str(err.value)
    assert f"[127.0.0.1]:{sftp_server.port}" in message and str(empty) in message and "unknown" in message
    assert not (sftp_server.root / "unknown-host").exists()


def test_changed_host_key_refused(sftp_server: SFTPServer, tmp_path: Path) -> None:
    other = tmp_path / "known_hosts"
    # a different ed25519 key for the same host
    other.write_text(f"[127.0.0.1]:{sftp_server.port} ssh-ed25519 "
                     "AAAAC3NzaC1lZDI1NTE5AAAAIHz9w0lm2k0sWb1nq0Q1QzZ3v3nH3Xh6Yk0sN8E2Xy3V\n")
    options = replace(sftp_server.options, sftp_known_hosts=str(other))
    with SFTPStorage(sftp_server.url("changed-host"), options) as storage, pytest.raises(StorageError) as err:
        storage.stat("config.json")
    assert "does not match" in str(err.value) and str(other) in str(err.value)


def test_wrong_key_refused_and_password_hidden(sftp_server: SFTPServer, tmp_path: Path) -> None:
    import subprocess

    wrong = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    secret = "s3cr3t-Pa55word"
    url = f"sftp://{sftp_server.user}:{secret}@127.0.0.1:{sftp_server.port}{sftp_server.root}/wrong-key"
    options = replace(sftp_server.options, sftp_key_file=str(wrong))
    storage = SFTPStorage(url, options)
    assert secret not in storage.url and secret not in repr(vars(storage).get("url"))
    with storage, pytest.raises(StorageError) as err:
        storage.read("config.json")
    message = str(err.value)
    assert "authentication failed" in message and str(wrong) in message
    assert secret not in message and secret not in repr(err.value.args) and secret not in err.value.url
    # the same with the password in the options, and an unknown host key
    options = StorageOptions(timeout=5, sftp_key_file=str(wrong), sftp_password=secret,
                             sftp_known_hosts=str(tmp_path / "missing_known_hosts"))
    with SFTPStorage(url, options) as unknown, pytest.raises(StorageError) as err:
        unknown.write("x", b"x")
    assert secret not in str(err.value) and "does not exist" in str(err.value)


def test_connect_refused_and_banner_timeout(sftp_server: SFTPServer) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)  # accepts (in the backlog) but never says anything
        port = silent.getsockname()[1]
        options = replace(sftp_server.options, timeout=1)
        started = time.monotonic()
        with SFTPStorage(f"sftp://u@127.0.0.1:{port}/x", options) as storage, pytest.raises(StorageTimeout):
            storage.stat("a")
        assert time.monotonic() - started < 5
    with SFTPStorage(f"sftp://u@127.0.0.1:{port}/x", options) as storage, pytest.raises(StorageError) as err:
        storage.stat("a")  # nobody listens now
    assert not isinstance(err.value, StorageTimeout) and f"127.0.0.1:{port}" in str(err.value)


@pytest.fixture
def stopped_guard() -> Iterator[list[int]]:
    """Process ids the test SIGSTOPped: always continued at teardown."""
    stopped: list[int] = []
    yield stopped
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@pytest.mark.slow
def test_timeout_when_server_stops_answering(sftp_server: SFTPServer, stopped_guard: list[int]) -> None:
    before = set(sftp_server.descendants())
    options = replace(sftp_server.options, timeout=2)
    with SFTPStorage(sftp_server.url("stalled"), options) as storage:
        storage.write("packs/aa/p1", b"p" * 100_000)
        serving = [pid for pid in sftp_server.descendants() if pid not in before]
        assert serving, "no sshd process serving the connection"
        for pid in serving:
            os.kill(pid, signal.SIGSTOP)
            stopped_guard.append(pid)
        started = time.monotonic()
        with pytest.raises(StorageTimeout) as err:
            storage.read("packs/aa/p1")
        elapsed = time.monotonic() - started
        assert 1.5 <= elapsed < 6, elapsed
        assert "packs/aa/p1" in str(err.value)
        for pid in serving:
            os.kill(pid, signal.SIGCONT)
        # the stalled connection was dropped: the next operation connects again
        assert storage.read("packs/aa/p1") == b"p" * 100_000


def test_reconnects_after_connection_drop(sftp_server: SFTPServer) -> None:
    before = set(sftp_server.descendants())
    with SFTPStorage(sftp_server.url("dropped"), sftp_server.options) as storage:
        storage.write("a", b"1")
        for pid in [p for p in sftp_server.descendants() if p not in before]:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        assert storage.read("a") == b"1"
        storage.write("b", b"2")
        assert {o.name for o in storage.list()} == {"a", "b"}


def test_write_once_race(sftp_server: SFTPServer) -> None:
    url = sftp_server.url("race")
    a, b = SFTPStorage(url, sftp_server.options), SFTPStorage(url, sftp_server.options)
    try:
        a.write("warmup-a", b"")
        b.write("warmup-b", b"")
        for round_ in range(5):
            name = f"packs/rr/obj{round_}"
            payloads = {"a": os.urandom(700_000) + b"A", "b": os.urandom(600_000) + b"B"}
            results: dict[str, str] = {}
            barrier = threading.Barrier(2)

            def run(label: str, storage: SFTPStorage, name: str = name, payloads: dict[str, bytes] = payloads,
                    results: dict[str, str] = results, barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                try:
                    storage.write(name, payloads[label])
                    results[label] = "won"
                except StorageExists:
                    results[label] = "exists"
                except StorageError as exc:  # pragma: no cover - reported by the assertion below
                    results[label] = repr(exc)

            threads = [threading.Thread(target=run, args=("a", a)), threading.Thread(target=run, args=("b", b))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert sorted(results.values()) == ["exists", "won"], results
            winner = next(label for label, r in results.items() if r == "won")
            assert a.read(name) == payloads[winner] and b.read(name) == payloads[winner]
        leftovers = [p for p in (sftp_server.root / "race").rglob("*") if p.name.startswith(TMP_PREFIX)]
        assert leftovers == []
    finally:
        a.close()
        b.close()


def test_existing_write_once_object_untouched(sftp_server: SFTPServer, sftp_storage: SFTPStorage,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    sftp_storage.write("index/i1.json", b"first")
    path = _server_path(sftp_server, sftp_storage, "index/i1.json")
    os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = os.stat(path)
    with pytest.raises(StorageExists):
        sftp_storage.write("index/i1.json", b"second")
    # the late check: the early stat misses the object, the rename refuses to replace it
    monkeypatch.setattr(sftp_storage, "_exists", lambda sftp, p: False)
    with pytest.raises(StorageExists) as err:
        sftp_storage.write("index/i1.json", b"third")
    assert "index/i1.json" in str(err.value)
    after = os.stat(path)
    assert (after.st_mtime_ns, after.st_ino, after.st_size) == (before.st_mtime_ns, before.st_ino, before.st_size)
    assert path.read_bytes() == b"first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["i1.json"]  # no temporary left


def test_temporaries_skipped_and_parent_file_conflict(sftp_server: SFTPServer,
                                                      sftp_storage: SFTPStorage) -> None:
    sftp_storage.write("locks/l1", b"x")
    (_server_path(sftp_server, sftp_storage, "locks") / f"{TMP_PREFIX}l2-abc").write_bytes(b"partial")
    assert [o.name for o in sftp_storage.list()] == ["locks/l1"]
    with pytest.raises(StorageError, match="not a directory"):
        sftp_storage.write("locks/l1/child", b"y")
    sftp_storage.delete("locks/l1")
    assert sftp_storage.stat("locks/l1") is None
    assert sftp_storage.stat("locks") is None  # a directory is not an object
