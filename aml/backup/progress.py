"""Progress reporting shared by backup, restore, check and prune (drives the CLI's progress bar)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Progress", "ProgressCallback", "Reporter"]


@dataclass
class Progress:
    """A progress event. Counts are files (or objects for ``check``), sizes are bytes.

    Attributes:
        phase: ``"scan"``, ``"backup"``, ``"restore"``, ``"check"``, ``"prune"`` or ``"drill"`` (a restore
            drill reading its restored files back).
        files_done, files_total: items processed / to process (total 0 while unknown).
        bytes_done, bytes_total: bytes processed / to process (uncompressed).
        files_read, bytes_read: items whose content was actually read from disk (backup: files not
            skipped as unchanged; check: objects decompressed and re-hashed).
        files_unchanged: backup: files taken from the parent manifest without reading them.
        current: path or object being processed (may be empty).
        final: True for the last event of a phase.
    """

    phase: str
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    files_read: int = 0
    bytes_read: int = 0
    files_unchanged: int = 0
    current: str = ""
    final: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


ProgressCallback = Callable[[Progress], None]


class Reporter:
    """Throttles progress events to at most one per ``interval`` seconds (plus the final one).

    Args:
        callback: the user's callback, or None (then every method is a no-op).
        phase: phase name for the events.
        interval: minimum seconds between events.
    """

    def __init__(self, callback: ProgressCallback | None, phase: str, interval: float = 0.1) -> None:
        self.callback = callback
        self.state = Progress(phase)
        self.interval = interval
        self._next = 0.0

    def tick(self) -> None:
        """Emit the current state if the interval has passed."""
        if self.callback is None:
            return
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval
            self.callback(Progress(**asdict(self.state)))

    def done(self) -> None:
        """Emit the final state."""
        if self.callback is None:
            return
        self.state.final = True
        self.callback(Progress(**asdict(self.state)))
