"""Generate Loom-shaped sample stores (for ``aml demo``, tests and benchmarks).

The shape follows the real stores in ``shared/data/loom`` (Loom's TypeScript runtime, schema 1.0.0):
``config.json``, ``README.md``, ``global/``, ``audit/``, ``backup/`` and one directory per agent with
``patterns.json``, ``solutions.json`` and ``decisions.json``: camelCase fields, millisecond ``Z``
timestamps spread over the given span, ~2.5 % deactivated patterns, ~40 % of decisions without an
``outcome``, and (like Loom's runtime with ``compression: true``) some files stored as gzip bytes under
their ``.json`` names. File mtimes are set to the newest write each file received. Deterministic for a
given seed.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aml.store.atomic import atomic_write

AGENT_NAMES = ("frontend-developer", "debugger", "backend-architect", "test-automator", "code-reviewer",
               "security-auditor", "data-engineer", "devops-engineer")
PATTERN_TYPES = ("flaky-test-isolation", "retry-with-backoff", "memoize-selector", "schema-first-api",
                 "feature-flag-rollout", "bisect-regression", "cache-invalidation", "n-plus-one-fix")
TECHNIQUES = ("run the test alone and in random order", "exponential backoff with jitter", "extract a pure helper",
              "write the contract before the handler", "dark launch behind a flag", "git bisect with a script")
ERRORS = (("ConnectionRefused", "Error 111 connecting to redis:6379. Connection refused."),
          ("TypeError", "Cannot read properties of undefined (reading 'map')"),
          ("TimeoutError", "Query exceeded 30000 ms"), ("KeyError", "'user_id'"))
QUESTIONS = ("Roll back or roll forward?", "Which queue for webhook retries?", "Cache at the edge or in the app?",
             "Split the service now or later?")


@dataclass(frozen=True)
class SampleSpec:
    """What to generate.

    Attributes:
        agents: number of agents (names cycle through Loom's agent names, then ``agent-N``).
        patterns, solutions, decisions: items per agent.
        days: span of the timeline in days, ending at ``end``.
        gzip_every: every n-th agent's files are written as gzip bytes under ``.json`` names (0: none).
        idle_agents: the last this many agents stopped working ``idle_days`` before ``end`` (retired
            agents whose files are cold: what ``optimize compress`` is for).
        idle_days: how long the idle agents have been idle, days.
        end: last instant of the timeline (default: now, UTC).
        seed: random seed.
    """

    agents: int = 4
    patterns: int = 60
    solutions: int = 30
    decisions: int = 20
    days: int = 180
    gzip_every: int = 2
    idle_agents: int = 0
    idle_days: int = 45
    end: datetime | None = None
    seed: int = 7


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _agent_name(i: int) -> str:
    return AGENT_NAMES[i] if i < len(AGENT_NAMES) else f"agent-{i}"


def _pattern(rng: random.Random, agent: str, created: datetime, last: datetime) -> dict[str, Any]:
    runs = rng.randint(1, 40)
    return {
        "id": str(uuid.UUID(int=rng.getrandbits(128))), "agent": agent, "timestamp": _ts(created),
        "pattern": {"type": rng.choice(PATTERN_TYPES),
                    "context": {"language": rng.choice(["python", "typescript", "go"]), "component": "api"},
                    "approach": {"technique": rng.choice(TECHNIQUES), "rationale": "worked before on this code"},
                    "conditions": {"whenApplicable": ["symptom seen twice"], "whenNotApplicable": []}},
        "metrics": {"successRate": round(rng.betavariate(4, 2), 4), "executionCount": runs,
                    "avgTimeSavedMs": round(rng.uniform(0, 20000), 3), "errorPreventionCount": 0},
        "evolution": {"created": _ts(created), "lastUsed": _ts(last), "refinements": rng.randint(0, runs),
                      "confidenceScore": round(min(1.0, 0.3 + runs * 0.02 * rng.random()), 4)},
        "active": rng.random() > 0.025,
    }


def _solution(rng: random.Random, agent: str, created: datetime) -> dict[str, Any]:
    err, msg = rng.choice(ERRORS)
    return {
        "id": str(uuid.UUID(int=rng.getrandbits(128))), "agent": agent, "timestamp": _ts(created),
        "problem": {"errorType": err, "errorMessage": msg, "context": {"environment": "staging"}},
        "solution": {"rootCause": "configuration drift", "fixApproach": "read it from configuration",
                     "prevention": "a health check in CI"},
        "effectiveness": {"worked": rng.random() > 0.2, "timeToFixMinutes": rng.randint(2, 240),
                          "preventedRecurrence": rng.randint(0, 8), "relatedErrorsFixed": rng.randint(0, 2)},
        "active": True, "verifiedCount": rng.randint(1, 9),
    }


def _decision(rng: random.Random, agent: str, created: datetime) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": str(uuid.UUID(int=rng.getrandbits(128))), "agent": agent, "timestamp": _ts(created),
        "decision": {"type": "fix-strategy", "question": rng.choice(QUESTIONS), "context": {"component": "settings"},
                     "chosenOption": "feature flag off", "alternativesConsidered": ["roll forward", "hotfix now"],
                     "decisionFactors": {"primary": ["user impact"], "secondary": []},
                     "rationale": "lowest risk for users"},
        "active": True,
    }
    if rng.random() > 0.4:
        item["outcome"] = {"successMetrics": {"developmentSpeed": round(rng.uniform(0.5, 2), 2),
                                              "customMetrics": {"incidentsPerMonth": rng.randint(0, 5)}},
                           "lessonsLearned": ["file the follow-up ticket"], "wouldRepeat": rng.random() > 0.3,
                           "improvements": []}
    return item


def _write(path: Path, items: Any, *, gz: bool, mtime: datetime) -> int:
    data = json.dumps(items, indent=2).encode()
    if gz:
        data = gzip.compress(data, compresslevel=6, mtime=0)
    ns = int(mtime.timestamp() * 1e9)
    atomic_write(path, data, mtime_ns=ns, fsync=False, sync_dir=False)
    return len(data)


def generate_loom_store(root: Path, spec: SampleSpec | None = None) -> dict[str, Any]:
    """Write a Loom-shaped store at ``root`` (created; existing agent files are replaced).

    Args:
        root: the store directory, e.g. ``demo/.loom/memory``.
        spec: what to generate (default :class:`SampleSpec`).

    Returns:
        ``{"root", "agents": {name: {"patterns", "solutions", "decisions", "gzip"}}, "bytes"}``.

    Raises:
        OSError: the directory cannot be written.
    """
    spec = spec or SampleSpec()
    rng = random.Random(spec.seed)
    end = spec.end or datetime.now(UTC).replace(microsecond=0)
    start = end - timedelta(days=spec.days)
    root.mkdir(parents=True, exist_ok=True)
    for d in ("global", "audit", "backup"):
        (root / d).mkdir(exist_ok=True)
    config = {"version": "1.0.0", "enabled": True,
              "storage": {"backend": "filesystem", "path": ".loom/memory", "compression": True,
                          "backupPath": ".loom/memory-backup"},
              "pruning": {"enabled": True, "maxAgeDays": 90, "minConfidence": 0.2}}
    total = _write(root / "config.json", config, gz=False, mtime=start)
    atomic_write(root / "README.md", b"# Loom agent memory (sample written by aml demo)\n", fsync=False,
                 sync_dir=False)
    summary: dict[str, Any] = {"root": str(root), "agents": {}, "bytes": 0}

    for i in range(spec.agents):
        agent = _agent_name(i)
        idle = i >= spec.agents - spec.idle_agents
        agent_end = end - timedelta(days=spec.idle_days) if idle else end
        agent_span = max(0.0, (agent_end - start).total_seconds())

        def when(agent_span: float = agent_span) -> datetime:
            return start + timedelta(seconds=rng.random() * agent_span)

        adir = root / agent
        adir.mkdir(exist_ok=True)
        gz = bool(spec.gzip_every) and i % spec.gzip_every == spec.gzip_every - 1
        made = sorted(when() for _ in range(spec.patterns))
        patterns = []
        for created in made:
            last = created + timedelta(seconds=rng.random() * max(0.0, (agent_end - created).total_seconds()))
            patterns.append(_pattern(rng, agent, created, last))
        solutions = [_solution(rng, agent, t) for t in sorted(when() for _ in range(spec.solutions))]
        decisions = [_decision(rng, agent, t) for t in sorted(when() for _ in range(spec.decisions))]
        for name, items in (("patterns", patterns), ("solutions", solutions), ("decisions", decisions)):
            newest = max((datetime.fromisoformat(it["timestamp"]) for it in items), default=start)
            if name == "patterns" and items:
                newest = max(datetime.fromisoformat(p["evolution"]["lastUsed"]) for p in items)
            total += _write(adir / f"{name}.json", items, gz=gz, mtime=newest)
        summary["agents"][agent] = {"patterns": len(patterns), "solutions": len(solutions),
                                    "decisions": len(decisions), "gzip": gz}
    os.sync()
    summary["bytes"] = total
    return summary
