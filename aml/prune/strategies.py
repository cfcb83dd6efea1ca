"""The Loom prune rules: ``time_based``, ``performance_based``, ``space_based``.

Each rule reads :class:`Candidate` views (one per live Loom record, built by :mod:`aml.prune.plan`)
and says which records it would prune and why. Thresholds come from
:class:`~aml.prune.config.PruneConfig`; ages are ``now - instant`` on aware UTC datetimes, compared
strictly (``> 90 days``). Which records are then kept because of their value
(``preserve_high_value``) is decided by the plan, for every rule alike.

Rules (first match wins within a strategy; seeds = Loom's ``scripts/aml/pruning.py``):

``time_based``
    * pattern, last use (``lastUsed``/``last_used_at``, else ``timestamp``) older than
      ``pattern_max_age_days`` -> removed, ``unused_too_long``;
    * pattern with ``executions >= min_execution_count`` and ``success < failed_success_rate``,
      created (``timestamp``, else ``evolution.created``/``lifecycle.created_at``) more than
      ``failed_pattern_max_age_days`` ago -> removed, ``failed_pattern``;
    * decision whose ``timestamp`` is older than ``decision_max_age_days`` -> archived,
      ``decision_too_old``;
    * solution older than ``solution_max_age_days`` when that is set -> removed, ``outdated_solution``.
    A record without a readable time is never pruned by age (the seeds treat it as 999 days old).

Records with a field of the wrong JSON type (:attr:`Candidate.wrong_types`, e.g. an integer
``lastUsed``, a ``null`` ``timestamp``, a string confidence) are never matched by any rule, aggressive
or not, nor reached by space pruning: aml reports them and does not act on a value it could not read
as intended.

``performance_based``
    * pattern with ``executions >= min_execution_count`` and ``success < min_success_rate`` ->
      removed, ``low_success_rate``; else with ``confidence < min_confidence_score`` -> removed,
      ``low_confidence`` (missing success/confidence never match: the seeds default them to 1.0);
    * solution with ``effectiveness.worked == false`` -> removed, ``outdated_solution``;
    * decision with an outcome that is negative (``wouldRepeat == false``, or the normalised mean of
      its named success metrics below ``negative_metric_average``) -> archived, ``negative_outcome``.

``space_based``
    For each agent whose bytes on disk (every file below ``<agent>/``) minus what earlier rules of the
    run already free exceed ``agent_limit_mib``: remove records of that agent, **lowest value first**
    (ties: older last use first, then document order), until the agent is under
    ``space_target_ratio`` x the limit; reason ``memory_limit_exceeded``. Then the same for the
    whole store against ``store_limit_mib`` over every agent's records (``store_limit_exceeded``).
    What a record frees is estimated as its share of its document's size on disk:
    ``size_bytes x document st_size / sum(size_bytes of the document's records)`` (this follows
    gzip and indentation alike). Decisions are archived (out of the agent's directory), patterns and
    solutions removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from aml.prune.config import PruneConfig

Action = Literal["removed", "archived"]


@dataclass(slots=True)
class Candidate:
    """What the Loom rules need to know about one live record (no reference to the parsed item).

    Attributes:
        agent, collection, record_id, kind: as in :class:`aml.store.Record`.
        document: store-relative path of the document.
        index: position in the document's list.
        size_bytes: compact JSON size (:func:`aml.store.item_size`).
        cost_bytes: estimated bytes on disk it occupies (see the module docstring).
        value: :func:`aml.prune.value.loom_value`.
        last_used: patterns: last use, else ``timestamp``; solutions/decisions: ``timestamp``.
        created: ``timestamp``, else the version's creation field.
        success, confidence, executions: patterns: as stored (``None`` when missing).
        worked: solutions: ``effectiveness.worked``.
        negative: decisions: the outcome is negative (see ``performance_based``).
        wrong_types: dotted paths of fields whose JSON type is not what Loom writes
            (:func:`aml.store.accessors.wrong_types`); such a record is held back from every rule.
    """

    agent: str
    collection: str
    record_id: str
    kind: str
    document: str
    index: int
    size_bytes: int
    cost_bytes: float
    value: float
    last_used: datetime | None
    created: datetime | None
    success: float | None = None
    confidence: float | None = None
    executions: int | None = None
    worked: bool | None = None
    negative: bool = False
    wrong_types: tuple[str, ...] = ()

    @property
    def action(self) -> Action:
        """``archived`` for decisions (never deleted), ``removed`` for patterns and solutions."""
        return "archived" if self.collection == "decisions" else "removed"


def _older(when: datetime | None, now: datetime, days: float) -> bool:
    return when is not None and now - when > timedelta(days=days)


def time_based(candidates: Iterable[Candidate], config: PruneConfig, now: datetime) -> Iterator[tuple[Candidate, str]]:
    """Records the time rules match, with their reason (see the module docstring)."""
    for c in candidates:
        if c.wrong_types:
            continue
        if c.collection == "patterns":
            if _older(c.last_used, now, config.pattern_max_age_days):
                yield c, "unused_too_long"
            elif (
                (c.executions or 0) >= config.min_execution_count
                and c.success is not None
                and c.success < config.failed_success_rate
                and _older(c.created, now, config.failed_pattern_max_age_days)
            ):
                yield c, "failed_pattern"
        elif c.collection == "decisions":
            if _older(c.created, now, config.decision_max_age_days):
                yield c, "decision_too_old"
        elif (
            c.collection == "solutions"
            and config.solution_max_age_days is not None
            and _older(c.created, now, config.solution_max_age_days)
        ):
            yield c, "outdated_solution"


def performance_based(candidates: Iterable[Candidate], config: PruneConfig) -> Iterator[tuple[Candidate, str]]:
    """Records the performance rules match, with their reason (see the module docstring)."""
    for c in candidates:
        if c.wrong_types:
            continue
        if c.collection == "patterns":
            if (c.executions or 0) < config.min_execution_count:
                continue
            if c.success is not None and c.success < config.min_success_rate:
                yield c, "low_success_rate"
            elif c.confidence is not None and c.confidence < config.min_confidence_score:
                yield c, "low_confidence"
        elif c.collection == "solutions":
            if c.worked is False:
                yield c, "outdated_solution"
        elif c.collection == "decisions" and c.negative:
            yield c, "negative_outcome"


def space_order(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Candidates in space-pruning order: lowest value first, then older last use, then document order."""
    return sorted(
        candidates,
        key=lambda c: (c.value, c.last_used.timestamp() if c.last_used else float("-inf"), c.document, c.index),
    )


def space_based(
    ordered: Iterable[Candidate],
    *,
    projected: float,
    limit: float,
    target_ratio: float,
    preserved: Callable[[Candidate], bool],
) -> Iterator[Candidate]:
    """Records to prune, lowest value first, until ``projected`` bytes fall under ``target_ratio * limit``.

    Args:
        ordered: the agent's (or store's) records not already pruned, in :func:`space_order`.
        projected: bytes on disk now, minus what the run already frees.
        limit: the limit in bytes; nothing is pruned unless ``projected > limit``.
        target_ratio: fraction of ``limit`` to get under (0.7).
        preserved: true for a record that must be kept (high value); it is skipped, and so is a
            record with :attr:`Candidate.wrong_types`.

    Yields:
        The records to prune, in order; each one's ``cost_bytes`` counts as freed.
    """
    if projected <= limit:
        return
    target = target_ratio * limit
    for c in ordered:
        if projected < target:
            return
        if c.wrong_types or preserved(c):
            continue
        projected -= c.cost_bytes
        yield c
