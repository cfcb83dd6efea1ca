"""Offline trace: the keys of an RDB file, without a server.

Parsed with ``rdb-py`` (Rust, maintained, RDB versions 1-13, typed): ``rdbtools``, the usual Python
choice, stops at RDB version 9 and cannot read what Redis 7 writes (``Invalid RDB version number 10``).
Sizes are payload bytes (key + value bytes, + 8 per aggregate element), not ``MEMORY USAGE``: the
server's allocator overhead is not in the file. Expiry times in an RDB file are absolute, so keys whose
time has passed are still there: they are counted, with a negative TTL, as ``expired``. Streams and
module values are skipped by the parser; the report says how many keys the file declared and how many
were read.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aml.trace.patterns import decode_key
from aml.trace.sniff import HEAD_BYTES, ValueEncoding, sniff
from aml.trace.stats import KeyspaceStats

_TYPE = {"string": "string", "hash": "hash", "list": "list", "set": "set", "sorted_set": "zset"}
_ELEMENT_OVERHEAD = 8
"""Bytes added per aggregate element to its payload: a length prefix's worth, so that a hash of many
tiny fields does not count as smaller than one string holding the same bytes."""


class RdbError(ValueError):
    """The file is not a readable RDB file; the message names the file and the reason."""


@dataclass(slots=True)
class RdbInfo:
    """What the file says about itself: ``version`` (RDB format), ``aux`` (``redis-ver``, ``ctime``...),
    per-database declared key and expiry counts, and the keys read (one ``db`` only)."""

    version: int
    aux: dict[str, str]
    declared: dict[int, tuple[int, int]]
    read: int = 0
    skipped_dbs: int = 0


def _payload(item: Any) -> tuple[int, bytes | None]:
    kind = item["type"]
    if kind == "string":
        value = item["value"]
        return len(value), value[:HEAD_BYTES]
    if kind == "hash":
        return sum(len(f) + len(v) + 2 * _ELEMENT_OVERHEAD for f, v in item["values"].items()), None
    if kind == "sorted_set":
        return sum(len(m) + 8 + _ELEMENT_OVERHEAD for _, m in item["values"]), None
    members = item["values"] if kind == "list" else item["members"]
    return sum(len(m) + _ELEMENT_OVERHEAD for m in members), None


def trace_rdb(path: Path, stats: KeyspaceStats, *, db: int = 0, now: float | None = None,
              progress: Callable[[int, int], None] | None = None) -> RdbInfo:
    """Feed the keys of database ``db`` of the RDB file at ``path`` into ``stats``.

    Args:
        path: the RDB file.
        stats: the aggregation to feed.
        db: the database number to read (others are skipped and counted in ``skipped_dbs``).
        now: the time TTLs are measured from, Unix seconds (default: now; expiry times are absolute).
        progress: called every 10,000 keys with the keys read so far and the keys the file declares
            for ``db`` (0 if it declares none).

    Returns:
        The file's :class:`RdbInfo`.

    Raises:
        RdbError: not a file, not an RDB file, or a truncated or malformed one (the error names the
            file and what the parser said).
    """
    import rdb

    now = time.time() if now is None else now
    if not path.is_file():
        raise RdbError(f"{path}: not a file")
    try:
        decoder = rdb.RdbDecoder(os.fspath(path))
        info = RdbInfo(version=decoder.version, aux={}, declared={})
        current = 0
        items: Iterator[Any] = iter(decoder)  # the stub's TypedDict union: dispatched on "type" below
        for item in items:
            kind = item["type"]
            if kind == "select_db":
                current = item["db"]
            elif kind == "resize_db":
                info.declared[current] = (item["db_size"], item["expires_size"])
            elif kind == "aux_field":
                info.aux[decode_key(item["key"])] = decode_key(item["value"])
            elif kind in _TYPE:
                if current != db:
                    info.skipped_dbs += 1
                    continue
                key = item["key"]
                nbytes, head = _payload(item)
                expiry = item["expiry"]
                stats.add(decode_key(key), type_=_TYPE[kind], nbytes=len(key) + nbytes,
                          ttl_s=None if expiry is None else expiry / 1000.0 - now,
                          value=sniff(head, nbytes) if head is not None else ValueEncoding.UNKNOWN)
                info.read += 1
                if progress is not None and info.read % 10_000 == 0:
                    progress(info.read, info.declared.get(db, (0, 0))[0])
    except (ValueError, OSError) as exc:
        raise RdbError(f"{path}: not a readable RDB file: {exc}") from None
    return info
