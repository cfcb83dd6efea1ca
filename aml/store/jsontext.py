"""JSON text to values and back, fast (msgspec, in C), with the standard library's answer where only it has one.

One place for what aml's readers and writers of JSON text share: the catalog's JSON columns
(:mod:`models.engine`), prune's write-ahead payloads (:mod:`aml.prune.apply`) and its archive. Documents of a
store are read by :func:`aml.store.documents.load_json`, which adds byte offsets and error codes.
"""

from __future__ import annotations

import json
from typing import Any, Final

import msgspec

_DECODE: Final = msgspec.json.Decoder().decode
_ENCODE: Final = msgspec.json.Encoder().encode
_CHECK: Final = msgspec.json.Decoder(msgspec.Raw).decode


def loads(text: str | bytes) -> Any:
    """The value of JSON ``text``, exactly as ``json.loads`` reads it.

    msgspec reads strict JSON into the same values as ``json.loads`` (tests/test_store_load_json.py compares the
    two); what it refuses (``NaN``, ``Infinity``, numbers beyond a double, lone surrogate escapes, invalid JSON)
    goes to ``json.loads``, whose value or error is the answer.

    Raises:
        json.JSONDecodeError: ``text`` is not JSON (``json.loads``'s error).
    """
    try:
        return _DECODE(text)
    except (msgspec.DecodeError, RecursionError, UnicodeEncodeError):  # a str with a lone surrogate: no UTF-8
        return json.loads(text)


def is_strict_json(text: str) -> bool:
    """Whether ``text`` is one JSON value in msgspec's strict grammar (whitespace around it allowed), checked without
    making its values (msgspec's ``Raw``: about a third of the time of decoding a record's text; undo checks every
    record it puts back). ``True`` means ``json.loads`` reads it too (msgspec's grammar is a subset of what it
    accepts: see :func:`loads`), and so do aml's readers, which try msgspec first and, for a number beyond a double
    (which msgspec's grammar allows but its decoding refuses), ``json.loads``; both refuse the same depth of nesting
    (Python's recursion limit). ``False`` means only "not strict JSON": ``NaN`` or a lone surrogate escape may still
    be Python JSON, which the caller decides."""
    try:
        _CHECK(text)
    except (msgspec.DecodeError, RecursionError, UnicodeEncodeError):  # a str with a lone surrogate: no UTF-8
        return False
    return True


def dumps_compact(value: Any) -> str:
    """``value`` as compact JSON text (no spaces), non-ASCII kept as is, encoded by msgspec: floats in its shortest
    notation, non-finite floats as ``null`` (JSON has no ``NaN``), a ``datetime`` as RFC 3339 text. A value holding a
    string with a lone surrogate (no UTF-8 form) is written whole by ``json.dumps`` instead, as before: the
    surrogate and all non-ASCII escaped, a non-finite float as ``NaN``/``Infinity``; so is a type msgspec does not
    encode, for which ``json.dumps`` raises.

    Raises:
        TypeError: ``value`` holds something JSON cannot represent.
    """
    try:
        return _ENCODE(value).decode("utf-8")
    except (UnicodeEncodeError, TypeError):
        return json.dumps(value, separators=(",", ":"))
