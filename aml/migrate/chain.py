"""One item through the chain of steps, and the test that a downgrade loses nothing.

:func:`migrate_item` detects an item's version, walks it step by step to the target (up or down),
and for a downgrade walks the result back up to prove that nothing is lost: a downgrade is
*lossless* when every value of the original is found again after the round trip (bookkeeping
timestamps excepted, see :data:`aml.migrate.steps.BOOKKEEPING`). Values the round trip adds (Loom's
defaults) are not losses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aml.migrate.steps import BOOKKEEPING, ItemKind, StepContext, step_down, step_up
from aml.migrate.versions import VERSIONS, direction, path
from aml.store.accessors import ItemVersion, detect_item_version
from aml.store.records import json_pointer


class UnknownItemVersion(ValueError):
    """An item declares a top-level ``version`` aml does not know (e.g. ``"3.0.0"``): its file is
    left alone rather than guessed at.

    Attributes:
        version: the declared value.
    """

    def __init__(self, version: str) -> None:
        super().__init__(f"unknown schema version {version!r} (known: {', '.join(VERSIONS)})")
        self.version = version


@dataclass(slots=True)
class ItemResult:
    """The outcome for one item.

    Attributes:
        item: the item at the target version (the input object itself when unchanged).
        source: the version the item had.
        changed: ``source`` differs from the target.
        lost: for a downgrade, JSON pointers (relative to the item, e.g. ``"/tags"``) of values the
            target version cannot hold; empty when nothing is lost or for upgrades.
    """

    item: dict[str, Any]
    source: ItemVersion
    changed: bool
    lost: list[str] = field(default_factory=list)


def item_version(item: Mapping[str, Any]) -> ItemVersion:
    """The schema version of one item (:func:`aml.store.accessors.detect_item_version`).

    Raises:
        UnknownItemVersion: the item has a top-level string ``version`` that is no known version.
    """
    declared = item.get("version")
    if isinstance(declared, str) and declared not in VERSIONS:
        raise UnknownItemVersion(declared)
    return detect_item_version(item)


def walk(item: Mapping[str, Any], kind: ItemKind, source: ItemVersion, target: ItemVersion,
         ctx: StepContext) -> dict[str, Any]:
    """Apply every step from ``source`` to ``target`` (no detection, no loss check).

    Returns:
        A new object (``item`` is never modified; nested objects it does not change are shared).
    """
    out: dict[str, Any] = dict(item)
    for lower, upper in path(source, target):
        if VERSIONS.index(upper) > VERSIONS.index(lower):
            out = step_up(out, kind, lower, ctx)
        else:
            out = step_down(out, kind, lower, ctx)
    return out


def migrate_item(item: Mapping[str, Any], kind: ItemKind, target: ItemVersion, ctx: StepContext, *,
                 check_loss: bool = True) -> ItemResult:
    """Move one item to ``target``.

    Args:
        item: a pattern (``kind="pattern"``), solution or decision (``kind="record"``).
        kind: its kind.
        target: the wanted version.
        ctx: the run's context (bookkeeping time).
        check_loss: for downgrades, walk back up and report what did not survive (default on).

    Returns:
        An :class:`ItemResult`.

    Raises:
        UnknownItemVersion: see :func:`item_version`.
        ValueError: the item's ``metadata.aml_legacy`` is not an object (aml will not overwrite it).
    """
    source = item_version(item)
    if source == target:
        return ItemResult(item if isinstance(item, dict) else dict(item), source, False)
    out = walk(item, kind, source, target, ctx)
    lost: list[str] = []
    if check_loss and direction(source, target) == "down":
        lost = lost_paths(item, walk(out, kind, target, source, ctx))
    return ItemResult(out, source, True, lost)


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: objects compare without regard to key order, but ``1``, ``1.0`` and ``true``
    are three different values (Python's ``==`` mixes them)."""
    ta, tb = type(a), type(b)
    if ta is not tb:
        return False
    if ta is dict:
        return a.keys() == b.keys() and all(json_equal(v, b[k]) for k, v in a.items())
    if ta is list:
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def lost_paths(original: Mapping[str, Any], roundtrip: Mapping[str, Any],
               _prefix: tuple[str, ...] = ()) -> list[str]:
    """JSON pointers of the values of ``original`` that ``roundtrip`` does not hold unchanged.

    Objects are compared key by key (recursively); any other value must be :func:`json_equal`.
    Keys only ``roundtrip`` has are not losses. :data:`BOOKKEEPING` paths are ignored.
    """
    lost: list[str] = []
    for key, value in original.items():
        here = (*_prefix, key)
        if here in BOOKKEEPING:
            continue
        if key not in roundtrip:
            lost.append(json_pointer(*here))
        elif type(value) is dict and type(roundtrip[key]) is dict:
            lost.extend(lost_paths(value, roundtrip[key], here))
        elif not json_equal(value, roundtrip[key]):
            lost.append(json_pointer(*here))
    return lost
