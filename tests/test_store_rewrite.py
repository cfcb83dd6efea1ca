"""aml.store.rewrite, the one way aml rewrites a JSON document (prune, undo, gc and migrate all use it).

Properties, on documents written by ``json.dumps`` in every layout writers use (Loom's two-space
indent, four spaces, tabs, one line with or without spaces, ASCII escapes or not, a BOM, a trailing
newline): removing elements by splicing gives exactly what the writer would have written for the
shorter list; replacing elements gives exactly what it would have written for the new list, at any
depth; everything else keeps its bytes, gzip written by zlib/pako included.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import zlib
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

import aml.store.jsontext
import aml.store.rewrite
from aml.store.rewrite import (
    LOOM_STYLE,
    DocumentText,
    JsonStyle,
    SpliceError,
    TextSink,
    check_parses,
    detect_json_style,
    find_list,
    gzip_level_of,
    read_text,
    removal_pieces,
    remove_elements,
    replace_elements,
    write_text,
)

LAYOUTS: list[dict[str, Any]] = [
    {"indent": 2}, {"indent": 4}, {"indent": "\t"}, {"indent": None, "separators": (",", ":")},
    {"indent": None, "separators": (", ", ": ")}, {"indent": 2, "separators": (",", ":")},
]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
records = st.dictionaries(st.sampled_from(["id", "agent", "timestamp", "pattern", "métrique", "n"]), values,
                          min_size=1, max_size=5)


def write(data: Any, layout: dict[str, Any], ensure_ascii: bool, bom: bool, newline: bool) -> str:
    return ("\ufeff" if bom else "") + json.dumps(data, ensure_ascii=ensure_ascii, **layout) + ("\n" if newline else "")


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(items=st.lists(records, max_size=8), layout=st.sampled_from(LAYOUTS), ensure_ascii=st.booleans(),
       bom=st.booleans(), newline=st.booleans(), data=st.data())
def test_removing_by_splice_is_what_the_writer_writes(items: list[Any], layout: dict[str, Any], ensure_ascii: bool,
                                                      bom: bool, newline: bool, data: st.DataObject) -> None:
    text = write(items, layout, ensure_ascii, bom, newline)
    removed = data.draw(st.sets(st.integers(0, max(0, len(items) - 1)), max_size=len(items)))
    span = find_list(text, "")
    assert span.items == items
    kept = [x for i, x in enumerate(items) if i not in removed]
    new = remove_elements(text, span, removed)
    assert new == write(kept, layout, ensure_ascii, bom, newline)  # an emptied list is "[]", as json.dumps has it


def style_of(layout: dict[str, Any], ensure_ascii: bool) -> JsonStyle:
    """The :class:`JsonStyle` of a ``json.dumps`` layout."""
    indent = layout["indent"]
    item_sep, key_sep = layout.get("separators") or ((",", ": ") if indent is not None else (", ", ": "))
    unit = " " * indent if isinstance(indent, int) else indent
    return JsonStyle(unit, item_sep if unit is None else ",", key_sep, ensure_ascii)


@settings(max_examples=200, deadline=None)
@given(items=st.lists(records, min_size=1, max_size=6), layout=st.sampled_from(LAYOUTS), ensure_ascii=st.booleans(),
       nested=st.booleans(), data=st.data())
@pytest.mark.slow
def test_replacing_in_the_writers_style_at_any_depth(items: list[Any], layout: dict[str, Any], ensure_ascii: bool,
                                                     nested: bool, data: st.DataObject) -> None:
    def document(episodes: list[Any]) -> Any:
        return {"meta": {"version": "1.0.0"}, "memory": {"episodes": episodes}, "n": 1} if nested else episodes

    text = write(document(items), layout, ensure_ascii, False, False)
    new_values = data.draw(st.dictionaries(st.integers(0, len(items) - 1), records, max_size=len(items)))
    span = find_list(text, "/memory/episodes" if nested else "")
    new = replace_elements(text, span, new_values, style_of(layout, ensure_ascii))
    updated = [new_values.get(i, x) for i, x in enumerate(items)]
    assert new == write(document(updated), layout, ensure_ascii, False, False)


@pytest.mark.parametrize("ensure_ascii", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_detects_the_layouts_writers_use(layout: dict[str, Any], ensure_ascii: bool) -> None:
    doc = [{"id": f"p-{n}", "agent": "débogueur", "metrics": {"successRate": 0.5, "tags": ["a", "b"]}}
           for n in range(3)]
    text = write(doc, layout, ensure_ascii, False, True)
    assert detect_json_style(text) == style_of(layout, ensure_ascii)
    assert detect_json_style("[]") == LOOM_STYLE


@settings(max_examples=200, deadline=None)
@given(a=st.lists(records, max_size=6), c=st.lists(records, max_size=6), layout=st.sampled_from(LAYOUTS),
       ensure_ascii=st.booleans(), piece=st.integers(1, 40), data=st.data())
@pytest.mark.slow
def test_removing_from_several_lists_in_pieces_of_any_size(a: list[Any], c: list[Any], layout: dict[str, Any],
                                                          ensure_ascii: bool, piece: int,
                                                          data: st.DataObject) -> None:
    """Removing from two lists of one document in one pass (an Aitor session's shape), yielded in pieces
    of any size, gives what the writer writes for the document without those records."""
    text = write({"a": a, "b": {"n": 1, "c": c}, "z": "end"}, layout, ensure_ascii, False, True)
    drop_a = data.draw(st.sets(st.integers(0, max(0, len(a) - 1)), max_size=len(a)))
    drop_c = data.draw(st.sets(st.integers(0, max(0, len(c) - 1)), max_size=len(c)))
    edits = [(find_list(text, "/b/c"), drop_c), (find_list(text, "/a"), drop_a)]  # any order
    with mock.patch.object(aml.store.rewrite, "PIECE_CHARS", piece):
        pieces = list(removal_pieces(text, edits))
    assert all(0 < len(p) <= piece for p in pieces)
    expected = {"a": [x for i, x in enumerate(a) if i not in drop_a],
                "b": {"n": 1, "c": [x for i, x in enumerate(c) if i not in drop_c]}, "z": "end"}
    assert "".join(pieces) == write(expected, layout, ensure_ascii, False, True)


def test_lists_inside_one_another_are_refused() -> None:
    text = '[[1, 2], [3]]'
    with pytest.raises(SpliceError, match="inside one another"):
        list(removal_pieces(text, [(find_list(text, ""), {1}), (find_list(text, "/0"), {0})]))


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=6),
       how=st.sampled_from([("plain", None), ("gzip", 1), ("gzip", 6), ("gzip", 9), ("gzip", None),
                            ("zstd", None)]),
       limit=st.sampled_from([3, 7, 4 * 1024 * 1024]))
def test_writing_in_pieces_gives_the_bytes_of_the_whole_text(text: str, cuts: list[int],
                                                             how: tuple[Any, int | None], limit: int) -> None:
    """:func:`write_text` writes what :func:`encode_text` makes of the joined text, however it is cut (zlib's
    stream gives the same bytes whatever the chunking), so a prune that streams its output stays byte-exact."""
    text = text.encode("utf-8", "replace").decode("utf-8")  # no lone surrogates: documents are UTF-8
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    pieces = [text[x:y] for x, y in itertools.pairwise(bounds)]
    encoding, level = how
    out = io.BytesIO()
    with mock.patch.object(aml.store.rewrite, "PIECE_CHARS", limit):  # pieces longer than the limit are sliced
        written = write_text(out, pieces, encoding, level)
    expected = aml.store.rewrite.encode_text(text, encoding, level)
    assert out.getvalue() == expected
    assert written == len(out.getvalue())
    # a sink that starts over (migrate's fallback) forgets what it wrote; its digest is of the bytes written
    again = io.BytesIO()
    sink = TextSink(again, encoding, level)
    sink.write("[1, 2, 3]" * 50)
    with mock.patch.object(aml.store.rewrite, "PIECE_CHARS", 7):
        sink.write("x" * 20)  # flushed (plain and zlib): the reset must empty the file
    sink.reset()
    for piece in pieces:
        sink.write(piece)
    assert sink.close() == hashlib.sha256(expected).hexdigest()
    assert again.getvalue() == expected and sink.bytes_written == len(expected)
    # without a digest (write_text's sink): the same bytes, nothing hashed
    bare = io.BytesIO()
    sink = TextSink(bare, encoding, level, digest=False)
    for piece in pieces:
        sink.write(piece)
    assert sink.close() == "" and bare.getvalue() == expected and sink.bytes_written == len(expected)


def test_unchanged_elements_keep_their_exact_text() -> None:
    """Hand-written text (odd number forms, escapes, spacing) survives every splice of its neighbours."""
    text = '[\n  {"id": "a", "n": 1.50, "s": "caf\\u00e9"},\n  {"id": "b",   "n": 1E3},\n  {"id": "c"}\n]\n'
    span = find_list(text, "")
    assert remove_elements(text, span, {2}) == ('[\n  {"id": "a", "n": 1.50, "s": "caf\\u00e9"},\n'
                                                '  {"id": "b",   "n": 1E3}\n]\n')
    assert remove_elements(text, span, {0, 1, 2}) == "[]\n"
    replaced = replace_elements(text, span, {2: {"id": "c", "x": [1]}}, detect_json_style(text))
    assert replaced == ('[\n  {"id": "a", "n": 1.50, "s": "caf\\u00e9"},\n  {"id": "b",   "n": 1E3},\n'
                        '  {\n    "id": "c",\n    "x": [\n      1\n    ]\n  }\n]\n')


@pytest.mark.parametrize("encode", [
    lambda b: b, lambda b: b"\xef\xbb\xbf" + b, lambda b: zlib.compress(b, 6, wbits=31),
    lambda b: zstandard.ZstdCompressor().compress(b)], ids=["plain", "bom", "gzip", "zstd"])
def test_read_text_digests_the_text_as_utf8_without_encoding_it(tmp_path: Path, encode: Any) -> None:
    """The digest a prune or undo compares with its workers' findings: the text's UTF-8, whatever the file's
    encoding (a byte order mark is part of the text)."""
    path = tmp_path / "patterns.json"
    path.write_bytes(encode(json.dumps([{"id": "é😀", "n": 1}], ensure_ascii=False).encode("utf-8")))
    doc = read_text(path, keep_raw=False, digest=True)
    assert doc.digest == hashlib.sha256(doc.text.encode("utf-8")).digest()
    assert read_text(path).digest is None


def test_gzip_written_by_zlib_keeps_its_level(tmp_path) -> None:
    path = tmp_path / "patterns.json"
    body = json.dumps([{"id": str(i), "v": "x" * i} for i in range(50)], indent=2)
    path.write_bytes(zlib.compress(body.encode(), 6, wbits=31))  # pako level 6, as Loom's runtime writes
    doc = read_text(path)
    assert (doc.encoding, doc.gzip_level, doc.text) == ("gzip", 6, body)
    assert doc.encoded(doc.text) == path.read_bytes()  # re-encoding gives the writer's bytes
    assert doc.unchanged_on_disk(path)
    assert gzip_level_of(zlib.compress(b"[]", 9, wbits=31)) == 9 and gzip_level_of(b"[]") is None
    path.write_bytes(b"[]")
    assert not doc.unchanged_on_disk(path)
    assert isinstance(doc, DocumentText)


def test_splice_errors() -> None:
    with pytest.raises(SpliceError):
        find_list('{"a": 1}', "/a")
    with pytest.raises(SpliceError):
        find_list('[{"a": 1}, ', "")
    with pytest.raises(SpliceError):
        check_parses('[1,,2]', "doc")


def _one_value_reference(text: str) -> bool:
    """The standard library's answer: ``raw_decode`` reads one value from the first character to the last."""
    try:
        _, end = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return False
    return end == len(text)


_PYTHON_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(value=_PYTHON_JSON, indent=st.sampled_from([None, 2]), ascii_only=st.booleans(),
       before=st.sampled_from(["", " ", "\n", "\x0c"]), after=st.sampled_from(["", " ", "\t", ",", "]", "x"]),
       cut=st.integers(0, 3), noise=st.sampled_from(["", '"', "\\", "\x01", "\ud800", "01", "NaN", "}"]))
def test_is_json_value_answers_as_the_standard_library(value: Any, indent: int | None, ascii_only: bool,
                                                        before: str, after: str, cut: int, noise: str) -> None:
    """msgspec's fast check and the decoder's fallback together give raw_decode's answer: one whole value
    (NaN, Infinity and lone surrogates included), nothing around it, for valid and damaged texts alike."""
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_only)
    for candidate in (text, before + text + after, text[: max(0, len(text) - cut)], text + noise,
                      noise + text, text[: len(text) // 2] + noise + text[len(text) // 2:]):
        assert aml.store.rewrite.is_json_value(candidate) == _one_value_reference(candidate), candidate


@pytest.mark.parametrize("text", ['{"n": 1e400}', '[-1e999, 2]', '1E+400'])
def test_a_number_beyond_a_double_is_a_json_value(text: str) -> None:
    """msgspec's grammar check passes it (its decoding would not): the standard library reads it as infinity."""
    assert _one_value_reference(text)
    assert aml.store.rewrite.is_json_value(text) is True
    assert aml.store.jsontext.is_strict_json(text) is True


def test_a_value_nested_too_deeply_is_a_splice_error_not_a_crash() -> None:
    """A document nested deeper than the decoder recurses is one document that cannot be edited (prune and undo
    report it as a conflict), never a RecursionError that stops the whole run."""
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(SpliceError, match="nested too deeply"):
        find_list(f'{{"k": [1, {deep}]}}', "/k")
    assert aml.store.rewrite.is_json_value(deep) is False
