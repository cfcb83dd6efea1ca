"""The value score of a Loom record: one documented function, used by every prune rule.

Space-based pruning removes the lowest value first, and no rule prunes a record whose value is at
least :attr:`~aml.prune.config.PruneConfig.high_value_threshold` (0.85).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from aml.store import accessors as acc

SECONDS_PER_DAY: Final = 86_400.0

WEIGHTS: Final = {"success": 0.4, "confidence": 0.3, "usage": 0.2, "time_saved": 0.1}
"""Loom's weights (``scripts/aml/pruning.py`` ``MemoryPruner._calculate_value_score``)."""

RECENCY_WEIGHT: Final = 0.1
"""Share of the recency term in the value (see :func:`value_score`)."""

USAGE_SATURATION: Final = 50
"""Executions at which the usage term saturates (Loom: ``min(executionCount / 50, 1)``)."""

TIME_SAVED_SATURATION_MS: Final = 1000.0
"""Milliseconds saved at which the time term saturates (Loom: ``min(avgTimeSavedMs / 1000, 1)``)."""

PATTERN_DEFAULTS: Final = {"success": 0.5, "confidence": 0.3, "executions": 1, "time_saved_ms": 0.0}
"""Values Loom's scorer uses for missing pattern fields (the same as a new pattern's start values)."""


@dataclass(frozen=True, slots=True)
class ValueInputs:
    """What the value of one record is computed from (each 0-1 term is clamped by :func:`value_score`).

    Attributes:
        success: success ratio 0-1, or ``None`` when the record has no such notion.
        confidence: confidence 0-1, or ``None``.
        executions: times used (count), or ``None``.
        time_saved_ms: milliseconds saved per use, or ``None``.
        last_used: the instant recency is measured from (aware UTC), or ``None`` (unknown: no
            recency credit).
    """

    success: float | None
    confidence: float | None
    executions: float | None
    time_saved_ms: float | None
    last_used: datetime | None


def value_score(inputs: ValueInputs, now: datetime, *, half_life_days: float = 30.0) -> float:
    """The value of a record, 0-1.

    Formula::

        B = sum(w_k * x_k) / sum(w_k)        over the terms k the record has
            x_success    = clamp(success, 0, 1)                       w = 0.4
            x_confidence = clamp(confidence, 0, 1)                    w = 0.3
            x_usage      = min(max(executions, 0) / 50, 1)            w = 0.2
            x_time_saved = min(max(time_saved_ms, 0) / 1000, 1)       w = 0.1
        R = 2 ** (-max(0, now - last_used) / half_life)               (0 when last_used is unknown)
        value = max(B, 0.9 * B + 0.1 * R)

    Sources: ``B`` with all four terms is exactly Loom's
    ``0.4·success + 0.3·confidence + 0.2·min(executions/50, 1) + 0.1·min(time_saved_ms/1000, 1)``
    (``scripts/aml/pruning.py``, ``_calculate_value_score``). The recency term uses a 30-day
    half-life (Loom's TypeScript ``PatternModel.calculateWeight`` decays recency over 30 days, and 30
    days is the common choice elsewhere). Recency can only *add* credit: ``value >= B`` always, so
    the seeds' 0.85 preservation threshold keeps exactly Loom's meaning (a record Loom scores at
    least 0.85 is preserved however long it is unused), while recent use (``R > B``) lifts middling
    records, which orders them for space-based pruning (a fresh 0.5 record scores 0.55, a stale one
    0.5). Renormalising over the terms present lets decisions (which have no executions or time
    saved) use the full 0-1 range.

    Args:
        inputs: the record's inputs (:func:`loom_value_inputs`).
        now: the reference instant (aware UTC).
        half_life_days: recency half-life in days (> 0).

    Returns:
        The value in [0, 1]; 0.1 * R when the record has none of the four terms.
    """
    return value_of_base(base_score(inputs), inputs.last_used, now, half_life_days=half_life_days)


