"""Version-aware accessors: the only place that knows the origin systems' field names.

Loom items (patterns, solutions, decisions) exist in four schema versions (DESIGN.md, "Schema
versions"). The TypeScript runtime writes camelCase (``metrics.successRate``,
``evolution.lastUsed``, ``outcome.wouldRepeat``); v2.0 patterns use snake_case
(``performance.success_rate``, ``lifecycle.last_used_at``). Loom's Python tools read snake_case
names that the runtime never writes (``outcome.would_repeat``), so every accessor here accepts
both spellings. Aitor session exports and TinyTroupe agents have their own small sections below.

Every accessor takes the parsed JSON value, never raises on a malformed item, and returns ``None``
(or an empty container) when the field is missing or has the wrong type. Timestamps come back as
aware UTC (see :mod:`aml.store.timestamps`).

**Wrong types are reported, not interpreted.** Loom writes every item timestamp as ISO 8601 text
(``...025Z``, ``...025000+00:00`` after migration, naive in ``metadata.last_modified``; never epoch
numbers: DATA.md section 1), ratios and counts as JSON numbers, flags as booleans. The Loom timestamp
accessors read ISO text only (:func:`~aml.store.timestamps.parse_iso_timestamp`): an integer
``lastUsed`` reads as ``None``, not as a 1970 date. :func:`wrong_types` names every such field of an
item (:class:`~aml.store.records.WrongType`); :class:`~aml.store.records.Record` carries them, and
destructive operations leave such records alone.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import GenericAlias
from typing import Annotated, Any, Final, Literal, get_args

import msgspec

from aml.store.records import WrongType
from aml.store.timestamps import iso_timestamp_form, json_type, parse_iso_timestamp, parse_timestamp

ItemVersion = Literal["1.0.0", "1.1.0", "1.2.0", "2.0.0"]
"""Schema version of one Loom item."""

ITEM_VERSIONS: Final[tuple[ItemVersion, ...]] = get_args(ItemVersion)

LOOM_COLLECTIONS: Final = ("patterns", "solutions", "decisions")
"""Per-agent Loom collection files (``<agent>/<name>.json``)."""

Item = Mapping[str, Any]


# --------------------------------------------------------------------------- generic helpers


def _get(obj: object, *path: str) -> Any:
    """Follow ``path`` through nested mappings; ``None`` as soon as a step is missing."""
    cur: Any = obj
    for key in path:
        # dict and None first: the ABC check is slow
        if type(cur) is not dict and (cur is None or not isinstance(cur, Mapping)):
            return None
        cur = cur.get(key)
    return cur


def _get2(obj: object, key: str, subkey: str) -> Any:
    """``_get(obj, key, subkey)`` without the loop (the hot Loom accessors)."""
    if type(obj) is not dict and (obj is None or not isinstance(obj, Mapping)):
        return None
    cur = obj.get(key)
    if type(cur) is not dict and (cur is None or not isinstance(cur, Mapping)):
        return None
    return cur.get(subkey)


def _has(obj: object, path: tuple[str, ...]) -> bool:
    """True when the last key of ``path`` is present (with any value, ``null`` included)."""
    parent = _get(obj, *path[:-1])
    return isinstance(parent, Mapping) and path[-1] in parent


def _first(obj: object, *paths: tuple[str, ...]) -> Any:
    """The first non-``None`` value among ``paths``."""
    if type(obj) is not dict and (obj is None or not isinstance(obj, Mapping)):
        return None
    for path in paths:
        value = _get(obj, *path)
        if value is not None:
            return value
    return None


def _first2(obj: object, key: str, subkeys: tuple[str, ...]) -> Any:
    """``_first(obj, (key, subkeys[0]), (key, subkeys[1]), ...)``: one parent looked up once."""
    if type(obj) is not dict and (obj is None or not isinstance(obj, Mapping)):
        return None
    cur = obj.get(key)
    if type(cur) is not dict and (cur is None or not isinstance(cur, Mapping)):
        return None
    for subkey in subkeys:
        value = cur.get(subkey)
        if value is not None:
            return value
    return None


_DOUBLE_MAX: Final = sys.float_info.max


def finite_number(value: object) -> bool:
    """Whether ``value`` is a JSON number a double holds: a finite float, or an integer within ±1.8e308
    (``bool`` is not a number). An integer beyond that (``1e400`` written out in digits) is valid JSON that
    no float can carry: it is a wrong type where a number belongs, never an ``OverflowError``."""
    kind = type(value)
    if kind is float:
        return math.isfinite(value)  # type: ignore[arg-type]
    if kind is int:
        return -_DOUBLE_MAX <= value <= _DOUBLE_MAX  # type: ignore[operator]  # exact int/float comparison
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and -_DOUBLE_MAX <= value <= _DOUBLE_MAX


def _as_float(value: object) -> float | None:
    if type(value) is float:  # the usual case, without the checks below
        return value if math.isfinite(value) else None
    return float(value) if finite_number(value) else None  # type: ignore[arg-type]


def _as_int(value: object) -> int | None:
    if type(value) is int:  # the usual case
        return value if -_DOUBLE_MAX <= value <= _DOUBLE_MAX else None
    if not finite_number(value):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _as_str(value: object) -> str | None:
    return value if type(value) is str or isinstance(value, str) else None


def _as_bool(value: object) -> bool | None:
    return value if value is True or value is False else None


def _as_dicts(value: object) -> list[Any]:
    return list(value) if isinstance(value, list) else []


# --------------------------------------------------------------------------- Loom: any item


def detect_item_version(item: Item) -> ItemVersion:
    """Schema version of one Loom item, per DESIGN.md's table.

    Rules, first match wins: a top-level ``version`` naming a known version (v2.0 writes
    ``"2.0.0"``; ``metadata.version`` is ignored because v2.0 keeps ``"1.2.0"`` there);
    ``metadata`` present -> 1.2.0; ``tags`` and ``active`` present -> 1.1.0; else 1.0.0.

    Args:
        item: one pattern, solution or decision.

    Returns:
        ``"1.0.0"``, ``"1.1.0"``, ``"1.2.0"`` or ``"2.0.0"``.
    """
    version = item.get("version")
    if isinstance(version, str) and version in ITEM_VERSIONS:
        return version
    metadata = item.get("metadata")
    if type(metadata) is dict or (metadata is not None and isinstance(metadata, Mapping)):
        return "1.2.0"
    if "tags" in item and "active" in item:
        return "1.1.0"
    return "1.0.0"


def is_loom_item(value: object) -> bool:
    """True if ``value`` looks like a Loom item: an object with string ``id`` and ``agent``."""
    return (
        isinstance(value, Mapping)
        and isinstance(value.get("id"), str)
        and isinstance(value.get("agent"), str)
    )


def item_id(item: Item) -> str | None:
    """``id`` (a UUID string in real data), or ``None``."""
    return _as_str(item.get("id"))


def item_agent(item: Item) -> str | None:
    """``agent``: the owning agent's name as the item records it, or ``None``."""
    return _as_str(item.get("agent"))


