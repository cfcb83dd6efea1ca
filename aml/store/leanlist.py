"""A whole-document JSON array located in two C passes: what prune and its undo need of a Loom collection.

:func:`aml.store.rewrite.find_list` parses every element of a list with the standard library to learn where
it is: about the cost of ``json.loads`` of the whole document. Of most elements prune and undo keep only their
offsets and their key (:func:`aml.store.rewrite.key_only`). For the commonest case, a document that is one
array (a Loom collection), msgspec gives both for a fraction of that (issue 12: about 8 ms against 26 ms for a
4.4 MB collection of 5,000 items): one pass decodes the array as ``msgspec.Raw`` elements (each the exact
bytes of one element, checked but not decoded), another decodes each element's ``id`` only, skipping (and
checking) the rest; the offsets then follow from the elements' lengths and the whitespace between them. Only
the elements the caller asks for are decoded whole.

:func:`find_top_list` returns ``None`` for whatever it cannot vouch for exactly as ``find_list`` would, and the
caller then uses ``find_list``, which reports what is wrong:

* text msgspec refuses: a byte order mark, ``NaN`` or ``Infinity``, a lone surrogate escape, a number beyond a
  double in a decoded element, nesting too deep, invalid JSON, a document that is not an array;
* an element that is not a JSON object (a Loom collection holds objects; ``find_list`` handles any value).

Whatever msgspec accepts here the standard library parses to the same values: msgspec checks the grammar of
the values it skips (numbers, escapes, control characters) as of those it decodes; it does not check the UTF-8
of skipped strings, which is why this takes the bytes of an already decoded text (valid UTF-8 by
construction).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any, Final, TypeVar

import msgspec

from aml.store.rewrite import ListSpan

__all__ = ["find_top_list"]

T = TypeVar("T")


class _Key(msgspec.Struct, gc=False):
    """An element's ``id`` (the last one when repeated, as ``json.loads`` keeps), every other member skipped."""

    id: Any = None


_RAW_ELEMENTS: Final = msgspec.json.Decoder(list[msgspec.Raw])
_KEYS: Final = msgspec.json.Decoder(list[_Key])
_VALUE: Final = msgspec.json.Decoder()
_WS: Final = re.compile(rb"[ \t\n\r]*")
"""JSON's whitespace (RFC 8259 section 2), as msgspec skips it between tokens."""


def _skip(data: bytes, at: int) -> int:
    """The offset of the first byte at or after ``at`` that is not whitespace."""
    found = _WS.match(data, at)
    return at if found is None else found.end()


def find_top_list(data: bytes, decode: Collection[int], measure: Callable[[Any], T]
                  ) -> tuple[ListSpan, dict[int, T]] | None:
    """Locate the elements of the array that is the whole document ``data``.

    Args:
        data: the document's decoded text encoded as UTF-8 (``text.encode("utf-8")``: valid UTF-8; a text that
            starts with a byte order mark gives ``None``).
        decode: indexes of the elements to decode whole; indexes past the end are ignored.
        measure: what to keep of each of those elements, called with its decoded value, which is then freed (a
            large document's planned elements are never all held as objects).

    Returns:
        ``(span, measured)``: the array's :class:`~aml.store.rewrite.ListSpan` with offsets in *characters* of the
        text (as :func:`aml.store.rewrite.find_list` gives them) and as ``items`` each element's key
        (``{"id": <id>}`` for a string ``id``, else ``None``: :func:`aml.store.rewrite.key_only`), and ``measure``
        of each element of ``decode`` by index; or ``None`` when the caller must use ``find_list`` (see the module
        docstring).
    """
    try:
        raws = _RAW_ELEMENTS.decode(data)
        keys = _KEYS.decode(data)
        measured = {i: measure(_VALUE.decode(raws[i])) for i in decode if 0 <= i < len(raws)}
    except (msgspec.DecodeError, RecursionError):  # ValidationError (not an array, not objects) is a DecodeError
        return None
    found = _offsets(data, raws)
    if found is None:
        return None
    opened, closed, starts, ends = found
    items = [{"id": k.id} if type(k.id) is str else None for k in keys]
    return ListSpan(opened, closed, starts, ends, items), measured


def _offsets(data: bytes, raws: list[msgspec.Raw]) -> tuple[int, int, list[int], list[int]] | None:
    """``(open, close, starts, ends)`` in characters of the array msgspec read from ``data`` as ``raws``, each
    element an object; ``None`` if the bytes do not agree (never seen: checked all the same)."""
    at = _skip(data, 0)  # the '[' (msgspec decoded an array: only whitespace comes before it)
    opened = at
    at = _skip(data, at + 1)
    starts: list[int] = []
    ends: list[int] = []
    ascii_only = data.isascii()
    shift = 0  # bytes beyond characters so far (multi-byte characters of the elements before)
    sep = b""  # the last separator seen between two elements: a writer's layout repeats it
    try:
        for raw in raws:
            size = len(raw)
            end = at + size
            if data[at] != 0x7B or data[end - 1] != 0x7D:  # '{' ... '}': the element msgspec read is here
                return None
            chars = size if ascii_only else len(str(raw, "utf-8"))
            starts.append(at - shift)
            ends.append(at - shift + chars)
            shift += size - chars
            if sep and data.startswith(sep, end) and data[end + len(sep)] == 0x7B:  # the same separator again
                at = end + len(sep)
                continue
            at = _skip(data, end)
            if data[at] == 0x2C:  # ','
                following = _skip(data, at + 1)
                sep, at = data[end:following], following
        if data[at] != 0x5D or _skip(data, at + 1) != len(data):  # ']', then only whitespace
            return None
    except IndexError:  # the text ended early
        return None
    return opened, at - shift, starts, ends
