"""Python's cyclic garbage collector paused around work that makes objects by the million and no cycles.

Parsed JSON, record views, spans and index rows hold no reference cycles, so the collector's full passes,
which the sheer number of objects of a large document triggers, only cost time: about a quarter of
``monitor health`` and ``optimize index`` and 40 % of a prune or an undo on a 75,000-record store (issue 12).
Reference counting still frees every object as soon as it is unused.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic collector off for the block, and back on after it (whatever happens in the block) if it was on.

    The switch is process-wide: other threads run without cycle collection meanwhile (cycles they make are
    collected after the block)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
