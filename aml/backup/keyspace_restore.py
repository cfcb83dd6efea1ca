"""Restoring a keyspace snapshot (see :mod:`aml.backup.keyspace`) into a Redis database.

The snapshot's objects are read pack by pack (each re-hashed), turned back into
:class:`~aml.trace.keyspace.Entry` values with the key from the manifest path and the absolute expiry
from its ``mtime_ns`` column, and written by :func:`aml.trace.keyspace.import_entries`: each key replaced
whole in ``MULTI``/``EXEC`` batches, keys whose expiry time has passed skipped and counted, the keys it
overwrites exported to a JSON file first, nothing else touched (never ``FLUSHDB``). The target may be
the database the snapshot came from or any other.
"""

from __future__ import annotations

import fnmatch
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from aml.store.timestamps import require_timestamp
from aml.trace.keyspace import Entry, import_entries

from . import crypto, remote
from .errors import BackupError, CorruptionError, SnapshotNotFound
from .index import load_index
from .keyspace import decode_object, is_keyspace_manifest, path_to_key
from .listing import list_snapshots
from .manifest import Manifest, load_manifest
from .pack import PackReader, open_pack
from .repository import Repository, as_repository
from .storage import StorageError

__all__ = ["KeyspaceEntries", "read_keyspace_snapshot", "resolve_keyspace_at", "restore_keyspace"]


@dataclass
class KeyspaceEntries:
    """What :func:`read_keyspace_snapshot` read.

    Attributes:
        manifest: the snapshot's manifest (header and tables).
        entries: the selected keys, in key order.
        filtered: keys of the snapshot left out by the pattern.
        errors: ``[{"key", "reason"}]``: keys whose object is missing or damaged (not in ``entries``).
    """

    manifest: Manifest
    entries: list[Entry] = field(default_factory=list)
    filtered: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)


