"""The encoding of prune undo logs (models.undolog): round trips, the JSON fallback, damage refused."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from models.undolog import JSON_ZSTD, MSGPACK_ZSTD, UndoLogError, decode_payloads, encode_payloads

# what a payload holds: JSON values (integers within 64 bits, as MessagePack's), strings with any code point
# (lone surrogates included: an id written "\udcff" in its document)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(st.characters(codec=None))
    | st.sampled_from(["\udcff", "p\ud800q"]),  # lone surrogates, often
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10)
payloads = st.lists(st.dictionaries(st.text(max_size=8), values, max_size=6), max_size=8)


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


@settings(max_examples=150, deadline=None)
@given(payloads)
def test_round_trip(batch: list[dict[str, Any]]) -> None:
    codec, value = encode_payloads(batch)
    assert codec == (JSON_ZSTD if _has_surrogate(batch) else MSGPACK_ZSTD)
    assert decode_payloads(codec, value) == batch


def test_a_loom_payload_is_msgpack_in_one_zstd_frame() -> None:
    batch = [{"v": 2, "item": {"id": f"p{i}"}, "text": f'{{"id": "p{i}", "confidence": 0.5}}', "index": i,
              "prev": None, "next": {"id": "q"}, "layout": None, "archive": None, "list": ""} for i in range(100)]
    codec, value = encode_payloads(batch)
    assert codec == MSGPACK_ZSTD
    assert msgspec.msgpack.decode(zstandard.ZstdDecompressor().decompress(value)) == batch
    assert len(value) < len(msgspec.json.encode(batch)) / 5


def test_a_value_neither_codec_holds_raises_type_error() -> None:
    with pytest.raises(TypeError):
        encode_payloads([{"x": object()}])


@settings(max_examples=300, deadline=None)
@given(bit=st.integers(0, 8 * 4096 - 1))
def test_any_flipped_bit_is_refused(bit: int) -> None:
    """A single flipped bit anywhere in a log never decodes into other payloads: the frame's checksum (or its header
    checks) refuse it, or the bit was one zstd does not read (the same payloads come out)."""
    batch = [{"text": f'{{"id": "p{i}", "n": {i}}}', "index": i} for i in range(40)]
    _, value = encode_payloads(batch)
    bit %= 8 * len(value)
    damaged = bytearray(value)
    damaged[bit // 8] ^= 1 << (bit % 8)
    try:
        decoded = decode_payloads(MSGPACK_ZSTD, bytes(damaged))
    except UndoLogError:
        return
    assert decoded == batch


@pytest.mark.parametrize(("codec", "damage", "match"), [
    ("zip", lambda v: v, "unknown undo log codec 'zip'"),
    (MSGPACK_ZSTD, lambda v: v[: len(v) // 2], "does not decode"),
    (MSGPACK_ZSTD, lambda v: v[:-6] + bytes(b ^ 0xFF for b in v[-6:]), "does not decode"),
    (MSGPACK_ZSTD, lambda v: b"not zstd at all", "does not decode"),
    (MSGPACK_ZSTD, lambda v: v[:4] + bytes([v[4] ^ 0x80]) + v[5:], "does not decode"),  # the header's size field
    (MSGPACK_ZSTD, lambda v: zstandard.ZstdCompressor(write_content_size=False).compress(b"\x90"), "decoded size"),
    (JSON_ZSTD, lambda v: v, "does not decode"),  # MessagePack read as JSON
    (MSGPACK_ZSTD, lambda v: zstandard.ZstdCompressor().compress(msgspec.msgpack.encode({"a": 1})),
     "not a list of payload objects"),
    (MSGPACK_ZSTD, lambda v: zstandard.ZstdCompressor().compress(msgspec.msgpack.encode([1, 2])),
     "not a list of payload objects"),
])
def test_damage_is_refused_with_a_reason(codec: str, damage: Any, match: str) -> None:
    _, value = encode_payloads([{"text": "x" * 200, "index": i} for i in range(20)])
    with pytest.raises(UndoLogError, match=match):
        decode_payloads(codec, damage(value))
