"""Snapshots of a Redis keyspace in the backup repository: the same packs, index and manifests as a file store.

Mapping of a key onto a manifest entry (``FileTable`` columns):

* ``path``: the key bytes, reversibly encoded by :func:`key_to_path`: printable ASCII bytes (0x20-0x7E)
  other than ``/``, ``%`` and ``\\`` are kept as they are, every other byte is written ``%XX`` (two
  uppercase hex digits), a leading ``.`` is written ``%2E`` (so no path is ``.``, ``..`` or hidden), and
  the empty key is the lone ``%``. ``amaos:agent:7`` stays ``amaos:agent:7``; ``a/b`` becomes ``a%2Fb``;
  a pickled key ``\\x80\\x04`` becomes ``%80%04``. Paths never hold a ``/``: the manifest is flat and
  passes the checker's path rules as it is.
* ``sha256`` / ``size``: the key's **object**, the canonical serialization of its type and value (no key
  name, no expiry): compact UTF-8 JSON with sorted keys of ``{"type": ..., "value": ...}``, the value in
  :mod:`aml.trace.keyspace`'s JSON form (UTF-8 text as itself, other bytes as ``{"base64": ...}``), hash
  fields and set members sorted by their bytes. Identical values (the AMAOS ``:metadata`` companions)
  are one object; a key whose value did not change since the last snapshot adds nothing; a key whose
  TTL was refreshed adds nothing either.
* ``mtime_ns``: the key's absolute expiry time, nanoseconds since the Unix epoch (millisecond precision),
  ``0`` when the key has no expiry. ``mode`` and ``inode`` are ``0``.

The manifest's ``source_path`` is the keyspace id (URL without password, :func:`aml.store.storeid.keyspace_id`),
``file_count`` the number of keys, ``total_size_bytes`` the bytes of their objects (uncompressed), ``dirs``
is empty, and ``stats["keyspace_format"] == 1`` marks it as a keyspace snapshot.

Write order as the archiver's (restic's rule): packs (each fsynced) -> one index file -> manifest body ->
manifest header (the commit point) -> ``backup_metadata.json``. A snapshot killed, or whose Redis stopped
answering, leaves at most unreferenced packs (``check`` warns, ``prune`` removes them).

Reads are ``SCAN`` + pipelined reads (:func:`aml.trace.keyspace.scan_entries`): not a point-in-time copy,
as with ``redis-cli --scan``; a key ``SCAN`` returns twice is stored once.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis
import redis.exceptions

from aml.store.timestamps import require_timestamp, utc_iso_z
from aml.trace.keyspace import Entry, scan_entries

from . import crypto
from ._common import hostname
from .archiver import SnapshotResult, _find_parent, _taken_names
from .errors import BackupError
from .index import load_index, write_index
from .manifest import DirTable, FileTable, Manifest, write_manifest
from .pack import PackWriter
from .progress import ProgressCallback, Reporter
from .repository import Repository, as_repository
from .summary import summary_entry, update_summary

KEYSPACE_FORMAT = 1
"""``stats["keyspace_format"]`` of a keyspace snapshot's manifest."""

__all__ = [
    "KEYSPACE_FORMAT",
    "KeyspaceSnapshotResult",
    "KeyspaceUnavailable",
    "create_keyspace_snapshot",
    "decode_object",
    "encode_object",
    "is_keyspace_manifest",
    "key_to_path",
    "path_to_key",
]


class KeyspaceUnavailable(BackupError):
    """The Redis server stopped answering (or refused a read) during a snapshot; no snapshot was written."""


_KEEP = frozenset(range(0x20, 0x7F)) - {ord("/"), ord("%"), ord("\\")}
_TABLE = [chr(b) if b in _KEEP else f"%{b:02X}" for b in range(256)]


def key_to_path(key: bytes) -> str:
    """The manifest path of a key (see the module docstring); reversed by :func:`path_to_key`."""
    if not key:
        return "%"
    path = "".join([_TABLE[b] for b in key])
    return "%2E" + path[1:] if path[0] == "." else path


def path_to_key(path: str) -> bytes:
    """The key bytes of a manifest path written by :func:`key_to_path`.

    Raises:
        ValueError: ``path`` is not in the canonical form :func:`key_to_path` writes.
    """
    if path == "%":
        return b""
    key = urllib.parse.unquote_to_bytes(path)
    if not key or key_to_path(key) != path:
        raise ValueError(f"not a keyspace snapshot path: {path[:80]!r}")
    return key


