"""Per-pattern aggregation of a keyspace, and the companion-key analysis.

:class:`KeyspaceStats` takes one key at a time (from a live Redis or an RDB file) and keeps, per
pattern, counts and sums only: its memory does not grow with the number of keys, but for 8 bytes per
key (a 64-bit hash) kept for the companion analysis and a few example keys per pattern.
"""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aml.trace.patterns import PatternInferer
from aml.trace.sniff import ValueEncoding

TTL_BUCKETS: tuple[tuple[str, float], ...] = (
    ("le_1h", 3600.0), ("le_1d", 86400.0), ("le_1w", 604800.0), ("longer", float("inf")))
"""TTL split of the issue (none / at most 1 hour / 1 day / 1 week / longer), in seconds remaining (the
bounds are also written out in :meth:`KeyspaceStats.add`, its hot path)."""

IDLE_BUCKETS: tuple[tuple[str, float], ...] = TTL_BUCKETS
"""Idle-time split, seconds since the last read or write (``OBJECT IDLETIME``), same bounds."""

EXAMPLES = 5
"""Example keys kept per pattern and per finding."""

_EXAMPLE_POOL = 1000
"""Keys (of the first ones seen) kept per inferred pattern to draw examples of orphans from."""


@dataclass(slots=True)
class PatternStats:
    """What a trace knows about the keys of one pattern. Bytes are ``MEMORY USAGE`` bytes (live) or the
    key and value payload bytes (RDB file); seconds are remaining TTL and idle time at the trace."""

    keys: int = 0
    bytes: int = 0
    max_bytes: int = 0
    types: Counter[str] = field(default_factory=Counter)
    encodings: Counter[str] = field(default_factory=Counter)
    values: Counter[str] = field(default_factory=Counter)
    ttl: Counter[str] = field(default_factory=Counter)
    ttl_max_s: float | None = None
    expired: int = 0
    idle: Counter[str] = field(default_factory=Counter)
    idle_sum_s: float = 0.0
    idle_max_s: float | None = None
    freq_sum: int = 0
    freq_keys: int = 0
    unused: int = 0
    sizes_estimated: int = 0
    examples: list[str] = field(default_factory=list)

    def to_dict(self, scale: float = 1.0) -> dict[str, Any]:
        """JSON form. ``scale`` (keyspace keys / keys traced, for ``--sample``) adds estimated totals."""
        idle_keys = sum(self.idle.values())
        out: dict[str, Any] = {
            "keys": self.keys,
            "bytes": self.bytes,
            "avg_bytes": round(self.bytes / self.keys, 1) if self.keys else 0,
            "max_bytes": self.max_bytes,
            "types": dict(self.types.most_common()),
            "encodings": dict(self.encodings.most_common()),
            "values": dict(self.values.most_common()),
            "with_ttl": self.keys - self.ttl.get("none", 0),
            "without_ttl": self.ttl.get("none", 0),
            "ttl": {name: self.ttl.get(name, 0) for name in ("none", *(b for b, _ in TTL_BUCKETS))},
            "ttl_max_s": None if self.ttl_max_s is None else round(self.ttl_max_s, 3),
            "expired": self.expired,
            "idle": {name: self.idle.get(name, 0) for name, _ in IDLE_BUCKETS} if idle_keys else None,
            "idle_avg_s": round(self.idle_sum_s / idle_keys, 1) if idle_keys else None,
            "idle_max_s": self.idle_max_s,
            "lfu_freq_avg": round(self.freq_sum / self.freq_keys, 2) if self.freq_keys else None,
            "unused": self.unused,
            "sizes_estimated": self.sizes_estimated,
            "examples": list(self.examples),
        }
        if scale != 1.0:
            out["keys_estimated"] = round(self.keys * scale)
            out["bytes_estimated"] = round(self.bytes * scale)
        return out


@dataclass(slots=True)
class _Family:
    hashes: array = field(default_factory=lambda: array("q"))
    pool: list[tuple[int, str]] = field(default_factory=list)


