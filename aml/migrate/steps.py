"""The single steps between schema versions, for one item, in both directions.

This module *is* the schema definition: the field names of every version live here (lookups that
only read go through :mod:`aml.store.accessors`). Each step has an upgrade rule and a downgrade rule,
modelled on Loom's ``scripts/aml/migration.py`` (``Migration_1_0_to_1_1``, ``Migration_1_1_to_1_2``,
``Migration_1_2_to_2_0``), which has no downgrades.

Where aml differs from Loom, and why (the real stores in ``shared/data/loom`` hit none of these
cases except the first, so aml's output equals Loom's record for record there):

* **Timestamps are not rewritten.** Loom's 1.0.0 -> 1.1.0 rewrites ``timestamp`` and
  ``evolution.created``/``lastUsed`` from ``...025Z`` to ``...025000+00:00``. The instant is the
  same; aml keeps the writer's style (DESIGN.md) and so needs nothing to undo it.
* **``active`` is added to every collection at 1.1.0** (Loom adds it to patterns only). A solution
  or decision without ``active`` would otherwise still be detected as 1.0.0 after the step. Loom's
  runtime always writes ``active``, so real items never need it.
* **The 2.0.0 pattern keeps fields Loom does not know** at the top level (Loom's rebuild drops
  them), and everything else the rebuild drops (``variations``, extra ``metrics``/``evolution``
  entries, the key order, fields Loom's defaults would invent) is kept under
  ``metadata.aml_legacy`` (see :mod:`aml.migrate.legacy`), so that the downgrade restores it.
* **Items without ``id``/``agent``/``timestamp``/``pattern``** are migrated with what they have
  (Loom raises ``KeyError`` and gives up on the whole file).
* **A non-object ``metadata``** is replaced by an object at 1.2.0 and its value kept in the patch
  (Loom keeps the non-object, which leaves the item undetectable as 1.2.0).

New bookkeeping values (``metadata.last_modified`` at 1.2.0, ``metadata.migrated_at`` at 2.0.0) are
written in the style of the item's own ``timestamp`` (Loom writes naive local time; aml keeps the
writer's style, e.g. ``...Z`` for items written by Loom's runtime).

Round trips: going up and back down gives the identical item (keys, order, values, JSON types).
Going down and back up gives the identical item except Loom's bookkeeping ``metadata`` (``{created_by:
"migration", last_modified, version}``): 1.1.0 has no ``metadata`` to keep it in, so a downgrade below
1.2.0 drops it (the time a migration ran is not data) and the upgrade writes a new ``last_modified``.
Any other ``metadata`` content makes such a downgrade lossy (refused unless forced).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from aml.migrate.legacy import apply, diff, pop_legacy, put_legacy
from aml.migrate.versions import VERSIONS
from aml.store.accessors import ItemVersion
from aml.store.timestamps import (
    PY_AWARE_STYLE,
    TS_STYLE,
    TimestampStyle,
    TimestampValue,
    detect_style,
    format_like,
)

ItemKind = Literal["pattern", "record"]
"""``pattern`` for ``patterns.json`` items; ``record`` for solutions and decisions (same rules)."""

KIND_OF_COLLECTION: Final[dict[str, ItemKind]] = {
    "patterns": "pattern",
    "solutions": "record",
    "decisions": "record",
}
"""Collection name -> item kind, for the three per-agent Loom collections that migrations change."""

METRICS_FIELDS: Final = (
    ("successRate", "success_rate", 0.5),
    ("executionCount", "execution_count", 0),
    ("avgTimeSavedMs", "avg_time_saved_ms", 0),
    ("errorPreventionCount", "error_prevention_count", 0),
)
"""1.x ``metrics`` key, 2.0.0 ``performance`` key, Loom's default when missing (units: ratio 0-1,
count, milliseconds, count)."""

EVOLUTION_FIELDS: Final = (
    ("created", "created_at", None),
    ("lastUsed", "last_used_at", None),
    ("refinements", "refinement_count", 0),
    ("confidenceScore", "confidence", 0.5),
)
"""1.x ``evolution`` key, 2.0.0 ``lifecycle`` key, Loom's default (``None``: the item's ``timestamp``)."""

PATTERN_V12_KEYS: Final = frozenset(
    {"id", "agent", "timestamp", "version", "pattern", "tags", "active", "metrics", "evolution", "metadata",
     "variations"}
)
"""Top-level keys of a 1.2.0 pattern that the 2.0.0 rebuild maps; any other key is carried over as is."""

PATTERN_V20_KEYS: Final = frozenset(
    {"id", "agent", "timestamp", "version", "pattern", "tags", "active", "performance", "lifecycle", "metadata"}
)
"""Top-level keys of a 2.0.0 pattern that the downgrade maps; any other key is carried over as is."""

BOOKKEEPING: Final = (("metadata", "last_modified"), ("metadata", "migrated_at"))
"""Paths whose values a migration step writes itself (the time it ran): ignored when asking whether a
round trip lost anything, and when comparing with Loom's output."""


