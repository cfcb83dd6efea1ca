"""The catalog's JSON columns (``models.engine.json_serializer`` / ``json_deserializer``): every value a prune row,
a task run's result or an alert's details holds comes back as it went in, through a real SQLite catalog too."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import JSON, Column, Integer, MetaData, Table, insert, select

from models.engine import json_deserializer, json_serializer, make_engine

JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
              st.floats(allow_nan=False, allow_infinity=False), st.text()),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=10,
)
"""Any JSON value (no NaN, integers within 64 bits): what results, rows and output hold."""


@settings(max_examples=300, deadline=None)
@given(value=JSON_VALUES)
def test_round_trip(value: Any) -> None:
    text = json_serializer(value)
    assert json.loads(text) == value  # what any reader of the catalog (psql, sqlite3, jq) gets
    assert json_deserializer(text) == value


def test_values_msgspec_does_not_write_fall_back_to_json() -> None:
    assert json_serializer({"name": "bad-\udcff"}) == '{"name":"bad-\\udcff"}'
    assert json_deserializer(json_serializer({"name": "bad-\udcff"})) == {"name": "bad-\udcff"}
    with pytest.raises(TypeError):
        json_serializer({"x": object()})
    assert json_serializer({"n": math.inf, "when": datetime(2026, 1, 2, tzinfo=UTC)}) == \
        '{"n":null,"when":"2026-01-02T00:00:00Z"}'
    assert math.isnan(json_deserializer('{"n": NaN}')["n"])  # rows written before, by json.dumps
    assert json_deserializer("[1e400]") == [math.inf]
    with pytest.raises(json.JSONDecodeError):
        json_deserializer('{"a": ')
    # a text holding a lone surrogate has no UTF-8 form for msgspec: json.loads answers (it was a UnicodeEncodeError)
    assert json_deserializer('{"a": "\ud800"}') == {"a": "\ud800"}
    assert json_deserializer('"x\udcff"') == "x\udcff"


def test_through_a_sqlite_catalog(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    table = Table("t", MetaData(), Column("id", Integer, primary_key=True), Column("v", JSON))
    table.metadata.create_all(engine)
    value = {"item": {"id": "é", "n": [1, 2.5, None]}, "text": "{\n  \"id\": \"\\u00e9\"\n}", "bad": "x\udcff"}
    with engine.begin() as conn:
        conn.execute(insert(table).values(id=1, v=value))
    with engine.connect() as conn:
        assert conn.execute(select(table.c.v)).scalar_one() == value
