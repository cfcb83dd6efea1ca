"""Record views: one uniform, read-only view of every memory item, whatever its origin format.

Policies (prune, trace, health) work on :class:`Record` values; writers use :attr:`Record.location`
to find and edit the original item in its document, keeping every field aml does not know.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import msgspec

COLLECTIONS: Final = {
    "patterns": "Loom <agent>/patterns.json items",
    "solutions": "Loom <agent>/solutions.json items",
    "decisions": "Loom <agent>/decisions.json items",
    "archived_decisions": "Loom global/archived-decisions.json items (agent = the item's agent)",
    "sessions.messages": "Aitor session conversation_history entries",
    "sessions.tool_executions": "Aitor session tool_executions entries",
    "sessions.reasoning_steps": "Aitor session reasoning_trace entries",
    "sessions.todos": "Aitor planning.todos entries (PlanningReactAgent exports)",
    "episodic_memory": "TinyTroupe committed episodic memory items (episodic_memory.memory)",
    "episodic_buffer": "TinyTroupe uncommitted current-episode items (episodic_memory.episodic_buffer)",
    "semantic_memory": "TinyTroupe semantic_memory.memories items",
    "cache_entries": "TinyTroupe simulation cache entries ([hash, call, output, state])",
}
"""Every collection name a :class:`Record` can carry, with what it holds."""


def json_pointer(*tokens: str | int) -> str:
    """Build an RFC 6901 JSON pointer, e.g. ``json_pointer("conversation_history", 3)`` ->
    ``"/conversation_history/3"``; ``json_pointer()`` is ``""`` (the whole document)."""
    return "".join("/" + str(t).replace("~", "~0").replace("/", "~1") for t in tokens)


_COMPACT: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
"""How :func:`item_size` measures a value that is not a JSON ``dict``/``list`` tree: ``json.dumps(value,
ensure_ascii=False, separators=(",", ":"), default=str)``, without building an encoder per call."""

_MSGSPEC_ENCODE: Final = msgspec.json.Encoder().encode
"""msgspec's JSON encoder: compact, UTF-8, non-ASCII kept as is; about 4.5 times as fast as the ``json``
module's C encoder on Loom items (75,000 items: 0.085 s against 0.38 s)."""


def item_size(item: Any) -> int:
    """Size in bytes of ``item`` serialised as compact UTF-8 JSON: a format-independent measure of
    what a record costs, whatever indentation or escapes its document uses.

    A ``dict`` or ``list`` (what a parsed document holds) is measured as msgspec encodes it: the bytes of
    ``json.dumps(item, ensure_ascii=False, separators=(",", ":"))`` except for floats, written as msgspec
    writes them: the same shortest round-trip digits, its own choice of notation (``1e300``, ``1.5e16``,
    ``0.00006103515625`` where ``json`` writes ``1e+300``, ``1.5e+16``, ``6.103515625e-05``), and non-finite
    floats as ``null`` (JSON has no NaN).
    Other Python types inside the tree are measured as msgspec writes them (a ``datetime`` as RFC 3339
    text); anything else (a scalar, a tree holding an object msgspec does not encode, a cycle) is measured
    as ``json.dumps(..., default=str)`` writes it.

    A lone surrogate in a string (it has no UTF-8 form; ``json.loads`` reads a ``"\\ud800"`` escape as one)
    counts as that six-character escape.

    Raises:
        ValueError: a reference cycle (``json``'s check names it).
        RecursionError: nesting deeper than the interpreter's recursion limit.
    """
    kind = type(item)
    if kind is dict or kind is list:
        try:
            return len(_MSGSPEC_ENCODE(item))
        except (TypeError, RecursionError, UnicodeEncodeError):  # an object msgspec does not encode, a cycle,
            pass  # deep nesting, a lone surrogate: json with default=str, whose checks say which
    text = _COMPACT.encode(item)
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate (json.loads reads a "\ud800" escape as one): as that escape
        return len(text.encode("utf-8", "backslashreplace"))


@dataclass(frozen=True, slots=True)
class RecordLocation:
    """Where a record lives.

    Attributes:
        document: the document's path relative to the store root, POSIX separators.
        pointer: RFC 6901 JSON pointer to the item inside the decoded JSON document, e.g. ``"/12"``
            (Loom collection) or ``"/conversation_history/3"`` (Aitor).
        index: the item's index in the list that contains it.
    """

    document: str
    pointer: str
    index: int

    @property
    def path(self) -> str:
        """Alias of :attr:`document`: the document's store-relative POSIX path."""
        return self.document


