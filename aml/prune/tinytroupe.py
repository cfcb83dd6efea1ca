"""Episodic-memory rule for TinyTroupe agent specifications (strategy ``session_based``).

TinyTroupe's ``EpisodicMemory`` shows an agent its first ``fixed_prefix_length`` items and its last
``lookback_length`` items; the items in between are only reached by full retrieval, and the list
grows for as long as the agent lives. The rule keeps the fixed prefix and the last N committed items
of ``episodic_memory.memory``:

* prefix = ``max(config.episodic_fixed_prefix, the agent's own fixed_prefix_length)`` (DESIGN.md:
  20; TinyTroupe 0.6 specs store 10, its simulation caches 100), so what the agent always sees is
  never pruned;
* the last ``config.episodic_keep_last`` items are kept;
* everything in between is removed (reason ``episodic_limit``).

The uncommitted ``episodic_buffer`` and ``semantic_memory`` are left alone, and simulation caches are
never edited: their entries are keyed by a hash of the simulation state they hold, so an edited state
would make the cache lie.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from aml.prune.config import PruneConfig
from aml.store import accessors as acc

EPISODIC_POINTER: Final = "/episodic_memory/memory"
"""Where a spec's committed episodic items are."""


def episodic_removals(spec: Mapping[str, Any], config: PruneConfig) -> list[tuple[int, str]]:
    """What the episodic rule removes from one ``TinyPerson.save_specification`` document.

    Args:
        spec: the parsed specification.
        config: ``episodic_fixed_prefix`` and ``episodic_keep_last``.

    Returns:
        ``(index in episodic_memory.memory, reason)`` for every item removed, in order.
    """
    items = acc.episodic_memory(spec)
    prefix = max(config.episodic_fixed_prefix, acc.episodic_fixed_prefix_length(spec) or 0)
    stop = len(items) - config.episodic_keep_last
    return [(index, "episodic_limit") for index in range(prefix, max(stop, prefix))]