def item_timestamp(item: Item) -> datetime | None:
    """Top-level ``timestamp`` (creation time of the item) as aware UTC, or ``None`` (also when it is
    not an ISO 8601 string: see :func:`wrong_types`)."""
    return parse_iso_timestamp(item.get("timestamp"))


def is_active(item: Item) -> bool:
    """``active``; items without it (or with a non-boolean) count as active."""
    return item.get("active") is not False


def item_tags(item: Item) -> list[str]:
    """``tags`` (string entries only); empty when absent (the TS runtime never stores tags)."""
    return [t for t in _as_dicts(item.get("tags")) if isinstance(t, str)]


def last_modified(item: Item) -> datetime | None:
    """``metadata.last_modified`` (v1.2+, written by the Python migration, naive = UTC)."""
    return parse_iso_timestamp(_get(item, "metadata", "last_modified"))


# --------------------------------------------------------------------------- Loom: patterns


def pattern_type(item: Item) -> str | None:
    """``pattern.type``, e.g. ``"css-layout"``."""
    return _as_str(_get2(item, "pattern", "type"))


def success_rate(item: Item) -> float | None:
    """Success ratio 0-1: ``performance.success_rate`` (v2.0) or ``metrics.successRate`` (v1.x)."""
    value = _get2(item, "performance", "success_rate")
    return _as_float(value if value is not None else _first2(item, "metrics", ("successRate", "success_rate")))


def execution_count(item: Item) -> int | None:
    """Times used: ``performance.execution_count`` (v2.0) or ``metrics.executionCount`` (v1.x)."""
    value = _get2(item, "performance", "execution_count")
    return _as_int(value if value is not None else _first2(item, "metrics", ("executionCount", "execution_count")))


def avg_time_saved_ms(item: Item) -> float | None:
    """Milliseconds saved per use: ``performance.avg_time_saved_ms`` / ``metrics.avgTimeSavedMs``."""
    return _as_float(_first(item, ("performance", "avg_time_saved_ms"), ("metrics", "avgTimeSavedMs")))


def error_prevention_count(item: Item) -> int | None:
    """``performance.error_prevention_count`` / ``metrics.errorPreventionCount`` (always 0 in TS data)."""
    return _as_int(
        _first(item, ("performance", "error_prevention_count"), ("metrics", "errorPreventionCount"))
    )


def confidence(item: Item) -> float | None:
    """Confidence 0-1: ``lifecycle.confidence`` (v2.0) or ``evolution.confidenceScore`` (v1.x)."""
    value = _get2(item, "lifecycle", "confidence")
    return _as_float(
        value if value is not None else _first2(item, "evolution", ("confidenceScore", "confidence_score"))
    )


def refinement_count(item: Item) -> int | None:
    """``lifecycle.refinement_count`` (v2.0) or ``evolution.refinements`` (v1.x)."""
    return _as_int(_first(item, ("lifecycle", "refinement_count"), ("evolution", "refinements")))


def created_at(item: Item) -> datetime | None:
    """Creation time: ``lifecycle.created_at`` (v2.0), ``evolution.created`` (v1.x patterns), else
    the top-level ``timestamp`` (solutions, decisions and malformed patterns)."""
    parsed = parse_iso_timestamp(_get2(item, "lifecycle", "created_at"))
    if parsed is None:
        parsed = parse_iso_timestamp(_get2(item, "evolution", "created"))
    return parsed if parsed is not None else item_timestamp(item)


def last_used_at(item: Item) -> datetime | None:
    """Last use of a pattern: ``lifecycle.last_used_at`` (v2.0) or ``evolution.lastUsed`` (v1.x).

    ``None`` when the item records no use time (solutions, decisions): callers choose their own
    fallback (Loom's pruner falls back to ``timestamp``): use :func:`last_used_unreadable` first, since
    a last-use field that is present but not ISO text also reads as ``None``."""
    value = _get2(item, "lifecycle", "last_used_at")
    return parse_iso_timestamp(value if value is not None else _first2(item, "evolution", ("lastUsed", "last_used")))


_LAST_USED_PATHS: Final = (("lifecycle", "last_used_at"), ("evolution", "lastUsed"), ("evolution", "last_used"))


