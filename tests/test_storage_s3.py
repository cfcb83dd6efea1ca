"""The S3 backend of the repository storage interface, against moto's S3 server in a separate process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from aml.backup.storage import (
    StorageError,
    StorageExists,
    StorageNotFound,
    StorageOptions,
    StorageTimeout,
    open_storage,
)
from aml.backup.storage.s3 import S3Storage
from tests.s3_server import S3Server
from tests.storage_contract import StorageContract


class TestS3Storage(StorageContract):
    @pytest.fixture
    def storage(self, s3_storage: S3Storage) -> S3Storage:
        return s3_storage


def test_open_storage_and_urls(s3_env: S3Server) -> None:
    bucket = s3_env.new_bucket()
    storage = open_storage(f"s3://{bucket}/a/b/")
    assert isinstance(storage, S3Storage)
    assert storage.url == f"s3://{bucket}/a/b" and storage.prefix == "a/b"
    storage.write("x", b"1")
    assert s3_env.client().get_object(Bucket=bucket, Key="a/b/x")["Body"].read() == b"1"
    storage.close()
    for bad in (
        "s3://",
        "s3:///prefix",
        "s3://key:secret@bucket/p",
        "s3://bucket:9000/p",
        "s3://b/p?x=1",
        "s3://bucket/a/../b",
    ):
        with pytest.raises(StorageError) as err:
            S3Storage(bad)
        assert "secret" not in str(err.value)


def test_missing_bucket_is_a_clear_error(s3_env: S3Server) -> None:
    storage = S3Storage(s3_env.url("aml-no-such-bucket", "repo"))
    for op in (
        lambda: storage.read("config.json"),
        lambda: storage.write("config.json", b"{}"),
        lambda: list(storage.list()),
        lambda: storage.read_range("config.json", 0, 4),
        lambda: storage.delete("config.json"),
    ):
        with pytest.raises(StorageError) as err:
            op()
        assert not isinstance(err.value, StorageNotFound)
        message = str(err.value)
        assert "bucket 'aml-no-such-bucket' does not exist" in message
        assert message.startswith("s3://aml-no-such-bucket/repo")
    storage.close()


def test_write_once_never_replaces_an_existing_object(s3_storage: S3Storage, s3_env: S3Server) -> None:
    s3_storage.write("packs/ab/ab01", b"first")
    with pytest.raises(StorageExists) as err:
        s3_storage.write("packs/ab/ab01", b"second")
    assert str(err.value) == f"{s3_storage.url}/packs/ab/ab01: object exists"
    assert s3_storage.read("packs/ab/ab01") == b"first"


@pytest.mark.slow
def test_conditional_put_refuses_an_object_created_after_the_check(
    s3_storage: S3Storage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another writer creates the object between our HEAD and our PUT: the server refuses (If-None-Match)."""
    s3_storage.write("index/i1.json", b"theirs")
    monkeypatch.setattr(s3_storage, "stat", lambda name: None)  # the HEAD check "missed" it
    with pytest.raises(StorageExists):
        s3_storage.write("index/i1.json", b"ours")
    monkeypatch.undo()
    assert s3_storage.read("index/i1.json") == b"theirs"


def test_upload_carries_content_md5(s3_storage: S3Storage) -> None:
    sent: list[dict[str, Any]] = []
    s3_storage.client.meta.events.register(
        "before-send.s3.PutObject", lambda request, **kw: sent.append(dict(request.headers))
    )
    s3_storage.write("keys/k1", b"abc")
    assert sent and sent[0]["Content-MD5"] in (b"kAFQmDzST7DWlj99KOF/cg==", "kAFQmDzST7DWlj99KOF/cg==")


def test_read_range_edges(s3_storage: S3Storage) -> None:
    s3_storage.write("packs/00/p", b"0123456789")
    s3_storage.write("packs/00/empty", b"")
    assert s3_storage.read_range("packs/00/p", 8, 100) == b"89"
    assert s3_storage.read_range("packs/00/p", 10, 5) == b""
    assert s3_storage.read_range("packs/00/p", 50, 5) == b""
    assert s3_storage.read_range("packs/00/p", 3, 0) == b""
    assert s3_storage.read_range("packs/00/empty", 0, 10) == b""
    with pytest.raises(StorageNotFound):
        s3_storage.read_range("packs/00/missing", 0, 0)
    with pytest.raises(StorageNotFound):
        s3_storage.read_range("packs/00/missing", 5, 10)
    with pytest.raises(StorageError):
        s3_storage.read_range("packs/00/p", -1, 2)


