"""Bulk inserts and reads of many rows of one catalog table (a prune run's undo log: tens of thousands of rows).

A Core ``insert(table)`` with a list of rows is one ``executemany``, but SQLAlchemy still builds and
type-processes each row's parameters in Python (``construct_params``, then every column's bind processor),
about 30 µs per row of ``prune_actions``: 0.8 s of a 27,000-row prune on SQLite, as long as SQLite's own work.
On SQLite :func:`insert_rows` (and :func:`insert_columns`, the same rows given column by column) does the same
conversion itself, with the same processors SQLAlchemy would call
(:meth:`~sqlalchemy.types.TypeEngine.dialect_impl` and its ``bind_processor``: ``UTCDateTime``'s text, the engine's
JSON serializer), once for a value that repeats in consecutive rows (the run id, the timestamp) or is given once
for every row, and hands plain tuples to the driver's ``executemany``. The stored values are the ones the Core path
stores (``tests/test_catalog_bulk.py`` compares both files).

Other databases keep the Core path: on PostgreSQL SQLAlchemy already batches the rows into multi-row
``INSERT ... VALUES`` statements ("insertmanyvalues"), which a plain driver ``executemany`` would lose.

:func:`select_in` reads rows by key the same way: on SQLite one driver query per batch, each value through its
column's result processor (the JSON deserializer), about half the time of a Core ``select`` through the session
for 27,000 undo payloads (0.18 against 0.31-0.47 s).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session


def _client_defaults(table: Table) -> set[str]:
    """Keys of the columns SQLAlchemy fills in Python when a row leaves them out (``default=``, ``onupdate=``)."""
    return {c.key for c in table.columns if c.default is not None or c.onupdate is not None}


def _processed(values: list[Any], process: Callable[[Any], Any] | None) -> list[Any]:
    """``values`` through ``process``, computed once for each run of consecutive repeats of the same object (a
    value set once for every row of a batch, such as a run id or a timestamp, is converted once). ``None`` goes through
    ``process`` as well, as in SQLAlchemy: a JSON column's processor writes it as JSON ``null``, not SQL NULL."""
    if process is None:
        return values
    out: list[Any] = []
    last: Any = object()
    last_out: Any = None
    for value in values:
        if value is not last:
            last, last_out = value, process(value)  # None too: a JSON column stores it as 'null'
        out.append(last_out)
    return out


def insert_rows(session: Session, table: Table, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert ``rows`` into ``table`` in the session's transaction, as ``session.execute(insert(table), rows)``.

    Args:
        session: an open session (its transaction is used; nothing is committed).
        table: the table.
        rows: column key -> value, the same keys in every row (as a Core ``executemany`` requires).

    Returns:
        The number of rows inserted.

    Raises:
        KeyError: a row lacks a key the first row has, or names no column of ``table``.
        sqlalchemy.exc.DBAPIError: the database refused a row (a constraint); the rows before it are in the
            transaction, which the caller rolls back (``session_scope`` does on any error).
        TypeError: a value its column's type cannot convert (the Core path wraps it in ``StatementError``).
    """
    if not rows:
        return 0
    return insert_columns(session, table, {key: [row[key] for row in rows] for key in rows[0]})


def insert_columns(session: Session, table: Table, columns: Mapping[str, Sequence[Any]],
                   constants: Mapping[str, Any] | None = None) -> int:
    """Insert rows given column by column: row ``i`` holds ``columns[key][i]`` for each key, and the value of
    each key of ``constants`` (one value for every row, converted once). The same rows as :func:`insert_rows`
    with those values, without a mapping per row (a prune run's actions: tens of thousands of rows, most of
    whose columns hold one value for the whole run).

    Args:
        session, table: as in :func:`insert_rows`.
        columns: column key -> one value per row; every list of the same length (at least one key).
        constants: column key -> the value of every row.

    Returns:
        The number of rows inserted.

    Raises:
        ValueError: lists of different lengths, no ``columns``, or a key in both.
        KeyError: a key that names no column of ``table``.
        sqlalchemy.exc.DBAPIError, TypeError: as in :func:`insert_rows`.
    """
    if not columns:
        raise ValueError("insert_columns needs at least one column given row by row")
    lengths = {len(values) for values in columns.values()}
    if len(lengths) != 1:
        raise ValueError(f"columns of different lengths: {sorted(lengths)}")
    count = lengths.pop()
    if not count:
        return 0
    constants = dict(constants or {})
    keys = [*columns, *constants]
    if len(set(keys)) != len(keys):
        raise ValueError(f"a column given both row by row and as a constant: {sorted(columns.keys() & constants)}")
    for key in keys:
        table.c[key]  # KeyError for a key that names no column, as the Core path would refuse it
    conn = session.connection()
    dialect = conn.dialect
    compiled = insert(table).compile(dialect=dialect, column_keys=keys)
    names = list(compiled.positiontup or ())
    if (dialect.name != "sqlite" or dialect.paramstyle != "qmark"
            or not _client_defaults(table) <= set(keys)  # a default to fill: the Core path knows how
            or sorted(names) != sorted(keys)):  # bind names other than the column keys: not expected
        by_row = [dict(zip(columns, values, strict=True)) | constants for values in zip(*columns.values(), strict=True)]
        session.execute(insert(table), by_row)
        return count

    def converted(key: str) -> Iterable[Any]:
        process = table.c[key].type.dialect_impl(dialect).bind_processor(dialect)
        if key in constants:
            return itertools.repeat(constants[key] if process is None else process(constants[key]), count)
        return _processed(list(columns[key]), process)

    params = list(zip(*(converted(name) for name in names), strict=True))
    conn.exec_driver_sql(str(compiled), params)
    return count


def select_in(session: Session, table: Table, columns: Sequence[str], key: str, values: Sequence[Any]
              ) -> list[tuple[Any, ...]]:
    """The ``columns`` of the rows of ``table`` whose ``key`` column is in ``values`` (in no particular order), as
    ``session.execute(select(*columns).where(key.in_(values)))`` returns them.

    Args:
        session: an open session (read in its transaction).
        table: the table.
        columns: column keys to read.
        key: the column ``values`` are matched against.
        values: at most 999 of them (SQLite's default limit of bound variables, before 3.32).

    Returns:
        One tuple per row, each value converted as SQLAlchemy converts it (a JSON column's text parsed).

    Raises:
        KeyError: a key that names no column of ``table``.
    """
    if not values:
        return []
    selected = [table.c[c] for c in columns]
    where = table.c[key]
    conn = session.connection()
    dialect = conn.dialect
    if dialect.name != "sqlite" or dialect.paramstyle != "qmark":
        return [tuple(row) for row in session.execute(select(*selected).where(where.in_(values)))]
    names = ", ".join(dialect.identifier_preparer.quote(c.name) for c in selected)
    sql = (f"SELECT {names} FROM {dialect.identifier_preparer.format_table(table)} "
           f"WHERE {dialect.identifier_preparer.quote(where.name)} IN ({', '.join('?' for _ in values)})")
    processors = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in selected]
    rows = conn.exec_driver_sql(sql, tuple(values)).fetchall()
    if not any(processors):
        return [tuple(row) for row in rows]
    return [tuple(value if process is None else process(value) for value, process in zip(row, processors, strict=True))
            for row in rows]