def last_used_unreadable(item: Item) -> bool:
    """True when the item has a last-use field (:func:`last_used_at`) that does not read as ISO 8601
    text (a number, ``null``, an unparseable string): the last use is unknown, not absent."""
    return any(_has(item, path) and iso_timestamp_form(_get(item, *path)) is not None
               for path in _LAST_USED_PATHS)


# --------------------------------------------------------------------------- Loom: solutions


def error_type(item: Item) -> str | None:
    """``problem.errorType`` of a solution, e.g. ``"HydrationError"``."""
    return _as_str(_first2(item, "problem", ("errorType", "error_type")))


def solution_worked(item: Item) -> bool | None:
    """``effectiveness.worked`` of a solution, or ``None`` when not recorded."""
    return _as_bool(_get2(item, "effectiveness", "worked"))


def verified_count(item: Item) -> int | None:
    """``verifiedCount`` of a solution (starts at 1; ``recordVerification`` adds one)."""
    return _as_int(_first(item, ("verifiedCount",), ("verified_count",)))


def time_to_fix_minutes(item: Item) -> float | None:
    """``effectiveness.timeToFixMinutes`` of a solution."""
    return _as_float(
        _first(item, ("effectiveness", "timeToFixMinutes"), ("effectiveness", "time_to_fix_minutes"))
    )


def prevented_recurrence(item: Item) -> int | None:
    """``effectiveness.preventedRecurrence`` of a solution (``recordVerification`` adds one per success)."""
    return _as_int(
        _first(item, ("effectiveness", "preventedRecurrence"), ("effectiveness", "prevented_recurrence"))
    )


# --------------------------------------------------------------------------- Loom: decisions


def decision_type(item: Item) -> str | None:
    """``decision.type``, e.g. ``"state-library"``."""
    return _as_str(_get2(item, "decision", "type"))


def has_outcome(item: Item) -> bool:
    """True if the decision has an ``outcome`` object (about 40 % of real decisions have none)."""
    return isinstance(item.get("outcome"), Mapping)


def would_repeat(item: Item) -> bool | None:
    """``outcome.wouldRepeat`` (``outcome.would_repeat`` also read), or ``None`` without outcome."""
    return _as_bool(_first2(item, "outcome", ("wouldRepeat", "would_repeat")))


def success_metrics(item: Item) -> dict[str, float]:
    """Numeric entries of ``outcome.successMetrics`` (or ``success_metrics``), without the nested
    ``customMetrics`` (see :func:`custom_metrics`). Empty when absent."""
    metrics = _first(item, ("outcome", "successMetrics"), ("outcome", "success_metrics"))
    if not isinstance(metrics, Mapping):
        return {}
    return {str(k): f for k, v in metrics.items() if (f := _as_float(v)) is not None}


def custom_metrics(item: Item) -> dict[str, float]:
    """Numeric entries of ``outcome.successMetrics.customMetrics``. Empty when absent."""
    metrics = _first(item, ("outcome", "successMetrics"), ("outcome", "success_metrics"))
    custom = _first(metrics, ("customMetrics",), ("custom_metrics",))
    if not isinstance(custom, Mapping):
        return {}
    return {str(k): f for k, v in custom.items() if (f := _as_float(v)) is not None}


OUTCOME_SCORES: Final = {
    "development_speed": ("developmentSpeed", "development_speed"),
    "api_performance": ("apiPerformance", "api_performance"),
    "client_satisfaction": ("clientSatisfaction", "client_satisfaction"),
    "maintainability": ("maintainability",),
}
"""The named ``successMetrics`` of Loom's ``SuccessMetricsSchema`` (models/Decision.ts): canonical
name -> spellings read. ``developmentSpeed`` is a multiplier 0-2 (1.0 = baseline); the other three
are 0-1 scores. ``customMetrics`` are free-form counts with no scale and are not among them."""


_OUTCOME_SPELLINGS: Final = tuple(OUTCOME_SCORES.items())


def outcome_scores(item: Item) -> dict[str, float]:
    """The named success metrics of a decision's outcome, as stored (camelCase or snake_case).

    Returns:
        ``{canonical name: value}`` for each of :data:`OUTCOME_SCORES` present as a number; empty
        without outcome. Values are not rescaled (``development_speed`` stays a 0-2 multiplier).
    """
    if type(item) is dict:  # one lookup per parent (the general path below reads any Mapping)
        metrics = _either(_sub(item, "outcome"), "successMetrics", "success_metrics")
        if type(metrics) is dict:
            out = {}
            for name, spellings in _OUTCOME_SPELLINGS:
                value = metrics.get(spellings[0])
                if value is None and len(spellings) > 1:
                    value = metrics.get(spellings[1])
                if value is not None and (number := _as_float(value)) is not None:
                    out[name] = number
            return out
    else:
        metrics = _first(item, ("outcome", "successMetrics"), ("outcome", "success_metrics"))
    out = {}
    for name, spellings in OUTCOME_SCORES.items():
        value = _as_float(_first(metrics, *((s,) for s in spellings)))
        if value is not None:
            out[name] = value
    return out


def reviewed_at(item: Item) -> datetime | None:
    """``reviewedAt``: when the decision's outcome was recorded (TS ``Z`` form), or ``None``."""
    return parse_iso_timestamp(_first(item, ("reviewedAt",), ("reviewed_at",)))


# --------------------------------------------------------------------------- Loom: one pass per item
#
# Record extraction reads the same fields of every item of a store; these read them with each
# parent object looked up once. Each returns exactly what the accessors above return (tests compare
# them on random items); an item that is not a dict goes through the accessors themselves.

_NO_FIELDS: Final[dict[str, Any]] = {}
"""Stands for a missing (or non-object) parent: never written to."""


