"""A Redis keyspace as a plain JSON file (the AMAOS seed's ``MemorySnapshot``): export, and import back.

The file is one JSON document a person can read::

    {"format": "aml-keyspace", "version": 1, "created": "2026-12-02T09:00:00Z", "source": "redis://h:6379/0",
     "redis_version": "7.0.15", "keys": 2,
     "entries": [
       {"key": "amaos:episode:7", "type": "string", "value": "{\\"text\\": ...}", "expire_at_ms": null},
       {"key": "cache:1", "type": "hash", "value": [["field", {"base64": "gASV..."}]], "expire_at_ms": 1795344563000}
     ]}

Every key, field, member and value is a JSON string when it is UTF-8 text, else ``{"base64": ...}``: pickles
and other bytes come back byte-identical and are never decoded. Values by type: string (one value), hash
(``[field, value]`` pairs), list (values in order), set (members), zset (``[member, score]``; scores
``"inf"``/``"-inf"`` as strings), stream (``[id, [[field, value], ...]]`` entries; consumer groups are not
kept). Expiry times are absolute (Unix milliseconds), as in an RDB file, so an import later skips the keys
whose time has passed instead of giving them a new life.

Reads are not a point-in-time copy: keys written during the export may or may not be in it (as with
``redis-cli --scan`` and the seed's exporter). Writes on import go in ``MULTI``/``EXEC`` batches of
:data:`BATCH` keys; each key is replaced whole (``UNLINK`` then written), never merged, and nothing else in
the database is touched (no ``FLUSHDB``).
"""

from __future__ import annotations

import base64
import fnmatch
import itertools
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from aml.store.atomic import atomic_open
from aml.store.timestamps import utc_iso_z

FORMAT = "aml-keyspace"
VERSION = 1
BATCH = 500
"""Keys read or written per pipeline (and per ``MULTI``/``EXEC`` on import)."""

TYPES = ("string", "hash", "list", "set", "zset", "stream")


class KeyspaceFileError(ValueError):
    """A keyspace file that is not one: the message names the file and the reason."""


def encode_bytes(raw: bytes) -> str | dict[str, str]:
    """``raw`` as JSON: the text itself when it is UTF-8, else ``{"base64": ...}``."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode("ascii")}


def decode_bytes(value: Any) -> bytes:
    """The bytes :func:`encode_bytes` wrote.

    Raises:
        ValueError: neither a string nor ``{"base64": ...}``.
    """
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {"base64"} and isinstance(value["base64"], str):
        return base64.b64decode(value["base64"], validate=True)
    raise ValueError(f"not a string or {{'base64': ...}}: {str(value)[:60]}")


def _score(value: float) -> float | str:
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


@dataclass(slots=True)
class Entry:
    """One key: ``key`` and values are bytes; ``value`` is shaped by ``type`` (see the module docstring);
    ``expire_at_ms`` is absolute Unix milliseconds or ``None``."""

    key: bytes
    type: str
    value: Any
    expire_at_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON form of the entry."""
        e = encode_bytes
        v = self.value
        if self.type == "string":
            out: Any = e(v)
        elif self.type == "hash":
            out = [[e(f), e(x)] for f, x in v]
        elif self.type in ("list", "set"):
            out = [e(x) for x in v]
        elif self.type == "zset":
            out = [[e(m), _score(s)] for m, s in v]
        else:
            out = [[e(i), [[e(f), e(x)] for f, x in fields]] for i, fields in v]
        return {"key": e(self.key), "type": self.type, "value": out, "expire_at_ms": self.expire_at_ms}

    @classmethod
    def from_json(cls, raw: Any) -> Entry:
        """Read one entry back.

        Raises:
            ValueError: a malformed entry (the message says what is wrong).
        """
        if not isinstance(raw, dict):
            raise ValueError("an entry is not an object")
        kind, v, expire = raw.get("type"), raw.get("value"), raw.get("expire_at_ms")
        if kind not in TYPES:
            raise ValueError(f"unknown type {kind!r}")
        if expire is not None and not isinstance(expire, int):
            raise ValueError("expire_at_ms is not an integer")
        d = decode_bytes
        if kind == "string":
            value: Any = d(v)
        elif not isinstance(v, list):
            raise ValueError(f"a {kind} value is not a list")
        elif kind == "hash":
            value = [(d(f), d(x)) for f, x in v]
        elif kind in ("list", "set"):
            value = [d(x) for x in v]
        elif kind == "zset":
            value = [(d(m), float(s)) for m, s in v]
        else:
            value = [(d(i), [(d(f), d(x)) for f, x in fields]) for i, fields in v]
        return cls(d(raw.get("key")), kind, value, expire)


