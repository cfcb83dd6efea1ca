"""The decision matrix: what maintenance a health run's findings call for.

Source: the seeds' quick reference (Loom ``scripts/aml`` QUICK_REFERENCE, "Decision Matrix"):

============================  ===========================================  ======================
health finds                  aml runs                                     rule
============================  ===========================================  ======================
a document that does not parse ``optimize gc`` (quarantine copy); names the    ``unparsable_document``
                              newest snapshot holding a good copy
memory > 85 % of its limit    prune, all strategies, ``--aggressive``       ``memory_critical``
memory > 70 % of its limit    prune, time + performance strategies          ``memory_high``
lookups > 50 ms               ``optimize index``, then ``warm-cache``        ``slow_lookups``
cache hit rate < 60 %         ``warm-cache`` with more records              ``low_cache_hit``
============================  ===========================================  ======================

Rules are listed in priority order: one chain per store runs at a time, and the first rule that may run
goes first (a store whose documents do not parse is repaired before it is pruned). "Its limit" is the
seeds' ``PruneConfig`` limit, which is the monitor's *critical* size (80 MiB per agent, 800 MiB per store:
``AML_AGENT_CRITICAL_MB``/``AML_STORE_CRITICAL_MB``); the percentages are ``AML_REMEDIATE_PRUNE_RATIO`` and
``AML_REMEDIATE_AGGRESSIVE_RATIO``. The matrix's inequalities are strict, as the seeds write them.

This module is pure: it reads :class:`~aml.health.checks.CheckResult` lists and returns
:class:`Finding` objects with the steps (task names and keyword arguments) that answer them. Cooldowns,
the chain in flight, refusals and the catalog rows belong to ``tasks/remediate.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aml.health.checks import MIB, CheckResult

RULES = ("unparsable_document", "memory_critical", "memory_high", "slow_lookups", "low_cache_hit")
"""The rules of the decision matrix, in priority order."""

MODES = ("off", "dry-run", "on")
"""``AML_REMEDIATE``: ``off`` (nothing listed or run), ``dry-run`` (listed with the reason, never run;
the default) or ``on`` (run: enqueued by the health task on workers, inline with ``--remediate``)."""

WARM_MORE_FACTOR = 4
"""``warm_cache_more`` loads this many times the default warm-set budget (records and bytes)."""


@dataclass(frozen=True)
class Action:
    """One step a rule can run: a Celery task by name and its keyword arguments (the store is added).

    Attributes:
        name: the policy's name for it (``prune``, ``optimize_index`` ...).
        task: the Celery task name.
        kwargs: keyword arguments besides ``store``.
        effect_keys: dotted paths into the task's result whose sum is the step's effect (records removed,
            indexed, loaded): zero means the step changed nothing.
        summary: a few words for reports.
    """

    name: str
    task: str
    kwargs: Mapping[str, Any]
    effect_keys: tuple[str, ...]
    summary: str

    def effect(self, result: Mapping[str, Any] | None) -> int | None:
        """The sum of :attr:`effect_keys` in ``result`` (``None`` when none of them is there)."""
        if not result:
            return None
        total, seen = 0, False
        for key in self.effect_keys:
            value: Any = result
            for part in key.split("."):
                value = value.get(part) if isinstance(value, Mapping) else None
            if isinstance(value, list):
                value = sum(1 for v in value if not isinstance(v, Mapping) or v.get("copy"))
            if isinstance(value, int | float) and not isinstance(value, bool):
                total += int(value)
                seen = True
        return total if seen else None


ALL_STRATEGIES = ("time_based", "performance_based", "space_based", "session_based")


def _actions() -> dict[str, Action]:
    # local import: the warm-set budget is the optimize engine's constant
    from aml.optimize.warm import DEFAULT_WARM_BYTES, DEFAULT_WARM_LIMIT

    more = WARM_MORE_FACTOR
    return {
        "gc": Action("gc", "aml.compress.gc", {"quarantine": True}, ("records_removed", "quarantined"),
                     "optimize gc (quarantine copies of unparseable documents)"),
        "prune": Action("prune", "aml.prune.run", {"strategies": ["time_based", "performance_based"]},
                        ("records_removed", "records_archived"), "prune (time + performance strategies)"),
        "prune_aggressive": Action("prune_aggressive", "aml.prune.run",
                                   {"strategies": list(ALL_STRATEGIES), "aggressive": True},
                                   ("records_removed", "records_archived"),
                                   "prune (all strategies, aggressive)"),
        "optimize_index": Action("optimize_index", "aml.compress.index", {}, ("records",), "optimize index"),
        "warm_cache": Action("warm_cache", "aml.compress.warm_cache", {}, ("records",), "warm-cache"),
        "warm_cache_more": Action("warm_cache_more", "aml.compress.warm_cache",
                                  {"limit": DEFAULT_WARM_LIMIT * more, "max_mb": DEFAULT_WARM_BYTES * more / MIB},
                                  ("records",), f"warm-cache with {more}x the records"),
    }


ACTIONS: Mapping[str, Action] = _actions()
"""Every action a policy may name."""

DEFAULT_POLICY: Mapping[str, tuple[str, ...]] = {
    "unparsable_document": ("gc",),
    "memory_critical": ("prune_aggressive",),
    "memory_high": ("prune",),
    "slow_lookups": ("optimize_index", "warm_cache"),
    "low_cache_hit": ("warm_cache_more",),
}
"""The seeds' decision matrix: rule -> actions, run in order as one chain."""