class KeyspaceStats:
    """Aggregates keys per pattern and finds orphaned companions.

    Args:
        inferer: maps key names to the patterns they are reported under.
        unused_idle_s: a key not read or written for this many seconds counts as unused.
    """

    def __init__(self, inferer: PatternInferer, unused_idle_s: float = 7 * 86400.0) -> None:
        self.inferer = inferer
        self.unused_idle_s = unused_idle_s
        self.patterns: dict[str, PatternStats] = {}
        self._families: dict[str, _Family] = {}
        self._companions: dict[tuple[str, str], set[int]] = {}

    def add(self, key: str, *, type_: str, nbytes: int, ttl_s: float | None, encoding: str = "",
            value: ValueEncoding = ValueEncoding.UNKNOWN, idle_s: float | None = None, freq: int | None = None,
            size_estimated: bool = False) -> None:
        """Count one key.

        Args:
            key: the key name (:func:`aml.trace.patterns.decode_key`).
            type_: Redis type (``string``, ``hash``, ``list``, ``set``, ``zset``, ``stream``).
            nbytes: its size, bytes.
            ttl_s: seconds until it expires (negative: already expired, RDB files only), ``None`` if none.
            encoding: Redis' internal encoding (``OBJECT ENCODING``), ``""`` if unknown.
            value: the sniffed encoding of a string value.
            idle_s: seconds since last access (LRU servers), if known.
            freq: the LFU access counter (LFU servers), if known.
            size_estimated: ``nbytes`` came from sampling part of an aggregate.
        """
        inferred = self.inferer.infer(key)
        stats = self.patterns.get(pattern := self.inferer.pattern(key, inferred))
        if stats is None:
            stats = self.patterns[pattern] = PatternStats()
        stats.keys += 1
        stats.bytes += nbytes
        if nbytes > stats.max_bytes:
            stats.max_bytes = nbytes
        stats.types[type_] += 1
        if encoding:
            stats.encodings[encoding] += 1
        stats.values[value] += 1
        if ttl_s is None:
            stats.ttl["none"] += 1
        else:
            if ttl_s <= 0:
                stats.expired += 1
            stats.ttl["le_1h" if ttl_s <= 3600 else "le_1d" if ttl_s <= 86400 else "le_1w" if ttl_s <= 604800
                      else "longer"] += 1
            if stats.ttl_max_s is None or ttl_s > stats.ttl_max_s:
                stats.ttl_max_s = ttl_s
        if idle_s is not None:
            stats.idle["le_1h" if idle_s <= 3600 else "le_1d" if idle_s <= 86400 else "le_1w" if idle_s <= 604800
                       else "longer"] += 1
            stats.idle_sum_s += idle_s
            if stats.idle_max_s is None or idle_s > stats.idle_max_s:
                stats.idle_max_s = idle_s
            if idle_s >= self.unused_idle_s:
                stats.unused += 1
        if freq is not None:
            stats.freq_sum += freq
            stats.freq_keys += 1
        if size_estimated:
            stats.sizes_estimated += 1
        if len(stats.examples) < EXAMPLES:
            stats.examples.append(key)
        self._note_companion(key, inferred)

    @property
    def keys(self) -> int:
        """Keys counted so far."""
        return sum(p.keys for p in self.patterns.values())

    @property
    def bytes(self) -> int:
        """Their bytes."""
        return sum(p.bytes for p in self.patterns.values())

    @property
    def values(self) -> Counter[str]:
        """Value encodings over every pattern."""
        total: Counter[str] = Counter()
        for p in self.patterns.values():
            total.update(p.values)
        return total

    def _note_companion(self, key: str, inferred: str) -> None:
        family = self._families.get(inferred)
        if family is None:
            family = self._families[inferred] = _Family()
        digest = hash(key)
        family.hashes.append(digest)
        if len(family.pool) < _EXAMPLE_POOL:
            family.pool.append((digest, key))
        if inferred.endswith("*"):  # the last segment is variable: not a companion suffix
            return
        for delimiter in self.inferer.delimiters:
            base, sep, suffix = key.rpartition(delimiter)
            if sep and suffix and inferred.endswith(delimiter + suffix):  # a literal last segment
                pair = (inferred[: -len(suffix) - 1], suffix)
                hashes = self._companions.get(pair)
                if hashes is None:
                    hashes = self._companions[pair] = set()
                hashes.add(hash(base))
                break

    def companions(self, min_coverage: float = 0.5) -> list[dict[str, Any]]:
        """Companion families: inferred patterns whose keys mostly have a ``<key><delimiter><suffix>``
        companion (such as ``<key>:metadata``), with the keys that lack theirs (orphans) and the
        companions whose key is gone.

        Args:
            min_coverage: the share of a pattern's keys that must have the companion (0-1); below it
                the suffix is a different family, not a companion.

        Returns:
            One dict per companion family, most orphans first: ``{"pattern", "companion", "keys",
            "with_companion", "orphans", "orphan_examples", "companions_without_key"}``.
        """
        found: list[dict[str, Any]] = []
        for (base_pattern, suffix), base_hashes in self._companions.items():
            family = self._families.get(base_pattern)
            if family is None or not family.hashes:
                continue
            covered = sum(1 for h in family.hashes if h in base_hashes)
            if covered < min_coverage * len(family.hashes):
                continue
            delimiter = self._delimiter_of(base_pattern, suffix)
            found.append({
                "pattern": base_pattern,
                "companion": f"{base_pattern}{delimiter}{suffix}",
                "keys": len(family.hashes),
                "with_companion": covered,
                "orphans": len(family.hashes) - covered,
                "orphan_examples": [k for h, k in family.pool if h not in base_hashes][:EXAMPLES],
                "companions_without_key": len(base_hashes) - covered,
            })
        found.sort(key=lambda f: (-f["orphans"], f["pattern"]))
        return found

    def _delimiter_of(self, base_pattern: str, suffix: str) -> str:
        for delimiter in self.inferer.delimiters:
            if f"{base_pattern}{delimiter}{suffix}" in self._families:
                return delimiter
        return self.inferer.delimiters[0]
