"""Properties of prune on generated Loom stores (hypothesis): high-value records are never pruned, a
dry run never writes, and apply removes exactly the plan."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aml.prune import STRATEGIES, PruneConfig, apply_plan, build_plan
from tests import prune_oracle as oracle
from tests.realdata import snapshot_tree

NOW = datetime(2026, 11, 23, tzinfo=UTC)
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

unit = st.floats(0, 1, allow_nan=False)
instants = st.integers(0, 400 * 86400).map(lambda s: NOW - timedelta(seconds=s))


@st.composite
def stamp(draw: Any) -> str:
    """A timestamp in one of the three real forms: TS ``Z`` ms, migration ``+00:00`` µs, naive Python."""
    dt = draw(instants)
    form = draw(st.sampled_from(["z", "offset", "naive"]))
    if form == "z":
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    if form == "offset":
        return dt.isoformat(timespec="microseconds")
    return dt.replace(tzinfo=None).isoformat(timespec="microseconds")


@st.composite
def pattern(draw: Any, n: int, snake: bool) -> dict[str, Any]:
    s, c = draw(unit), draw(unit)
    runs, saved = draw(st.integers(0, 120)), draw(st.floats(0, 5000, allow_nan=False))
    created, last = draw(stamp()), draw(stamp())
    item: dict[str, Any] = {"id": f"p-{n}", "agent": "a", "timestamp": created, "pattern": {"type": "t"}}
    if snake:
        item.update(version="2.0.0", performance={"success_rate": s, "execution_count": runs,
                                                  "avg_time_saved_ms": saved, "error_prevention_count": 0},
                    lifecycle={"created_at": created, "last_used_at": last, "refinement_count": 0, "confidence": c})
    else:
        item.update(metrics={"successRate": s, "executionCount": runs, "avgTimeSavedMs": saved,
                             "errorPreventionCount": 0},
                    evolution={"created": created, "lastUsed": last, "refinements": 0, "confidenceScore": c})
    return item


@st.composite
def solution(draw: Any, n: int) -> dict[str, Any]:
    return {"id": f"s-{n}", "agent": "a", "timestamp": draw(stamp()), "problem": {"errorType": "E"},
            "effectiveness": {"worked": draw(st.booleans()), "timeToFixMinutes": draw(st.integers(0, 300)),
                              "preventedRecurrence": draw(st.integers(0, 9)), "relatedErrorsFixed": 0},
            "active": True, "verifiedCount": draw(st.integers(0, 12))}


@st.composite
def decision(draw: Any, n: int) -> dict[str, Any]:
    item: dict[str, Any] = {"id": f"d-{n}", "agent": "a", "timestamp": draw(stamp()), "decision": {"type": "x"}}
    if draw(st.booleans()):
        metrics = {"developmentSpeed": draw(st.floats(0, 2)), "maintainability": draw(unit),
                   "customMetrics": {"incidentsPerMonth": draw(st.integers(0, 9))}}
        item["outcome"] = {"successMetrics": metrics, "lessonsLearned": [], "wouldRepeat": draw(st.booleans())}
        item["reviewedAt"] = draw(stamp())
    return item


@st.composite
def stores(draw: Any) -> dict[str, Any]:
    snake = draw(st.booleans())
    return {
        "gzip": draw(st.booleans()),
        "patterns": [draw(pattern(i, snake)) for i in range(draw(st.integers(0, 25)))],
        "solutions": [draw(solution(i)) for i in range(draw(st.integers(0, 10)))],
        "decisions": [draw(decision(i)) for i in range(draw(st.integers(0, 10)))],
    }


@st.composite
def configs(draw: Any) -> tuple[PruneConfig, list[str]]:
    config = PruneConfig(
        now=NOW,
        pattern_max_age_days=draw(st.sampled_from([30, 60, 90])),
        decision_max_age_days=draw(st.sampled_from([60, 120, 180])),
        min_success_rate=draw(st.sampled_from([0.2, 0.3, 0.9])),
        min_confidence_score=draw(st.sampled_from([0.15, 0.5, 0.95])),
        min_execution_count=draw(st.sampled_from([0, 3])),
        agent_limit_mib=draw(st.sampled_from([0.001, 0.005, 80])),
    )
    chosen = draw(st.lists(st.sampled_from(STRATEGIES), min_size=1, unique=True))
    return config, chosen


def write_store(root: Path, spec: dict[str, Any]) -> None:
    agent = root / "a"
    agent.mkdir(parents=True)
    for name in ("patterns", "solutions", "decisions"):
        data = json.dumps(spec[name], indent=2).encode()
        (agent / f"{name}.json").write_bytes(gzip.compress(data, mtime=0) if spec["gzip"] else data)
    os.utime(agent / "patterns.json", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))


@SETTINGS
@given(spec=stores(), cfg=configs())
def test_high_value_never_pruned_and_dry_run_never_writes(spec: dict[str, Any], cfg: Any) -> None:
    config, chosen = cfg
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "memory"
        write_store(root, spec)
        before = snapshot_tree(root.parent)
        plan = build_plan(root, config, chosen)
        assert snapshot_tree(root.parent) == before, "planning (the dry run) wrote something"
        items = {(c, i["id"]): i for c in ("patterns", "solutions", "decisions") for i in spec[c]}
        for a in plan.actions:
            value = oracle.value_of(a.collection, items[(a.collection, a.record_id)], NOW)
            assert value < 0.85, (a, value)
            assert a.value is not None and abs(a.value - value) < 1e-9
        for p in plan.preserved:
            assert oracle.value_of(p["collection"], items[(p["collection"], p["record_id"])], NOW) >= 0.85
        result = apply_plan(plan, run_id="h", archive_root=Path(tmp) / "archives")
        assert not result.conflicts
        gone = {(a.collection, a.record_id) for a in plan.actions}
        for name in ("patterns", "solutions", "decisions"):
            left = oracle.load(root / "a" / f"{name}.json")
            assert left == [i for i in spec[name] if (name, i["id"]) not in gone]
            for i in spec[name]:
                if oracle.value_of(name, i, NOW) >= 0.85:
                    assert i in left, "a record with value >= 0.85 was pruned"