DEFAULT_COOLDOWNS_S: Mapping[str, float] = {
    "unparsable_document": 24 * 3600.0,
    "memory_critical": 24 * 3600.0,
    "memory_high": 24 * 3600.0,
    "slow_lookups": 6 * 3600.0,
    "low_cache_hit": 6 * 3600.0,
}
"""Seconds before a rule may run again on the same store: 24 h for prune (issue 13) and for gc (a daily
health run sees each repair once), 6 h for the index and the cache (cheap, not destructive)."""


class PolicyError(ValueError):
    """A remediation policy or cooldown setting that does not parse; the message names the setting, the
    entry and what is allowed."""


def _pairs(text: str, setting: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for raw in text.split(";"):
        if not raw.strip():
            continue
        rule, sep, value = raw.partition("=")
        rule, value = rule.strip(), value.strip()
        if not sep or not rule or not value:
            raise PolicyError(f"{setting}: {raw.strip()!r} is not RULE=VALUE")
        if rule not in RULES:
            raise PolicyError(f"{setting}: unknown rule {rule!r} (rules: {', '.join(RULES)})")
        if rule in seen:
            raise PolicyError(f"{setting}: rule {rule} is given twice")
        seen.add(rule)
        out.append((rule, value))
    return out


def parse_policy(text: str, setting: str = "AML_REMEDIATE_POLICY") -> dict[str, tuple[str, ...]]:
    """Parse a policy: ``RULE=ACTION[,ACTION...]`` pairs separated by ``;`` over :data:`DEFAULT_POLICY`.

    Example: ``"slow_lookups=optimize_index; low_cache_hit=none"``. ``none`` turns a rule off. Actions run
    in the order given, as one chain.

    Returns:
        rule -> actions, every rule present (the defaults where ``text`` names none).

    Raises:
        PolicyError: a malformed pair, an unknown rule or action, a rule given twice.
    """
    policy = dict(DEFAULT_POLICY)
    for rule, value in _pairs(text, setting):
        names = tuple(a.strip() for a in value.split(",") if a.strip())
        if names == ("none",):
            policy[rule] = ()
            continue
        unknown = [a for a in names if a not in ACTIONS]
        if unknown or not names:
            raise PolicyError(f"{setting}: unknown action {', '.join(map(repr, unknown)) or repr(value)} in rule "
                              f"{rule} (actions: {', '.join(ACTIONS)}, or none)")
        policy[rule] = names
    return policy


def parse_cooldowns(text: str, setting: str = "AML_REMEDIATE_COOLDOWN") -> dict[str, float]:
    """Parse cooldowns: ``RULE=SECONDS`` pairs separated by ``;`` over :data:`DEFAULT_COOLDOWNS_S`.

    Returns:
        rule -> seconds (at least 0), every rule present.

    Raises:
        PolicyError: a malformed pair, an unknown rule, a negative or non-numeric value.
    """
    cooldowns = dict(DEFAULT_COOLDOWNS_S)
    for rule, value in _pairs(text, setting):
        try:
            seconds = float(value)
        except ValueError:
            raise PolicyError(f"{setting}: {rule}={value!r} is not a number of seconds") from None
        if not seconds >= 0 or seconds == float("inf"):
            raise PolicyError(f"{setting}: {rule}={value!r} must be a finite number of seconds, at least 0")
        cooldowns[rule] = seconds
    return cooldowns


@dataclass(frozen=True)
class Policy:
    """A remediation policy: the rules' actions and thresholds.

    Attributes:
        rules: rule -> action names (:func:`parse_policy`).
        cooldowns_s: rule -> seconds (:func:`parse_cooldowns`).
        prune_ratio: ``memory_high`` fires above this share of the limit (seeds: 0.70).
        aggressive_ratio: ``memory_critical`` fires above this share (seeds: 0.85).
        lookup_ms: ``slow_lookups`` fires when the mean lookup or recorded query time exceeds this,
            milliseconds (seeds: 50).
        cache_hit: ``low_cache_hit`` fires below this hit rate, ratio 0-1 (seeds: 0.60).
        agent_limit_mib, store_limit_mib: the limits prune's space strategy works to (the monitor's
            critical sizes), MiB.
    """

    rules: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_POLICY))
    cooldowns_s: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_COOLDOWNS_S))
    prune_ratio: float = 0.70
    aggressive_ratio: float = 0.85
    lookup_ms: float = 50.0
    cache_hit: float = 0.60
    agent_limit_mib: float = 80.0
    store_limit_mib: float = 800.0

    def steps(self, rule: str) -> list[tuple[Action, dict[str, Any]]]:
        """The rule's actions with their keyword arguments (besides ``store``), in order."""
        out = []
        for name in self.rules.get(rule, ()):
            action = ACTIONS[name]
            kwargs = dict(action.kwargs)
            if action.task == "aml.prune.run":  # the space strategy works to the limits health judges by
                kwargs["overrides"] = {"agent_limit_mib": self.agent_limit_mib,
                                       "store_limit_mib": self.store_limit_mib}
            out.append((action, kwargs))
        return out