def _sub(item: dict[str, Any], key: str) -> Any:
    """``item[key]`` when it is a mapping, else an empty one."""
    value = item.get(key)
    if type(value) is dict or (value is not None and isinstance(value, Mapping)):
        return value
    return _NO_FIELDS


def _either(obj: Any, key: str, fallback: str) -> Any:
    """``obj[key]``, or ``obj[fallback]`` when the first is missing or ``null`` (Loom's camelCase and
    snake_case spellings of one field); ``obj`` is a dict."""
    value = obj.get(key)
    return obj.get(fallback) if value is None else value


def _created_at(item: dict[str, Any], lifecycle: Any, evolution: Any) -> datetime | None:
    parsed = parse_iso_timestamp(lifecycle.get("created_at"))
    if parsed is None:
        parsed = parse_iso_timestamp(evolution.get("created"))
        if parsed is None:
            parsed = parse_iso_timestamp(item.get("timestamp"))
    return parsed


def pattern_fields(
    item: Item,
) -> tuple[str | None, float | None, float | None, int | None, datetime | None, datetime | None]:
    """``(pattern_type, success_rate, confidence, execution_count, created_at, last_used_at)`` of a pattern."""
    if type(item) is not dict:
        return (pattern_type(item), success_rate(item), confidence(item), execution_count(item),
                created_at(item), last_used_at(item))
    performance, metrics = _sub(item, "performance"), _sub(item, "metrics")
    lifecycle, evolution = _sub(item, "lifecycle"), _sub(item, "evolution")
    rate, conf, count = _pattern_numbers(performance, metrics, lifecycle, evolution)
    last = lifecycle.get("last_used_at")
    if last is None:
        last = _either(evolution, "lastUsed", "last_used")
    return (_as_str(_sub(item, "pattern").get("type")), _as_float(rate), _as_float(conf), _as_int(count),
            _created_at(item, lifecycle, evolution), parse_iso_timestamp(last))


def _pattern_numbers(performance: Any, metrics: Any, lifecycle: Any, evolution: Any) -> tuple[Any, Any, Any]:
    """The stored ``(success rate, confidence, execution count)`` of a pattern from its parent objects, unconverted."""
    rate = performance.get("success_rate")
    if rate is None:
        rate = _either(metrics, "successRate", "success_rate")
    conf = lifecycle.get("confidence")
    if conf is None:
        conf = _either(evolution, "confidenceScore", "confidence_score")
    count = performance.get("execution_count")
    if count is None:
        count = _either(metrics, "executionCount", "execution_count")
    return rate, conf, count


def pattern_score_fields(item: Item) -> tuple[float | None, float | None, int | None, float | None]:
    """``(success_rate, confidence, execution_count, avg_time_saved_ms)`` of a pattern, in one pass: the inputs
    of its value score (:func:`aml.prune.value.loom_base_score`)."""
    if type(item) is not dict:
        return success_rate(item), confidence(item), execution_count(item), avg_time_saved_ms(item)
    performance, metrics = _sub(item, "performance"), _sub(item, "metrics")
    rate, conf, count = _pattern_numbers(performance, metrics, _sub(item, "lifecycle"), _sub(item, "evolution"))
    saved = performance.get("avg_time_saved_ms")
    if saved is None:
        saved = metrics.get("avgTimeSavedMs")
    return _as_float(rate), _as_float(conf), _as_int(count), _as_float(saved)


def solution_score_fields(item: Item) -> tuple[bool | None, float | None, int | None, int | None]:
    """``(worked, time_to_fix_minutes, verified_count, prevented_recurrence)`` of a solution, in one pass: the
    inputs of its value score (:func:`aml.prune.value.loom_base_score`)."""
    if type(item) is not dict:
        return solution_worked(item), time_to_fix_minutes(item), verified_count(item), prevented_recurrence(item)
    effectiveness = _sub(item, "effectiveness")
    return (_as_bool(effectiveness.get("worked")),
            _as_float(_either(effectiveness, "timeToFixMinutes", "time_to_fix_minutes")),
            _as_int(_either(item, "verifiedCount", "verified_count")),
            _as_int(_either(effectiveness, "preventedRecurrence", "prevented_recurrence")))


def pattern_rule_fields(
    item: Item,
) -> tuple[str | None, str | None, datetime | None, datetime | None, float | None, float | None, int | None]:
    """``(item_id, pattern_type, created, last_used_at, success_rate, confidence, execution_count)`` of a pattern,
    in one pass: what prune's rules read of it. ``created`` is ``item_timestamp(item) or created_at(item)``: the
    top-level ``timestamp`` first, as Loom's pruner has it."""
    if type(item) is not dict:
        return (item_id(item), pattern_type(item), item_timestamp(item) or created_at(item), last_used_at(item),
                success_rate(item), confidence(item), execution_count(item))
    lifecycle, evolution = _sub(item, "lifecycle"), _sub(item, "evolution")
    rate, conf, count = _pattern_numbers(_sub(item, "performance"), _sub(item, "metrics"), lifecycle, evolution)
    last = lifecycle.get("last_used_at")
    if last is None:
        last = _either(evolution, "lastUsed", "last_used")
    created = parse_iso_timestamp(item.get("timestamp"))
    if created is None:
        created = _created_at(item, lifecycle, evolution)
    return (_as_str(item.get("id")), _as_str(_sub(item, "pattern").get("type")), created, parse_iso_timestamp(last),
            _as_float(rate), _as_float(conf), _as_int(count))