@dataclass(frozen=True, slots=True)
class WrongType:
    """A field whose JSON type (or form) is not what its writer puts there: reported, never interpreted.

    The record's view gets ``None`` for the field, and no destructive operation removes or rewrites
    the record because of it (DESIGN.md; issue 12, part 4).

    Attributes:
        field: the field as a dotted path inside the item, e.g. ``"evolution.lastUsed"``.
        found: the JSON type found (``"integer"``, ``"number"``, ``"string"``, ``"boolean"``,
            ``"null"``, ``"array"``, ``"object"``); for a string where a timestamp belongs,
            ``"string (epoch number)"`` or ``"string (not a timestamp)"``.
        expected: what the writer puts there, e.g. ``"string (ISO 8601 timestamp)"``, ``"number"``.
    """

    field: str
    found: str
    expected: str

    def to_dict(self) -> dict[str, str]:
        """``{"field", "found", "expected"}``."""
        return {"field": self.field, "found": self.found, "expected": self.expected}


@dataclass(frozen=True, slots=True)
class Record:
    """A read-only view of one memory item.

    Fields a format does not have are ``None``. Times are aware UTC.

    Attributes:
        store: store id (normalised absolute path for file stores).
        agent: owning agent (Loom: the agent directory; archived decisions: the item's ``agent``;
            Aitor: ``agent_name``; TinyTroupe: the persona name).
        collection: one of :data:`COLLECTIONS`.
        id: the item's own id (Loom ``id``, Aitor todo ``id``, cache entry hash); for items
            without one (session entries, episodic items, Loom items missing ``id``), a positional
            id ``"<document relpath>#<pointer>"`` that is unique in the store but shifts when
            earlier items are removed.
        kind: the item's own type label: Loom ``pattern.type``, ``problem.errorType``,
            ``decision.type``; Aitor ``"message"``, the tool name, the ``step_type`` or the todo
            ``status``; TinyTroupe ``stimulus``/``action``; cache: the called function. Falls back
            to the collection name.
        created_at: creation time (Loom: ``evolution.created``/``lifecycle.created_at`` else
            ``timestamp``; sessions: entry ``timestamp``; TinyTroupe: ``simulation_timestamp``).
        last_used_at: last use, only where the writer records one (Loom patterns'
            ``evolution.lastUsed``/``lifecycle.last_used_at``; decisions' ``reviewedAt``; todos'
            ``updated_at``), else ``None``.
        success_rate: 0-1. Patterns: ``successRate``/``success_rate``. Solutions:
            ``effectiveness.worked`` as 1.0/0.0. Decisions: ``outcome.wouldRepeat`` as 1.0/0.0
            (``None`` without outcome). Tool executions: ``result.success`` as 1.0/0.0.
        confidence: 0-1, Loom patterns only (``confidenceScore``/``confidence``).
        execution_count: patterns: ``executionCount``; solutions: ``verifiedCount``.
        importance: 0-1 where the writer stores one (no file format in real data does).
        size_bytes: the item as compact UTF-8 JSON (see :func:`item_size`), in bytes.
        role: message/episodic role (``user``, ``assistant``, ``system``), else ``None``.
        location: where the item lives (:class:`RecordLocation`).
        active: ``False`` for deactivated Loom items (``active: false``), else ``True``.
        version: Loom item schema version (``detect_item_version``), ``None`` for other formats.
        wrong_types: fields of the item whose JSON type is not what the writer puts there
            (:class:`WrongType`, Loom items only); each such field reads as ``None`` above.
    """

    store: str
    agent: str
    collection: str
    id: str
    kind: str
    created_at: datetime | None
    last_used_at: datetime | None
    success_rate: float | None
    confidence: float | None
    execution_count: int | None
    importance: float | None
    size_bytes: int
    role: str | None
    location: RecordLocation
    active: bool = True
    version: str | None = None
    wrong_types: tuple[WrongType, ...] = ()

    def wrong_type_findings(self) -> list[dict[str, str]]:
        """``{"file", "record_id", "pointer", "field", "found", "expected"}`` per :attr:`wrong_types`."""
        return wrong_type_findings(self.location.document, self.id, self.location.pointer, self.wrong_types)


def wrong_type_findings(document: str, record_id: str, pointer: str,
                        wrong_types: tuple[WrongType, ...]) -> list[dict[str, str]]:
    """``{"file", "record_id", "pointer", "field", "found", "expected"}`` per wrong type of one record (what health
    reports as ``wrong_type``), ``file`` being the document's store-relative path."""
    return [{"file": document, "record_id": record_id, "pointer": pointer, **w.to_dict()} for w in wrong_types]
