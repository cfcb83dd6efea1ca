"""Turn parsed documents into :class:`~aml.store.records.Record` views.

Only live memory yields records: Loom collections and the archive, Aitor sessions, TinyTroupe
specs and caches. Copies (``loom_item_copy``: Loom's reset backups and backup folders), config,
monitoring and opaque files yield none. Field lookups go through :mod:`aml.store.accessors`; a Loom
field of the wrong JSON type reads as ``None`` and is listed in :attr:`Record.wrong_types`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from aml.store import accessors as acc
from aml.store.documents import Document
from aml.store.records import Record, RecordLocation, item_size, json_pointer, wrong_type_findings


def records_from_document(store: str, doc: Document) -> list[Record]:
    """All records of one document.

    Args:
        store: the store id to put in each record.
        doc: a document from :func:`aml.store.documents.read_document`.

    Returns:
        The records in document order; empty for failed documents and kinds without records.
    """
    if doc.error is not None or doc.data is None:
        return []
    extractor = _EXTRACTORS.get(doc.kind)
    return list(extractor(store, doc)) if extractor else []


def _flag(value: bool | None) -> float | None:
    return None if value is None else (1.0 if value else 0.0)


def _positional_id(doc: Document, pointer: str) -> str:
    return f"{doc.relpath}#{pointer}"


_LoomFields = tuple[str | None, float | None, float | None, int | None, datetime | None, datetime | None]
"""``(kind, success_rate, confidence, execution_count, created_at, last_used_at)`` of one Loom item."""


_pattern_fields: Callable[[Any], _LoomFields] = acc.pattern_fields


def _solution_fields(item: Any) -> _LoomFields:
    kind, worked, count, created = acc.solution_fields(item)
    return kind, _flag(worked), None, count, created, None


def _decision_fields(item: Any) -> _LoomFields:  # decisions, archived_decisions
    kind, repeat, reviewed, created = acc.decision_fields(item)
    return kind, _flag(repeat), None, None, created, reviewed


def _loom_agent(doc_agent: str | None, item: Any) -> str:
    """A Loom item's agent: its directory's, else (the global archive) the item's own ``agent``, else ``global``."""
    return doc_agent if doc_agent is not None else (acc.item_agent(item) or "global")


def _none(item: Any, collection: str) -> tuple[()]:
    """:func:`~aml.store.accessors.wrong_types` of an item of a document proven clean of them."""
    return ()


def _loom(store: str, doc: Document) -> Iterator[Record]:
    collection = doc.collection or "patterns"
    fields = (_pattern_fields if collection == "patterns"
              else _solution_fields if collection == "solutions" else _decision_fields)
    relpath, doc_agent = doc.relpath, doc.agent
    # Bound once: this loop runs once per Loom item of the store.
    item_id, is_active = acc.item_id, acc.is_active
    detect_item_version, wrong_types = acc.detect_item_version, _none if doc.types_clean else acc.wrong_types
    for index, item in enumerate(doc.data):
        pointer = f"/{index}"  # json_pointer(index): an int token needs no escaping
        kind, success, conf, count, created, last_used = fields(item)
        yield Record(
            store=store,
            agent=_loom_agent(doc_agent, item),
            collection=collection,
            id=item_id(item) or f"{relpath}#{pointer}",  # _positional_id
            kind=kind or collection,
            created_at=created,
            last_used_at=last_used,
            success_rate=success,
            confidence=conf,
            execution_count=count,
            importance=None,
            size_bytes=item_size(item),
            role=None,
            location=RecordLocation(relpath, pointer, index),
            active=is_active(item),
            version=detect_item_version(item),
            wrong_types=wrong_types(item, collection),
        )


def _aitor(store: str, doc: Document) -> Iterator[Record]:
    data: Mapping[str, Any] = doc.data
    agent = doc.agent or ""
    sections: list[tuple[str, str | tuple[str, str], list[Any]]] = [
        ("sessions.messages", "conversation_history", acc.session_messages(data)),
        ("sessions.tool_executions", "tool_executions", acc.session_tool_executions(data)),
        ("sessions.reasoning_steps", "reasoning_trace", acc.session_reasoning_steps(data)),
        ("sessions.todos", ("planning", "todos"), acc.session_todos(data)),
    ]
    for collection, key, entries in sections:
        tokens = key if isinstance(key, tuple) else (key,)
        for index, entry in enumerate(entries):
            pointer = json_pointer(*tokens, index)
            created, last_used = acc.entry_timestamp(entry), None
            kind: str | None
            role: str | None = None
            success: float | None = None
            rid: str | None = None
            if collection == "sessions.messages":
                kind, role = "message", acc.message_role(entry)
            elif collection == "sessions.tool_executions":
                kind, success = acc.tool_name(entry), _flag(acc.tool_succeeded(entry))
            elif collection == "sessions.reasoning_steps":
                kind = acc.step_type(entry)
            else:
                kind, rid = acc.todo_status(entry), acc.todo_id(entry)
                created, last_used = acc.todo_times(entry)
            yield Record(
                store=store,
                agent=agent,
                collection=collection,
                id=rid or _positional_id(doc, pointer),
                kind=kind or collection,
                created_at=created,
                last_used_at=last_used,
                success_rate=success,
                confidence=None,
                execution_count=None,
                importance=None,
                size_bytes=item_size(entry),
                role=role,
                location=RecordLocation(doc.relpath, pointer, index),
            )