def absolute_expiry_supported(client: redis.Redis) -> bool:
    """Whether the server has ``PEXPIRETIME`` (Redis 7.0 and later, and servers that report such a version):
    a key's expiry as an absolute Unix time in milliseconds, exact. Older servers give only the time left
    (``PTTL``), which :func:`scan_entries` adds to its own clock.

    Raises:
        redis.exceptions.RedisError: the server does not answer.
    """
    version = str(client.info("server").get("redis_version", ""))
    major = version.split(".", 1)[0]
    return major.isdigit() and int(major) >= 7


def _fetch(client: redis.Redis, keys: list[bytes], now_ms: int, absolute: bool) -> list[Entry]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
        if absolute:
            pipe.execute_command("PEXPIRETIME", key)  # -2 without the key, -1 without an expiry, as PTTL
        else:
            pipe.pttl(key)
    meta = pipe.execute()
    kinds = [(k, meta[2 * i].decode() if isinstance(meta[2 * i], bytes) else str(meta[2 * i]), meta[2 * i + 1])
             for i, k in enumerate(keys)]
    pipe = client.pipeline(transaction=False)
    present = []
    for key, kind, expiry in kinds:
        if kind == "none" or expiry == -2:
            continue  # gone since SCAN
        present.append((key, kind, expiry))
        if kind == "string":
            pipe.get(key)
        elif kind == "hash":
            pipe.hgetall(key)
        elif kind == "list":
            pipe.lrange(key, 0, -1)
        elif kind == "set":
            pipe.smembers(key)
        elif kind == "zset":
            pipe.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            pipe.xrange(key, "-", "+")
        else:
            raise ValueError(f"{key!r}: type {kind} (a module type) cannot be exported")
    values = pipe.execute()
    entries = []
    for (key, kind, expiry), value in zip(present, values, strict=True):
        if value is None:
            continue  # deleted between the two round trips
        if kind == "hash":
            value = list(value.items())
        elif kind == "set":
            value = sorted(value)
        elif kind == "stream":
            value = [(i, list(f.items())) for i, f in value]
        expire = None if expiry < 0 else int(expiry) if absolute else now_ms + int(expiry)
        entries.append(Entry(key, kind, value, expire))
    return entries


def scan_entries(client: redis.Redis, *, match: str | None = None, keys: Iterable[bytes] | None = None
                 ) -> Iterator[Entry]:
    """Read keys (every key matching ``match``, or exactly ``keys``) with their values and expiry times
    (absolute Unix milliseconds: the server's ``PEXPIRETIME`` where it has it, else this host's clock plus
    ``PTTL``, :func:`absolute_expiry_supported`).

    Raises:
        ValueError: a key of a module type (not one of :data:`TYPES`).
        redis.exceptions.RedisError: the server does not answer.
    """
    absolute = absolute_expiry_supported(client)
    source: Iterable[bytes] = keys if keys is not None else client.scan_iter(match=match, count=1000)
    batch: list[bytes] = []
    for key in source:
        batch.append(key)
        if len(batch) >= BATCH:
            yield from _fetch(client, batch, int(time.time() * 1000), absolute)
            batch = []
    if batch:
        yield from _fetch(client, batch, int(time.time() * 1000), absolute)


