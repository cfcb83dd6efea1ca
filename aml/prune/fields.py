"""What prune's rules read of a Loom item, apart from any threshold: made where a plan reads a document, or
stored by the record index (``documents.prune_fields``) so a plan can skip reading an unchanged document.

:func:`rule_fields` reads them from an item. The index keeps, for each agent's live Loom collection, one
MessagePack array with an :class:`IndexedItem` per item, in item order (written by :class:`ItemPacker` item by
item, the bytes :func:`encode_document` gives for the whole list; read by :func:`decode_document`): its
:class:`RuleFields`, the value score's ``B`` and recency instant, its wrong-type fields and its size. One
function reads an item for both ways, so a plan made from the index is the plan made from the document
(tests/test_prune_indexed.py). Instants are MessagePack timestamps (exact to the
nanosecond), so they come back equal.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Any, Final

import msgspec

from aml.prune.value import ValueInputs, base_score, loom_value_inputs, outcome_metric_average, pattern_inputs
from aml.store import accessors as acc

Instant = Annotated[datetime, msgspec.Meta(tz=True)]
"""An aware instant (one read back without a time zone is refused: a damaged index)."""

FIELDS_VERSION: Final = "1"
"""The version of what :func:`indexed_item` computes, kept in the index's ``meta.prune_fields``: raise it with any
change to the rule fields, the value inputs or the wrong-type rule, so that an index made by older code is
never taken as the current plan's view (it is rebuilt instead)."""

LOOM_LIVE: Final = frozenset({"patterns", "solutions", "decisions"})
"""The live Loom collections prune plans (``global/archived-decisions.json`` is already an archive)."""

class RuleFields(msgspec.Struct, array_like=True, gc=False):
    """What the rules read of one Loom item; no threshold applied.

    Attributes:
        record_id, kind: the item's id and type as stored (``None`` when missing: the plan falls back to its
            position and collection).
        created, last_used: :attr:`aml.prune.strategies.Candidate.created` and ``last_used`` (aware UTC).
        success, confidence, executions, worked: as stored (``None`` when missing).
        repeat_false: a decision with an outcome whose ``wouldRepeat`` is ``false``.
        outcome_average: a decision's outcome metric average (:func:`aml.prune.value.outcome_metric_average`).
    """

    record_id: str | None
    kind: str | None
    created: Instant | None
    last_used: Instant | None
    success: float | None
    confidence: float | None
    executions: int | None
    worked: bool | None
    repeat_false: bool
    outcome_average: float | None


class IndexedItem(msgspec.Struct, array_like=True, gc=False):
    """One item of a live Loom collection as the record index keeps it for prune plans.

    Attributes:
        rule: its :class:`RuleFields`.
        base: the value score's ``B`` (:func:`aml.prune.value.base_score`), unrounded.
        value_last_used: the instant the value's recency term is measured from (``ValueInputs.last_used``).
        wrong_types: dotted paths of its fields of the wrong JSON type.
        size_bytes: the item as compact JSON (:func:`aml.store.records.item_size`), bytes.
    """

    rule: RuleFields
    base: float
    value_last_used: Instant | None
    wrong_types: tuple[str, ...]
    size_bytes: int


def rule_fields(collection: str, item: Any, *, clean: bool) -> RuleFields:
    """Read what the rules need of a pattern, solution or decision, in one pass per item
    (:func:`aml.store.accessors.pattern_rule_fields` and its kin).

    Args:
        collection: ``patterns``, ``solutions`` or ``decisions``.
        item: the item as stored.
        clean: its document is proven free of wrong types (``Document.types_clean``).

    Returns:
        The :class:`RuleFields`. A pattern's last use falls back to its creation instant, unless its
        last-use field is unreadable (unknown, not "never used").
    """
    success = confidence = worked = average = None
    executions = None
    repeat_false = False
    if collection == "patterns":
        # the rules read the fields as stored (a missing one never matches); the value uses defaults
        record_id, kind, created, last_used, success, confidence, executions = acc.pattern_rule_fields(item)
        # a clean document has no unreadable last use: each last-use field it holds reads as ISO 8601 text
        last_used = None if not clean and acc.last_used_unreadable(item) else (last_used or created)
    elif collection == "solutions":
        record_id, kind, created, worked = acc.solution_rule_fields(item)
        last_used = created
    else:
        record_id, kind, created, outcome, repeat = acc.decision_rule_fields(item)
        last_used = created
        if outcome:
            average = outcome_metric_average(item)
            repeat_false = repeat is False
    return RuleFields(record_id, kind, created, last_used, success, confidence, executions, worked, repeat_false,
                      average)