@dataclass(frozen=True, slots=True)
class StepContext:
    """What rules need besides the item.

    Attributes:
        now: the instant the run started (aware UTC); every bookkeeping value of one run uses it, so a
            rerun of the same run writes the same bytes.
    """

    now: datetime

    def stamp(self, item: Mapping[str, Any]) -> TimestampValue:
        """``now`` in the style of ``item["timestamp"]`` (TS style ``...sssZ`` when it has none)."""
        return self.stamp_as(_style_of(item.get("timestamp")))

    def stamp_as(self, style: TimestampStyle) -> TimestampValue:
        """``now`` in ``style``."""
        return _formatted(self.now, style)


def loom_style(value: object) -> TimestampStyle | None:
    """:data:`~aml.store.timestamps.TS_STYLE` or :data:`~aml.store.timestamps.PY_AWARE_STYLE` when
    ``value`` is a timestamp in one of the two forms Loom writes, recognised cheaply; else ``None``."""
    if type(value) is str:
        n = len(value)
        if n == 24 and value[23] == "Z" and value[19] == "." and value[10] == "T" and value[:4].isdigit():
            return TS_STYLE
        if n == 32 and value.endswith("+00:00") and value[19] == "." and value[10] == "T" and value[:4].isdigit():
            return PY_AWARE_STYLE
    return None


def _style_of(value: object) -> TimestampStyle:
    """:func:`~aml.store.timestamps.detect_style`, with the two forms Loom writes recognised cheaply
    (this runs once per item of a run)."""
    return loom_style(value) or detect_style(value) or TS_STYLE


@functools.lru_cache(maxsize=64)
def _formatted(now: datetime, style: TimestampStyle) -> TimestampValue:
    return format_like(now, style)


Rule = Callable[[Mapping[str, Any], ItemKind, StepContext], dict[str, Any]]


