"""Archive files' JSON (:func:`aml.prune.archive.archive_text`) is ``json.dumps(items, indent=2,
ensure_ascii=False)`` to the byte, errors included, though written by the fast writer-style serialiser."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aml.prune.archive import add_to_archive, archive_text, read_archive, remove_from_archive
from aml.store import codec

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

PAYLOADS: list[Any] = [
    {"v": 1, "item": {"id": "p0", "metrics": {"successRate": 0.1, "n": 3}}, "text": '{\n  "id": "p0"\n}',
     "list": "", "index": 0, "prev": None, "next": {"id": "p1"}, "layout": {"lead": "\n  ", "sep": ",\n  "}},
    {"item": {"naïve": "é\u2028\u00a0\"/\\ 🙂", "big": 2**70, "neg": -0.0, "tiny": 5e-324,
              "huge": 1.7976931348623157e308, "list": [[], {}, [None, True, False, ""]]}},
    {"ünïcode key": ["tab\there", "ctl\x01\x1f", "\ud7ff\ue000"], "nested": {"a": {"b": {"c": [1, 2.5, -3]}}}},
    [],
    {},
    "a bare string",
    12345,
    None,
]


@pytest.mark.parametrize("items", [PAYLOADS, [], [PAYLOADS[0]], [[[]], [{}], {"": {"": [0]}}]])
def test_archive_text_is_json_dumps(items: list[Any]) -> None:
    assert archive_text(items) == json.dumps(items, indent=2, ensure_ascii=False)


def test_archive_text_fails_as_json_dumps_does() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match=r"[Cc]ircular"):
        archive_text([loop])
    with pytest.raises(TypeError):
        archive_text([{"when": T0}])


def test_archive_file_bytes(tmp_path: Path) -> None:
    path = tmp_path / "a" / "decisions_run.json.gz"
    assert add_to_archive(path, PAYLOADS[:3]) == 3
    expected = json.dumps(PAYLOADS[:3], indent=2, ensure_ascii=False).encode("utf-8")
    assert gzip.decompress(path.read_bytes()) == expected  # any gzip reader reads it
    assert path.read_bytes() == codec.encode(expected, "gzip")  # isal's gzip: the same bytes every time
    assert add_to_archive(path, PAYLOADS[2:5]) == 2  # PAYLOADS[2] is there already
    expected = json.dumps(PAYLOADS[:5], indent=2, ensure_ascii=False).encode("utf-8")
    assert gzip.decompress(path.read_bytes()) == expected  # any gzip reader reads it
    assert path.read_bytes() == codec.encode(expected, "gzip")  # isal's gzip: the same bytes every time
    assert read_archive(path) == json.loads(expected)


def test_an_item_with_a_lone_surrogate_is_archived_escaped(tmp_path: Path) -> None:
    """A decision whose id was written ``"d\\udcff"`` has no UTF-8 form: the archive keeps it as JSON escapes (valid
    JSON, read back to the same string) instead of failing the prune run."""
    path = tmp_path / "a" / "decisions_run.json.gz"
    items = [{"id": "d\udcff", "text": "é"}, {"id": "e"}]
    assert add_to_archive(path, items) == 2
    raw = gzip.decompress(path.read_bytes())
    assert b"\\udcff" in raw and b"\\u00e9" in raw and raw.isascii()
    assert read_archive(path) == items
    assert add_to_archive(path, items[:1]) == 0, "known by its canonical JSON"
    assert remove_from_archive(path, items[1:]) == 1 and read_archive(path) == items[:1]


def test_a_new_archive_holds_the_records_own_texts(tmp_path: Path) -> None:
    """Prune archives decisions by their exact texts: for a document written with indent 2 (Loom's
    ``JSON.stringify(items, null, 2)``, Python's ``json.dumps(items, indent=2)``) the file is the one made from the
    parsed items; other layouts keep the writer's own text; an existing archive is merged without duplicates."""
    from aml.prune.archive import add_texts_to_archive
    from aml.store.rewrite import find_list

    items = PAYLOADS[:4]
    document = json.dumps(items, indent=2, ensure_ascii=False)
    span = find_list(document, "")
    texts = [document[a:b] for a, b in zip(span.starts, span.ends, strict=True)]
    path = tmp_path / "a" / "decisions_run.json.gz"
    assert add_texts_to_archive(path, texts) == 4
    assert gzip.decompress(path.read_bytes()) == archive_text(items).encode("utf-8")
    assert add_texts_to_archive(path, [texts[1], json.dumps(PAYLOADS[5])]) == 1, "a retried run adds only new ones"
    assert read_archive(path) == [*items, PAYLOADS[5]]

    odd = tmp_path / "b" / "decisions_run.json.gz"
    compact = ['{"id":"x","n":1.50}', '{ "id" : "y" }']
    assert add_texts_to_archive(odd, compact) == 2
    assert gzip.decompress(odd.read_bytes()).decode("utf-8") == '[\n  {"id":"x","n":1.50},\n  { "id" : "y" }\n]'
    assert read_archive(odd) == [{"id": "x", "n": 1.5}, {"id": "y"}]
    assert remove_from_archive(odd, [{"id": "y"}]) == 1 and read_archive(odd) == [{"id": "x", "n": 1.5}]