def solution_rule_fields(item: Item) -> tuple[str | None, str | None, datetime | None, bool | None]:
    """``(item_id, error_type, created, solution_worked)`` of a solution, in one pass (``created`` as in
    :func:`pattern_rule_fields`)."""
    if type(item) is not dict:
        return item_id(item), error_type(item), item_timestamp(item) or created_at(item), solution_worked(item)
    created = parse_iso_timestamp(item.get("timestamp"))
    if created is None:
        created = _created_at(item, _sub(item, "lifecycle"), _sub(item, "evolution"))
    return (_as_str(item.get("id")), _as_str(_either(_sub(item, "problem"), "errorType", "error_type")), created,
            _as_bool(_sub(item, "effectiveness").get("worked")))


def decision_rule_fields(item: Item) -> tuple[str | None, str | None, datetime | None, bool, bool | None]:
    """``(item_id, decision_type, created, has_outcome, would_repeat)`` of a decision, in one pass (``created``
    as in :func:`pattern_rule_fields`)."""
    if type(item) is not dict:
        return (item_id(item), decision_type(item), item_timestamp(item) or created_at(item), has_outcome(item),
                would_repeat(item))
    created = parse_iso_timestamp(item.get("timestamp"))
    if created is None:
        created = _created_at(item, _sub(item, "lifecycle"), _sub(item, "evolution"))
    outcome = item.get("outcome")
    present = type(outcome) is dict or isinstance(outcome, Mapping)
    repeat = _either(outcome, "wouldRepeat", "would_repeat") if present else None
    return (_as_str(item.get("id")), _as_str(_sub(item, "decision").get("type")), created, present, _as_bool(repeat))


def solution_fields(item: Item) -> tuple[str | None, bool | None, int | None, datetime | None]:
    """``(error_type, solution_worked, verified_count, created_at)`` of a solution."""
    if type(item) is not dict:
        return error_type(item), solution_worked(item), verified_count(item), created_at(item)
    kind = _either(_sub(item, "problem"), "errorType", "error_type")
    count = _either(item, "verifiedCount", "verified_count")
    return (_as_str(kind), _as_bool(_sub(item, "effectiveness").get("worked")), _as_int(count),
            _created_at(item, _sub(item, "lifecycle"), _sub(item, "evolution")))


def decision_fields(item: Item) -> tuple[str | None, bool | None, datetime | None, datetime | None]:
    """``(decision_type, would_repeat, reviewed_at, created_at)`` of a decision."""
    if type(item) is not dict:
        return decision_type(item), would_repeat(item), reviewed_at(item), created_at(item)
    repeat = _either(_sub(item, "outcome"), "wouldRepeat", "would_repeat")
    reviewed = _either(item, "reviewedAt", "reviewed_at")
    return (_as_str(_sub(item, "decision").get("type")), _as_bool(repeat), parse_iso_timestamp(reviewed),
            _created_at(item, _sub(item, "lifecycle"), _sub(item, "evolution")))


# --------------------------------------------------------------------------- Loom: field types

TIMESTAMP_EXPECTED: Final = "string (ISO 8601 timestamp)"

_ANY_ITEM: Final[tuple[tuple[tuple[str, ...], str], ...]] = (
    (("id",), "string"),
    (("agent",), "string"),
    (("timestamp",), "timestamp"),
    (("metadata", "last_modified"), "timestamp"),
    (("active",), "boolean"),
)
_TYPED_FIELDS: Final[dict[str, tuple[tuple[tuple[str, ...], str], ...]]] = {
    "patterns": (
        *_ANY_ITEM,
        (("evolution", "created"), "timestamp"),
        (("evolution", "lastUsed"), "timestamp"),
        (("evolution", "last_used"), "timestamp"),
        (("lifecycle", "created_at"), "timestamp"),
        (("lifecycle", "last_used_at"), "timestamp"),
        (("metrics", "successRate"), "number"),
        (("metrics", "success_rate"), "number"),
        (("performance", "success_rate"), "number"),
        (("evolution", "confidenceScore"), "number"),
        (("evolution", "confidence_score"), "number"),
        (("lifecycle", "confidence"), "number"),
        (("metrics", "executionCount"), "number"),
        (("metrics", "execution_count"), "number"),
        (("performance", "execution_count"), "number"),
        (("metrics", "avgTimeSavedMs"), "number"),
        (("performance", "avg_time_saved_ms"), "number"),
    ),
    "solutions": (
        *_ANY_ITEM,
        (("effectiveness", "worked"), "boolean"),
        (("verifiedCount",), "number"),
    ),
    "decisions": (
        *_ANY_ITEM,
        (("reviewedAt",), "timestamp"),
        (("reviewed_at",), "timestamp"),
        (("outcome", "wouldRepeat"), "boolean"),
        (("outcome", "would_repeat"), "boolean"),
    ),
}
_TYPED_FIELDS["archived_decisions"] = _TYPED_FIELDS["decisions"]


def _type_problem(value: object, expected: str) -> str | None:
    """The JSON type found when ``value`` is not of kind ``expected``, else ``None``."""
    kind = type(value)
    if expected == "timestamp":
        return iso_timestamp_form(value)
    if expected == "number":
        if finite_number(value):
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return "integer (beyond a double)"
        return json_type(value)
    if expected == "string":
        return None if kind is str or isinstance(value, str) else json_type(value)
    return None if isinstance(value, bool) else json_type(value)


_Entries = tuple[tuple[int, str, str], ...]
"""``(position in the field list, key, dotted path)`` of the fields of one expected kind."""
_TypedGroups = tuple[tuple[tuple[str, ...], str | None, _Entries, _Entries, _Entries, _Entries], ...]
"""Per parent path (and its key when it has one step): its timestamp, number, string and boolean fields."""