def value_inputs(collection: str, item: Any, success: float | None, confidence: float | None,
                 executions: int | None, last_used: datetime | None) -> ValueInputs:
    """The value score's inputs of an item: a pattern's from the rules' ``success``, ``confidence``,
    ``executions`` and ``last_used`` (:class:`RuleFields`), its time saved and Loom's defaults; others' from
    :func:`aml.prune.value.loom_value_inputs`.

    Args:
        collection: ``patterns``, ``solutions`` or ``decisions``.
        item: the item as stored.
        success, confidence, executions, last_used: its :class:`RuleFields` (ratios 0-1, a count, aware UTC).

    Returns:
        The :class:`aml.prune.value.ValueInputs` (their formula and sources: :func:`aml.prune.value.value_score`).
    """
    if collection == "patterns":
        return pattern_inputs(success, confidence, executions, acc.avg_time_saved_ms(item), last_used)
    return loom_value_inputs(collection, item)


def indexed_item(collection: str, item: Any, *, clean: bool, wrong_types: tuple[str, ...],
                 size_bytes: int) -> IndexedItem:
    """The :class:`IndexedItem` of one item of a live Loom collection.

    Args:
        collection: ``patterns``, ``solutions`` or ``decisions``.
        item: the item.
        clean: as for :func:`rule_fields`.
        wrong_types: the record's wrong-type fields (:attr:`aml.store.Record.wrong_types` paths).
        size_bytes: the record's size (:attr:`aml.store.Record.size_bytes`).
    """
    f = rule_fields(collection, item, clean=clean)
    inputs = value_inputs(collection, item, f.success, f.confidence, f.executions, f.last_used)
    return IndexedItem(f, base_score(inputs), inputs.last_used, wrong_types, size_bytes)


def encode_document(items: list[IndexedItem]) -> bytes | None:
    """The bytes ``documents.prune_fields`` holds for a live Loom collection's items (in item order), or ``None``
    when a field does not fit MessagePack (an integer beyond 64 bits): a plan then reads that document."""
    try:
        return _ENCODER.encode(items)
    except (OverflowError, TypeError, ValueError, msgspec.EncodeError):  # ValueError: a lone surrogate
        return None


class ItemPacker:
    """A live Loom collection's items encoded one by one as they come, in item order: what
    :func:`encode_document` makes of them all, with only their bytes held (a 200 MB document's entries would
    otherwise be some hundred MB of objects at the peak of its index build).

    Use :meth:`add` for each item, then :meth:`encode`.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._failed = False

    def add(self, item: IndexedItem) -> None:
        """Encode one more item (after one that does not fit MessagePack, nothing is kept)."""
        if self._failed:
            return
        try:
            self._parts.append(_ENCODER.encode(item))
        except (OverflowError, TypeError, ValueError, msgspec.EncodeError):  # as encode_document
            self._failed = True
            self._parts.clear()

    def encode(self) -> bytes | None:
        """:func:`encode_document` of the items added (the same bytes), or ``None`` when one does not fit."""
        if self._failed:
            return None
        count = len(self._parts)
        # the MessagePack array header, in its shortest form (as msgspec writes it): fixarray, array 16, array 32
        if count < 16:
            header = bytes((0x90 | count,))
        elif count < 1 << 16:
            header = b"\xdc" + count.to_bytes(2, "big")
        else:
            header = b"\xdd" + count.to_bytes(4, "big")
        return header + b"".join(self._parts)


def digest(data: bytes) -> str:
    """The checksum the index keeps beside :func:`encode_document`'s bytes (BLAKE2b, 128 bits, hex): a damaged
    blob that still decodes is refused, not taken as the document's view."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def decode_document(data: bytes, checksum: str) -> list[IndexedItem]:
    """:func:`encode_document`'s bytes read back.

    Args:
        data: the bytes.
        checksum: their :func:`digest`, as stored.

    Raises:
        ValueError: the bytes do not match their checksum or are not such an array (a damaged index).
    """
    if digest(data) != checksum:
        raise ValueError("prune fields do not match their checksum")
    try:
        return _DECODER.decode(data)
    except (msgspec.DecodeError, ValueError, TypeError) as exc:
        raise ValueError(f"prune fields do not read: {exc}") from exc


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(list[IndexedItem])
