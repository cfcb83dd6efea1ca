"""The AMAOS keyspace, live: the RDB file's keys written into a Redis the test owns, TTLs shifted so
they count from now as they did from the moment the file was saved (the file's expiry times are absolute
and long past)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import redis

from tests.realdata import AMAOS_DIR

AMAOS_RDB = AMAOS_DIR / "amaos-dump.rdb"
AMAOS_MANIFEST = AMAOS_DIR / "amaos-manifest.json"


def manifest() -> dict[str, Any]:
    """The manifest of the AMAOS dump (exact per-pattern counts)."""
    return dict(json.loads(AMAOS_MANIFEST.read_text()))


def load_amaos(client: redis.Redis, rdb_path: Path = AMAOS_RDB) -> int:
    """Write every key of the AMAOS dump (all strings) into ``client``'s database, with ``PX`` = the time
    each key had left when the file was saved.

    Returns:
        The number of keys written.
    """
    import rdb

    saved_ms = None
    pipe = client.pipeline(transaction=False)
    written = 0
    for item in rdb.RdbDecoder(str(rdb_path)):
        if item["type"] == "aux_field" and item["key"] == b"ctime":
            saved_ms = int(item["value"]) * 1000
        if item["type"] != "string":
            continue
        assert saved_ms is not None
        expiry = item["expiry"]
        px = None if expiry is None else max(1000, expiry - saved_ms)
        pipe.set(item["key"], item["value"], px=px)
        written += 1
    pipe.execute()
    return written


KeyspaceState = dict[bytes, tuple[object, object, int]]
"""key -> (type, its whole value, its absolute expiry time in Unix milliseconds or -1)."""


def fresh_db(port: int, db: int) -> redis.Redis:
    """A client on database ``db`` of the test's own private server, emptied first."""
    client = redis.Redis(port=port, db=db)
    client.flushdb()  # a database of the test's own private server, never a shared one
    return client


def _value(client: redis.Redis, key: bytes, kind: object) -> object:
    if kind == b"string":
        return client.get(key)
    if kind == b"hash":
        return client.hgetall(key)
    if kind == b"list":
        return client.lrange(key, 0, -1)
    if kind == b"set":
        return client.smembers(key)
    if kind == b"zset":
        return client.zrange(key, 0, -1, withscores=True)
    return client.xrange(key)


def keyspace_state(client: redis.Redis) -> KeyspaceState:
    """Every key of the client's database with its type, value and absolute expiry. Values are compared
    logically: a DUMP of a hashtable-encoded hash depends on its insertion order."""
    from aml.trace.keyspace import absolute_expiry_supported

    absolute = absolute_expiry_supported(client)  # exact (PEXPIRETIME) where the server has it
    out: KeyspaceState = {}
    for key in client.scan_iter(count=1000):
        if absolute:
            expire = int(client.execute_command("PEXPIRETIME", key))
        else:
            pttl = int(client.pttl(key))
            expire = -1 if pttl < 0 else int(time.time() * 1000) + pttl
        kind = client.type(key)
        out[key] = (kind, _value(client, key, kind), expire)
    return out


def assert_same_keyspace(after: KeyspaceState, before: KeyspaceState) -> None:
    """Same keys, types and values; expiry times within a second (none stays none)."""
    assert set(after) == set(before)
    for key, (kind, value, expire) in before.items():
        akind, avalue, aexpire = after[key]
        assert (akind, avalue) == (kind, value), key
        assert (expire == -1) == (aexpire == -1), key
        assert abs(aexpire - expire) <= 1000, key