@pytest.mark.slow  # ~6 s: waits out the client's timeout
def test_timeout_when_the_server_does_not_answer(s3_env: S3Server) -> None:
    bucket = s3_env.new_bucket()
    storage = S3Storage(s3_env.url(bucket, "repo"), StorageOptions(timeout=1))
    storage.write("config.json", b"{}")
    s3_env.proc.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(StorageTimeout) as err:
            storage.read("config.json")
        elapsed = time.monotonic() - start
        assert elapsed < 15, elapsed  # 3 attempts of 1 s plus backoff
        assert str(err.value).startswith(f"s3://{bucket}/repo/config.json: ")
        assert "did not answer within 1 s" in str(err.value)
    finally:
        s3_env.proc.send_signal(signal.SIGCONT)
        storage.close()


def test_connection_refused(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nobody listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    storage = S3Storage("s3://bucket-x/repo", StorageOptions(timeout=2))
    with pytest.raises(StorageError, match=r"cannot connect to http://127\.0\.0\.1") as err:
        storage.read("config.json")
    assert "s3://bucket-x/repo/config.json" in str(err.value)
    storage.close()


def test_missing_credentials(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    storage = S3Storage(s3_env.url(s3_env.new_bucket(), "repo"), StorageOptions(timeout=2))
    with pytest.raises(StorageError, match="no usable S3 credentials") as err:
        storage.read("config.json")
    assert "AWS_ACCESS_KEY_ID" in str(err.value) and "\n" not in str(err.value)
    storage.close()


@pytest.mark.slow
def test_prefixless_url(s3_env: S3Server) -> None:
    bucket = s3_env.new_bucket()
    with S3Storage(s3_env.url(bucket)) as storage:
        assert storage.url == f"s3://{bucket}"
        storage.write("config.json", b"{}")
        storage.write("packs/ab/ab01", b"pack")
        assert storage.read("config.json") == b"{}"
        assert storage.read_range("packs/ab/ab01", 1, 2) == b"ac"
        assert {o.name for o in storage.list()} == {"config.json", "packs/ab/ab01"}
        assert {o.name for o in storage.list("packs/")} == {"packs/ab/ab01"}
        assert s3_env.client().head_object(Bucket=bucket, Key="packs/ab/ab01")["ContentLength"] == 4
        storage.delete("config.json")
        assert storage.stat("config.json") is None


def test_other_prefixes_are_not_listed_or_touched(s3_env: S3Server) -> None:
    bucket = s3_env.new_bucket()
    client = s3_env.client()
    for key in ("repo2/config.json", "repo-x/config.json", "repoconfig.json", "config.json", "other/repo/config.json"):
        client.put_object(Bucket=bucket, Key=key, Body=b"theirs")
    client.put_object(Bucket=bucket, Key="repo/packs/", Body=b"")  # a console's "folder" marker
    client.put_object(Bucket=bucket, Key="repo/packs/.aml-tmp-x", Body=b"tmp")
    with S3Storage(s3_env.url(bucket, "repo")) as storage:
        assert list(storage.list()) == []
        assert storage.stat("config.json") is None
        storage.write("config.json", b"ours")  # write-once: the other prefixes' config.json do not count
        assert [o.name for o in storage.list()] == ["config.json"]
        assert [o.name for o in storage.list("c")] == ["config.json"]
        storage.delete("config.json")
    for key in ("repo2/config.json", "repo-x/config.json", "repoconfig.json", "config.json", "other/repo/config.json"):
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"theirs"


def test_env_works_for_a_subprocess(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    s3_server.client().put_object(Bucket=bucket, Key="repo/config.json", Body=b"hello")
    code = (
        "import sys; from aml.backup.storage import open_storage; "
        f"sys.stdout.write(open_storage('{s3_server.url(bucket, 'repo')}').read('config.json').decode())"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | s3_server.env
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello"