@dataclass(slots=True)
class ExportResult:
    """What an export wrote: ``path``, ``keys``, ``bytes`` (the file's size), keys per type."""

    path: Path
    keys: int = 0
    bytes: int = 0
    types: dict[str, int] = field(default_factory=dict)


def write_entries(path: Path, entries: Iterable[Entry], *, source: str, redis_version: str = "") -> ExportResult:
    """Write ``entries`` as a keyspace file, atomically (temp file, fsync, rename); entries are streamed.

    Raises:
        OSError: the file cannot be written (the target is then unchanged).
    """
    result = ExportResult(path)
    header = {"format": FORMAT, "version": VERSION, "created": utc_iso_z(datetime.now(UTC)), "source": source,
              "redis_version": redis_version}
    with atomic_open(path) as fh:
        fh.write(json.dumps(header, ensure_ascii=False)[:-1].encode() + b', "entries": [\n')
        for entry in entries:
            fh.write((",\n" if result.keys else "").encode()
                     + json.dumps(entry.to_json(), ensure_ascii=False, allow_nan=False).encode())
            result.keys += 1
            result.types[entry.type] = result.types.get(entry.type, 0) + 1
        fh.write(f'\n], "keys": {result.keys}}}\n'.encode())
    result.bytes = path.stat().st_size
    return result


def save_first_values(path: Path, entries: Iterable[Entry], *, source: str) -> ExportResult:
    """Save ``entries`` to ``path`` as :func:`write_entries` does, but when ``path`` already exists (written by an
    earlier, interrupted attempt of the same run) keep every entry it holds and add only the keys it lacks: the
    value a key had before the run's first attempt is the one kept, so an undo from the file is exact.

    Raises:
        KeyspaceFileError: ``path`` exists but is not a readable keyspace file (nothing is written).
        OSError: the file cannot be written (the previous one is unchanged).
    """
    if not path.exists():
        return write_entries(path, entries, source=source)
    _header, earlier = read_keyspace_file(path)
    kept = {e.key for e in earlier}
    return write_entries(path, itertools.chain(earlier, (e for e in entries if e.key not in kept)), source=source)


def export_keyspace(client: redis.Redis, path: Path, *, match: str | None = None, source: str = "") -> ExportResult:
    """Export every key (or those matching ``match``) of the client's database to ``path``.

    Returns:
        :class:`ExportResult`.

    Raises:
        OSError: the file cannot be written; ValueError: a module-type key; redis.exceptions.RedisError.
    """
    version = str(client.info("server").get("redis_version", ""))
    return write_entries(path, scan_entries(client, match=match), source=source, redis_version=version)