def encode_object(entry: Entry) -> bytes:
    """The object stored for a key: canonical JSON of its type and value (no key name, no expiry)."""
    value = entry.value
    if entry.type in ("hash", "set"):
        value = sorted(value)
    doc = Entry(b"", entry.type, value).to_json()
    body = {"type": doc["type"], "value": doc["value"]}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def decode_object(data: bytes, key: bytes, expire_at_ms: int | None) -> Entry:
    """The :class:`~aml.trace.keyspace.Entry` of an object read back, with its key and expiry.

    Raises:
        ValueError: the object is not a keyspace entry.
    """
    doc = json.loads(data)
    if not isinstance(doc, dict) or set(doc) != {"type", "value"}:
        raise ValueError("object is not a keyspace entry (a file store's content?)")
    entry = Entry.from_json({**doc, "key": "", "expire_at_ms": None})
    entry.key = key
    entry.expire_at_ms = expire_at_ms
    return entry


def is_keyspace_manifest(m: Manifest) -> bool:
    """Whether a manifest (header) is a keyspace snapshot's."""
    return m.stats.get("keyspace_format") == KEYSPACE_FORMAT


@dataclass
class KeyspaceSnapshotResult(SnapshotResult):
    """:class:`~aml.backup.SnapshotResult` of a keyspace snapshot (``file_count`` = keys, ``files_read`` =
    keys read, ``files_unchanged`` = keys whose type and value equal the parent snapshot's, sizes in bytes of
    the objects), plus:

    Attributes:
        keys: keys stored.
        types: keys per Redis type.
        keys_with_expiry: keys that have an expiry time.
        duplicates_skipped: keys ``SCAN`` returned more than once (stored once).
    """

    keys: int = 0
    types: dict[str, int] = field(default_factory=dict)
    keys_with_expiry: int = 0
    duplicates_skipped: int = 0


