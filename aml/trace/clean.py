"""``trace clean``: remove the keys of a pattern from a Redis, after a snapshot of them that can put them back.

Selection (all of them apply): keys matching ``pattern``, and, when asked, only those whose TTL has run to
zero (``ttl_zero_only``: ``PTTL`` below one second: the AMAOS seed's ``clean_keys(..., ttl_zero_only=True)``),
only those with no TTL (``no_ttl``: never expire), or only those idle for ``idle_days`` or more
(``OBJECT IDLETIME``; not available under an LFU eviction policy). The selected keys are exported to a
keyspace file (:mod:`aml.trace.keyspace`) first; only then are they ``UNLINK``\\ ed, in batches of
:data:`aml.trace.keyspace.BATCH`. :func:`undo_clean` writes them back from that file, leaving alone any key
that was created again since and skipping those whose expiry time has passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from aml.trace.keyspace import BATCH, import_entries, read_keyspace_file, save_first_values, scan_entries


@dataclass(frozen=True, slots=True)
class CleanCriteria:
    """Which keys ``trace clean`` removes (see the module docstring)."""

    pattern: str
    ttl_zero_only: bool = False
    no_ttl: bool = False
    idle_days: float | None = None

    def __post_init__(self) -> None:
        if not self.pattern:
            raise ValueError("trace clean needs a --pattern (use '*' to mean every key)")
        if self.ttl_zero_only and self.no_ttl:
            raise ValueError("--ttl-zero-only and --no-ttl select disjoint keys: give one")
        if self.idle_days is not None and self.idle_days < 0:
            raise ValueError("--idle-days must be 0 or more")

    def describe(self) -> str:
        """The selection in words, for messages."""
        parts = [f"keys matching {self.pattern!r}"]
        if self.ttl_zero_only:
            parts.append("whose TTL has run to zero")
        if self.no_ttl:
            parts.append("with no TTL")
        if self.idle_days is not None:
            parts.append(f"idle for {self.idle_days:g} days or more")
        return ", ".join(parts)


def select_keys(client: redis.Redis, criteria: CleanCriteria) -> list[bytes]:
    """The keys ``criteria`` selects now (read-only).

    Raises:
        redis.exceptions.ResponseError: ``idle_days`` under an LFU eviction policy (no idle time kept).
    """
    chosen: list[bytes] = []
    batch: list[bytes] = []

    def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.pttl(key)
            if criteria.idle_days is not None:
                pipe.object("idletime", key)
        replies = pipe.execute()
        step = 2 if criteria.idle_days is not None else 1
        for i, key in enumerate(batch):
            pttl = int(replies[step * i])
            if pttl == -2:
                continue  # gone
            if criteria.ttl_zero_only and not 0 <= pttl < 1000:
                continue
            if criteria.no_ttl and pttl != -1:
                continue
            if criteria.idle_days is not None and int(replies[step * i + 1]) < criteria.idle_days * 86400:
                continue
            chosen.append(key)
        batch.clear()

    for key in client.scan_iter(match=criteria.pattern, count=1000):
        batch.append(key)
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    return chosen


def clean(client: redis.Redis, criteria: CleanCriteria, snapshot: Path, *, dry_run: bool = False,
          source: str = "") -> dict[str, Any]:
    """Remove the selected keys, after exporting them to ``snapshot``.

    Args:
        client: the Redis database to clean.
        criteria: which keys.
        snapshot: where the keys are exported before removal (written atomically; not written on a dry run
            or when nothing is selected). A snapshot already there is an earlier, interrupted attempt of the same
            run (the tasks name it by task id): its keys are kept and the new ones added, so one snapshot holds
            every key the run removed, across a redelivery.
        dry_run: select and report only.
        source: the keyspace's name (its URL without password) for the snapshot's header.

    Returns:
        ``{"selected", "removed", "snapshot" (path or None), "dry_run", "criteria", "examples"}``.

    Raises:
        OSError: the snapshot could not be written: nothing was removed.
        redis.exceptions.RedisError: the server went away (the keys of the batches sent are removed; all
            are in the snapshot).
    """
    keys = select_keys(client, criteria)
    result: dict[str, Any] = {
        "selected": len(keys), "removed": 0, "snapshot": None, "dry_run": dry_run, "criteria": criteria.describe(),
        "examples": [k.decode("utf-8", "backslashreplace") for k in keys[:5]],
    }
    if dry_run:
        return result
    if not keys:
        if snapshot.exists():  # an earlier attempt of this run removed them all: its snapshot is the run's
            result["snapshot"] = str(snapshot)
            result["snapshot_keys"] = len(read_keyspace_file(snapshot)[1])
        return result
    saved = save_first_values(snapshot, scan_entries(client, keys=keys), source=source)
    result["snapshot"] = str(saved.path)
    result["snapshot_keys"] = saved.keys
    for start in range(0, len(keys), BATCH):
        result["removed"] += int(client.unlink(*keys[start:start + BATCH]))
    return result


def undo_clean(client: redis.Redis, snapshot: Path, *, dry_run: bool = False) -> dict[str, Any]:
    """Put back the keys a clean removed, from its snapshot: keys that exist again are left alone
    (counted in ``existing_skipped``), keys whose expiry time has passed are skipped.

    Returns:
        :func:`aml.trace.keyspace.import_entries`'s report.

    Raises:
        aml.trace.keyspace.KeyspaceFileError: the snapshot is missing or damaged.
    """
    _header, entries = read_keyspace_file(snapshot)
    return import_entries(client, entries, dry_run=dry_run, skip_existing=True)
