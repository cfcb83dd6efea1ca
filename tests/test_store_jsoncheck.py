"""QuickCheck vouches for a document only when the full parse (load_json + classify) agrees.

Differential tests against Python's parser: generated JSON documents in every layout, then mutated
(truncated, a byte flipped or inserted, NaN, a NUL, a BOM, control characters, trailing data, a wrong
shape). Whenever QuickCheck answers a kind, the full parse must accept the document and give the same
kind; on valid documents of a positional kind it must answer (else compress would gain nothing).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aml.store.documents import DocumentError, classify, load_json, place
from aml.store.jsoncheck import QuickCheck

AGENTS = frozenset({"debugger"})
PLACES = ["debugger/patterns.json", "global/archived-decisions.json", "config.json", "config/schema_version.json",
          "debugger/metrics.json", "global/other.json", "notes/x.json"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=10)
documents = st.one_of(st.lists(st.dictionaries(st.text(max_size=6), values, max_size=4), max_size=5),
                      st.dictionaries(st.text(max_size=6), values, max_size=4), values)
CHECK = QuickCheck()


def full_kind(raw: bytes, relpath: str) -> str | None:
    """What the full parse says: the kind, or None when the document does not parse or has the wrong shape."""
    parts = tuple(relpath.split("/"))
    try:
        data = load_json(raw, Path(relpath), relpath=relpath)
        return classify(data, parts, place(parts, AGENTS), Path(relpath))[0]
    except DocumentError:
        return None


def mutate(raw: bytes, how: str, at: int) -> bytes:
    at = at % (len(raw) + 1)
    return {
        "none": raw,
        "truncate": raw[:at],
        "flip": raw[:at] + bytes([(raw[at] ^ 0x20) if at < len(raw) else 0x20]) + raw[at + 1:],
        "insert_nul": raw[:at] + b"\x00" + raw[at:],
        "insert_ctrl": raw[:at] + b"\x01" + raw[at:],
        "insert_quote": raw[:at] + b'"' + raw[at:],
        "insert_comma": raw[:at] + b"," + raw[at:],
        "nan": raw.replace(b"null", b"NaN", 1),
        "bom": b"\xef\xbb\xbf" + raw,
        "trailing": raw + b" {}",
        "bad_utf8": raw[:at] + b"\xff" + raw[at:],
    }[how]


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(doc=documents, indent=st.sampled_from([None, 2, "\t"]), relpath=st.sampled_from(PLACES),
       how=st.sampled_from(["none", "truncate", "flip", "insert_nul", "insert_ctrl", "insert_quote", "insert_comma",
                            "nan", "bom", "trailing", "bad_utf8"]), at=st.integers(0, 10**6))
def test_vouches_only_for_what_the_full_parse_accepts(doc: Any, indent: Any, relpath: str, how: str, at: int) -> None:
    raw = mutate(json.dumps(doc, indent=indent, ensure_ascii=False).encode(), how, at)
    parts = tuple(relpath.split("/"))
    quick = CHECK.kind(raw, place(parts, AGENTS))
    full = full_kind(raw, relpath)
    if quick is not None:
        assert quick == full, (raw, relpath)
    elif how == "none" and full is not None and place(parts, AGENTS).kind not in (None, "loom_global"):
        pytest.fail(f"a valid {full} at {relpath} was not vouched for")


@pytest.mark.parametrize(("relpath", "raw", "expected"), [
    ("debugger/patterns.json", b'[{"id": "a"}, {"id": "b"}]', "loom_collection"),
    ("debugger/patterns.json", b"  [ ]\n", "loom_collection"),
    ("debugger/patterns.json", b'{"id": "a"}', None),  # an object where a list belongs: wrong_type
    ("debugger/patterns.json", b'[{"id": "a"}, 2]', None),  # a list holding a non-object
    ("debugger/patterns.json", b'[{"id": "a"}]\x00', None),  # SQLite would stop at the NUL
    ("debugger/patterns.json", b'\xef\xbb\xbf[{"id": "a"}]', None),  # BOM: parsed fully (it parses)
    ("debugger/patterns.json", b'[{"n": NaN}]', None),  # Python-only JSON: parsed fully
    ("debugger/metrics.json", b'{"a": [1, 2]}', "loom_agent_file"),
    ("debugger/metrics.json", b'[1, 2', None),
    ("config.json", b'[1]', None),
    ("config.json", b'{"version": "1.0.0"}', "loom_config"),
    ("global/other.json", b'{"a": 1}', None),  # content decides in global/: always parsed
    ("notes/x.json", b'{"a": 1}', None),
])
def test_cases(relpath: str, raw: bytes, expected: str | None) -> None:
    parts = tuple(relpath.split("/"))
    assert CHECK.kind(raw, place(parts, AGENTS)) == expected
    if expected is not None:
        assert full_kind(raw, relpath) == expected


def test_disabled_vouches_for_nothing() -> None:
    check = QuickCheck(enabled=False)
    assert not check.available
    assert check.kind(b"[]", place(("debugger", "patterns.json"), AGENTS)) is None
    assert CHECK.available  # this SQLite has JSON functions (3.38+ builds them in)