def _bookkeeping_12(item: Mapping[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Loom's 1.2.0 ``metadata`` for an item that has none."""
    return {"created_by": "migration", "last_modified": ctx.stamp(item), "version": "1.2.0"}


def _retag(item: dict[str, Any], target: ItemVersion) -> None:
    """Keep a top-level ``version`` that names a schema version in step with the item's shape."""
    version = item.get("version")
    if isinstance(version, str) and version in VERSIONS and version != target:
        item["version"] = target


# --------------------------------------------------------------------------- 1.0.0 <-> 1.1.0


def up_1_0(item: Mapping[str, Any], kind: ItemKind, ctx: StepContext) -> dict[str, Any]:
    """1.0.0 -> 1.1.0: add ``tags: []`` and ``active: true`` where missing (appended, as Loom does)."""
    out = dict(item)
    if "tags" not in out:
        out["tags"] = []
    if "active" not in out:
        out["active"] = True
    _retag(out, "1.1.0")
    return out


def down_1_1(item: Mapping[str, Any], kind: ItemKind, ctx: StepContext) -> dict[str, Any]:
    """1.1.0 -> 1.0.0: make the item undetectable as 1.1.0 (not both ``tags`` and ``active``).

    An empty ``tags`` is removed; otherwise ``active: true`` is removed (absent means active, so
    nothing is lost); an inactive item with tags loses its ``tags`` (a lossy downgrade, refused
    unless forced).
    """
    out = dict(item)
    tags = out.get("tags")
    if "tags" in out and "active" in out:
        if type(tags) is list and not tags:
            del out["tags"]
        elif out["active"] is True:
            del out["active"]
        else:
            del out["tags"]
    _retag(out, "1.0.0")
    return out


# --------------------------------------------------------------------------- 1.1.0 <-> 1.2.0


def up_1_1(item: Mapping[str, Any], kind: ItemKind, ctx: StepContext) -> dict[str, Any]:
    """1.1.0 -> 1.2.0: add Loom's ``metadata {created_by, last_modified, version}``; patterns also get
    ``variations: []``. Both appended, as Loom does."""
    out = dict(item)
    if type(out.get("metadata")) is not dict:
        out["metadata"] = _bookkeeping_12(item, ctx)
    if kind == "pattern" and "variations" not in out:
        out["variations"] = []
    _retag(out, "1.2.0")
    return out


def down_1_2(item: Mapping[str, Any], kind: ItemKind, ctx: StepContext) -> dict[str, Any]:
    """1.2.0 -> 1.1.0: remove ``metadata`` (and a pattern's ``variations``); make sure ``tags`` and
    ``active`` are there, as 1.1.0 requires. Losing anything but Loom's bookkeeping metadata or an
    empty ``variations`` is a lossy downgrade."""
    out = dict(item)
    out.pop("metadata", None)
    if kind == "pattern":
        out.pop("variations", None)
    if "tags" not in out:
        out["tags"] = []
    if "active" not in out:
        out["active"] = True
    _retag(out, "1.1.0")
    return out


# --------------------------------------------------------------------------- 1.2.0 <-> 2.0.0


def up_1_2(item: Mapping[str, Any], kind: ItemKind, ctx: StepContext) -> dict[str, Any]:
    """1.2.0 -> 2.0.0.

    Solutions and decisions: the item with ``version: "2.0.0"`` (appended; camelCase fields and
    ``metadata`` unchanged, so ``metadata.version`` stays ``"1.2.0"``, as in Loom's output).

    Patterns: Loom's rebuild, keys in Loom's order ``id, agent, timestamp, version, pattern, tags,
    active, performance, lifecycle, metadata`` with ``metrics`` -> ``performance`` and ``evolution`` ->
    ``lifecycle`` (see :data:`METRICS_FIELDS`, :data:`EVOLUTION_FIELDS` for names and Loom's
    defaults), then any key Loom does not know, in its original order.
    """
    if kind == "record":
        out = dict(item)
        out["version"] = "2.0.0"
        if type(out.get("metadata")) is not dict:
            out["metadata"] = {"version": "2.0.0", "migrated_at": ctx.stamp(item)}
        return out
    metrics = item.get("metrics")
    evolution = item.get("evolution")
    m: Mapping[str, Any] = metrics if type(metrics) is dict else {}
    e: Mapping[str, Any] = evolution if type(evolution) is dict else {}
    timestamp = item.get("timestamp")
    out = {k: item[k] for k in ("id", "agent", "timestamp") if k in item}
    out["version"] = "2.0.0"
    if "pattern" in item:
        out["pattern"] = item["pattern"]
    out["tags"] = item.get("tags", [])
    out["active"] = item.get("active", True)
    out["performance"] = {new: m.get(old, default) for old, new, default in METRICS_FIELDS}
    out["lifecycle"] = {
        new: e.get(old, timestamp if default is None else default) for old, new, default in EVOLUTION_FIELDS
    }
    meta = item.get("metadata")
    out["metadata"] = meta if type(meta) is dict else {"version": "2.0.0", "migrated_at": ctx.stamp(item)}
    for key, value in item.items():
        if key not in PATTERN_V12_KEYS:
            out[key] = value
    return out


def down_2_0(item: Mapping[str, Any], kind: ItemKind, ctx: StepContext) -> dict[str, Any]:
    """2.0.0 -> 1.2.0: the inverse of :func:`up_1_2` for what 1.2.0 can hold.

    Patterns: ``id, agent, timestamp, pattern, metrics, evolution, active, tags, metadata,
    variations: []`` (the order Loom's 1.2.0 items have), then unknown keys. ``performance`` or
    ``lifecycle`` entries with no 1.x name are lost (a lossy downgrade). Solutions and decisions:
    ``version`` removed. An item without a ``metadata`` object gets Loom's 1.2.0 one.
    """
    if kind == "record":
        out = dict(item)
        if out.get("version") == "2.0.0":
            del out["version"]
        if type(out.get("metadata")) is not dict:
            out["metadata"] = _bookkeeping_12(item, ctx)
        return out
    performance = item.get("performance")
    lifecycle = item.get("lifecycle")
    p: Mapping[str, Any] = performance if type(performance) is dict else {}
    life: Mapping[str, Any] = lifecycle if type(lifecycle) is dict else {}
    out = {k: item[k] for k in ("id", "agent", "timestamp", "pattern") if k in item}
    out["metrics"] = {old: p[new] for old, new, _ in METRICS_FIELDS if new in p}
    out["evolution"] = {old: life[new] for old, new, _ in EVOLUTION_FIELDS if new in life}
    for key in ("active", "tags"):
        if key in item:
            out[key] = item[key]
    meta = item.get("metadata")
    out["metadata"] = meta if type(meta) is dict else _bookkeeping_12(item, ctx)
    out["variations"] = []
    for key, value in item.items():
        if key not in PATTERN_V20_KEYS:
            out[key] = value
    return out


# --------------------------------------------------------------------------- one step with legacy

RULES: Final[dict[ItemVersion, tuple[Rule, Rule]]] = {
    "1.0.0": (up_1_0, down_1_1),
    "1.1.0": (up_1_1, down_1_2),
    "1.2.0": (up_1_2, down_2_0),
}
"""Lower version of a step -> (upgrade rule, downgrade rule)."""

KEEPS_LEGACY: Final = frozenset({"1.1.0", "1.2.0"})
"""Steps whose upper version has ``metadata`` to keep a patch in (1.1.0 -> 1.2.0 and 1.2.0 -> 2.0.0).
1.0.0 -> 1.1.0 only adds fields and needs none."""


def step_up(item: Mapping[str, Any], kind: ItemKind, source: ItemVersion, ctx: StepContext) -> dict[str, Any]:
    """Move ``item`` from ``source`` one version up; what the rule drops goes into ``aml_legacy``.

    Raises:
        KeyError: ``source`` is the latest version.
        ValueError: the item's ``metadata.aml_legacy`` is not an object (never overwritten).
    """
    up, down = RULES[source]
    out = up(item, kind, ctx)
    if source in KEEPS_LEGACY:
        patch = diff(item, down(out, kind, ctx))
        if patch is not None:
            put_legacy(out, source, patch)
    return out


def step_down(item: Mapping[str, Any], kind: ItemKind, source: ItemVersion, ctx: StepContext) -> dict[str, Any]:
    """Move ``item`` from ``source`` one version down, restoring what the upgrade kept for it.

    Raises:
        KeyError: ``source`` is the oldest version.
    """
    position = VERSIONS.index(source)
    if position == 0:
        raise KeyError(source)
    lower = VERSIONS[position - 1]
    stripped, patch = pop_legacy(item, lower)
    return apply(RULES[lower][1](stripped, kind, ctx), patch)
