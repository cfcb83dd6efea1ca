"""A repository's objects in an S3-compatible bucket (``s3://bucket[/prefix]``), through boto3.

Each object is one S3 object under the key ``<prefix>/<name>`` (``<name>`` for a prefix-less URL). S3 shows
an object whole or not at all, so every write is a single PutObject: no temporary object and no rename.
Write-once objects are written conditionally (``If-None-Match: *``): the server refuses to replace an
existing object, and a HEAD request before the upload catches the common case early (and is the only
protection on a server that does not implement conditional writes).

Where the server is and who we are come from boto3's own configuration chain, nothing of ours:
the endpoint from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` or the profile's ``endpoint_url`` (AWS
itself when unset), the region from ``AWS_DEFAULT_REGION`` / the profile, the credentials from
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``~/.aws/credentials``, instance roles...
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

import boto3
import botocore.exceptions as bex
from botocore.config import Config

from aml.store.atomic import TMP_PREFIX

from . import (
    ObjectInfo,
    Storage,
    StorageError,
    StorageExists,
    StorageNotFound,
    StorageOptions,
    StorageTimeout,
    check_name,
    redact_url,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

__all__ = ["S3Storage"]

_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
_DENIED = frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "AccountProblem"})
_BAD_KEY = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "InvalidClientTokenId",
    }
)
_NOT_IMPLEMENTED = frozenset({"NotImplemented", "501"})


class S3Storage(Storage):
    """Objects as keys of an S3 bucket (``packs/ab/ab12...`` is the key ``<prefix>/packs/ab/ab12...``).

    The boto3 client is created on the first operation and closed by :meth:`close`. Each request gets
    ``options.timeout`` seconds to connect and ``options.timeout`` seconds between two reads of its
    answer, and is tried at most 3 times (botocore's "standard" retry mode, which retries throttling,
    5xx answers and network errors with a backoff) before the failure is raised.

    Args:
        url: ``s3://bucket`` or ``s3://bucket/prefix`` (``prefix`` may have several ``/``-separated
            components; leading and trailing ``/`` are ignored). No credentials, port or query in the URL:
            they come from boto3's configuration chain (see the module docstring).
        options: the timeout (seconds); the SFTP fields are ignored.

    Raises:
        StorageError: the URL is not of that form (nothing is contacted before the first operation).
    """

    def __init__(self, url: str, options: StorageOptions | None = None) -> None:
        self.options = options or StorageOptions()
        shown = redact_url(url)
        parts = urlsplit(url)
        if parts.scheme.lower() != "s3":
            raise StorageError("not an s3:// URL", url=shown)
        if "@" in parts.netloc or ":" in parts.netloc:
            raise StorageError(
                "an s3:// URL is s3://bucket[/prefix]: credentials and endpoint come from the "
                "AWS configuration (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...), not the URL",
                url=shown,
            )
        if parts.query or parts.fragment:
            raise StorageError("an s3:// URL has no query or fragment", url=shown)
        self.bucket = parts.netloc
        if not self.bucket:
            raise StorageError("no bucket in the URL (s3://bucket[/prefix])", url=shown)
        self.prefix = parts.path.strip("/")
        if self.prefix:
            check_name(self.prefix, shown)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self._root = f"{self.prefix}/" if self.prefix else ""
        self._client: S3Client | None = None
        self._lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------------------------------

    @property
    def client(self) -> S3Client:
        """The boto3 S3 client, created on first use.

        Raises:
            StorageError: boto3 cannot be configured (an unknown ``AWS_PROFILE``, a bad config file...).
        """
        with self._lock:
            if self._client is None:
                config = Config(
                    connect_timeout=self.options.timeout,
                    read_timeout=self.options.timeout,
                    retries={"max_attempts": 3, "mode": "standard"},
                )
                try:
                    self._client = boto3.session.Session().client("s3", config=config)
                except bex.BotoCoreError as exc:
                    raise StorageError(f"cannot set up the S3 client: {exc}", url=self.url) from exc
                except ValueError as exc:  # e.g. a malformed endpoint URL
                    raise StorageError(f"cannot set up the S3 client: {exc}", url=self.url) from exc
            return self._client

    def close(self) -> None:
        """Close the client's connections; a later operation opens a new client."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _key(self, name: str) -> str:
        return self._root + check_name(name, self.url)

    def _endpoint(self) -> str:
        client = self._client
        return client.meta.endpoint_url if client is not None else "the S3 endpoint"

    def _fail(self, exc: Exception, name: str = "") -> NoReturn:
        """Raise the :class:`StorageError` (or subclass) that describes a boto3 exception."""
        url = self.url
        if isinstance(exc, bex.ClientError):
            err: dict[str, Any] = dict(exc.response.get("Error", {}))
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            text = str(err.get("Message") or code or "unknown error")
            if code == "NoSuchBucket":
                raise StorageError(
                    f"bucket {self.bucket!r} does not exist on {self._endpoint()}", url=url, name=name
                ) from exc
            if code in _NOT_FOUND:
                raise StorageNotFound("no such object", url=url, name=name) from exc
            if code in ("PreconditionFailed", "412") or status == 412:
                raise StorageExists("object exists", url=url, name=name) from exc
            if code in _DENIED or (status == 403 and code not in _BAD_KEY):
                raise StorageError(
                    f"access denied by {self._endpoint()} (check the credentials' permissions "
                    f"on bucket {self.bucket!r})",
                    url=url,
                    name=name,
                ) from exc
            if code in _BAD_KEY:
                raise StorageError(
                    f"credentials refused by {self._endpoint()} ({code}: check AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY or the AWS profile)",
                    url=url,
                    name=name,
                ) from exc
            if code == "RequestTimeout":
                raise StorageTimeout(f"S3 request timed out ({text})", url=url, name=name) from exc
            raise StorageError(f"S3 error {code or status}: {text}", url=url, name=name) from exc
        if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
            raise StorageError(
                f"no usable S3 credentials ({exc}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or an AWS profile",
                url=url,
                name=name,
            ) from exc
        if isinstance(exc, bex.ConnectTimeoutError | bex.ReadTimeoutError):
            raise StorageTimeout(
                f"{self._endpoint()} did not answer within {self.options.timeout:g} s", url=url, name=name
            ) from exc
        if isinstance(exc, bex.EndpointConnectionError):
            if _caused_by_timeout(exc):
                raise StorageTimeout(
                    f"{self._endpoint()} did not answer within {self.options.timeout:g} s", url=url, name=name
                ) from exc
            raise StorageError(f"cannot connect to {self._endpoint()}: {exc}", url=url, name=name) from exc
        if isinstance(exc, bex.BotoCoreError):
            raise StorageError(f"S3 request failed: {exc}", url=url, name=name) from exc
        raise StorageError(f"S3 request failed: {exc!r}", url=url, name=name) from exc

    # -- the Storage interface ------------------------------------------------------------------------

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield the objects whose name starts with ``prefix`` (``"packs/"``, or ``""`` for all).

        One ListObjectsV2 request per 1000 objects. Keys outside the repository prefix, keys whose last
        component starts with ``.aml-tmp-`` and keys that are no valid object name (folder markers such as
        ``prefix/packs/``) are not listed.

        Raises:
            StorageError: the bucket cannot be listed (missing bucket, access denied, no answer...).
        """
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._root + prefix):
                for obj in page.get("Contents", []):
                    key = obj.get("Key", "")
                    if not key.startswith(self._root):
                        continue
                    name = key[len(self._root) :]
                    if name.rsplit("/", 1)[-1].startswith(TMP_PREFIX) or not _valid(name):
                        continue
                    modified = obj.get("LastModified")
                    yield ObjectInfo(name, int(obj.get("Size", 0)), modified.timestamp() if modified else 0.0)
        except (bex.BotoCoreError, bex.ClientError) as exc:
            self._fail(exc, prefix)

    def stat(self, name: str) -> ObjectInfo | None:
        """Return the object's size (bytes) and modification time (epoch seconds), or None if it does not exist.

        A HeadObject request. S3 answers a HEAD on a missing bucket like one on a missing object (a bare
        404), so a missing bucket also gives None here; every other operation reports it.

        Raises:
            StorageError: invalid name, access denied, no answer (:class:`StorageTimeout`)...
        """
        key = self._key(name)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except bex.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _NOT_FOUND:
                return None
            self._fail(exc, name)
        except bex.BotoCoreError as exc:
            self._fail(exc, name)
        modified = head.get("LastModified")
        return ObjectInfo(name, int(head.get("ContentLength", 0)), modified.timestamp() if modified else 0.0)

    def read(self, name: str) -> bytes:
        """Return the whole object (one GetObject request).

        Raises:
            StorageNotFound: no such object.
            StorageTimeout: the server did not answer within ``options.timeout`` seconds (after retries).
            StorageError: invalid name, missing bucket, access denied, any other failure.
        """
        key = self._key(name)
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
            return resp["Body"].read()
        except (bex.BotoCoreError, bex.ClientError) as exc:
            self._fail(exc, name)

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """Return ``length`` bytes from byte ``offset`` (fewer only at the end of the object).

        A GetObject request with ``Range: bytes=offset-(offset+length-1)``. An offset at or past the end
        gives ``b""``; ``length == 0`` gives ``b""`` after checking that the object exists.

        Raises:
            StorageNotFound: no such object.
            StorageError: negative offset or length, and as for :meth:`read`.
        """
        key = self._key(name)
        if offset < 0 or length < 0:
            raise StorageError(f"invalid range: offset {offset}, length {length}", url=self.url, name=name)
        if length == 0:
            if self.stat(name) is None:
                raise StorageNotFound("no such object", url=self.url, name=name)
            return b""
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}")
            data = resp["Body"].read()
        except bex.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""  # offset at or past the end (the object exists: a missing one is NoSuchKey)
            self._fail(exc, name)
        except bex.BotoCoreError as exc:
            self._fail(exc, name)
        if resp.get("ResponseMetadata", {}).get("HTTPStatusCode") == 200:
            return data[offset : offset + length]  # a server that ignores Range sends the whole object
        return data[:length]

    def write(self, name: str, data: bytes, *, once: bool = True) -> None:
        """Store ``data`` as the object ``name`` with a single PutObject (the object appears whole or not at all).

        The upload carries ``Content-MD5`` (and botocore's CRC32 checksum), so the server rejects a body
        damaged in transit instead of storing it.

        Args:
            name: the object name.
            data: the whole content.
            once: write-once (default): a HEAD request first, then a conditional PutObject
                (``If-None-Match: *``) so that an object created meanwhile is not replaced either. A server
                that does not implement conditional writes (501 NotImplemented) gets a plain PutObject after
                the HEAD check. ``once=False``: a plain PutObject, replacing any existing object.

        Raises:
            StorageExists: ``once`` and the object exists (it is left as it was).
            StorageTimeout: no answer within ``options.timeout`` seconds (after retries).
            StorageError: invalid name, missing bucket, access denied, any other failure.
        """
        key = self._key(name)
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")
        client = self.client
        if once and self.stat(name) is not None:
            raise StorageExists("object exists", url=self.url, name=name)
        try:
            if not once:
                client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentMD5=md5)
                return
            try:
                client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentMD5=md5, IfNoneMatch="*")
            except bex.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in _NOT_IMPLEMENTED:
                    raise
                client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentMD5=md5)
        except (bex.BotoCoreError, bex.ClientError) as exc:
            self._fail(exc, name)

    def delete(self, name: str) -> None:
        """Delete the object (one DeleteObject request); a missing object is not an error.

        Raises:
            StorageError: invalid name, missing bucket, access denied, no answer...
        """
        key = self._key(name)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except bex.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _NOT_FOUND:
                return
            self._fail(exc, name)
        except bex.BotoCoreError as exc:
            self._fail(exc, name)


def _valid(name: str) -> bool:
    try:
        check_name(name)
    except StorageError:
        return False
    return True


def _caused_by_timeout(exc: BaseException) -> bool:
    """Whether a connection error comes from a timeout (somewhere in its cause/context chain)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, TimeoutError) or "timed out" in str(cur).lower():
            return True
        cur = cur.__cause__ or cur.__context__
    return False
