"""The record cache: a size-bounded LRU of records' JSON values, with hit/miss counters.

The query engine (:mod:`aml.optimize.query`) serves a record's value from this cache, then from the
warm set that ``optimize warm-cache`` stored in the index, and only on a miss opens, decodes and
parses the record's document. Every cached value carries the :class:`DocStamp` (size, mtime, inode)
its document had when it was read; a value whose document changed since is stale and not served.
Counters follow the seeds' ``CacheStats`` (hits, misses, evictions, bytes); the hit rate is what
``performance_ok`` judges (``query_cache_hit_rate`` samples).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

DEFAULT_CACHE_BYTES: Final = 10 * 1024 * 1024
"""Default LRU budget: 10 MiB (10 x 1024² bytes) of compact record JSON, the seeds' ``LRUCache`` default."""

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class DocStamp:
    """Identity of one version of a document: size (bytes), mtime (ns since the epoch) and inode."""

    size: int
    mtime_ns: int
    ino: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> DocStamp | None:
        """The stamp of ``path`` now (``lstat``), or ``None`` if it is gone."""
        try:
            st = os.lstat(path)
        except OSError:
            return None
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass
class CacheStats:
    """Counters of record lookups.

    Attributes:
        hits: values served without reading their document (LRU or warm set).
        misses: values that needed a document read.
        stale: cached values refused because their document changed (each also counts as a miss).
        evictions: values dropped from the LRU to stay within its budget.
    """

    hits: int = 0
    misses: int = 0
    stale: int = 0
    evictions: int = 0

    @property
    def lookups(self) -> int:
        """``hits + misses``."""
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float | None:
        """``hits / lookups`` (ratio 0-1), ``None`` without lookups (nothing to judge)."""
        return self.hits / self.lookups if self.lookups else None

    def copy(self) -> CacheStats:
        """A snapshot of the counters."""
        return CacheStats(self.hits, self.misses, self.stale, self.evictions)

    def since(self, before: CacheStats) -> CacheStats:
        """The counts accumulated after ``before`` was taken."""
        return CacheStats(self.hits - before.hits, self.misses - before.misses, self.stale - before.stale,
                          self.evictions - before.evictions)

    def as_dict(self) -> dict[str, float | int | None]:
        """``{"hits", "misses", "stale", "evictions", "lookups", "hit_rate"}``."""
        rate = self.hit_rate
        return {"hits": self.hits, "misses": self.misses, "stale": self.stale, "evictions": self.evictions,
                "lookups": self.lookups, "hit_rate": None if rate is None else round(rate, 6)}


class LRUCache(Generic[V]):
    """Least-recently-used mapping bounded by the total size of its values.

    Args:
        max_bytes: budget, bytes (sizes are given by the caller with each value).
        max_entries: optional bound on the number of entries.

    Attributes:
        evictions: entries dropped to stay within the bounds.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES, max_entries: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.evictions = 0
        self._bytes = 0
        self._data: OrderedDict[str, tuple[V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    @property
    def bytes(self) -> int:
        """Total size of the cached values, bytes."""
        return self._bytes

    def get(self, key: str) -> V | None:
        """The value for ``key`` (now the most recently used), or ``None``."""
        entry = self._data.get(key)
        if entry is None:
            return None
        self._data.move_to_end(key)
        return entry[0]

    def put(self, key: str, value: V, size: int) -> None:
        """Insert or replace ``key``; evicts least recently used entries beyond the bounds. A value
        larger than the whole budget is not cached."""
        self.pop(key)
        if size > self.max_bytes:
            return
        self._data[key] = (value, size)
        self._bytes += size
        while self._data and (self._bytes > self.max_bytes or
                              (self.max_entries is not None and len(self._data) > self.max_entries)):
            _, (_, dropped) = self._data.popitem(last=False)
            self._bytes -= dropped
            self.evictions += 1

    def pop(self, key: str) -> V | None:
        """Remove ``key``; returns its value or ``None``."""
        entry = self._data.pop(key, None)
        if entry is None:
            return None
        self._bytes -= entry[1]
        return entry[0]

    def clear(self) -> None:
        """Drop every entry (not counted as evictions)."""
        self._data.clear()
        self._bytes = 0