@dataclass(frozen=True)
class Finding:
    """A rule of the matrix that a health run's results call for.

    Attributes:
        rule: one of :data:`RULES`.
        check: the health check behind it (its alert is the cause).
        agent: the agent of that check's result (``None``: the store).
        measure: the quantity the rule judges (share of the limit, milliseconds, hit rate, documents).
        unit: ``"ratio"``, ``"ms"`` or ``"count"``.
        better: ``"lower"`` or ``"higher"``: which way the measure improves.
        reason: one sentence saying what was found and which row of the matrix applies.
        details: facts for reports (every subject over the line, the failing paths...).
    """

    rule: str
    check: str
    agent: str | None
    measure: float
    unit: str
    better: str
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def improved(self, before: float | None, after: float | None) -> bool | None:
        """Whether ``after`` is better than ``before`` (``None``: either is unknown)."""
        if after is None or before is None:
            return None
        return after < before if self.better == "lower" else after > before

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"rule": self.rule, "check": self.check, "agent": self.agent, "measure": self.measure,
                "unit": self.unit, "reason": self.reason, "details": dict(self.details)}


def _memory(results: Sequence[CheckResult], policy: Policy) -> list[Finding]:
    over: list[tuple[float, CheckResult]] = []
    for r in results:
        if r.check != "memory_within_limits":
            continue
        size = r.details.get("size_bytes")
        limit_mb = r.details.get("critical_mb")
        if not isinstance(size, int) or not isinstance(limit_mb, int | float) or limit_mb <= 0:
            continue
        over.append((size / (limit_mb * MIB), r))
    for rule, ratio in zip(MEMORY_RULES, (policy.aggressive_ratio, policy.prune_ratio), strict=True):
        hits = sorted(((share, r) for share, r in over if share > ratio), key=lambda x: -x[0])
        if not hits:
            continue
        share, worst = hits[0]
        what = f"agent {worst.agent}" if worst.agent else "the store"
        limit = worst.details["critical_mb"]
        how = "all strategies, aggressive" if rule == "memory_critical" else "the time and performance strategies"
        reason = (f"{what} uses {share:.0%} of its {limit:g} MiB limit (> {ratio:.0%}: the seeds' decision "
                  f"matrix prunes with {how})")
        if len(hits) > 1:
            reason += f"; {len(hits) - 1} more over the line"
        subjects = [{"agent": r.agent, "share": round(s, 4), "size_bytes": r.details["size_bytes"]} for s, r in hits]
        return [Finding(rule, worst.check, worst.agent, round(share, 6), "ratio", "lower", reason,
                        {"subjects": subjects, "threshold": ratio})]
    return []


