"""A value's encoding told from its first bytes, never by decoding or loading the value.

Pickle values (``\\x80`` then a protocol number 2-5, Python's ``pickle`` opcode PROTO) are recognised
and counted, never unpickled: loading a pickle runs code chosen by whoever wrote it.
"""

from __future__ import annotations

import enum
import re

HEAD_BYTES = 16
"""How many leading bytes of a value the tracer reads to sniff it."""


class ValueEncoding(enum.StrEnum):
    """What a value's first bytes say it is."""

    JSON = "json"
    PICKLE = "pickle"
    TEXT = "raw_text"
    COMPRESSED = "compressed"
    BINARY = "binary"
    EMPTY = "empty"
    UNKNOWN = "unknown"
    """Not a string value, or not sniffed (``--no-sniff``)."""


_COMPRESSED = (b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"\x04\x22\x4d\x18", b"BZh", b"\xfd7zXZ")
"""gzip (RFC 1952), zstd (RFC 8878), LZ4 frame, bzip2 and xz magic numbers."""

_JSON_START = frozenset(b'{["-0123456789tfn')
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]").search
_CACHE: dict[bytes, ValueEncoding] = {}
_CACHE_SIZE = 65_536
"""Heads already classified (values of one kind often start alike: ``{"role": "user"``)."""


def sniff(head: bytes, length: int | None = None) -> ValueEncoding:
    """Classify a value by its first bytes.

    Args:
        head: the value's first bytes (up to :data:`HEAD_BYTES`; more are ignored).
        length: the value's whole length in bytes, when known (a zero-length value is ``EMPTY``).

    Returns:
        ``PICKLE`` for ``\\x80`` + protocol 2-5; ``COMPRESSED`` for a gzip/zstd/LZ4/bzip2/xz magic number;
        ``JSON`` when the first non-blank byte can start a JSON value and the head is UTF-8 text
        (``"`` strings, objects, arrays, numbers, true/false/null); ``TEXT`` for other UTF-8 text;
        ``BINARY`` otherwise. A sniff, not a parse: ``JSON`` means "looks like JSON".
    """
    head = head[:HEAD_BYTES]
    if not head:
        return ValueEncoding.EMPTY if not length else ValueEncoding.UNKNOWN
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:  # before the cache: pickles differ at once
        return ValueEncoding.PICKLE
    known = _CACHE.get(head)
    if known is None:
        known = _classify(head)
        if len(_CACHE) < _CACHE_SIZE:
            _CACHE[head] = known
    return known


def _classify(head: bytes) -> ValueEncoding:
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return ValueEncoding.PICKLE
    if head.startswith(_COMPRESSED):
        return ValueEncoding.COMPRESSED
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a multi-byte character cut by the head's end is still text
        if exc.start < len(head) - 3 or exc.reason != "unexpected end of data":
            return ValueEncoding.BINARY
        text = head[:exc.start].decode("utf-8")
    if _CONTROL(head):
        return ValueEncoding.BINARY
    stripped = text.lstrip(" \t\n\r")
    if stripped and ord(stripped[0]) in _JSON_START and _plausible_json(stripped):
        return ValueEncoding.JSON
    return ValueEncoding.TEXT


def _plausible_json(text: str) -> bool:
    first, rest = text[0], text[1:].lstrip(" \t\n\r")
    if first == '"':
        return True
    if first == "{":
        return not rest or rest[0] in '"}'
    if first == "[":
        return not rest or ord(rest[0]) in _JSON_START or rest[0] == "]"
    if first in "-0123456789":
        return all(c in "0123456789+-.eE \t\r\n" for c in text)
    return text.startswith(("true", "false", "null")) or text in ("t", "tr", "tru", "f", "fa", "fal", "fals",
                                                                  "n", "nu", "nul")
