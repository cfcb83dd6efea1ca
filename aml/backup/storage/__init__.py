"""Where a backup repository's files live: the storage interface and its backends.

A repository is a set of named objects (``config.json``, ``keys/<id>``, ``packs/<aa>/<id>``,
``index/<id>.json``, ``snapshots/<id>.json``, ``snapshots/bodies/<sha>.zst``, ``dicts/<sha>.zdict``,
``locks/<id>``, ``backup_metadata.json``, ``verify_state.json``). A :class:`Storage` holds them:

- :class:`~aml.backup.storage.local.LocalStorage`: a directory on this machine (``/path`` or ``file:///path``);
- :class:`~aml.backup.storage.sftp.SFTPStorage`: a directory on an SSH server (``sftp://[user@]host[:port]/path``),
  through paramiko;
- :class:`~aml.backup.storage.s3.S3Storage`: an S3-compatible bucket (``s3://bucket[/prefix]``), through boto3;
  the endpoint comes from boto3's own configuration (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, profiles),
  credentials from its usual chain (``AWS_ACCESS_KEY_ID`` ...).

The interface is restic's backend in miniature: list, stat, read (whole or a range), write, delete; no
rename and no append, so that an object store can hold a repository. Objects the repository writes once
(packs, index files, manifests, dictionaries, key slots, ``config.json``) are written with ``once=True``:
they appear whole or not at all, and an existing object is never replaced. The engine orders its writes
(packs, then index, then the snapshot header), so an interrupted backup leaves at most unreferenced packs
(orphans, see ``verify``), never a visible broken snapshot.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

from ..errors import BackupError

__all__ = [
    "ObjectInfo",
    "Storage",
    "StorageError",
    "StorageExists",
    "StorageNotFound",
    "StorageOptions",
    "StorageTimeout",
    "is_remote_url",
    "open_storage",
    "redact_url",
]

REMOTE_SCHEMES = ("sftp", "s3")


class StorageError(BackupError, OSError):
    """An operation on a repository's storage failed.

    The message names the storage URL (without credentials) and the object. It is an :class:`OSError`
    too, so the engine treats a remote failure as it treats a local I/O error (an unreadable pack is
    reported as such by ``verify`` and ``restore``).

    Attributes:
        url: the storage URL, credentials removed.
        name: the object name, or "" for the storage as a whole.
    """

    def __init__(self, message: str, *, url: str = "", name: str = "") -> None:
        where = f"{url}/{name}" if url and name else (url or name)
        super().__init__(f"{where}: {message}" if where else message)
        self.url = url
        self.name = name


class StorageNotFound(StorageError):
    """The object does not exist."""


class StorageExists(StorageError):
    """A write-once object already exists (it is left as it was)."""


class StorageTimeout(StorageError):
    """The storage did not answer within the configured timeout."""


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object.

    Attributes:
        name: ``/``-separated name relative to the repository root (``packs/ab/ab12...``).
        size: size in bytes.
        mtime: last modification, seconds since the epoch (UTC).
    """

    name: str
    size: int
    mtime: float


@dataclass(frozen=True)
class StorageOptions:
    """How to reach a remote storage.

    Attributes:
        timeout: seconds a single network request may take before :class:`StorageTimeout` (connect, each
            read and write request; a large upload may take longer in all; default 60).
        sftp_key_file: private key for SFTP (default: the SSH agent and ``~/.ssh/id_*``).
        sftp_known_hosts: known_hosts file the SFTP server's host key is checked against (default
            ``~/.ssh/known_hosts``); an unknown or changed host key is refused.
        sftp_password: password for SFTP password authentication, if any.
    """

    timeout: float = 60.0
    sftp_key_file: str | None = None
    sftp_known_hosts: str | None = None
    sftp_password: str | None = None


class Storage(abc.ABC):
    """A repository's objects, addressed by ``/``-separated names relative to the repository root.

    Objects are regular files only: directories (SFTP, local) are an implementation detail, and ``stat``
    of a name that is a directory returns None.

    Names never start with ``/``, never contain ``..`` or empty components; backends raise
    :class:`StorageError` for such names.
    """

    url: str
    """Where the storage is, credentials removed (for messages and ``list``)."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object whose name starts with ``prefix`` (a directory such as ``"packs/"`` or
        ``""`` for all), recursively, in no particular order. Temporary objects of unfinished writes are
        not listed. A prefix with no objects yields nothing.

        Raises:
            StorageError: the storage cannot be listed.
        """

    @abc.abstractmethod
    def stat(self, name: str) -> ObjectInfo | None:
        """Return the object's size and time, or None if it does not exist (nor does its bucket, on S3).

        Raises:
            StorageError: the storage cannot be asked (StorageTimeout when it does not answer).
        """

    @abc.abstractmethod
    def read(self, name: str) -> bytes:
        """Return the whole object.

        Raises:
            StorageNotFound: no such object.
            StorageError: any other failure (StorageTimeout when the storage does not answer).
        """

    @abc.abstractmethod
    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """Return ``length`` bytes from ``offset`` (fewer only at the end of the object; none past it).

        Raises:
            StorageError: a negative offset or length.
            StorageNotFound, StorageError: as for :meth:`read`.
        """

    @abc.abstractmethod
    def write(self, name: str, data: bytes, *, once: bool = True) -> None:
        """Store ``data`` under ``name``: after a failure or a crash the object is absent or whole.

        Args:
            once: write-once (the default): raise :class:`StorageExists` if the object exists, and never
                replace it. With ``once=False`` an existing object is replaced as a whole.

        Raises:
            StorageExists: ``once`` and the object exists.
            StorageError: any other failure.
        """

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Delete the object; a missing object is not an error.

        Raises:
            StorageError: the object exists and cannot be deleted.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (the storage may not be used afterwards)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_name(name: str, url: str = "") -> str:
    """Return ``name`` if it is a valid object name.

    Raises:
        StorageError: empty, absolute, or with ``..``, ``.`` or empty components, or a NUL byte.
    """
    parts = name.split("/")
    if not name or name.startswith("/") or "\x00" in name or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"invalid object name {name!r}", url=url)
    return name


def is_remote_url(location: str | os.PathLike[str]) -> bool:
    """Whether a repository location is a remote URL (``sftp://``, ``s3://``) rather than a local path."""
    text = os.fspath(location)
    return isinstance(text, str) and text.split("://", 1)[0].lower() in REMOTE_SCHEMES and "://" in text


def redact_url(url: str) -> str:
    """The URL without a password (``sftp://user:secret@host/p`` -> ``sftp://user@host/p``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}@{netloc}" if user else netloc).geturl()


def open_storage(location: str | os.PathLike[str], options: StorageOptions | None = None) -> Storage:
    """Return the storage a repository location names.

    Args:
        location: a local path or ``file://`` URL, ``sftp://[user[:password]@]host[:port]/path`` (an absolute
            path on the server), or ``s3://bucket[/prefix]``.
        options: timeouts and credentials (:class:`StorageOptions`).

    Raises:
        StorageError: unknown scheme, malformed URL, or the storage cannot be reached.
    """
    options = options or StorageOptions()
    text = os.fspath(location)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in ("", "file"):
        from .local import LocalStorage

        return LocalStorage(Path(urlsplit(text).path if scheme else text))
    if scheme == "sftp":
        from .sftp import SFTPStorage

        return SFTPStorage(text, options)
    if scheme == "s3":
        from .s3 import S3Storage

        return S3Storage(text, options)
    raise StorageError(f"unknown repository scheme {scheme!r} (use a path, sftp:// or s3://)", url=redact_url(text))