def read_keyspace_file(path: Path) -> tuple[dict[str, Any], list[Entry]]:
    """Read a keyspace file: its header (``format``, ``created``, ``source``...) and its entries.

    Raises:
        KeyspaceFileError: not a file, not JSON, not this format, or a malformed entry (named by index).
    """
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise KeyspaceFileError(f"{path}: not a readable keyspace file: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("entries"), list):
        raise KeyspaceFileError(f"{path}: not an {FORMAT} file (no format/entries)")
    if doc.get("version") != VERSION:
        raise KeyspaceFileError(f"{path}: format version {doc.get('version')!r}, this aml reads {VERSION}")
    entries = []
    for i, raw in enumerate(doc["entries"]):
        try:
            entries.append(Entry.from_json(raw))
        except (ValueError, TypeError) as exc:
            raise KeyspaceFileError(f"{path}: entry {i}: {exc}") from None
    header = {k: v for k, v in doc.items() if k != "entries"}
    return header, entries


def _write(pipe: Any, entry: Entry) -> None:
    key, v = entry.key, entry.value
    pipe.unlink(key)
    if entry.type == "string":
        pipe.set(key, v)
    elif entry.type == "hash":
        if v:
            pipe.hset(key, mapping=dict(v))
    elif entry.type == "list":
        if v:
            pipe.rpush(key, *v)
    elif entry.type == "set":
        if v:
            pipe.sadd(key, *v)
    elif entry.type == "zset":
        if v:
            pipe.zadd(key, {m: s for m, s in v})
    else:
        for entry_id, fields in v:
            pipe.xadd(key, dict(fields), id=entry_id)
    if entry.expire_at_ms is not None:
        pipe.pexpireat(key, entry.expire_at_ms)


def import_entries(client: redis.Redis, entries: Iterable[Entry], *, match: str | None = None,
                   dry_run: bool = False, pre_restore: Path | None = None, skip_existing: bool = False,
                   source: str = "", now_ms: int | None = None,
                   progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write entries into the client's database: each key replaced whole, expiry times kept.

    Args:
        entries: what to write.
        match: only keys matching this glob (Redis ``MATCH`` syntax, on the key as text).
        dry_run: write nothing; say what would be written, overwritten and skipped.
        pre_restore: before any write, export the keys about to be overwritten to this file (skipped when
            none would be); ``None`` writes no such copy. If it exists (an earlier attempt of the same run, killed
            part-way), its values are kept: see :func:`save_first_values`.
        skip_existing: leave keys that exist untouched instead of replacing them.
        source: what the entries came from, for the pre-restore file's header.
        now_ms: the time expiry is judged against (default now).
        progress: called with the number of keys written so far.

    Returns:
        ``{"written", "overwritten", "expired_skipped", "existing_skipped", "filtered", "dry_run",
        "pre_restore", "examples": {"overwritten": [...], "expired": [...]}}`` (examples: up to 5 key names).

    Raises:
        redis.exceptions.RedisError: the server refused or went away (keys of the batches already
            executed are written; the pre-restore file holds what they replaced).
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    wanted: list[Entry] = []
    expired: list[bytes] = []
    filtered = 0
    for entry in entries:
        if match is not None and not fnmatch.fnmatchcase(entry.key.decode("utf-8", "surrogateescape"), match):
            filtered += 1
        elif entry.expire_at_ms is not None and entry.expire_at_ms <= now_ms:
            expired.append(entry.key)
        else:
            wanted.append(entry)
    existing: set[bytes] = set()
    for start in range(0, len(wanted), BATCH):
        batch = wanted[start:start + BATCH]
        pipe = client.pipeline(transaction=False)
        for entry in batch:
            pipe.exists(entry.key)
        existing.update(e.key for e, n in zip(batch, pipe.execute(), strict=True) if n)
    to_write = [e for e in wanted if not (skip_existing and e.key in existing)]
    overwritten = [e.key for e in to_write if e.key in existing]
    report: dict[str, Any] = {
        "written": 0 if dry_run else len(to_write), "would_write": len(to_write), "overwritten": len(overwritten),
        "expired_skipped": len(expired), "existing_skipped": len(wanted) - len(to_write), "filtered": filtered,
        "dry_run": dry_run, "pre_restore": None,
        "examples": {"overwritten": [k.decode("utf-8", "backslashreplace") for k in overwritten[:5]],
                     "expired": [k.decode("utf-8", "backslashreplace") for k in expired[:5]]},
    }
    if dry_run:
        return report
    if pre_restore is not None and overwritten:
        saved = save_first_values(pre_restore, scan_entries(client, keys=overwritten), source=source)
        report["pre_restore"] = {"path": str(saved.path), "keys": saved.keys}
    for start in range(0, len(to_write), BATCH):
        pipe = client.pipeline(transaction=True)
        for entry in to_write[start:start + BATCH]:
            _write(pipe, entry)
        pipe.execute()
        if progress is not None:
            progress(min(start + BATCH, len(to_write)))
    return report