def value_of_base(base: float, last_used: datetime | None, now: datetime, *, half_life_days: float = 30.0) -> float:
    """:func:`value_score` from its ``B`` (:func:`base_score`) and the instant recency is measured from.

    Args:
        base: ``B``, 0-1.
        last_used: ``ValueInputs.last_used`` (aware UTC), or ``None`` (no recency credit).
        now: the reference instant (aware UTC).
        half_life_days: recency half-life in days (> 0).

    Returns:
        The value in [0, 1].
    """
    recency = 0.0
    if last_used is not None:
        age_days = max(0.0, (now - last_used).total_seconds() / SECONDS_PER_DAY)
        recency = math.pow(2.0, -age_days / half_life_days)
    return max(base, (1.0 - RECENCY_WEIGHT) * base + RECENCY_WEIGHT * recency)


def base_score(inputs: ValueInputs) -> float:
    """``B`` of :func:`value_score`: Loom's weighted mean over the terms the record has, 0-1, with no
    recency (so it does not change with time: what the record index stores and ranks by).

    Returns:
        The score in [0, 1]; 0 when the record has none of the four terms.
    """
    return base_score_of(inputs.success, inputs.confidence, inputs.executions, inputs.time_saved_ms)


def base_score_of(success: float | None, confidence: float | None, executions: float | None,
                  time_saved_ms: float | None) -> float:
    """:func:`base_score` of the inputs given one by one (no :class:`ValueInputs` to build).

    Args:
        success, confidence, executions, time_saved_ms: as in :class:`ValueInputs` (``None``: the
            record does not have the term).

    Returns:
        The score in [0, 1]; 0 when the record has none of the four terms.
    """
    # The sums run over the terms in order, as ``sum`` always did: the same float result.
    if success is not None and confidence is not None and executions is not None and time_saved_ms is not None:
        return sum((  # every term: the weights add up to _ALL_WEIGHTS
            _W_SUCCESS * (0.0 if success < 0.0 else 1.0 if success > 1.0 else success),
            _W_CONFIDENCE * (0.0 if confidence < 0.0 else 1.0 if confidence > 1.0 else confidence),
            _W_USAGE * min(max(executions, 0.0) / USAGE_SATURATION, 1.0),
            _W_TIME_SAVED * min(max(time_saved_ms, 0.0) / TIME_SAVED_SATURATION_MS, 1.0),
        )) / _ALL_WEIGHTS
    products: list[float] = []
    weights: list[float] = []
    if success is not None:
        products.append(_W_SUCCESS * (0.0 if success < 0.0 else 1.0 if success > 1.0 else success))
        weights.append(_W_SUCCESS)
    if confidence is not None:
        products.append(_W_CONFIDENCE * (0.0 if confidence < 0.0 else 1.0 if confidence > 1.0 else confidence))
        weights.append(_W_CONFIDENCE)
    if executions is not None:
        products.append(_W_USAGE * min(max(executions, 0.0) / USAGE_SATURATION, 1.0))
        weights.append(_W_USAGE)
    if time_saved_ms is not None:
        products.append(_W_TIME_SAVED * min(max(time_saved_ms, 0.0) / TIME_SAVED_SATURATION_MS, 1.0))
        weights.append(_W_TIME_SAVED)
    total_weight = sum(weights)
    return sum(products) / total_weight if total_weight else 0.0


_W_SUCCESS: Final = WEIGHTS["success"]
_W_CONFIDENCE: Final = WEIGHTS["confidence"]
_W_USAGE: Final = WEIGHTS["usage"]
_W_TIME_SAVED: Final = WEIGHTS["time_saved"]
_ALL_WEIGHTS: Final = sum([_W_SUCCESS, _W_CONFIDENCE, _W_USAGE, _W_TIME_SAVED])


