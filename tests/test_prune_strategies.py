"""Prune strategies on every real Loom store: the planned set equals an independent oracle of the rules."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aml.prune import MIB, PruneConfig, build_plan
from aml.prune.value import ValueInputs, value_score
from tests import prune_oracle as oracle
from tests.realdata import LOOM_COUNTS, snapshot_tree

NOW = datetime(2026, 11, 23, tzinfo=UTC)
STORES = sorted(LOOM_COUNTS)


def planned(root: Path, strategies: list[str], config: PruneConfig) -> dict[tuple[str, str], str]:
    plan = build_plan(root, config, strategies)
    return {(a.document, a.record_id): a.reason for a in plan.actions}


def space_limit_mib(root: Path) -> float:
    """A per-agent limit that about half the store's agents exceed."""
    sizes = [oracle.dir_size(root / a) for a in oracle.agents_of(root)]
    return statistics.median(sizes) / MIB


@pytest.mark.parametrize("name", STORES)
@pytest.mark.parametrize("strategy", ["time_based", "performance_based"])
def test_rule_strategies_match_oracle(name: str, strategy: str, loom_store) -> None:
    root = loom_store(name)
    got = planned(root, [strategy], PruneConfig(now=NOW))
    want = oracle.oracle(root, [strategy], NOW, oracle.Limits())
    assert got == want
    assert want, "the real stores have records these rules match"


@pytest.mark.parametrize("name", STORES)
def test_aggressive_matches_oracle(name: str, loom_store) -> None:
    root = loom_store(name)
    got = planned(root, ["time_based", "performance_based"], PruneConfig(now=NOW).aggressive())
    want = oracle.oracle(root, ["time_based", "performance_based"], NOW,
                         oracle.Limits(pattern_days=60, decision_days=120, min_success=0.30))
    assert got == want
    assert len(want) > len(oracle.oracle(root, ["time_based", "performance_based"], NOW, oracle.Limits()))


@pytest.mark.parametrize("name", STORES)
def test_space_based_matches_oracle_lowest_value_first(name: str, loom_store) -> None:
    root = loom_store(name)
    limit = space_limit_mib(root)
    config = PruneConfig(now=NOW, agent_limit_mib=limit)
    plan = build_plan(root, config, ["space_based"])
    got = {(a.document, a.record_id): a.reason for a in plan.actions}
    want = oracle.oracle(root, ["space_based"], NOW, oracle.Limits(agent_limit=limit * MIB))
    assert got == want
    assert want
    # lowest value first: within each agent, everything pruned is worth no more than anything kept that
    # space pruning could have taken (below the preservation threshold)
    for agent in {a.agent for a in plan.actions}:
        recs = [r for r in oracle.records(root, NOW) if r.agent == agent]
        gone = [r.value for r in recs if (r.document, r.rid) in want]
        kept = [r.value for r in recs if (r.document, r.rid) not in want and r.value < 0.85]
        assert max(gone) <= min(kept)
        # and the agent ends under 70 % of its limit (estimated as documented)
        left = oracle.dir_size(root / agent) - sum(r.cost for r in recs if (r.document, r.rid) in want)
        assert left < 0.7 * limit * MIB


def test_space_based_store_limit_matches_oracle(loom_store) -> None:
    root = loom_store("loom-plain-v1.0")
    store_limit = oracle.dir_size(root) * 0.8 / MIB
    config = PruneConfig(now=NOW, store_limit_mib=store_limit)
    got = planned(root, ["space_based"], config)
    want = oracle.oracle(root, ["space_based"], NOW, oracle.Limits(store_limit=store_limit * MIB))
    assert got == want
    assert set(got.values()) == {"store_limit_exceeded"}


@pytest.mark.parametrize("name", ["loom-gzip-v1.0", "loom-plain-v2.0.0"])
def test_all_strategies_together_match_oracle(name: str, loom_store) -> None:
    root = loom_store(name)
    limit = space_limit_mib(root)
    strategies = ["space_based", "performance_based", "time_based"]  # any order: run in the documented one
    got = planned(root, strategies, PruneConfig(now=NOW, agent_limit_mib=limit))
    want = oracle.oracle(root, strategies, NOW, oracle.Limits(agent_limit=limit * MIB))
    assert got == want


def test_same_records_pruned_across_schema_versions(loom_store) -> None:
    """plain v1.0, v1.1, v1.2 and v2.0 hold the same items in four shapes: the same ids are pruned."""
    ids = {}
    for name in ("loom-plain-v1.0", "loom-plain-v1.1.0", "loom-plain-v1.2.0", "loom-plain-v2.0.0"):
        plan = build_plan(loom_store(name), PruneConfig(now=NOW), ["time_based", "performance_based"])
        ids[name] = {(a.record_id, a.reason) for a in plan.actions}
    first = ids.pop("loom-plain-v1.0")
    for name, got in ids.items():
        assert got == first, name


def test_plan_never_writes(loom_store) -> None:
    root = loom_store("loom-gzip-v1.0")
    before = snapshot_tree(root.parent)
    build_plan(root, PruneConfig(now=NOW, agent_limit_mib=0.01),
               ["time_based", "performance_based", "space_based", "session_based"])
    assert snapshot_tree(root.parent) == before


def test_high_value_records_are_preserved_and_listed(loom_store) -> None:
    root = loom_store("loom-gzip-v1.0")
    plan = build_plan(root, PruneConfig(now=NOW), ["time_based"])
    assert plan.preserved, "the real store has old patterns worth >= 0.85"
    assert all(p["value"] >= 0.85 for p in plan.preserved)
    assert not {(p["document"], p["record_id"]) for p in plan.preserved} & {
        (a.document, a.record_id) for a in plan.actions}
    without = build_plan(root, PruneConfig(now=NOW, preserve_high_value=False), ["time_based"])
    assert len(without.actions) == len(plan.actions) + len(plan.preserved)


def test_value_score_formula() -> None:
    now = NOW
    full = ValueInputs(1.0, 1.0, 50, 1000.0, now)
    assert value_score(full, now) == pytest.approx(1.0)
    loom = ValueInputs(0.5, 0.3, 1, 0.0, None)  # a new pattern, never used: Loom's 0.294, no recency
    base = 0.4 * 0.5 + 0.3 * 0.3 + 0.2 / 50
    assert value_score(loom, now) == pytest.approx(base)  # no recency credit: exactly Loom's score
    month = ValueInputs(0.5, 0.3, 1, 0.0, datetime(2026, 10, 24, tzinfo=UTC))  # 30 days: recency 1/2
    assert value_score(month, now) == pytest.approx(0.9 * base + 0.1 * 0.5)
    stale = ValueInputs(0.9, 0.9, 45, 600.0, datetime(2025, 1, 1, tzinfo=UTC))  # Loom 0.87, unused 2 years
    assert value_score(stale, now) == pytest.approx(0.4 * 0.9 + 0.3 * 0.9 + 0.2 * 0.9 + 0.1 * 0.6)
    assert value_score(stale, now) >= 0.85  # recency never takes away what Loom's formula gives
    decision = ValueInputs(1.0, 1.0, None, None, None)  # renormalised over success + confidence
    assert value_score(decision, now) == pytest.approx(1.0)
    future = ValueInputs(0.0, 0.0, 0, 0.0, datetime(2027, 1, 1, tzinfo=UTC))
    assert value_score(future, now) == pytest.approx(0.1)  # recency is capped at 1
