"""The SQLite writing floor of ``optimize index``: writing a built index's rows again, with no row to make.

:func:`write_seconds` reads every row of a record index (:mod:`aml.optimize.index`) into Python lists, untimed,
then times writing them into a new database the way a build from scratch does, once the schema
(:data:`~aml.optimize.index.SCHEMA`) is made: the same pragmas (:data:`~aml.optimize.index.WRITE_PRAGMAS`),
``executemany`` per table, the secondary B-trees created once the rows are in
(:func:`~aml.optimize.index.create_secondary_indexes`), one commit and an ``fsync`` of the file. No build can write
the same index in less: it does all of this and makes the rows too. ``benchmarks/scale.py`` adds this to the
command's start-up and a msgspec parse of the store to get the index build's floor.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from pathlib import Path

from aml.optimize.index import SCHEMA, WRITE_PRAGMAS, create_secondary_indexes

TABLES = ("meta", "documents", "records", "tags", "warm")
"""Plain tables copied as they are; ``records_fts`` is copied as ``(rowid, text)``."""


def _rows(index_file: Path) -> dict[str, tuple[list[str], list[tuple[object, ...]]]]:
    """Every table's column names and rows, ``records_fts`` as ``(rowid, text)``."""
    conn = sqlite3.connect(f"file:{index_file}?mode=ro", uri=True)
    try:
        tables: dict[str, tuple[list[str], list[tuple[object, ...]]]] = {}
        for table in TABLES:
            cursor = conn.execute(f"SELECT * FROM {table}")
            tables[table] = ([d[0] for d in cursor.description], cursor.fetchall())
        tables["records_fts"] = (["rowid", "text"], conn.execute("SELECT rowid, text FROM records_fts").fetchall())
        return tables
    finally:
        conn.close()


def _write(path: Path, tables: dict[str, tuple[list[str], list[tuple[object, ...]]]]) -> float:
    """Seconds to write ``tables`` into a new database at ``path``, as a build from scratch writes them, from its
    empty tables on (making the schema is not timed: a build on an empty store makes it too)."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(SCHEMA)
        start = time.perf_counter()
        for pragma in WRITE_PRAGMAS:
            conn.execute(pragma)
        for table, (columns, rows) in tables.items():
            if rows:
                marks = ", ".join("?" * len(columns))
                conn.executemany(f"INSERT INTO {table}({', '.join(columns)}) VALUES ({marks})", rows)
        create_secondary_indexes(conn)
        conn.commit()
    finally:
        conn.close()
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
    return time.perf_counter() - start


def write_seconds(index_file: Path, repeat: int = 3) -> tuple[float, int]:
    """The best of ``repeat`` writes of ``index_file``'s rows into a new database (in a temporary directory beside it).

    Args:
        index_file: a record index (``<store>/.aml/index.sqlite``) of the current format.
        repeat: writes to time (at least 1).

    Returns:
        ``(seconds, records)``: the best wall time (seconds) and the number of ``records`` rows written.

    Raises:
        sqlite3.Error: ``index_file`` is not an index of the current schema.
    """
    tables = _rows(index_file)
    best = float("inf")
    with tempfile.TemporaryDirectory(prefix="aml-index-floor-", dir=index_file.parent) as scratch:  # the same disk
        for attempt in range(max(1, repeat)):
            best = min(best, _write(Path(scratch) / f"copy{attempt}.sqlite", tables))
    return best, len(tables["records"][1])
