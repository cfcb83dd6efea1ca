"""An S3-compatible server for the tests: moto's server mode, run as a real separate process.

Fixtures (import them by name into a test module:
``from tests.s3_server import s3_env, s3_server, s3_storage  # noqa: F401``):

- ``s3_server`` (session): the running server, a :class:`S3Server`;
- ``s3_env`` (function): the server's environment applied with monkeypatch, so that boto3 in this process
  (and subprocesses started with ``os.environ``) reaches it; returns the :class:`S3Server`;
- ``s3_storage`` (function): a fresh :class:`~aml.backup.storage.s3.S3Storage` on a new bucket and prefix,
  closed at teardown.

Outside pytest (benchmarks), :func:`start_moto` starts the same server and :meth:`S3Server.stop` ends it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest

from aml.backup.storage import StorageOptions
from aml.backup.storage.s3 import S3Storage

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

__all__ = ["S3Server", "s3_env", "s3_server", "s3_storage", "start_moto"]

START_TIMEOUT = 30.0


class S3Server:
    """A moto server process.

    Attributes:
        endpoint: ``http://127.0.0.1:PORT``.
        env: the environment variables a boto3 client (in this process or a subprocess) needs to use it:
            endpoint, fake credentials, region, and no config/credentials files of the user's.
        proc: the server process.
        log: where the server's output goes.
    """

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.endpoint = f"http://127.0.0.1:{port}"
        nowhere = str(log.parent / "no-aws-config")
        self.env: dict[str, str] = {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": nowhere,
            "AWS_SHARED_CREDENTIALS_FILE": nowhere,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> S3Client:
        """A boto3 S3 client on this server (independent of the process environment)."""
        return boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
        ).client("s3", endpoint_url=self.endpoint)

    def new_bucket(self) -> str:
        """Create a bucket with a fresh unique name and return that name."""
        name = f"aml-test-{uuid.uuid4().hex[:16]}"
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name

    def url(self, bucket: str, prefix: str = "") -> str:
        """``s3://bucket/prefix`` (``s3://bucket`` without a prefix)."""
        prefix = prefix.strip("/")
        return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"

    def stop(self) -> None:
        """Terminate the server (killed if it does not exit within 10 s). Idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto(log_dir: Path) -> S3Server:
    """Start ``python -m moto.server`` on a free 127.0.0.1 port, its output in ``log_dir/moto-N.log``.

    Call :meth:`S3Server.stop` when done.

    Raises:
        RuntimeError: the server did not answer within ``START_TIMEOUT`` seconds (three attempts).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    last = ""
    for attempt in range(3):  # the free port may be taken between the probe and the server's bind
        port = _free_port()
        log = log_dir / f"moto-{attempt}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
            )
        server = S3Server(proc, port, log)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{server.endpoint}/moto-api/", timeout=2):
                    return server
            except urllib.error.HTTPError:
                return server  # it answers (whatever the status)
            except OSError:
                time.sleep(0.1)
        server.stop()
        last = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"moto server did not start:\n{last}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A moto S3 server in its own process for the whole session (terminated at the end)."""
    server = start_moto(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()


AWS_ENV_DROP = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_REGION",
)
"""Variables removed from a process that talks to the test server, so a user's own AWS settings never leak in."""


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The server, with its environment applied to this process (``AWS_PROFILE``/``AWS_ENDPOINT_URL`` removed)."""
    for var in AWS_ENV_DROP:
        monkeypatch.delenv(var, raising=False)
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture
def s3_storage(s3_env: S3Server) -> Iterator[S3Storage]:
    """A fresh, empty S3 storage: a new bucket, under a prefix (``s3://<bucket>/repo``)."""
    storage = S3Storage(s3_env.url(s3_env.new_bucket(), "repo"), StorageOptions(timeout=10))
    try:
        yield storage
    finally:
        storage.close()
