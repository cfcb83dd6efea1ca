"""codec: content sniffing and round trips for plain, gzip and zstd."""

from __future__ import annotations

import gzip

import pytest
import zstandard
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from aml.store.codec import ENCODINGS, CodecError, decode, encode, sniff


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=4096), encoding=st.sampled_from(ENCODINGS))
def test_round_trip(data: bytes, encoding: str) -> None:
    # Plain bytes that begin with a compression magic are ambiguous by construction (content is
    # sniffed, not named); JSON never begins that way. That case is tested below.
    assume(encoding != "plain" or sniff(data) == "plain")
    encoded = encode(data, encoding)  # type: ignore[arg-type]
    decoded, sniffed = decode(encoded)
    assert decoded == data
    if encoding != "plain":
        assert sniffed == encoding
    else:
        assert sniffed == "plain" and encoded == data


def test_plain_bytes_with_gzip_magic_are_reported_not_misread() -> None:
    with pytest.raises(CodecError):
        decode(b"\x1f\x8b")


def test_sniff_magic_not_names() -> None:
    assert sniff(b"\x1f\x8b\x08\x00") == "gzip"
    assert sniff(b"\x28\xb5\x2f\xfd\x00") == "zstd"
    assert sniff(b'[{"id": 1}]') == "plain"
    assert sniff(b"") == "plain"


def test_gzip_is_standard_and_multi_member() -> None:
    payload = b'[{"id": "x"}]' * 100
    assert gzip.decompress(encode(payload, "gzip")) == payload  # readable by any gzip reader
    two = gzip.compress(b"abc") + gzip.compress(b"def")
    assert decode(two) == (b"abcdef", "gzip")


def test_zstd_multi_frame() -> None:
    c = zstandard.ZstdCompressor()
    assert decode(c.compress(b"abc") + c.compress(b"def")) == (b"abcdef", "zstd")


@pytest.mark.parametrize(
    "raw",
    [
        gzip.compress(b"x" * 1000)[:-6],  # truncated
        b"\x1f\x8b" + b"not really gzip",
        zstandard.ZstdCompressor().compress(b"y" * 1000)[:-3],  # truncated
        b"\x28\xb5\x2f\xfd" + b"garbage garbage",
    ],
)
def test_corrupt_input_raises(raw: bytes) -> None:
    with pytest.raises(CodecError) as info:
        decode(raw)
    assert info.value.encoding == sniff(raw)


def test_max_output_guards_bombs() -> None:
    bomb = encode(b"\0" * 1_000_000, "gzip")
    with pytest.raises(CodecError, match="more than"):
        decode(bomb, max_output=1000)
    with pytest.raises(CodecError, match="more than"):
        decode(encode(b"\0" * 1_000_000, "zstd"), max_output=1000)
    assert decode(bomb, max_output=1_000_000)[0] == b"\0" * 1_000_000
