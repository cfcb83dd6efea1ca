"""``text_names``: every string of a JSON-like value as valid text; its one-pass check (msgspec) agrees with the
walk on values with and without names that are not UTF-8."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aml.store.names import _text_names, text_names

_TEXT = st.text(alphabet=st.sampled_from(["a", "é", "\udcff", "\udc80", "\ud800", "/", "\\"]), max_size=4)
_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _TEXT),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
    | st.dictionaries(_TEXT | st.integers(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(value=_VALUES)
def test_one_pass_agrees_with_the_walk(value: Any) -> None:
    out = text_names(value)
    assert out == _text_names(value)
    if out == value and "\\x" not in repr(out):
        assert out is value  # unchanged values are returned as they are, not copied


def test_escapes_and_keeps() -> None:
    when = datetime(2026, 1, 2, tzinfo=UTC)
    clean = {"file": "agent/patterns.json", "n": [1, 2.5, None], "t": (when, "x")}
    assert text_names(clean) is clean
    bad = {"file": "agent/bad-\udcff.json", "items": ["ok", "caf\udcc3"]}
    assert text_names(bad) == {"file": "agent/bad-\\xff.json", "items": ["ok", "caf\\xc3"]}
    assert text_names({"x": {1, 2}}) == {"x": {1, 2}}  # not JSON-like inside: left as it is