def loom_base_score(collection: str, item: Mapping[str, Any]) -> float:
    """``base_score(loom_value_inputs(collection, item))``, without reading the last use (which the
    base leaves out) and without building the :class:`ValueInputs`.

    Args:
        collection: ``patterns``, ``solutions``, ``decisions`` or ``archived_decisions``.
        item: the item as stored.

    Returns:
        The score in [0, 1]; 0 for another collection.
    """
    if collection == "patterns":
        return base_score(pattern_inputs(*acc.pattern_score_fields(item), None))
    if collection == "solutions":
        return base_score_of(*_solution_terms(*acc.solution_score_fields(item)))
    if collection in ("decisions", "archived_decisions"):
        outcome = acc.has_outcome(item)
        repeat = acc.would_repeat(item) if outcome else None
        return base_score_of(0.5 if repeat is None else float(repeat), _decision_confidence(item, outcome, repeat),
                             None, None)
    return 0.0


def loom_value_inputs(collection: str, item: Mapping[str, Any]) -> ValueInputs:
    """Map a Loom item to :class:`ValueInputs`.

    * **patterns**: success ``metrics.successRate``/``performance.success_rate``, confidence
      ``evolution.confidenceScore``/``lifecycle.confidence``, executions ``executionCount``, time
      saved ``avgTimeSavedMs``; missing fields take Loom's scorer defaults
      (:data:`PATTERN_DEFAULTS`); last use ``lastUsed``/``last_used_at``, else ``timestamp``.
    * **solutions**: success = ``effectiveness.worked`` (1/0; 0.5 when missing); confidence =
      :func:`solution_confidence` (Loom's ``SolutionModel.calculateConfidence``); executions =
      ``verifiedCount``; time saved = ``timeToFixMinutes`` in ms when the fix worked (reusing a
      verified fix saves the time the first fix took), else 0; last use = ``timestamp`` (Loom records
      no use time for solutions; its ``calculateWeight`` decays from ``timestamp`` too).
    * **decisions** (and archived decisions): success = ``outcome.wouldRepeat`` (1/0; 0.5 without
      outcome); confidence = :func:`decision_confidence` (Loom's ``DecisionModel.calculateConfidence``);
      no executions and no time saved (the base is renormalised over success and confidence); last
      use = ``reviewedAt``, else ``timestamp``.

    Args:
        collection: ``patterns``, ``solutions``, ``decisions`` or ``archived_decisions``.
        item: the item as stored.

    Returns:
        The inputs; for another collection, all ``None`` (value 0).
    """
    if collection == "patterns":
        return pattern_inputs(acc.success_rate(item), acc.confidence(item), acc.execution_count(item),
                              acc.avg_time_saved_ms(item),
                              acc.last_used_at(item) or acc.item_timestamp(item) or acc.created_at(item))
    if collection == "solutions":
        return ValueInputs(*_solution_terms(*acc.solution_score_fields(item)),
                           last_used=acc.item_timestamp(item) or acc.created_at(item))
    if collection in ("decisions", "archived_decisions"):
        outcome = acc.has_outcome(item)
        repeat = acc.would_repeat(item) if outcome else None
        return ValueInputs(
            success=0.5 if repeat is None else float(repeat),
            confidence=_decision_confidence(item, outcome, repeat),
            executions=None,
            time_saved_ms=None,
            last_used=acc.reviewed_at(item) or acc.item_timestamp(item),
        )
    return ValueInputs(None, None, None, None, None)


def pattern_inputs(success: float | None, confidence: float | None, executions: int | None,
                   time_saved_ms: float | None, last_used: datetime | None) -> ValueInputs:
    """:class:`ValueInputs` of a pattern from its fields as stored, missing ones replaced by
    :data:`PATTERN_DEFAULTS` (what :func:`loom_value_inputs` does for ``patterns``)."""
    return ValueInputs(
        success=PATTERN_DEFAULTS["success"] if success is None else success,
        confidence=PATTERN_DEFAULTS["confidence"] if confidence is None else confidence,
        executions=PATTERN_DEFAULTS["executions"] if executions is None else executions,
        time_saved_ms=PATTERN_DEFAULTS["time_saved_ms"] if time_saved_ms is None else time_saved_ms,
        last_used=last_used,
    )


