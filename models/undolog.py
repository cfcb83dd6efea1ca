"""The encoding of a prune undo log (:class:`models.tables.PruneUndoLog`): many undo payloads in one value.

A prune run used to store each removed record's undo payload as its own JSON value
(``prune_actions.record``): about 1.2 KB per Loom record, 33 MB for a run of 27,000 records, which SQLite
writes (and undo reads, and marking the rows undone rewrites) row by row. A log holds one document's payloads
(a batch of them) together:

``msgpack+zstd``
    the list of payloads as one MessagePack array (msgspec), in one zstd frame (level :data:`ZSTD_LEVEL`)
    that records its decoded size and a checksum of its content (XXH64, 4 bytes), so that damage is found
    rather than decoded into other payloads. 33.6 MB of JSON payloads from a 75,000-record sample store are
    2.5 MB, encoded in about 0.05 s.
``json+zstd``
    the same list as JSON text (UTF-8) in one zstd frame. Used for a batch MessagePack cannot hold: a string
    with a lone surrogate (a record id written ``"\\udcff"`` in its JSON), which JSON escapes.

A payload is a JSON object (``dict``) of strings, integers, ``None``, lists and objects, as
:mod:`aml.prune.undo` describes; both codecs give back equal values.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

import msgspec
import zstandard

MSGPACK_ZSTD: Final = "msgpack+zstd"
"""Codec of a log written by MessagePack (the usual one)."""

JSON_ZSTD: Final = "json+zstd"
"""Codec of a log whose payloads MessagePack cannot hold (a string with a lone surrogate)."""

CODECS: Final = (MSGPACK_ZSTD, JSON_ZSTD)

ZSTD_LEVEL: Final = 3
"""zstd's own default level. Level 1 was no smaller nor measurably faster on Loom payloads (2.5 MB either way)."""

MAX_DECODED_BYTES: Final = 1 << 32
"""A frame whose header says it decodes to more than this (4 GiB, far beyond a batch of
:data:`models.queries.UNDO_LOG_BYTES` of payloads) is refused as damaged, not allocated: zstandard allocates the size
a frame header gives."""

_encoder = msgspec.msgpack.Encoder()


class UndoLogError(ValueError):
    """An undo log that cannot be decoded: unknown codec, damaged frame, or not a list of payloads."""


def encode_payloads(payloads: Sequence[dict[str, Any]]) -> tuple[str, bytes]:
    """Encode a batch of undo payloads as one log value.

    Args:
        payloads: the payloads, in the order of their ``undo_index`` (0, 1, ...).

    Returns:
        ``(codec, value)``: one of :data:`CODECS` and the bytes to store in ``prune_undo_logs.payloads``.

    Raises:
        TypeError: a payload holds a value neither codec encodes (e.g. a ``set``).
    """
    try:
        codec, raw = MSGPACK_ZSTD, _encoder.encode(list(payloads))
    except UnicodeEncodeError:  # a lone surrogate: JSON writes it as an escape
        codec, raw = JSON_ZSTD, json.dumps(list(payloads), separators=(",", ":")).encode("ascii")
    return codec, zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True,
                                           write_content_size=True).compress(raw)


def decode_payloads(codec: str, value: bytes) -> list[dict[str, Any]]:
    """Decode a log value written by :func:`encode_payloads`.

    Args:
        codec: the log's ``codec`` column.
        value: its ``payloads`` column.

    Returns:
        The payloads, index ``undo_index`` for each action row of the log.

    Raises:
        UndoLogError: an unknown codec, a damaged zstd frame (its checksum, its header's size) or encoding, or a
            value that is not a list of JSON objects.
    """
    if codec not in CODECS:
        raise UndoLogError(f"unknown undo log codec {codec!r} (this aml reads {', '.join(CODECS)})")
    value = bytes(value)
    try:
        size = zstandard.frame_content_size(value)
        if not 0 <= size <= MAX_DECODED_BYTES:  # -1: a frame without its size, which aml never writes
            raise UndoLogError(f"undo log ({codec}) does not decode: its frame header gives a decoded size of {size}")
        raw = zstandard.ZstdDecompressor().decompress(value, max_output_size=MAX_DECODED_BYTES)
        decoded = msgspec.msgpack.decode(raw) if codec == MSGPACK_ZSTD else json.loads(raw)
    except (zstandard.ZstdError, msgspec.DecodeError, ValueError, MemoryError) as exc:
        if isinstance(exc, UndoLogError):
            raise
        raise UndoLogError(f"undo log ({codec}) does not decode: {exc!r}") from exc
    if not isinstance(decoded, list) or not all(isinstance(p, dict) for p in decoded):
        raise UndoLogError(f"undo log ({codec}) is not a list of payload objects")
    return decoded
