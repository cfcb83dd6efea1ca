"""A real OpenSSH server for SFTP storage tests.

Import the fixtures into a test module (``from tests.sftp_server import sftp_server, sftp_storage  # noqa: F401``):

- ``sftp_server`` (session): an ``sshd`` on a free 127.0.0.1 port, running as the current user, with its own
  host key, one authorised client key and a known_hosts file (:class:`SFTPServer`);
- ``sftp_storage`` (function): a fresh :class:`~aml.backup.storage.sftp.SFTPStorage` on a new directory of
  that server, closed at teardown.

Skips when ``/usr/sbin/sshd`` is not installed. Outside pytest (benchmarks), :func:`start_sshd` starts
the same server and :meth:`SFTPServer.stop` ends it.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aml.backup.storage import StorageOptions
from aml.backup.storage.sftp import SFTPStorage

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"


@dataclass
class SFTPServer:
    """A running sshd.

    Attributes:
        port: the TCP port on 127.0.0.1.
        pid: the listening sshd's process id (each connection is served by its descendants).
        user: the login name (the current user).
        key_file: the authorised client private key.
        known_hosts: a known_hosts file holding the server's host key for ``[127.0.0.1]:port``.
        root: a directory on "the server" (local disk) where repositories go.
        options: StorageOptions with the key file, known_hosts and ``timeout=10``.
        log: sshd's log file.
        proc: the sshd process (None when built by hand: :meth:`stop` then does nothing).
    """

    port: int
    pid: int
    user: str
    key_file: str
    known_hosts: str
    root: Path
    options: StorageOptions
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def url(self, name: str) -> str:
        """``sftp://<user>@127.0.0.1:<port><root>/<name>``."""
        return f"sftp://{self.user}@127.0.0.1:{self.port}{self.root}/{name}"

    def stop(self) -> None:
        """Terminate sshd (killed if it does not exit within 5 s). Idempotent."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def descendants(self) -> list[int]:
        """Process ids of sshd's children, grandchildren ... (the processes serving connections)."""
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        found: list[int] = []
        frontier = [self.pid]
        while frontier:
            pid = frontier.pop()
            children = [p for p, pp in parents.items() if pp == pid]
            found.extend(children)
            frontier.extend(children)
        return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keygen(path: Path, comment: str) -> None:
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.settimeout(2)
                if sock.recv(4).startswith(b"SSH-"):
                    return True
        except OSError:
            time.sleep(0.05)
    return False


def start_sshd(base: Path) -> SFTPServer:
    """Start an sshd serving SFTP for the current user on a free 127.0.0.1 port; its files go in ``base``.

    ``base`` (created if missing) receives the host and client keys, authorized_keys, known_hosts, the
    config, the log and ``srv/`` (:attr:`SFTPServer.root`). Call :meth:`SFTPServer.stop` when done.

    Raises:
        RuntimeError: sshd or ssh-keygen is not installed, or sshd did not start.
    """
    if not os.path.exists(SSHD):
        raise RuntimeError("sshd not installed (apt-get install openssh-server)")
    if not os.path.exists(SSH_KEYGEN):
        raise RuntimeError("ssh-keygen not installed (apt-get install openssh-client)")
    base.mkdir(parents=True, exist_ok=True)
    host_key, client_key = base / "host_ed25519", base / "client_ed25519"
    _keygen(host_key, "aml-test-host")
    _keygen(client_key, "aml-test-client")
    authorized = base / "authorized_keys"
    authorized.write_text((base / "client_ed25519.pub").read_text())
    root = base / "srv"
    root.mkdir()
    log = base / "sshd.log"
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
    user = getpass.getuser()
    proc: subprocess.Popen[bytes] | None = None
    port = 0
    for _ in range(3):  # the free port may be taken between choosing and binding it
        port = _free_port()
        config = base / "sshd_config"
        config.write_text(
            "\n".join([
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {base / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "StrictModes no",
                "UsePAM no",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                f"AllowUsers {user}",
                "Subsystem sftp internal-sftp",
                "MaxStartups 100:30:200",
                "MaxSessions 50",
                "LoginGraceTime 30",
                "UseDNS no",
                "LogLevel VERBOSE",
                "",
            ])
        )
        with open(log, "ab") as log_fh:
            proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log_fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        if _wait_for_port(port, proc, log, time.monotonic() + 10):
            break
        if proc.poll() is None:
            proc.terminate()
            proc.wait(5)
        proc = None
    if proc is None:
        raise RuntimeError(f"sshd did not start; its log:\n{log.read_text(errors='replace')[-3000:]}")
    host_pub = (base / "host_ed25519.pub").read_text().split()
    known_hosts = base / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    return SFTPServer(
        port=port,
        pid=proc.pid,
        user=user,
        key_file=str(client_key),
        known_hosts=str(known_hosts),
        root=root,
        options=StorageOptions(timeout=10, sftp_key_file=str(client_key), sftp_known_hosts=str(known_hosts)),
        log=log,
        proc=proc,
    )


@pytest.fixture(scope="session")
def sftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SFTPServer]:
    """A real OpenSSH sshd on 127.0.0.1 serving SFTP (``internal-sftp``) for the current user."""
    if not os.path.exists(SSHD):
        pytest.skip("sshd not installed (apt-get install openssh-server)")
    if not os.path.exists(SSH_KEYGEN):
        pytest.skip("ssh-keygen not installed (apt-get install openssh-client)")
    try:
        server = start_sshd(tmp_path_factory.mktemp("sshd"))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sftp_storage(sftp_server: SFTPServer) -> Iterator[SFTPStorage]:
    """A fresh SFTPStorage on a new, not yet created directory of ``sftp_server`` (closed afterwards)."""
    storage = SFTPStorage(sftp_server.url(f"repo-{uuid.uuid4().hex[:12]}"), sftp_server.options)
    try:
        yield storage
    finally:
        storage.close()
