"""The CLI's JSON output (``cli.render.json_text``): indented, keys in order, UTF-8, valid JSON for every result."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import given, settings

from cli.render import json_text
from tests.test_catalog_json import JSON_VALUES as _JSON


@settings(max_examples=300, deadline=None)
@given(value=_JSON)
def test_json_text_is_json_dumps_layout(value: Any) -> None:
    """Same value back, and the same layout as json.dumps(indent=2) (what users' scripts saw before)."""
    text = json_text(value)
    assert text.endswith("\n")
    assert json.loads(text) == value
    expected = json.dumps(value, indent=2, ensure_ascii=False)
    if not any(c in expected for c in "eE"):  # floats in exponent notation are written shorter
        assert text == expected + "\n"


def test_json_text_of_values_json_cannot_write_as_json() -> None:
    text = json_text({"when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "nan": float("nan"), "path": Path("/x"),
                      "name": "café"})
    assert json.loads(text) == {"when": "2026-01-02T03:04:05Z", "nan": None, "path": "/x", "name": "café"}
    assert "café" in text  # UTF-8, not \u escapes


def test_json_text_of_a_lone_surrogate_escapes_it() -> None:
    text = json_text({"file": "bad-\udcff.json"})
    assert json.loads(text) == {"file": "bad-\udcff.json"}
    assert "\\udcff" in text