def _key_text(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


def read_keyspace_snapshot(repo: Repository | str | os.PathLike[str], backup_id: str, *,
                           pattern: str | None = None) -> KeyspaceEntries:
    """Read a keyspace snapshot's keys back (all, or those matching ``pattern``).

    Args:
        repo: the repository (or its path).
        backup_id: the snapshot.
        pattern: only keys matching this glob (``fnmatch`` on the key as text, as ``backup import``).

    Returns:
        :class:`KeyspaceEntries`; every object is re-hashed, a damaged one is named in ``errors``.

    Raises:
        SnapshotNotFound: no such snapshot.
        CorruptionError: its manifest is damaged.
        BackupError: it is a file store's snapshot, not a keyspace's.
    """
    repo = as_repository(repo).open()
    root = repo.path
    m = load_manifest(root, backup_id)
    if not is_keyspace_manifest(m):
        raise BackupError(f"snapshot {backup_id} is of the file store {m.source_path}, not of a Redis keyspace")
    out = KeyspaceEntries(m)
    assert m.files is not None
    files = m.files
    wanted: list[tuple[int, bytes]] = []
    for i, path in enumerate(files.path):
        try:
            key = path_to_key(path)
        except ValueError as exc:
            out.errors.append({"key": path, "reason": str(exc)})
            continue
        if pattern is not None and not fnmatch.fnmatchcase(key.decode("utf-8", "surrogateescape"), pattern):
            out.filtered += 1
            continue
        wanted.append((i, key))
    index = load_index(root, strict=False, include_damaged=False)
    key_ = crypto.key_for(root)
    hasher = crypto.id_hasher(root)
    located: list[tuple[str, int, int, int, str, int, bytes]] = []
    for i, key in wanted:
        oid = files.sha256[i]
        loc = index.objects.get(oid)
        if loc is None:
            out.errors.append({"key": _key_text(key), "reason": f"object {oid} is in no index file"})
            continue
        located.append((*loc, oid, i, key))
    located.sort()
    found: dict[int, Entry] = {}
    for pack_id, group in itertools.groupby(located, key=lambda t: t[0]):
        items = list(group)
        try:
            with remote.pack_buffer(root, pack_id) as mm:
                reader = PackReader(open_pack(key_, pack_id, mm), pack_id, hasher)
                for _, off, ln, size, oid, i, key in items:
                    expire_ns = files.mtime_ns[i]
                    try:
                        data = reader.decompress(oid, off, ln, size, verify=True)
                        found[i] = decode_object(data, key, expire_ns // 1_000_000 if expire_ns else None)
                    except (CorruptionError, ValueError, TypeError) as exc:
                        out.errors.append({"key": _key_text(key), "reason": f"pack {pack_id}: {exc}"})
                del reader
        except StorageError:
            raise  # the storage did not answer: the restore fails, no key is called damaged
        except (OSError, ValueError, CorruptionError) as exc:
            out.errors.extend({"key": _key_text(t[6]), "reason": f"pack {pack_id} unreadable: {exc}"} for t in items)
    out.entries = [found[i] for i, _ in wanted if i in found]
    return out


def resolve_keyspace_at(repo: Repository | str | os.PathLike[str], source: str, when: Any) -> str:
    """The newest snapshot of keyspace ``source`` taken at or before ``when`` (ISO string or datetime).

    Raises:
        SnapshotNotFound: none is that old.
    """
    instant = require_timestamp(when)
    best = None
    for s in list_snapshots(as_repository(repo), include_legacy=False):
        if s.source_path == source and s.time <= instant and (best is None or (s.time, s.backup_id) >
                                                              (best.time, best.backup_id)):
            best = s
    if best is None:
        raise SnapshotNotFound(f"no snapshot of {source} at or before {instant.isoformat()}")
    return best.backup_id


def restore_keyspace(
    repo: Repository | str | os.PathLike[str],
    backup_id: str,
    client: redis.Redis,
    *,
    pattern: str | None = None,
    dry_run: bool = False,
    pre_restore: Path | None = None,
    target: str = "",
    now_ms: int | None = None,
) -> dict[str, Any]:
    """Write a keyspace snapshot's keys (all, or those matching ``pattern``) into the client's database.

    Args:
        repo: the repository (or its path).
        backup_id: the snapshot.
        client: the target database (the snapshot's own or any other).
        pattern: only keys matching this glob.
        dry_run: write nothing (only ``EXISTS`` is asked); say what would be written and overwritten.
        pre_restore: export the keys about to be overwritten to this JSON file first (``backup import``
            of it undoes the restore); not written when nothing would be overwritten.
        target: the target's keyspace id, recorded in the pre-restore file and the result.
        now_ms: the instant expiry is judged against, Unix milliseconds (default now).

    Returns:
        :func:`aml.trace.keyspace.import_entries`'s report (``written``, ``would_write``, ``overwritten``,
        ``expired_skipped``, ``existing_skipped``, ``pre_restore``, ``examples``) plus ``backup_id``,
        ``source`` (the snapshot's keyspace), ``target``, ``keys_in_snapshot``, ``filtered`` (keys left out by
        ``pattern``), ``errors`` (``[{"key", "reason"}]``: keys not restored because their stored object is
        damaged or missing) and ``ok``.

    Raises:
        SnapshotNotFound, CorruptionError, BackupError: as :func:`read_keyspace_snapshot`.
        redis.exceptions.RedisError: the target refused or went away (batches already executed are written).
    """
    read = read_keyspace_snapshot(repo, backup_id, pattern=pattern)
    report = import_entries(client, read.entries, dry_run=dry_run, pre_restore=pre_restore,
                            source=target, now_ms=now_ms)
    report.update({"backup_id": backup_id, "source": read.manifest.source_path, "target": target,
                   "keys_in_snapshot": read.manifest.file_count, "filtered": read.filtered,
                   "errors": read.errors, "ok": not read.errors})
    return report
