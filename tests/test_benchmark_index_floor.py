"""``benchmarks/index_floor.py``: the index build's SQLite writing floor writes the built index's rows again."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from aml.optimize.files import INDEX_FILE
from aml.optimize.index import build_index
from aml.sample import SampleSpec, generate_loom_store
from benchmarks import index_floor


def test_write_floor_writes_every_row_again(tmp_path: Path) -> None:
    store = tmp_path / ".loom" / "memory"
    generate_loom_store(store, SampleSpec(agents=2, patterns=40, solutions=20, decisions=10))
    built = build_index(store, full=True)
    index_file = store / INDEX_FILE
    tables = index_floor._rows(index_file)
    copy = tmp_path / "copy.sqlite"
    assert index_floor._write(copy, tables) > 0
    with sqlite3.connect(index_file) as original, sqlite3.connect(copy) as written:
        for table in (*index_floor.TABLES, "records_fts"):
            query = f"SELECT {'rowid, text' if table == 'records_fts' else '*'} FROM {table} ORDER BY 1"
            assert written.execute(query).fetchall() == original.execute(query).fetchall(), table
        indexes = "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%' ORDER BY 1"
        assert written.execute(indexes).fetchall() == original.execute(indexes).fetchall()
    seconds, records = index_floor.write_seconds(index_file, repeat=2)
    assert seconds > 0 and records == built.records == 2 * (40 + 20 + 10)


def test_write_floor_refuses_a_file_that_is_no_index(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(sqlite3.Error):
        index_floor.write_seconds(other)
