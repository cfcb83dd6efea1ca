"""The full-text of a record (aml.optimize.index.record_text) against a plain reference walk."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aml.optimize import index as index_module
from aml.optimize.index import record_text
from aml.store import Record
from aml.store.records import RecordLocation

REF_SKIP_KEY = re.compile(r"^(id|agent|timestamp|created|lastUsed|version|hash)$|(Id|_id|At|_at|Timestamp)$")
REF_SKIP_VALUE = re.compile(
    r"^(\d{4}-\d{2}-\d{2}T[\d:.]+(Z|[+-]\d{2}:?\d{2})?|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    r"[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
)


def reference_text(record: Record, item: Any, tags: list[str], limit: int) -> str:
    """The straightforward recursive walk record_text must match."""
    parts: list[str] = [record.kind, record.collection.replace(".", " "), *tags]
    budget = [limit]

    def walk(value: Any, key: str | None) -> None:
        if budget[0] <= 0:
            return
        if isinstance(value, str):
            if (key is None or not REF_SKIP_KEY.search(key)) and value and not REF_SKIP_VALUE.match(value):
                parts.append(value)
                budget[0] -= len(value) + 1
        elif isinstance(value, Mapping):
            for k, v in value.items():
                if not REF_SKIP_KEY.search(str(k)):
                    walk(v, str(k))
        elif isinstance(value, list):
            for v in value:
                walk(v, key)

    walk(item, None)
    return " ".join(parts)[:limit]


def make_record(kind: str = "pattern", collection: str = "patterns") -> Record:
    return Record(store="s", agent="a", collection=collection, id="x", kind=kind, created_at=None,
                  last_used_at=None, success_rate=None, confidence=None, execution_count=None, importance=None,
                  size_bytes=0, role=None, location=RecordLocation("a/patterns.json", "/0", 0))


SPECIAL_STRINGS = [
    "", "2025-12-02T22:24:54.097Z", "2025-12-02T22:24:54.097Z\n", "2025-12-06T22:58:25+00:00",
    "2025-12-06T22:58:25.942000-0530", "2026-11-22T10:48:19", "2026-11-22", "٢٠٢٥-12-02T10:00",
    "22600ec7-5d68-17e3-bc72-16c1f64e0511", "22600EC7-5D68-17E3-BC72-16C1F64E0511\n",
    "22600ec7-5d68-17e3-bc72-16c1f64e051", "g2600ec7-5d68-17e3-bc72-16c1f64e0511",
    "22600ec7-5d68-17e3-bc72-16c1f64e0511x", "1234", "fix the cache", "²025-12-02T10:00", "\n",
    "de5116a5-816a-0e0a-f157-ee7a33e3e160\n", "DE5116A5-816A-0E0A-F157-EE7A33E3E160",
]
"""Strings at the edges of the timestamp/UUID pattern (``$`` also matches before a final newline)."""
SPECIAL_KEYS = ["id", "agent", "timestamp", "created", "lastUsed", "version", "hash", "userId", "user_id",
                "createdAt", "created_at", "lastTimestamp", "id\n", "name", "text", "Idea", "ids", "at",
                "pattern", "context", "solution", "x_idx", "Id", "lastUsedAt"]
STRINGS = st.one_of(
    st.sampled_from(SPECIAL_STRINGS),
    st.text(max_size=40),
    st.text(alphabet="0123456789abcdefABCDEF-T:.Z+\n", min_size=30, max_size=40),
)
KEYS = st.one_of(st.sampled_from(SPECIAL_KEYS), st.text(max_size=8))
SCALARS = st.one_of(STRINGS, st.integers(), st.floats(allow_nan=False), st.booleans(), st.none())
JSON = st.recursive(SCALARS, lambda children: st.one_of(st.lists(children, max_size=5),
                                                        st.dictionaries(KEYS, children, max_size=6)),
                    max_leaves=40)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(item=JSON, tags=st.lists(st.text(max_size=5), max_size=3), limit=st.sampled_from([1, 5, 30, 200, 32 * 1024]))
def test_record_text_matches_the_reference_walk(item: Any, tags: list[str], limit: int) -> None:
    record = make_record()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(index_module, "TEXT_LIMIT", limit)
        assert record_text(record, item, tags) == reference_text(record, item, tags, limit)


@pytest.mark.parametrize("key", SPECIAL_KEYS)
def test_record_text_of_each_special_string(key: str) -> None:
    record = make_record()
    for value in SPECIAL_STRINGS:
        for item in ({key: value}, {key: [value]}, [value], value, {"x": {key: {"y": value}}}):
            assert record_text(record, item, []) == reference_text(record, item, [], 32 * 1024), (key, value)


def test_record_text_of_a_loom_item() -> None:
    item = {
        "id": "22600ec7-5d68-17e3-bc72-16c1f64e0511", "agent": "debugger", "timestamp": "2025-12-02T22:24:54.097Z",
        "pattern": {"type": "bisect-regression", "context": {"language": "go", "sessionId": "abc"},
                    "approach": {"technique": "run the test alone", "ref": "22600ec7-5d68-17e3-bc72-16c1f64e0511"},
                    "conditions": {"whenApplicable": ["symptom seen twice", ""], "whenNotApplicable": []}},
        "metrics": {"successRate": 0.36, "executionCount": 2},
        "evolution": {"created": "2025-12-02T22:24:54.097Z", "lastUsed": "2026-07-19T08:44:07.342Z"},
        "active": True,
    }
    text = record_text(make_record("bisect-regression", "sessions.messages"), item, ["t1"])
    assert text == "bisect-regression sessions messages t1 bisect-regression go run the test alone symptom seen twice"


class Text(str):
    pass


def test_record_text_of_values_json_does_not_make() -> None:
    data: dict[Any, Any] = {"a": Text("kept"), "id": "dropped", "b": [MappingProxyType({"c": "deep"}), ("tuple",)],
                            1: "int key", "userId": Text("dropped")}
    item = MappingProxyType(data)
    record = make_record()
    assert record_text(record, item, []) == reference_text(record, item, [], 32 * 1024)
    assert record_text(record, Text("top"), []) == "pattern patterns top"
    assert record_text(record, ["x", "2025-01-01T00:00:00Z", ["y"]], []) == "pattern patterns x y"
