"""Loom's own writer lock: a document Loom's runtime is writing is left alone by every aml writer.

Loom's ``FileStorage`` locks a file with ``proper-lockfile``: it creates the directory
``<file>.lock`` and refreshes its mtime while it writes; a lock older than
:data:`LOOM_LOCK_STALE_S` is stale (its holder died). aml's writers (prune, gc, compress) skip a
locked document and report it, since a rewrite racing Loom's would lose one of the two writes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Final

LOOM_LOCK_STALE_S: Final = 30.0
"""Age after which a Loom ``<file>.lock`` directory is stale, seconds (Loom FileStorage ``stale: 30000`` ms)."""


def loom_lock_held(path: Path, *, now: float | None = None) -> bool:
    """True while Loom's runtime holds its ``proper-lockfile`` lock on ``path``.

    Args:
        path: the document.
        now: current time, seconds since the epoch (default: now).

    Returns:
        ``True`` if ``<path>.lock`` exists and is younger than :data:`LOOM_LOCK_STALE_S` seconds.
    """
    try:
        st = os.stat(f"{path}.lock")
    except OSError:
        return False
    return ((time.time() if now is None else now) - st.st_mtime) < LOOM_LOCK_STALE_S