def _grouped(fields: tuple[tuple[tuple[str, ...], str], ...]) -> _TypedGroups:
    """``fields`` grouped by parent path (each parent looked up once per item) and by expected kind
    (each kind's usual, right types checked inline in :func:`wrong_types`)."""
    groups: dict[tuple[str, ...], dict[str, list[tuple[int, str, str]]]] = {}
    for pos, (path, expected) in enumerate(fields):
        kinds = groups.setdefault(path[:-1], {kind: [] for kind in _KINDS})
        kinds[expected].append((pos, path[-1], ".".join(path)))
    return tuple(
        (parent, parent[0] if len(parent) == 1 else None, *(tuple(kinds[kind]) for kind in _KINDS))  # type: ignore[misc]
        for parent, kinds in groups.items()
    )


_KINDS: Final = ("timestamp", "number", "string", "boolean")
_TYPED_GROUPS: Final = {collection: _grouped(fields) for collection, fields in _TYPED_FIELDS.items()}
_ANY_GROUPS: Final = _grouped(_ANY_ITEM)
_MISSING: Final = object()


def wrong_types(item: object, collection: str) -> tuple[WrongType, ...]:
    """Fields of a Loom item whose JSON type is not what Loom writes there.

    Checked (present keys only; a missing field is not a wrong type): ``id`` and ``agent`` (strings:
    ``null`` or a number is wrong), every timestamp (ISO 8601
    text: a number, ``null``, a numeric or unparseable string is wrong), success rate, confidence,
    counts and times saved (JSON numbers: a string ``"0.9"`` is wrong), and flags (``active``,
    ``effectiveness.worked``, ``outcome.wouldRepeat``: booleans). The accessors above read each such
    field as ``None``.

    Args:
        item: one pattern, solution or decision (anything else yields nothing).
        collection: ``patterns``, ``solutions``, ``decisions`` or ``archived_decisions``.

    Returns:
        One :class:`~aml.store.records.WrongType` per field, in a fixed order.
    """
    if type(item) is not dict and not isinstance(item, Mapping):
        return ()
    out: list[tuple[int, WrongType]] = []
    missing = _MISSING
    for parent_path, parent_key, timestamps, numbers, strings, booleans in _TYPED_GROUPS.get(collection, _ANY_GROUPS):
        if parent_key is not None:
            parent: Any = item.get(parent_key)
        else:
            parent = _get(item, *parent_path) if parent_path else item
        if type(parent) is not dict:
            if parent is None or not isinstance(parent, Mapping):
                continue
            keys = [key for entries in (timestamps, numbers, strings, booleans) for _, key, _ in entries]
            parent = {key: parent[key] for key in keys if key in parent}
        get = parent.get
        # Each kind's usual (right) types inline; iso_timestamp_form and _type_problem decide the rest.
        for pos, key, name in timestamps:
            value = get(key, missing)
            if value is not missing and (found := iso_timestamp_form(value)) is not None:
                out.append((pos, WrongType(name, found, TIMESTAMP_EXPECTED)))
        for pos, key, name in numbers:
            value = get(key, missing)
            if value is missing:
                continue
            kind = type(value)
            if (kind is float and math.isfinite(value)) or (kind is int and -_DOUBLE_MAX <= value <= _DOUBLE_MAX):
                continue
            if (found := _type_problem(value, "number")) is not None:
                out.append((pos, WrongType(name, found, "number")))
        for expected, usual, entries in (("string", str, strings), ("boolean", bool, booleans)):
            for pos, key, name in entries:
                value = get(key, missing)
                if value is missing or type(value) is usual:
                    continue
                if (found := _type_problem(value, expected)) is not None:
                    out.append((pos, WrongType(name, found, expected)))
    if not out:
        return ()
    out.sort(key=lambda pair: pair[0])
    return tuple(w for _, w in out)


_WHOLE_DOUBLE: Final = Annotated[float, msgspec.Meta(gt=-_DOUBLE_MAX, lt=_DOUBLE_MAX)]
"""Strict bounds: msgspec rounds an integer to a float before it compares, and an integer just beyond a double
rounds to the largest double itself (``DOUBLE_MAX`` then only costs the per-item check)."""
_C_TYPES: Final[dict[str, Any]] = {"timestamp": datetime, "number": _WHOLE_DOUBLE, "string": str, "boolean": bool}
"""What msgspec accepts for each expected kind: an RFC 3339 date-time, a JSON number strictly within a double's
range (an integer too; ``true`` is not one), a string, ``true``/``false``. ``null`` is none of them."""
_EDGE_DAYS: Final = (b"0001-01-01", b"9999-12-31")
"""The first and last days ``datetime`` holds: an offset can take an instant on them outside ``datetime``
(``0001-01-01T00:00:00+01:00``), which msgspec does not check and :func:`parse_iso_timestamp` refuses. They are
looked for in the typed fields as msgspec writes them back (:data:`_CANONICAL`), not in the document's bytes: there
each date-time is unescaped and in one form, and the fields are a fraction of the document."""
_CANONICAL: Final = msgspec.json.Encoder()


def _clean_decoder(collection: str) -> msgspec.json.Decoder[Any]:
    """A decoder of a list of items holding only ``collection``'s typed fields (:data:`_TYPED_FIELDS`), each of
    its expected kind (:data:`_C_TYPES`), nested as in the item; a missing field is allowed, any other field
    skipped unread."""
    tree: dict[str, Any] = {}
    for path, expected in _TYPED_FIELDS[collection]:
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = expected

    def struct(node: dict[str, Any], name: str) -> type:
        return msgspec.defstruct(name, [
            (f"f{i}", struct(sub, f"{name}_{i}") if isinstance(sub, dict) else _C_TYPES[sub],
             msgspec.field(name=key, default=None))
            for i, (key, sub) in enumerate(sorted(node.items()))], omit_defaults=True)  # written back: fields present

    items = GenericAlias(list, (struct(tree, f"Typed_{collection}"),))  # list[<the struct>]
    return msgspec.json.Decoder(items)


