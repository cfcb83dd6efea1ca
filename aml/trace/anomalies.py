"""The anomalies the AMAOS seed's tracer looks for, over one trace (and the previous one, for growth).

Each finding is a dict with ``kind``, ``pattern``, ``severity`` (``warning`` / ``critical``), ``message``
and the numbers behind it; ``tasks/trace.py`` turns each into a catalog alert (one fingerprint per
store, pattern and kind) and resolves the alerts whose finding is gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KINDS = ("rapid_growth", "persistent_keys", "unused_keys", "orphaned_companions")
"""Every kind of finding, so a trace can resolve the alerts of kinds it no longer finds."""


@dataclass(frozen=True, slots=True)
class AnomalyThresholds:
    """When a trace flags a pattern.

    Attributes:
        growth_ratio: a pattern whose keys or bytes grew by more than this share since the previous trace
            (0.5 = +50 %) is growing rapidly ...
        growth_min_keys: ... if it has at least this many keys now (a pattern going from 2 to 4 keys is
            noise).
        persistent_min_ttl_share: a pattern where at least this share of keys has a TTL has its keys
            without one flagged as persistent: under ``maxmemory-policy noeviction`` or ``volatile-*``
            those keys are never evicted, the usual cause of a Redis running out of memory (redis.io,
            "Key eviction").
        unused_min_share: a pattern with at least this share of keys unused (not accessed for
            ``unused_idle_s``, see :class:`aml.trace.stats.KeyspaceStats`) is flagged.
        min_keys: patterns with fewer keys are never flagged for persistent or unused keys.
    """

    growth_ratio: float = 0.5
    growth_min_keys: int = 100
    persistent_min_ttl_share: float = 0.5
    unused_min_share: float = 0.5
    min_keys: int = 10


def find_anomalies(patterns: Mapping[str, Mapping[str, Any]], companions: list[dict[str, Any]],
                   previous: Mapping[str, tuple[float, float]] | None,
                   thresholds: AnomalyThresholds, *, noun: str = "keys",
                   unused_days: float | None = None) -> list[dict[str, Any]]:
    """The findings of one trace.

    Args:
        patterns: pattern -> its :meth:`aml.trace.stats.PatternStats.to_dict`.
        companions: :meth:`aml.trace.stats.KeyspaceStats.companions`.
        previous: pattern -> ``(keys, bytes)`` of the previous trace of the same keyspace, or ``None``.
        thresholds: when to flag.
        noun: what the items are, for messages (``keys``; ``records`` for file stores).
        unused_days: the idle time that makes an item unused, days (for messages).

    Returns:
        Findings, critical first, then by pattern.
    """
    found: list[dict[str, Any]] = []
    for pattern, p in patterns.items():
        keys = p["keys"]
        if previous is not None:
            found.extend(_growth(pattern, keys, p["bytes"], previous.get(pattern), thresholds, noun))
        if keys < thresholds.min_keys:
            continue
        without = p["without_ttl"]
        if without and (keys - without) >= thresholds.persistent_min_ttl_share * keys:
            found.append({
                "kind": "persistent_keys", "pattern": pattern, "severity": "warning", "keys": without,
                "of": keys, "message": f"{without} of {keys} keys of {pattern} have no TTL, though "
                                       f"{keys - without} of the family do: they never expire"})
        if p["unused"] and p["unused"] >= thresholds.unused_min_share * keys:
            since = f"for {unused_days:g} days or more" if unused_days is not None else "for long"
            found.append({
                "kind": "unused_keys", "pattern": pattern, "severity": "warning", "keys": p["unused"],
                "of": keys, "message": f"{p['unused']} of {keys} {noun} of {pattern} were not used {since}"})
    for c in companions:
        if c["orphans"]:
            found.append({
                "kind": "orphaned_companions", "pattern": c["pattern"], "severity": "warning",
                "keys": c["orphans"], "of": c["keys"], "companion": c["companion"],
                "examples": c["orphan_examples"],
                "message": f"{c['orphans']} of {c['keys']} keys of {c['pattern']} have no {c['companion']} "
                           f"companion, though {c['with_companion']} do"})
    found.sort(key=lambda f: (f["severity"] != "critical", f["pattern"], f["kind"]))
    return found


def _growth(pattern: str, keys: int, nbytes: int, before: tuple[float, float] | None,
            thresholds: AnomalyThresholds, noun: str) -> list[dict[str, Any]]:
    if before is None or keys < thresholds.growth_min_keys:
        return []
    keys_before, bytes_before = before
    grown = []
    if keys_before > 0 and keys / keys_before - 1 > thresholds.growth_ratio:
        grown.append(f"{noun} {int(keys_before)} -> {keys}")
    if bytes_before > 0 and nbytes / bytes_before - 1 > thresholds.growth_ratio:
        grown.append(f"bytes {int(bytes_before)} -> {nbytes}")
    if not grown:
        return []
    severity = "critical" if keys_before and keys / keys_before - 1 > 2 * thresholds.growth_ratio else "warning"
    return [{"kind": "rapid_growth", "pattern": pattern, "severity": severity, "keys": keys,
             "keys_before": int(keys_before), "bytes": nbytes, "bytes_before": int(bytes_before),
             "message": f"{pattern} grew since the previous trace: " + ", ".join(grown)}]
