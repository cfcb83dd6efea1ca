"""An independent implementation of the documented prune rules, for the prune tests.

Written from the documentation (DESIGN.md "Prune", the docstrings of ``aml.prune.config``,
``aml.prune.value`` and ``aml.prune.strategies``), not from the implementation: it reads the files
with ``gzip``/``json`` directly, walks the Loom layout itself and computes values with its own code.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

NOT_AGENTS = {"global", "config", "monitoring", "audit", "backup"}
COLLECTIONS = ("patterns", "solutions", "decisions")
DAY_S = 86400.0


def load(path: Path) -> Any:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return json.loads(raw)


def ts(value: Any) -> datetime | None:
    """ISO 8601 with Z, +00:00 or nothing (= UTC); None for anything else."""
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def dig(item: Any, *paths: tuple[str, ...]) -> Any:
    for path in paths:
        cur = item
        for key in path:
            cur = cur.get(key) if isinstance(cur, dict) else None
        if cur is not None:
            return cur
    return None


def num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def compact_size(item: Any) -> int:
    return len(json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode())


@dataclass
class Rec:
    agent: str
    collection: str
    rid: str
    document: str
    index: int
    item: dict[str, Any]
    value: float
    last_used: datetime | None
    created: datetime | None
    cost: float


def clamp(x: float) -> float:
    return min(max(x, 0.0), 1.0)


def value_of(collection: str, item: dict[str, Any], now: datetime, half_life: float = 30.0) -> float:
    """value = max(B, 0.9 * B + 0.1 * 2^(-age/30 d)); B = Loom's weighted mean over the terms the record has
    (recency only adds credit: a record Loom scores >= 0.85 is preserved however old)."""
    terms: list[tuple[float, float]] = []
    if collection == "patterns":
        s = num(dig(item, ("performance", "success_rate"), ("metrics", "successRate")))
        c = num(dig(item, ("lifecycle", "confidence"), ("evolution", "confidenceScore")))
        n = num(dig(item, ("performance", "execution_count"), ("metrics", "executionCount")))
        t = num(dig(item, ("performance", "avg_time_saved_ms"), ("metrics", "avgTimeSavedMs")))
        s, c, n, t = (0.5 if s is None else s), (0.3 if c is None else c), (1 if n is None else n), (t or 0.0)
        terms = [(0.4, clamp(s)), (0.3, clamp(c)), (0.2, min(max(n, 0) / 50, 1)), (0.1, min(max(t, 0) / 1000, 1))]
        last = ts(dig(item, ("lifecycle", "last_used_at"), ("evolution", "lastUsed"))) or ts(item.get("timestamp"))
    elif collection == "solutions":
        eff = item.get("effectiveness") or {}
        worked = eff.get("worked")
        verified = item.get("verifiedCount") or 0
        prevented = eff.get("preventedRecurrence") or 0
        conf = min((0.7 if worked else 0.3) + min(0.05 * verified, 0.2) + min(0.02 * prevented, 0.1), 1.0)
        saved = (eff.get("timeToFixMinutes") or 0) * 60000.0 if worked else 0.0
        terms = [(0.4, 0.5 if worked is None else float(bool(worked))), (0.3, conf),
                 (0.2, min(verified / 50, 1)), (0.1, min(saved / 1000, 1))]
        last = ts(item.get("timestamp"))
    else:
        outcome = item.get("outcome")
        if isinstance(outcome, dict):
            repeat = outcome.get("wouldRepeat")
            avg = metric_average(item)
            conf = max(0.1, min((0.5 if avg is None else avg) + (0.1 if repeat else -0.1), 1.0))
            s = 1.0 if repeat is True else 0.0 if repeat is False else 0.5
        else:
            conf, s = 0.5, 0.5
        terms = [(0.4, s), (0.3, conf)]
        last = ts(item.get("reviewedAt")) or ts(item.get("timestamp"))
    base = sum(w * x for w, x in terms) / sum(w for w, _ in terms)
    recency = 0.0 if last is None else 2 ** (-max(0.0, (now - last).total_seconds() / DAY_S) / half_life)
    return max(base, 0.9 * base + 0.1 * recency)


def metric_average(item: dict[str, Any]) -> float | None:
    metrics = (item.get("outcome") or {}).get("successMetrics") or {}
    vals = []
    for key in ("developmentSpeed", "apiPerformance", "clientSatisfaction", "maintainability"):
        v = num(metrics.get(key))
        if v is not None:
            vals.append(clamp(min(v / 1.5, 1.0) if key == "developmentSpeed" else v))
    return sum(vals) / len(vals) if vals else None


def agents_of(root: Path) -> list[str]:
    out = []
    for entry in sorted(os.listdir(root)):
        p = root / entry
        if entry in NOT_AGENTS or entry.startswith(".") or not p.is_dir():
            continue
        if any((p / f"{c}.json").is_file() for c in COLLECTIONS):
            out.append(entry)
    return out


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def records(root: Path, now: datetime) -> list[Rec]:
    out = []
    for agent in agents_of(root):
        for coll in COLLECTIONS:
            path = root / agent / f"{coll}.json"
            if not path.is_file():
                continue
            items = load(path)
            sizes = [compact_size(i) for i in items]
            scale = path.stat().st_size / (sum(sizes) or 1)
            for index, item in enumerate(items):
                created = ts(item.get("timestamp"))
                if coll == "patterns":
                    last = ts(dig(item, ("lifecycle", "last_used_at"), ("evolution", "lastUsed"))) or created
                else:
                    last = created
                out.append(Rec(agent, coll, item["id"], f"{agent}/{coll}.json", index, item,
                               value_of(coll, item, now), last, created, sizes[index] * scale))
    return out


@dataclass
class Limits:
    pattern_days: float = 90
    decision_days: float = 180
    failed_days: float = 30
    min_success: float = 0.20
    min_conf: float = 0.15
    min_exec: int = 3
    agent_limit: float = 80 * 1024 * 1024
    store_limit: float = 800 * 1024 * 1024
    keep: float = 0.85


def older(t: datetime | None, now: datetime, days: float) -> bool:
    return t is not None and (now - t).total_seconds() > days * DAY_S


def time_reason(r: Rec, now: datetime, lim: Limits) -> str | None:
    it = r.item
    if r.collection == "patterns":
        if older(r.last_used, now, lim.pattern_days):
            return "unused_too_long"
        s = num(dig(it, ("performance", "success_rate"), ("metrics", "successRate")))
        n = num(dig(it, ("performance", "execution_count"), ("metrics", "executionCount"))) or 0
        if n >= lim.min_exec and s is not None and s < 0.3 and older(r.created, now, lim.failed_days):
            return "failed_pattern"
    if r.collection == "decisions" and older(r.created, now, lim.decision_days):
        return "decision_too_old"
    return None


def perf_reason(r: Rec, lim: Limits) -> str | None:
    it = r.item
    if r.collection == "patterns":
        n = num(dig(it, ("performance", "execution_count"), ("metrics", "executionCount"))) or 0
        if n < lim.min_exec:
            return None
        s = num(dig(it, ("performance", "success_rate"), ("metrics", "successRate")))
        c = num(dig(it, ("lifecycle", "confidence"), ("evolution", "confidenceScore")))
        if s is not None and s < lim.min_success:
            return "low_success_rate"
        if c is not None and c < lim.min_conf:
            return "low_confidence"
    elif r.collection == "solutions":
        if (it.get("effectiveness") or {}).get("worked") is False:
            return "outdated_solution"
    elif isinstance(it.get("outcome"), dict):
        avg = metric_average(it)
        if it["outcome"].get("wouldRepeat") is False or (avg is not None and avg < 0.5):
            return "negative_outcome"
    return None


def oracle(root: Path, strategies: list[str], now: datetime, lim: Limits) -> dict[tuple[str, str], str]:
    """``{(document, record id): reason}`` the documented rules prune, strategies in the documented order."""
    recs = records(root, now)
    taken: dict[tuple[str, str], str] = {}
    costs: dict[tuple[str, str], float] = {}

    def take(r: Rec, reason: str) -> None:
        taken[(r.document, r.rid)] = reason
        costs[(r.document, r.rid)] = r.cost

    for strategy in ("time_based", "performance_based", "space_based"):
        if strategy not in strategies:
            continue
        if strategy != "space_based":
            for r in recs:
                if (r.document, r.rid) in taken:
                    continue
                reason = time_reason(r, now, lim) if strategy == "time_based" else perf_reason(r, lim)
                if reason and r.value < lim.keep:
                    take(r, reason)
            continue
        # space: per agent, then the store; lowest value first, stop once under 70 % of the limit
        def squeeze(pool: list[Rec], size: float, limit: float, reason: str) -> None:
            size -= sum(costs.get((r.document, r.rid), 0.0) for r in pool)
            if size <= limit:
                return
            left = [r for r in pool if (r.document, r.rid) not in taken]
            left.sort(key=lambda r: (r.value, r.last_used.timestamp() if r.last_used else -math.inf,
                                     r.document, r.index))
            for r in left:
                if size < 0.7 * limit:
                    break
                if r.value >= lim.keep:
                    continue
                take(r, reason)
                size -= r.cost

        for agent in agents_of(root):
            squeeze([r for r in recs if r.agent == agent], dir_size(root / agent), lim.agent_limit,
                    "memory_limit_exceeded")
        squeeze(recs, dir_size(root), lim.store_limit, "store_limit_exceeded")
    return taken