def create_keyspace_snapshot(
    client: redis.Redis,
    repo: Repository | str | os.PathLike[str],
    *,
    source: str,
    incremental: bool = False,
    parent: str | None = None,
    match: str | None = None,
    tags: list[str] | tuple[str, ...] = (),
    description: str | None = None,
    progress: ProgressCallback | None = None,
    lock_wait: float = 0.0,
    snapshot_time: datetime | None = None,
) -> KeyspaceSnapshotResult:
    """Back up every key of the client's database (or those matching ``match``) as one snapshot.

    Args:
        client: a client of the database (replies as bytes: ``decode_responses=False``).
        repo: the repository (a path is accepted; an uninitialised one is initialised with defaults).
        source: the keyspace id recorded as the manifest's ``source_path`` (no password).
        incremental: name the newest snapshot of the same keyspace as parent (``backup_type`` then
            ``"incremental"``). Every snapshot reads every key and is complete; deduplication against the
            whole repository happens either way.
        parent: parent backup id (default: the newest snapshot of ``source``).
        match: only keys matching this glob (Redis ``MATCH``).
        tags, description: labels stored in the manifest.
        progress: called with :class:`~aml.backup.progress.Progress` events (phase ``"backup"``; files =
            keys, bytes = object bytes).
        lock_wait: seconds to wait for a conflicting exclusive repository lock.
        snapshot_time: record this instant instead of now (naive = UTC).

    Returns:
        A :class:`KeyspaceSnapshotResult`.

    Raises:
        KeyspaceUnavailable: the server stopped answering or refused a read (nothing visible was written).
        BackupError: a key of a module type, which cannot be stored.
        SnapshotNotFound: ``parent`` was given and does not exist.
        LockError: an exclusive repository lock is held.
        OSError: repository write failure (the snapshot is then not visible).
    """
    t0 = time.monotonic()
    repo = as_repository(repo).open_or_init()
    cfg, root = repo.config, repo.path
    tags = [str(t) for t in tags]
    with repo.lock(exclusive=False, operation="backup", wait=lock_wait) as lock:
        start = datetime.now(UTC) if snapshot_time is None else require_timestamp(snapshot_time)
        parent_m = _find_parent(repo, parent, source) if incremental else None
        prev: dict[str, str] = {}
        if parent_m is not None and parent_m.files is not None:
            prev = dict(zip(parent_m.files.path, parent_m.files.sha256, strict=True))
        objects = load_index(root, strict=False, include_damaged=False).objects
        rows: dict[str, tuple[str, int, int]] = {}  # path -> (object id, object bytes, expiry ns or 0)
        added: set[str] = set()
        types: dict[str, int] = {}
        bytes_added = unchanged = with_expiry = duplicates = total = 0
        rep = Reporter(progress, "backup")
        writer = PackWriter(root, target_size=cfg.pack_size, level=cfg.compression_level)
        hasher = crypto.id_hasher(root)
        try:
            try:
                for entry in scan_entries(client, match=match):
                    path = key_to_path(entry.key)
                    if path in rows:
                        duplicates += 1
                        continue
                    data = encode_object(entry)
                    oid = hasher(data).hexdigest()
                    if oid not in objects and oid not in added:
                        writer.add(oid, data)
                        added.add(oid)
                        bytes_added += len(data)
                    expire_ns = 0 if entry.expire_at_ms is None else entry.expire_at_ms * 1_000_000
                    rows[path] = (oid, len(data), expire_ns)
                    types[entry.type] = types.get(entry.type, 0) + 1
                    total += len(data)
                    with_expiry += expire_ns != 0
                    unchanged += prev.get(path) == oid
                    if not len(rows) & 255:
                        rep.state.files_done = rep.state.files_read = len(rows)
                        rep.state.bytes_done = rep.state.bytes_read = total
                        rep.state.files_unchanged = unchanged
                        rep.tick()
                        lock.maybe_refresh()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                raise KeyspaceUnavailable(f"{source}: Redis stopped answering after {len(rows)} keys were read "
                                          f"({exc}); no snapshot was written") from exc
            except redis.exceptions.RedisError as exc:
                raise KeyspaceUnavailable(f"{source}: Redis refused a read after {len(rows)} keys ({exc}); "
                                          "no snapshot was written") from exc
            except ValueError as exc:  # a module type
                raise BackupError(f"{source}: {exc}; no snapshot was written") from exc
            packs = writer.flush()
            stored_bytes = writer.bytes_written
        finally:
            writer.close()
        rep.state.files_done = rep.state.files_read = rep.state.files_total = len(rows)
        rep.state.bytes_done = rep.state.bytes_read = rep.state.bytes_total = total
        rep.done()
        index_id = write_index(root, packs) if packs else None

        table = FileTable()
        for path in sorted(rows):
            oid, size, expire_ns = rows[path]
            table.append(path, oid, size, expire_ns, 0, 0)
        backup_type = "incremental" if parent_m is not None else "full"
        stats = {"keyspace_format": KEYSPACE_FORMAT, "files_read": len(rows), "bytes_read": total,
                 "files_unchanged": unchanged, "objects_added": len(added), "bytes_added": bytes_added,
                 "stored_bytes": stored_bytes, "packs_written": len(packs), "duplicates_skipped": duplicates,
                 "keys_with_expiry": with_expiry, **{f"type_{k}": v for k, v in sorted(types.items())}}
        m = Manifest(
            backup_id=f"{'incr' if parent_m is not None else 'full'}_{start.strftime('%Y%m%d_%H%M%S')}",
            backup_type=backup_type, time=start, source_path=source, hostname=hostname(),
            parent_backup_id=parent_m.backup_id if parent_m is not None else None, end_time=datetime.now(UTC),
            tags=tags, description=description, file_count=len(table), dir_count=0, total_size_bytes=total,
            agents=[], errors=[], stats=stats, files=table, dirs=DirTable(),
        )
        backup_id = write_manifest(root, m, taken=_taken_names(repo).__contains__)
        update_summary(root, add=[summary_entry(root, m)])
    return KeyspaceSnapshotResult(
        backup_id=backup_id, backup_type=backup_type, parent_backup_id=m.parent_backup_id, time=utc_iso_z(start),
        source_path=source, repository=repo.url, file_count=len(table), dir_count=0, total_size_bytes=total,
        files_read=len(rows), bytes_read=total, files_unchanged=unchanged, objects_added=len(added),
        bytes_added=bytes_added, stored_bytes=stored_bytes, packs_written=len(packs), index_id=index_id,
        tags=tags, description=description, duration_seconds=round(time.monotonic() - t0, 6),
        keys=len(table), types=types, keys_with_expiry=with_expiry, duplicates_skipped=duplicates,
    )