_CLEAN_DECODERS: Final = {collection: _clean_decoder(collection) for collection in _TYPED_FIELDS}
"""One per collection, made at import (under 1 ms): made lazily, after a large document was read, these
long-lived objects could land at the top of the heap and keep it from shrinking (a 200 MB document's prune
held 100 MB more)."""


def types_clean(body: bytes | memoryview, collection: str) -> bool:
    """Whether no item of a Loom collection document has a field of a wrong type, proven in one C pass.

    ``True`` means :func:`wrong_types` returns ``()`` for every item of ``body``; ``False`` means nothing
    (call :func:`wrong_types` per item). msgspec decodes the document against the typed fields alone
    (:func:`_clean_decoder`), which fails on any field :func:`wrong_types` would name: a non-string id,
    a string number, a ``null`` flag, a number beyond a double, a timestamp that is not an RFC 3339 date-time
    (numbers, numeric strings, surrounding blanks, impossible dates). It also fails, to no harm, on
    what :func:`wrong_types` accepts (a parent that is not an object, an ISO 8601 form outside RFC 3339, a
    non-object item). The one form msgspec reads and :func:`parse_iso_timestamp` does not is ruled out
    after: the first and last days of years 1 and 9999, where an offset takes the instant outside
    ``datetime`` (``0001-01-01T00:00:00+01:00``), looked for in the decoded fields as msgspec writes them back
    (:data:`_EDGE_DAYS`), where escapes are resolved and every date-time has one form: a search of the
    document's own bytes would have to refuse every escaped digit, ``-`` and ``:`` too, and cost four passes
    over the whole document. A hypothesis test checks the implication on timestamp-like strings around every
    edge, written with and without escapes (tests/test_store_types_clean.py).

    Args:
        body: a JSON document (UTF-8 bytes, no BOM) that should be a list of items.
        collection: ``patterns``, ``solutions``, ``decisions`` or ``archived_decisions`` (others: ``False``).

    Returns:
        ``True`` when every item's typed fields are of their kind; ``False`` otherwise, or when unsure.
    """
    if collection not in _TYPED_FIELDS:
        return False
    try:
        typed = _CLEAN_DECODERS[collection].decode(body)
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return False
    try:
        canonical = _CANONICAL.encode(typed)
    except (msgspec.EncodeError, OverflowError, TypeError, ValueError):  # not expected of decoded fields: unsure
        return False
    del typed
    return not any(day in canonical for day in _EDGE_DAYS)


# --------------------------------------------------------------------------- Loom: store files


def schema_file_version(doc: object) -> str | None:
    """``version`` of ``config/schema_version.json`` (or of root ``config.json``)."""
    return _as_str(_get(doc, "version"))


def is_backup_metadata(doc: object) -> bool:
    """True for Loom's Python ``backup_metadata.json``: ``{"version", "backups": [...]}``."""
    return isinstance(doc, Mapping) and isinstance(doc.get("backups"), list) and "version" in doc


def is_ts_backup_meta(doc: object) -> bool:
    """True for the TS BackupManager's ``backup-<ms>-<rand>.meta.json``."""
    return (
        isinstance(doc, Mapping)
        and isinstance(doc.get("id"), str)
        and doc["id"].startswith("backup-")
        and "fileCount" in doc
    )


# --------------------------------------------------------------------------- Aitor sessions

SESSION_COLLECTIONS: Final = {
    "conversation_history": "sessions.messages",
    "tool_executions": "sessions.tool_executions",
    "reasoning_trace": "sessions.reasoning_steps",
}
"""Aitor export key -> aml collection name. Todos live under ``planning.todos``."""


def is_aitor_session(doc: object) -> bool:
    """True for an Aitor ``export_memory()`` dict: has ``conversation_history`` and one of
    ``session_id``/``reasoning_trace``/``tool_executions``."""
    return (
        isinstance(doc, Mapping)
        and "conversation_history" in doc
        and any(k in doc for k in ("session_id", "reasoning_trace", "tool_executions"))
    )


def session_id(doc: Item) -> str | None:
    """``session_id`` of a session export."""
    return _as_str(doc.get("session_id"))


def session_agent_name(doc: Item) -> str | None:
    """``agent_name`` of a session export (``None`` if missing or empty)."""
    return _as_str(doc.get("agent_name")) or None


def session_created_at(doc: Item) -> datetime | None:
    """``created_at`` of a session (naive, no microseconds in real data) as aware UTC."""
    return parse_timestamp(doc.get("created_at"))


def session_last_updated(doc: Item) -> datetime | None:
    """``last_updated`` of a session as aware UTC."""
    return parse_timestamp(doc.get("last_updated"))


def session_messages(doc: Item) -> list[Any]:
    """``conversation_history`` entries (``{role, content, timestamp, metadata}``)."""
    return _as_dicts(doc.get("conversation_history"))


def session_tool_executions(doc: Item) -> list[Any]:
    """``tool_executions`` entries (``{tool_name, params, result, timestamp}``; failures have
    ``result: null`` and ``error``)."""
    return _as_dicts(doc.get("tool_executions"))


def session_reasoning_steps(doc: Item) -> list[Any]:
    """``reasoning_trace`` entries (``{step_type, content, timestamp, metadata, ...}``)."""
    return _as_dicts(doc.get("reasoning_trace"))


def session_todos(doc: Item) -> list[Any]:
    """``planning.todos`` of a PlanningReactAgent export; empty for plain ReactAgents."""
    return _as_dicts(_get(doc, "planning", "todos"))