def _tinytroupe_spec(store: str, doc: Document) -> Iterator[Record]:
    agent = doc.agent or ""
    sections = [
        ("episodic_memory", ("episodic_memory", "memory"), acc.episodic_memory(doc.data)),
        ("episodic_buffer", ("episodic_memory", "episodic_buffer"), acc.episodic_buffer(doc.data)),
        ("semantic_memory", ("semantic_memory", "memories"), acc.semantic_memories(doc.data)),
    ]
    for collection, tokens, entries in sections:
        for index, entry in enumerate(entries):
            pointer = json_pointer(*tokens, index)
            yield Record(
                store=store,
                agent=agent,
                collection=collection,
                id=_positional_id(doc, pointer),
                kind=acc.memory_item_type(entry) or collection,
                created_at=acc.memory_item_time(entry),
                last_used_at=None,
                success_rate=None,
                confidence=None,
                execution_count=None,
                importance=None,
                size_bytes=item_size(entry),
                role=acc.memory_item_role(entry),
                location=RecordLocation(doc.relpath, pointer, index),
            )


def _tinytroupe_cache(store: str, doc: Document) -> Iterator[Record]:
    for index, entry in enumerate(doc.data):
        pointer = json_pointer(index)
        agents = acc.cache_entry_agents(entry)
        agent = (acc.persona_name(agents[0]) if agents else None) or doc.agent or ""
        yield Record(
            store=store,
            agent=agent,
            collection="cache_entries",
            id=acc.cache_entry_hash(entry) or _positional_id(doc, pointer),
            kind=acc.cache_entry_function(entry) or "cache_entry",
            created_at=None,
            last_used_at=None,
            success_rate=None,
            confidence=None,
            execution_count=None,
            importance=None,
            size_bytes=item_size(entry),
            role=None,
            location=RecordLocation(doc.relpath, pointer, index),
        )


_EXTRACTORS: dict[str, Callable[[str, Document], Iterator[Record]]] = {
    "loom_collection": _loom,
    "loom_archive": _loom,
    "aitor_session": _aitor,
    "tinytroupe_spec": _tinytroupe_spec,
    "tinytroupe_cache": _tinytroupe_cache,
}


# --------------------------------------------------------------------------- tallies


@dataclass(slots=True)
class Tally:
    """What a scan keeps of records when it keeps no record views (``monitor health``).

    Attributes:
        counts: number of records per ``(agent, collection)``.
        sizes: bytes of those records per ``(agent, collection)`` (sum of :func:`item_size`).
        wrong_types: one finding per field of a wrong type
            (:func:`~aml.store.records.wrong_type_findings`), in document order.
        records: number of records in all.
    """

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    sizes: Counter[tuple[str, str]] = field(default_factory=Counter)
    wrong_types: list[dict[str, str]] = field(default_factory=list)
    records: int = 0

    def merge(self, other: Tally) -> None:
        """Count ``other``'s records in (a tally of the next documents, e.g. made by a worker process)."""
        self.counts.update(other.counts)
        self.sizes.update(other.sizes)
        self.wrong_types += other.wrong_types
        self.records += other.records

    def add_records(self, records: Iterable[Record]) -> int:
        """Count ``records`` in; returns how many there were."""
        n = 0
        for record in records:
            key = (record.agent, record.collection)
            self.counts[key] += 1
            self.sizes[key] += record.size_bytes
            if record.wrong_types:
                self.wrong_types += record.wrong_type_findings()
            n += 1
        self.records += n
        return n

    def add_document(self, store: str, doc: Document) -> int:
        """Count in the records of ``doc`` as :func:`records_from_document` would see them, without building
        their views where it can (a Loom collection or the archive: the agent, size and wrong types of each
        item are all a record view of it feeds a tally); returns the document's number of records."""
        if _EXTRACTORS.get(doc.kind) is not _loom or doc.error is not None or doc.data is None:
            return self.add_records(records_from_document(store, doc))
        collection = doc.collection or "patterns"
        relpath, doc_agent, items = doc.relpath, doc.agent, doc.data
        counts, sizes = self.counts, self.sizes
        whole_list = doc_agent is not None and type(items) is list  # one agent, items already decoded
        all_objects = True
        if whole_list and doc.types_clean:
            n = len(items)  # objects with fields of the right types: nothing to look at one by one
        else:
            wrong_types = _none if doc.types_clean else acc.wrong_types
            n = 0
            for index, item in enumerate(items):
                n += 1
                if type(item) is not dict:
                    all_objects = False
                found = wrong_types(item, collection)
                if found:
                    pointer = f"/{index}"
                    self.wrong_types += wrong_type_findings(relpath, acc.item_id(item) or f"{relpath}#{pointer}",
                                                            pointer, found)
                if not whole_list:
                    key = (_loom_agent(doc_agent, item), collection)
                    counts[key] += 1
                    sizes[key] += item_size(item)
        if whole_list and n and doc_agent is not None:
            counts[doc_agent, collection] += n
            sizes[doc_agent, collection] += _items_size(items) if all_objects else sum(map(item_size, items))
        self.records += n
        return n


_ENCODE = msgspec.json.Encoder().encode


def _items_size(items: list[Any]) -> int:
    """``sum(item_size(item) for item in items)`` for a non-empty list of ``dict`` items, from one encoding of the
    whole list (``[``, the items joined by ``,``, ``]``: the items' bytes plus ``len(items) + 1``)."""
    try:
        return len(_ENCODE(items)) - len(items) - 1
    except (TypeError, RecursionError, UnicodeEncodeError):  # what item_size measures another way
        return sum(item_size(item) for item in items)
