"""The AMAOS keyspace, live: the RDB file's keys written into a Redis the test owns, TTLs shifted so
they count from now as they did from the moment the file was saved (the file's expiry times are absolute
and long past)."""

from __future__ import annotations

import json
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