def loom_value(collection: str, item: Mapping[str, Any], now: datetime, *, half_life_days: float = 30.0) -> float:
    """:func:`value_score` of a Loom item (:func:`loom_value_inputs`)."""
    return value_score(loom_value_inputs(collection, item), now, half_life_days=half_life_days)


def solution_confidence(item: Mapping[str, Any]) -> float:
    """Loom's ``SolutionModel.calculateConfidence`` (models/Solution.ts), 0-1::

        min((0.7 if worked else 0.3) + min(0.05 * verifiedCount, 0.2)
            + min(0.02 * preventedRecurrence, 0.1), 1)
    """
    return _solution_confidence(acc.solution_worked(item), acc.verified_count(item), acc.prevented_recurrence(item))


def _solution_terms(worked: bool | None, minutes: float | None, verified: int | None,
                    prevented: int | None) -> tuple[float, float, float, float]:
    """``(success, confidence, executions, time_saved_ms)`` of a solution from the fields
    :func:`aml.store.accessors.solution_score_fields` reads (see :func:`loom_value_inputs`)."""
    return (0.5 if worked is None else float(worked), _solution_confidence(worked, verified, prevented),
            float(verified or 0), (minutes or 0.0) * 60_000.0 if worked else 0.0)


def _solution_confidence(worked: bool | None, verified_count: int | None, prevented_recurrence: int | None) -> float:
    """:func:`solution_confidence` of the fields as the accessors read them."""
    base = 0.7 if worked else 0.3
    verified = verified_count or 0
    prevented = prevented_recurrence or 0
    return min(base + min(0.05 * max(verified, 0), 0.2) + min(0.02 * max(prevented, 0), 0.1), 1.0)


def outcome_metric_average(item: Mapping[str, Any]) -> float | None:
    """Mean of a decision's named success metrics, each normalised to 0-1 as Loom's
    ``DecisionModel.calculateConfidence`` does: ``min(developmentSpeed / 1.5, 1)`` (a 0-2
    multiplier), ``apiPerformance``, ``clientSatisfaction``, ``maintainability`` as they are
    (clamped to 0-1). ``customMetrics`` (unscaled counts) are left out, as Loom does.

    Returns:
        The mean, or ``None`` when the decision has no outcome or no named metric.
    """
    scores = acc.outcome_scores(item)
    values = [
        min(v / 1.5, 1.0) if name == "development_speed" else v for name, v in scores.items()
    ]
    if not values:
        return None
    return sum(_clamp(v) for v in values) / len(values)


def decision_confidence(item: Mapping[str, Any]) -> float:
    """Loom's ``DecisionModel.calculateConfidence`` (models/Decision.ts), 0.1-1: 0.5 without
    outcome; else the :func:`outcome_metric_average` (0.5 when no named metric) plus 0.1 if
    ``wouldRepeat`` else minus 0.1, clamped to [0.1, 1]."""
    outcome = acc.has_outcome(item)
    return _decision_confidence(item, outcome, acc.would_repeat(item) if outcome else None)


def _decision_confidence(item: Mapping[str, Any], has_outcome: bool, would_repeat: bool | None) -> float:
    """:func:`decision_confidence` given ``acc.has_outcome(item)`` and (with an outcome)
    ``acc.would_repeat(item)``."""
    if not has_outcome:
        return 0.5
    average = outcome_metric_average(item)
    base = 0.5 if average is None else average
    bonus = 0.1 if would_repeat else -0.1
    return max(0.1, min(base + bonus, 1.0))


def _clamp(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x
