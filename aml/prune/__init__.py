"""Prune: remove or archive low-value records, with a plan, a dry run and an undo.

One concern per module:

* :mod:`~aml.prune.config` - :class:`PruneConfig`: every threshold with its source; ``aggressive()``;
* :mod:`~aml.prune.value` - :func:`value_score`: the value of a Loom record (formula and sources);
* :mod:`~aml.prune.strategies` - the Loom rules ``time_based``, ``performance_based``, ``space_based``;
* :mod:`~aml.prune.sessions` - Aitor session rules (``session_based``);
* :mod:`~aml.prune.tinytroupe` - TinyTroupe episodic-memory rule (``session_based``);
* :mod:`~aml.prune.plan` - :func:`build_plan`: record, collection, reason, value (the dry run);
* :mod:`~aml.prune.archive` - archived decisions in the backup repository's ``archives/<agent>/``;
* :mod:`~aml.prune.apply` - :func:`apply_plan`: atomic rewrites, decisions archived first, undo rows
  handed to the caller before each rewrite (write-ahead);
* :mod:`~aml.prune.undo` - :func:`undo_entries` (or, fed one document at a time,
  :func:`undo_documents`): put back exactly what a run removed;
  :func:`present_entries`: which rows' records are still in the store (a resumed run).

Pure engine: no Celery, no catalog (``tasks/prune.py`` adds the safety snapshot, the store lock and the
``prune_actions`` rows). Units: bytes (MiB = 1024² bytes), days of 86,400 s, ratios 0-1, aware UTC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aml.lazy import lazy_exports

if TYPE_CHECKING:
    from aml.prune.apply import AppliedRecord, ApplyResult, apply_plan
    from aml.prune.archive import ARCHIVE_DIR, archive_file, read_archive
    from aml.prune.config import DEFAULT_STRATEGIES, MIB, STRATEGIES, PruneConfig, Strategy, normalise_strategies
    from aml.prune.plan import DocumentState, PlannedAction, PrunePlan, build_plan
    from aml.prune.undo import UndoEntry, UndoResult, lean_payload, present_entries, undo_documents, undo_entries
    from aml.prune.value import ValueInputs, loom_value, loom_value_inputs, value_score
    from aml.store.rewrite import SpliceError

_SOURCES = {
    "AppliedRecord": "apply", "ApplyResult": "apply", "apply_plan": "apply",
    "ARCHIVE_DIR": "archive", "archive_file": "archive", "read_archive": "archive",
    "DEFAULT_STRATEGIES": "config", "MIB": "config", "STRATEGIES": "config", "PruneConfig": "config",
    "Strategy": "config", "normalise_strategies": "config",
    "DocumentState": "plan", "PlannedAction": "plan", "PrunePlan": "plan", "build_plan": "plan",
    "UndoEntry": "undo", "UndoResult": "undo", "lean_payload": "undo", "present_entries": "undo",
    "undo_documents": "undo", "undo_entries": "undo",
    "ValueInputs": "value", "loom_value": "value", "loom_value_inputs": "value", "value_score": "value",
    "SpliceError": "aml.store.rewrite",
}
"""Where each public name lives: the package imports a submodule on first use of one of its names (PEP 562),
so the value score (``aml.prune.value``, which the index and health need) does not import apply, undo, plan..."""


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES, globals())


__all__ = [
    "ARCHIVE_DIR",
    "DEFAULT_STRATEGIES",
    "MIB",
    "STRATEGIES",
    "AppliedRecord",
    "ApplyResult",
    "DocumentState",
    "PlannedAction",
    "PruneConfig",
    "PrunePlan",
    "SpliceError",
    "Strategy",
    "UndoEntry",
    "UndoResult",
    "ValueInputs",
    "apply_plan",
    "archive_file",
    "build_plan",
    "lean_payload",
    "loom_value",
    "loom_value_inputs",
    "normalise_strategies",
    "present_entries",
    "read_archive",
    "undo_documents",
    "undo_entries",
    "value_score",
]
