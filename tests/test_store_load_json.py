"""``load_json`` parses with msgspec and falls back to ``json.loads``: the outcome (value, or error code,
offset and reason) is exactly the standard library's on every input, valid or not (issue 12, part 1)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aml.store.documents import DocumentError, load_json


def _reference(data: bytes) -> Any:
    """What ``load_json`` did with ``json.loads`` alone (the oracle)."""
    skip = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError:
        return ("error", "not_utf8")
    try:
        return ("value", json.loads(text))
    except (json.JSONDecodeError, RecursionError):
        return ("error", "json")


def _outcome(data: bytes) -> Any:
    try:
        return ("value", load_json(data, "doc.json"))
    except DocumentError as exc:
        return ("error", "not_utf8" if exc.code == "not_utf8" else "json")


def _same(a: Any, b: Any) -> bool:
    """Equal values of identical types (``1`` is not ``1.0``, ``-0.0`` is not ``0.0``, NaN equals NaN),
    dict keys in the same order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)  # lone surrogates included
_SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**130), max_value=2**130)
            | st.floats() | _TEXT)
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=5)
                       | st.dictionaries(_TEXT, inner, max_size=5), max_leaves=30)


def _dump(value: Any, ensure_ascii: bool, indent: int | None) -> bytes:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent).encode("utf-8", "surrogatepass")


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(_VALUES, st.booleans(), st.sampled_from([None, 0, 2]), st.booleans())
def test_same_outcome_as_json_loads_on_documents(value: Any, ensure_ascii: bool, indent: int | None,
                                                 bom: bool) -> None:
    data = (b"\xef\xbb\xbf" if bom else b"") + _dump(value, ensure_ascii, indent)
    got, want = _outcome(data), _reference(data)
    assert got[0] == want[0] and _same(got[1], want[1]), (data[:200], got, want)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(_VALUES, st.data())
def test_same_outcome_as_json_loads_on_damaged_documents(value: Any, data: st.DataObject) -> None:
    raw = bytearray(_dump(value, data.draw(st.booleans()), None))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw)))
        if data.draw(st.booleans()) and at < len(raw):
            del raw[at]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=2) | st.sampled_from(
                [b",", b"]", b"}", b'"', b"\\", b"\\u", b"\n", b"NaN", b"1e999", b"\xff", b"\xed\xa0\x80"]))
    got, want = _outcome(bytes(raw)), _reference(bytes(raw))
    assert got[0] == want[0] and _same(got[1], want[1]), (bytes(raw)[:200], got, want)


def test_python_extensions_and_errors_are_the_standard_librarys() -> None:
    assert math.isnan(load_json(b"[NaN]", "d.json")[0])
    assert load_json(b'{"a": Infinity, "b": -Infinity, "c": 1e999}', "d.json") == {
        "a": math.inf, "b": -math.inf, "c": math.inf}
    assert load_json(b'"\\ud800"', "d.json") == "\ud800"
    assert load_json(b"\xef\xbb\xbf[1]", "d.json") == [1]
    cases = {b'[1, 2': "truncated_json", b"[1,]": "invalid_json", b'["\xff"]': "not_utf8", b"[1] x": "invalid_json"}
    for data, code in cases.items():
        try:
            load_json(data, "d.json", relpath="agent/patterns.json")
        except DocumentError as exc:
            assert exc.code == code, (data, exc.code)
            assert exc.relpath == "agent/patterns.json"
        else:
            raise AssertionError(f"{data!r} parsed")
