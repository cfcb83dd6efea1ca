"""Prune thresholds: one :class:`PruneConfig`, every value with its source.

Sources named below:

* **seeds** - Loom's Python pruner, ``scripts/aml/pruning.py`` (``PruneConfig`` and the rules of
  ``MemoryPruner``), and its CLI ``scripts/aml/aml-cli.py`` (``--aggressive`` and the default strategies);
* **Loom TS** - Loom's TypeScript runtime, ``.loom-framework/aml/`` (``PruningService.ts``, ``models/*.ts``);
* **Aitor** - ``aitor.memory.ReactMemory`` (PyPI ``aitor`` 1.1.2): its FIFO limits, and the Aitor seed's
  ``ManagedReactAgent.prune_memory`` (``aml/prune/sessions.py`` has both rules);
* **TinyTroupe** - ``tinytroupe.agent.memory.EpisodicMemory``: fixed prefix + lookback;
* **DESIGN** - DESIGN.md, section "Prune".

Sizes are in MiB = 1024² bytes. Ages are in days of 86,400 s, compared as aware UTC instants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Final, Literal, get_args

from aml.prune.sessions import SESSION_MODES, SessionMode, limits_from_mapping
from aml.store.timestamps import parse_timestamp, to_utc, utc_iso_z

Strategy = Literal["time_based", "performance_based", "space_based", "session_based"]
"""A prune strategy. The first three are the seeds' (``PruneStrategy``); ``session_based`` is aml's
"by session length" (DESIGN.md's operations table): Aitor sessions and TinyTroupe episodic memory."""

STRATEGIES: Final[tuple[Strategy, ...]] = get_args(Strategy)
"""Every strategy, in the order a run applies them (whatever order they were asked in)."""

DEFAULT_STRATEGIES: Final[tuple[Strategy, ...]] = ("time_based", "performance_based", "session_based")
"""Strategies used when none are given: the seeds' CLI default (``time_based performance_based``) plus
``session_based``, which only touches Aitor and TinyTroupe documents (a Loom-only store is unaffected)."""

MIB: Final = 1024 * 1024
"""One MiB in bytes (1024²)."""


@dataclass(frozen=True)
class PruneConfig:
    """Every threshold prune uses.

    Time-based (seeds ``_prune_time_based``):

    Attributes:
        pattern_max_age_days: a pattern whose last use (``evolution.lastUsed`` /
            ``lifecycle.last_used_at``, else ``timestamp``) is more than this many days before ``now``
            is removed (reason ``unused_too_long``). Seeds: 90; ``--aggressive``: 60.
        decision_max_age_days: a decision whose ``timestamp`` is more than this many days before
            ``now`` is **archived** (reason ``decision_too_old``). Seeds: 180; ``--aggressive``: 120.
        failed_pattern_max_age_days: a *failed* pattern (at least ``min_execution_count`` executions
            and success rate below ``failed_success_rate``) created more than this many days ago is
            removed (reason ``failed_pattern``). Seeds: 30.
        failed_success_rate: success rate under which a pattern counts as failed. Seeds: 0.3 (the
            literal in ``_filter_failed_patterns``).
        solution_max_age_days: seeds declare 365 but never apply it, and DESIGN.md does not list it;
            ``None`` (default) keeps that behaviour. A number removes solutions older than that
            (reason ``outdated_solution``).

    Performance-based (seeds ``_prune_performance_based``):

    Attributes:
        min_success_rate: patterns with at least ``min_execution_count`` executions and a success
            rate below this are removed (``low_success_rate``). Seeds: 0.20; ``--aggressive``: 0.30.
        min_confidence_score: ... or a confidence below this (``low_confidence``). Seeds: 0.15.
        min_execution_count: executions needed before performance is judged. Seeds: 3.
        negative_metric_average: a decision with an outcome is *negative* when ``wouldRepeat`` is
            false or the mean of its named success metrics (normalised as Loom's
            ``DecisionModel.calculateConfidence``: ``developmentSpeed / 1.5`` capped at 1, the 0-1
            scores as they are) is below this; negative decisions are **archived**
            (``negative_outcome``). Seeds: 0.5. Solutions whose ``effectiveness.worked`` is false are
            removed (``outdated_solution``), as the seeds do.

    Space-based (seeds ``_prune_space_based``, with the lowest value removed first, not the highest):

    Attributes:
        agent_limit_mib: an agent whose files (every file below ``<agent>/``, bytes on disk) exceed
            this many MiB is pruned, lowest value first, until it is under
            ``space_target_ratio`` of the limit. Seeds: 80 MiB.
        store_limit_mib: the same for the whole store (every file below the root). Seeds: 800 MiB.
        space_target_ratio: the fraction of the limit to get under. Seeds: 0.7.

    Safety:

    Attributes:
        preserve_high_value: never prune a Loom record whose value score (:mod:`aml.prune.value`)
            is at least ``high_value_threshold``. Seeds: True (they apply it to space-based pruning
            only; aml applies it to every Loom rule).
        high_value_threshold: Seeds: 0.85.

    Sessions and TinyTroupe (strategy ``session_based``):

    Attributes:
        session_mode: ``managed`` (default: the Aitor seed's ``ManagedReactAgent.prune_memory`` rule by
            whole exchanges) or ``fifo`` (Aitor 1.1.2's built-in oldest-first rule); see
            :mod:`aml.prune.sessions`. CLI ``--fifo``.
        session_max_messages: the general message limit of an Aitor session: in ``managed`` mode the last
            N non-system messages (system messages are always kept and do not count), in ``fifo`` mode the
            last N messages. Aitor ``max_conversation_length``: 100. A session's sidecar and per-agent
            limits come first (:func:`aml.prune.sessions.resolve_limits`).
        session_dedupe: ``managed`` mode: remove an exchange (a user message and its replies) whose exact
            messages occur again later in the session (the newest copy stays). DESIGN.
        session_max_tool_executions: the general tool-execution limit (last N kept). Aitor
            ``max_tool_executions``: 50.
        session_max_reasoning_steps: the general reasoning-step limit (last N kept). Aitor
            ``max_reasoning_steps``: 100.
        session_agent_limits: per-agent limits ``{agent_name: {max_messages, max_tool_executions,
            max_reasoning_steps}}`` (any subset), highest precedence first: ``--limits AGENT:...`` of the
            run, then ``AML_SESSION_LIMITS``. Stored as a tuple of ``(source, {agent: limits})`` layers.
        episodic_fixed_prefix: keep the first N committed episodic items of a TinyTroupe agent
            (never fewer than the agent's own ``fixed_prefix_length``). DESIGN: 20.
        episodic_keep_last: keep the last N committed episodic items. 100 (TinyTroupe's default
            ``lookback_length`` in its cache files).

    Other:

    Attributes:
        now: the instant ages are measured from (aware UTC); ``None`` = the time the plan is made.
        recency_half_life_days: half-life of the value score's recency term (:mod:`aml.prune.value`).
            30 days.
    """

    pattern_max_age_days: float = 90
    decision_max_age_days: float = 180
    failed_pattern_max_age_days: float = 30
    failed_success_rate: float = 0.30
    solution_max_age_days: float | None = None

    min_success_rate: float = 0.20
    min_confidence_score: float = 0.15
    min_execution_count: int = 3
    negative_metric_average: float = 0.5

    agent_limit_mib: float = 80
    store_limit_mib: float = 800
    space_target_ratio: float = 0.7

    preserve_high_value: bool = True
    high_value_threshold: float = 0.85

    session_mode: SessionMode = "managed"
    session_max_messages: int = 100
    session_dedupe: bool = True
    session_max_tool_executions: int = 50
    session_max_reasoning_steps: int = 100
    session_agent_limits: tuple[tuple[str, Mapping[str, Mapping[str, int]]], ...] = ()
    episodic_fixed_prefix: int = 20
    episodic_keep_last: int = 100

    now: datetime | None = field(default=None)
    recency_half_life_days: float = 30

    def __post_init__(self) -> None:
        if self.now is not None:
            object.__setattr__(self, "now", to_utc(self.now))
        for name in ("session_max_messages", "session_max_tool_executions", "session_max_reasoning_steps",
                     "episodic_fixed_prefix", "episodic_keep_last", "min_execution_count"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.session_mode not in SESSION_MODES:
            raise ValueError(f"session_mode must be one of {', '.join(SESSION_MODES)}, got {self.session_mode!r}")
        if not 0 < self.space_target_ratio <= 1:
            raise ValueError("space_target_ratio must be in (0, 1]")
        if self.recency_half_life_days <= 0:
            raise ValueError("recency_half_life_days must be > 0")

    @property
    def agent_limit_bytes(self) -> int:
        """:attr:`agent_limit_mib` in bytes."""
        return int(self.agent_limit_mib * MIB)

    @property
    def store_limit_bytes(self) -> int:
        """:attr:`store_limit_mib` in bytes."""
        return int(self.store_limit_mib * MIB)

    def aggressive(self) -> PruneConfig:
        """The seeds' ``--aggressive`` thresholds: patterns 60 days, decisions 120 days, success < 30 %."""
        return dataclasses.replace(self, pattern_max_age_days=60, decision_max_age_days=120, min_success_rate=0.30)

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> PruneConfig:
        """A copy with the given fields replaced (``now`` may be an ISO 8601 string).

        Raises:
            ValueError: an unknown field name, or a value of the wrong kind.
        """
        if not overrides:
            return self
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown prune setting(s): {', '.join(unknown)}")
        values = dict(overrides)
        if isinstance(values.get("now"), str):
            parsed = parse_timestamp(values["now"])
            if parsed is None:
                raise ValueError(f"now: not a timestamp: {values['now']!r}")
            values["now"] = parsed
        for name, value in values.items():
            current = getattr(self, name)
            if name == "now" or (value is None and name == "solution_max_age_days"):
                continue
            if name == "session_mode":
                if value not in SESSION_MODES:
                    raise ValueError(f"session_mode: expected one of {', '.join(SESSION_MODES)}, got {value!r}")
                continue
            if name == "session_agent_limits":
                if not isinstance(value, tuple | list):
                    raise ValueError(f"session_agent_limits: expected (source, {{agent: limits}}) pairs, got {value!r}")
                values[name] = tuple((str(src), {str(a): limits_from_mapping(v, f"{src} {a}")
                                                 for a, v in dict(table).items()}) for src, table in value)
                continue
            if isinstance(current, bool) or name == "preserve_high_value":
                if not isinstance(value, bool):
                    raise ValueError(f"{name}: expected true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name}: expected a number, got {value!r}")
        return dataclasses.replace(self, **values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``now`` as ISO 8601 UTC ``Z`` or ``None``)."""
        out = dataclasses.asdict(self)
        out["session_agent_limits"] = {src: {a: dict(v) for a, v in table.items()}
                                       for src, table in self.session_agent_limits}
        out["now"] = utc_iso_z(self.now) if self.now is not None else None
        return out


def normalise_strategies(strategies: Iterable[str] | None) -> tuple[Strategy, ...]:
    """Validate strategy names and put them in run order (:data:`STRATEGIES`).

    Args:
        strategies: names (``None`` or empty = :data:`DEFAULT_STRATEGIES`).

    Returns:
        The distinct strategies in the order a run applies them.

    Raises:
        ValueError: an unknown name.
    """
    wanted = list(strategies or ())
    if not wanted:
        return DEFAULT_STRATEGIES
    unknown = [s for s in wanted if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategy {unknown[0]!r}; choose from {', '.join(STRATEGIES)}")
    return tuple(s for s in STRATEGIES if s in wanted)