def _performance(results: Sequence[CheckResult], policy: Policy) -> list[Finding]:
    out: list[Finding] = []
    for r in results:
        if r.check != "performance_ok":
            continue
        d = r.details
        times = [(what, v) for what, v in (("record lookups", d.get("avg_query_time_ms") if d.get("lookups") else None),
                                          ("recorded queries", d.get("recorded_query_time_ms")))
                 if isinstance(v, int | float)]
        slow = [(what, v) for what, v in times if v > policy.lookup_ms]
        if slow:
            what, ms = max(slow, key=lambda x: x[1])
            out.append(Finding("slow_lookups", r.check, r.agent, float(ms), "ms", "lower",
                               f"{what} take {ms:.1f} ms (> {policy.lookup_ms:g} ms: the seeds' decision matrix "
                               "rebuilds the index, then warms the cache)", {"threshold_ms": policy.lookup_ms}))
        rate = d.get("cache_hit_rate")
        if isinstance(rate, int | float) and rate < policy.cache_hit:
            out.append(Finding("low_cache_hit", r.check, r.agent, float(rate), "ratio", "higher",
                               f"cache hit rate {rate:.0%} (< {policy.cache_hit:.0%}: the seeds' decision matrix "
                               "warms the cache with more records)",
                               {"threshold": policy.cache_hit, "source": d.get("cache_source")}))
    return out


def _integrity(results: Sequence[CheckResult]) -> list[Finding]:
    for r in results:
        failures = r.details.get("failures") if r.check == "file_integrity" else None
        if failures:
            paths = [f.get("path") for f in failures if isinstance(f, Mapping)]
            return [Finding("unparsable_document", r.check, r.agent, float(len(paths)), "count", "lower",
                            f"{len(paths)} document(s) do not parse (the gc copies them to quarantine; the newest "
                            "snapshot holding a good copy is named for a restore)", {"paths": paths})]
    return []


MEMORY_RULES = ("memory_critical", "memory_high")


def current_measure(rule: str, agent: str | None, results: Sequence[CheckResult]) -> float | None:
    """The quantity ``rule`` judges, now, for the subject its finding named (``agent``; ``None``: the store),
    whether or not the rule still fires: the share of the limit (memory rules), the slower of the mean probe
    lookup and the mean recorded query (ms), the cache hit rate, the number of documents that do not parse.
    ``None`` when the results do not measure it (no query traffic, the agent is gone).

    This is what a closing health run compares with the measure before a chain: a ``memory_high`` prune after
    which the store grew past 85 % is worse, not "cleared", although ``memory_high`` itself no longer fires.
    """
    for r in results:
        d = r.details
        if rule in MEMORY_RULES and r.check == "memory_within_limits" and r.agent == agent:
            size, limit_mb = d.get("size_bytes"), d.get("critical_mb")
            if isinstance(size, int) and isinstance(limit_mb, int | float) and limit_mb > 0:
                return round(size / (limit_mb * MIB), 6)
        if rule == "slow_lookups" and r.check == "performance_ok":
            times = [v for v in (d.get("avg_query_time_ms") if d.get("lookups") else None,
                                 d.get("recorded_query_time_ms")) if isinstance(v, int | float)]
            return float(max(times)) if times else None
        if rule == "low_cache_hit" and r.check == "performance_ok":
            rate = d.get("cache_hit_rate")
            return float(rate) if isinstance(rate, int | float) else None
        if rule == "unparsable_document" and r.check == "file_integrity":
            return float(len(d.get("failures") or []))
    return None


def evaluate(results: Sequence[CheckResult], policy: Policy) -> list[Finding]:
    """The rules a health run's results call for, in priority order (:data:`RULES`), one finding per rule.

    ``memory_critical`` replaces ``memory_high`` (its prune covers it). A rule whose actions are
    ``none`` is still returned (reports say it is off).

    Args:
        results: every check result of one health run.
        policy: the thresholds.

    Returns:
        :class:`Finding` list ordered by :data:`RULES`.
    """
    found = _integrity(results) + _memory(results, policy) + _performance(results, policy)
    return sorted(found, key=lambda f: RULES.index(f.rule))