def entry_timestamp(entry: object) -> datetime | None:
    """``timestamp`` of a session entry (message, tool execution, reasoning step)."""
    return parse_timestamp(_get(entry, "timestamp"))


def message_role(entry: object) -> str | None:
    """``role`` of a message: ``user``, ``assistant``, ``system``."""
    return _as_str(_get(entry, "role"))


def tool_name(entry: object) -> str | None:
    """``tool_name`` of a tool execution or reasoning step."""
    return _as_str(_get(entry, "tool_name"))


def tool_succeeded(entry: object) -> bool | None:
    """``result.success`` of a tool execution; ``False`` when ``result`` is null with an ``error``."""
    result = _get(entry, "result")
    if result is None:
        return False if _get(entry, "error") is not None else None
    return _as_bool(_get(result, "success"))


def step_type(entry: object) -> str | None:
    """``step_type`` of a reasoning step (lowercase: ``think``, ``act``, ``observe``, ``final_answer``)."""
    return _as_str(_get(entry, "step_type"))


def todo_id(entry: object) -> str | None:
    """``id`` of a planning todo."""
    return _as_str(_get(entry, "id"))


def todo_status(entry: object) -> str | None:
    """``status`` of a planning todo (``completed``, ``pending``, ``failed``...)."""
    return _as_str(_get(entry, "status"))


def todo_times(entry: object) -> tuple[datetime | None, datetime | None]:
    """``(created_at, updated_at)`` of a planning todo."""
    return parse_timestamp(_get(entry, "created_at")), parse_timestamp(_get(entry, "updated_at"))


# --------------------------------------------------------------------------- TinyTroupe

_CLASS_KEYS: Final = ("type", "json_serializable_class_name")


def tt_class(obj: object) -> str | None:
    """TinyTroupe class name of a serialised object: ``type`` in 0.6 specs,
    ``json_serializable_class_name`` in the simulation cache."""
    return _as_str(_first(obj, *((k,) for k in _CLASS_KEYS)))


def is_tinytroupe_spec(doc: object) -> bool:
    """True for a ``TinyPerson.save_specification`` file (class ``TinyPerson`` with a persona or memory)."""
    return (
        isinstance(doc, Mapping)
        and tt_class(doc) == "TinyPerson"
        and any(k in doc for k in ("persona", "_persona", "episodic_memory"))
    )


def is_tinytroupe_cache(doc: object) -> bool:
    """True for a simulation cache: a non-empty JSON list of 4-entry lists whose last entry is the
    simulation state ``{"agents": [...], ...}``."""
    return (
        isinstance(doc, list)
        and bool(doc)
        and all(
            isinstance(e, list) and len(e) == 4 and isinstance(e[3], Mapping) and "agents" in e[3]
            for e in doc
        )
    )


def persona_name(agent: object) -> str | None:
    """The agent's name: ``persona.name`` (spec), ``_persona.name`` or ``name`` (cache)."""
    return _as_str(_first(agent, ("persona", "name"), ("_persona", "name"), ("name",))) or None


def episodic_memory(agent: object) -> list[Any]:
    """Committed episodic memory items: ``episodic_memory.memory``."""
    return _as_dicts(_get(agent, "episodic_memory", "memory"))


def episodic_buffer(agent: object) -> list[Any]:
    """Uncommitted items of the current episode: ``episodic_memory.episodic_buffer``."""
    return _as_dicts(_get(agent, "episodic_memory", "episodic_buffer"))


def episodic_fixed_prefix_length(agent: object) -> int | None:
    """``episodic_memory.fixed_prefix_length`` (10 in 0.6 specs, 100 in the cache)."""
    return _as_int(_get(agent, "episodic_memory", "fixed_prefix_length"))


def episodic_lookback_length(agent: object) -> int | None:
    """``episodic_memory.lookback_length`` (20 in 0.6 specs, 100 in the cache)."""
    return _as_int(_get(agent, "episodic_memory", "lookback_length"))


def semantic_memories(agent: object) -> list[Any]:
    """``semantic_memory.memories`` (empty in real data: no embeddings offline)."""
    return _as_dicts(_get(agent, "semantic_memory", "memories"))


def memory_item_type(entry: object) -> str | None:
    """``type`` of an episodic item: ``stimulus`` or ``action``."""
    return _as_str(_get(entry, "type"))


def memory_item_role(entry: object) -> str | None:
    """``role`` of an episodic item: ``user`` (stimuli) or ``assistant`` (actions)."""
    return _as_str(_get(entry, "role"))


def memory_item_time(entry: object) -> datetime | None:
    """``simulation_timestamp`` of an episodic item (naive simulated time, or null)."""
    return parse_timestamp(_get(entry, "simulation_timestamp"))


def cache_entry_hash(entry: Sequence[Any]) -> str | None:
    """Entry 0 of a cache entry: the state hash (``null`` for the first entry)."""
    return _as_str(entry[0]) if entry else None


_CALL_RE: Final = re.compile(r"^\('([^']+)'")


def cache_entry_function(entry: Sequence[Any]) -> str | None:
    """Function name from entry 1 of a cache entry, e.g. ``"define"`` from
    ``"('define', (TinyPerson(name='Oscar'), 'age', 19), {})"``."""
    call = _as_str(entry[1]) if len(entry) > 1 else None
    m = _CALL_RE.match(call or "")
    return m.group(1) if m else None


def cache_entry_agents(entry: Sequence[Any]) -> list[Any]:
    """Serialised agents in entry 3 (the simulation state) of a cache entry."""
    return _as_dicts(_get(entry[3], "agents")) if len(entry) > 3 else []
