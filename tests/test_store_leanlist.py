"""aml.store.leanlist: a whole-document array located by msgspec exactly as find_list locates it, or not at all."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aml.prune.locate as locate_mod
from aml.store.leanlist import find_top_list
from aml.store.rewrite import ListSpan, find_list, key_only

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
ids = st.one_of(st.text(max_size=6), st.integers(), st.none(), st.lists(st.text(max_size=2), max_size=2))
records = st.dictionaries(st.sampled_from(["id", "agent", "métrique", "n", "😀"]), values, max_size=4).flatmap(
    lambda rest: st.one_of(st.just(rest), ids.map(lambda i: {"id": i, **rest}), ids.map(lambda i: {**rest, "id": i})))
whitespace = st.text(alphabet=" \t\n\r", max_size=3)


def _same(value: Any) -> Any:
    return value


def _layout(items: list[str], spaces: list[str]) -> str:
    """``[`` and the elements' texts with the given whitespace around every token."""
    out = [spaces[0], "["]
    for n, item in enumerate(items):
        out += [spaces[2 * n + 1], item, spaces[2 * n + 2]]
        if n + 1 < len(items):
            out.append(",")
    out += [spaces[-2] if items else spaces[1], "]", spaces[-1]]
    return "".join(out)


def _same_as_find_list(text: str, span: ListSpan) -> None:
    reference = find_list(text, "", keep=key_only)
    assert (span.open, span.close, span.starts, span.ends, span.items) == (
        reference.open, reference.close, reference.starts, reference.ends, reference.items)


@settings(max_examples=150, deadline=None)
@given(items=st.lists(records, max_size=6), ensure_ascii=st.booleans(), indent=st.sampled_from([None, 2, "\t"]),
       data=st.data())
def test_the_spans_keys_and_values_are_those_of_find_list(items: list[dict[str, Any]], ensure_ascii: bool,
                                                         indent: Any, data: st.DataObject) -> None:
    texts = [json.dumps(item, ensure_ascii=ensure_ascii, indent=indent) for item in items]
    text = _layout(texts, data.draw(st.lists(whitespace, min_size=2 * len(items) + 3, max_size=2 * len(items) + 3)))
    wanted = data.draw(st.sets(st.integers(0, len(items) + 1), max_size=3))
    found = find_top_list(text.encode("utf-8"), wanted, _same)
    assert found is not None, text
    span, decoded = found
    _same_as_find_list(text, span)
    assert [text[s:e] for s, e in zip(span.starts, span.ends, strict=True)] == texts
    assert decoded == {i: items[i] for i in wanted if i < len(items)}
    measured = find_top_list(text.encode("utf-8"), wanted, len)
    assert measured is not None and measured[1] == {i: len(items[i]) for i in wanted if i < len(items)}


@settings(max_examples=60, deadline=None)
@given(items=st.lists(records, max_size=5), ensure_ascii=st.booleans(), data=st.data())
def test_locate_gives_the_same_with_and_without_msgspec(items: list[dict[str, Any]], ensure_ascii: bool,
                                                       data: st.DataObject) -> None:
    text = json.dumps(items, ensure_ascii=ensure_ascii, indent=2)
    planned = data.draw(st.sets(st.integers(0, len(items)), max_size=4))
    fast = locate_mod.locate(text, {"": planned})
    seen: locate_mod.Seen = {"": {}}
    slow_span = find_list(text, "", keep=locate_mod._keeper(frozenset(planned), seen[""]))
    assert fast[1] == seen
    assert (fast[0][""].starts, fast[0][""].ends, fast[0][""].items) == (slow_span.starts, slow_span.ends,
                                                                         slow_span.items)


@pytest.mark.parametrize("text", [
    "\ufeff[{\"id\": \"a\"}]",  # a byte order mark
    "[{\"id\": \"a\", \"n\": NaN}]",  # not JSON msgspec reads
    "[{\"id\": \"a\", \"t\": \"\\ud800\"}]",  # a lone surrogate escape
    "[{\"id\": \"a\"}, \"text\"]",  # an element that is not an object
    "{\"items\": [{\"id\": \"a\"}]}",  # not an array
    "[{\"id\": \"a\"},]",  # not JSON at all
    "[{\"id\": \"a\"}",  # cut short
    '[{"id": "a", "deep": ' + "[" * 2000 + "]" * 2000 + "}]",  # nested deeper than msgspec reads
])
def test_what_msgspec_cannot_vouch_for_is_left_to_find_list(text: str) -> None:
    assert find_top_list(text.encode("utf-8"), {0}, _same) is None


def test_a_number_beyond_a_double_is_skipped_but_never_decoded() -> None:
    text = '[{"id": "a", "big": 1e400},\n {"id": "b"}]'
    found = find_top_list(text.encode("utf-8"), {1}, _same)
    assert found is not None
    _same_as_find_list(text, found[0])
    assert found[1] == {1: {"id": "b"}}
    assert find_top_list(text.encode("utf-8"), {0}, _same) is None  # json would read it as inf: find_list decides


def test_a_repeated_id_is_the_last_one_as_json_reads_it() -> None:
    text = '[{"id": "first", "id": "last"}, {"id": 3}, {"\\u0069d": "escaped"}]'
    found = find_top_list(text.encode("utf-8"), (), _same)
    assert found is not None
    assert found[0].items == [{"id": "last"}, None, {"id": "escaped"}]
    _same_as_find_list(text, found[0])


def test_offsets_count_characters_not_bytes() -> None:
    text = '[ {"id": "é😀", "n": "ü"} ,\r\n\t{"id": "x"} ]'
    found = find_top_list(text.encode("utf-8"), (), _same)
    assert found is not None
    span = found[0]
    elements = [text[s:e] for s, e in zip(span.starts, span.ends, strict=True)]
    assert elements == ['{"id": "é😀", "n": "ü"}', '{"id": "x"}']
    assert text[span.close] == "]"


def test_a_long_text_is_located_by_find_list_unless_its_utf8_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """Encoding a text larger than LEAN_MAX_CHARS would hold the document twice: find_list locates it instead."""
    text = json.dumps([{"id": str(i), "v": "x" * 50} for i in range(100)], indent=2)
    lean: list[bool] = []
    real = locate_mod.find_top_list

    def counting(*args: Any) -> Any:
        lean.append(True)
        return real(*args)

    monkeypatch.setattr(locate_mod, "find_top_list", counting)
    monkeypatch.setattr(locate_mod, "LEAN_MAX_CHARS", len(text) - 1)
    slow = locate_mod.locate(text, {"": {3}})
    assert lean == []
    fast = locate_mod.locate(text, {"": {3}}, encoded=text.encode("utf-8"))
    assert lean == [True]
    assert fast[1] == slow[1] and fast[0][""].starts == slow[0][""].starts and fast[0][""].items == slow[0][""].items
