"""The Loom AML schema versions and the path between two of them.

Versions form one line, 1.0.0 -> 1.1.0 -> 1.2.0 -> 2.0.0 (DESIGN.md, "Schema versions"; the order of
``SchemaVersion`` in Loom's ``scripts/aml/migration.py``). A migration moves each item one step at a
time along that line, up or down.
"""

from __future__ import annotations

from typing import Final, Literal

from aml.store.accessors import ITEM_VERSIONS, ItemVersion

VERSIONS: Final[tuple[ItemVersion, ...]] = ITEM_VERSIONS
"""Every version, oldest first: ``("1.0.0", "1.1.0", "1.2.0", "2.0.0")``."""

LATEST: Final[ItemVersion] = VERSIONS[-1]
"""The newest version (what ``migrate-latest`` and ``migrate`` without ``--version`` aim at)."""

DEFAULT_VERSION: Final[ItemVersion] = VERSIONS[0]
"""What a store without ``config/schema_version.json`` is taken to claim (Loom's default)."""

Direction = Literal["up", "down", "none"]


def check_version(value: str) -> ItemVersion:
    """Validate a version string.

    Args:
        value: e.g. ``"1.2.0"``; ``"1.2"`` and ``"v1.2.0"`` are accepted and normalised.

    Returns:
        The version, one of :data:`VERSIONS`.

    Raises:
        ValueError: not a known version (the message lists the known ones).
    """
    text = value.strip().removeprefix("v")
    if text.count(".") == 1:
        text += ".0"
    if text not in VERSIONS:
        raise ValueError(f"unknown schema version {value!r}; known: {', '.join(VERSIONS)}")
    return text


def index_of(version: ItemVersion) -> int:
    """Position of ``version`` in :data:`VERSIONS` (0 for 1.0.0)."""
    return VERSIONS.index(version)


def direction(source: ItemVersion, target: ItemVersion) -> Direction:
    """``"up"`` when ``target`` is newer than ``source``, ``"down"`` when older, else ``"none"``."""
    a, b = index_of(source), index_of(target)
    return "up" if b > a else "down" if b < a else "none"


def path(source: ItemVersion, target: ItemVersion) -> list[tuple[ItemVersion, ItemVersion]]:
    """The single steps from ``source`` to ``target``, in order.

    Returns:
        e.g. ``path("1.0.0", "1.2.0") == [("1.0.0", "1.1.0"), ("1.1.0", "1.2.0")]`` and
        ``path("2.0.0", "1.1.0") == [("2.0.0", "1.2.0"), ("1.2.0", "1.1.0")]``; empty when equal.
    """
    a, b = index_of(source), index_of(target)
    if a <= b:
        return [(VERSIONS[i], VERSIONS[i + 1]) for i in range(a, b)]
    return [(VERSIONS[i], VERSIONS[i - 1]) for i in range(a, b, -1)]
