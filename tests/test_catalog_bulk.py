"""models.bulk.insert_rows: on SQLite the rows it stores are the very rows a Core executemany stores."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import Base, make_engine, session_factory
from models.bulk import insert_columns, insert_rows, select_in
from models.tables import MetricSample, PruneAction
from tests.catalog_helpers import empty_catalog

PRUNE = cast(sa.Table, PruneAction.__table__)
SAMPLES = cast(sa.Table, MetricSample.__table__)
COLUMN = {c.name: i for i, c in enumerate(PRUNE.columns)}  # positions in a prune_actions row as SELECT * reads it
CREATED, UNDONE = COLUMN["created_at"], COLUMN["undone_at"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def _row(n: int, record: Any, at: datetime, **extra: Any) -> dict[str, Any]:
    return {"run_id": "run", "task_run_id": None, "backup_id": "b1", "store": "/s", "agent": f"agent-{n % 3}",
            "collection": "patterns", "record_id": f"p{n}", "reason": "old", "score": n / 7 if n % 2 else None,
            "action": "removed", "document_path": "a/patterns.json", "record": record, "created_at": at,
            "undone_at": None, **extra}


def _stored(path: Path, table: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()


def _both(tmp_path: Path, table: sa.Table, rows: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """The rows as stored by insert_rows and by a Core insert, each into a new SQLite file."""
    stored = []
    for name, insert in (("bulk", lambda s: insert_rows(s, table, rows)),
                         ("core", lambda s: s.execute(sa.insert(table), rows))):
        path = tmp_path / f"{name}.db"
        path.unlink(missing_ok=True)
        engine = make_engine(f"sqlite:///{path}")
        Base.metadata.create_all(engine)
        with session_factory(engine)() as session, session.begin():
            insert(session)
        engine.dispose()
        stored.append(_stored(path, table.name))
    return stored[0], stored[1]


@contextlib.contextmanager
def _catalog(kind: str, tmp_path: Path, rows: list[dict[str, Any]]) -> Iterator[sa.Engine]:
    """An empty catalog of ``kind`` (``sqlite`` or ``postgres``) with ``rows`` inserted by :func:`insert_rows`."""
    with empty_catalog(kind, tmp_path) as url:
        engine = make_engine(url)
        try:
            Base.metadata.create_all(engine)
            with session_factory(engine)() as session, session.begin():
                assert insert_rows(session, PRUNE, rows) == len(rows)
            yield engine
        finally:
            engine.dispose()


@pytest.fixture
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("bulk")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(json_values, min_size=1, max_size=6))
def test_bulk_rows_are_the_rows_a_core_insert_stores(records: list[Any], scratch: Path) -> None:
    at = datetime(2026, 12, 3, 17, 4, 5, 123456, tzinfo=timezone(timedelta(hours=5)))  # converted to UTC
    rows = [_row(n, {"v": 2, "text": record}, at) for n, record in enumerate(records)]
    bulk, core = _both(scratch, PRUNE, rows)
    assert bulk == core
    assert bulk[0][CREATED] == "2026-12-03 12:04:05.123456", "UTCDateTime's text: UTC, naive"


def test_values_repeated_by_identity_or_not_are_converted_alike(tmp_path: Path) -> None:
    """A value shared by every row (converted once) and equal values in distinct objects store the same."""
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    shared = {"v": 2, "text": "é\u2028 \"quoted\""}
    rows = [_row(0, shared, at), _row(1, shared, at), _row(2, dict(shared), datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
            _row(3, None, at, undone_at=at), _row(4, shared, at)]
    bulk, core = _both(tmp_path, PRUNE, rows)
    assert bulk == core
    assert [r[UNDONE] for r in bulk] == [None, None, None, "2026-01-02 03:04:05.000000", None]


def test_rows_without_a_defaulted_column_take_the_core_path(tmp_path: Path) -> None:
    """created_at has a Python default: rows leaving it out still get it (SQLAlchemy fills it in)."""
    at = datetime(2026, 1, 2, tzinfo=UTC)
    rows = [{k: v for k, v in _row(n, {"n": n}, at).items() if k != "created_at"} for n in range(3)]
    bulk, core = _both(tmp_path, PRUNE, rows)
    assert [r[CREATED] is not None for r in bulk] == [True] * 3
    assert ([r[:CREATED] + r[CREATED + 1:] for r in bulk] == [r[:CREATED] + r[CREATED + 1:] for r in core])


def test_a_refused_row_raises_and_nothing_of_the_batch_stays(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    Base.metadata.create_all(engine)
    at = datetime(2026, 1, 2, tzinfo=UTC)
    rows = [_row(0, {}, at), _row(1, {}, at, action="deleted")]  # the CHECK constraint refuses "deleted"
    with session_factory(engine)() as session:
        with pytest.raises(sa.exc.IntegrityError), session.begin():
            insert_rows(session, PRUNE, rows)
        assert session.scalar(sa.select(sa.func.count()).select_from(PRUNE)) == 0
    engine.dispose()


def test_no_rows_inserts_nothing(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    Base.metadata.create_all(engine)
    with session_factory(engine)() as session, session.begin():
        assert insert_rows(session, SAMPLES, []) == 0
    engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_inserted_rows_read_back_through_the_models(kind: str, tmp_path: Path) -> None:
    at = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
    rows = [_row(n, {"text": f"t{n}", "n": [n, None]}, at) for n in range(5)]
    with _catalog(kind, tmp_path, rows) as engine, session_factory(engine, write=False)() as session:
        got = list(session.scalars(sa.select(PruneAction).order_by(PruneAction.id)))
    assert [(a.record_id, a.record, a.created_at, a.undone_at) for a in got] == [
        (f"p{n}", {"text": f"t{n}", "n": [n, None]}, at, None) for n in range(5)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(json_values, min_size=1, max_size=6), picked=st.sets(st.integers(1, 8), max_size=8))
def test_select_in_reads_what_a_core_select_reads(records: list[Any], picked: set[int], scratch: Path) -> None:
    """The driver-level read gives the values SQLAlchemy's own select gives (JSON parsed, timestamps and NULLs
    alike), for any set of keys, those that match no row included."""
    path = scratch / "read.db"
    path.unlink(missing_ok=True)
    engine = make_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    try:
        with session_factory(engine)() as session, session.begin():
            insert_rows(session, PRUNE, [_row(n, record, at) for n, record in enumerate(records)])
        columns = ("id", "record_id", "record", "created_at", "undone_at", "score")
        with session_factory(engine, write=False)() as session:
            got = sorted(select_in(session, PRUNE, columns, "id", sorted(picked)))
            expected = sorted(tuple(row) for row in session.execute(
                sa.select(*(PRUNE.c[c] for c in columns)).where(PRUNE.c.id.in_(sorted(picked)))))
            assert select_in(session, PRUNE, columns, "id", []) == []
    finally:
        engine.dispose()
    assert got == expected and len(got) == len(picked & set(range(1, len(records) + 1)))


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_select_in_on_each_catalog(kind: str, tmp_path: Path) -> None:
    at = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
    rows = [_row(n, {"text": f"t{n}"}, at) for n in range(4)]
    with _catalog(kind, tmp_path, rows) as engine, session_factory(engine, write=False)() as session:
        got = sorted(select_in(session, PRUNE, ("id", "record", "created_at"), "id", [2, 4, 99]))
    assert got == [(2, {"text": "t1"}, at), (4, {"text": "t3"}, at)]


def _by_columns(rows: list[dict[str, Any]], shared: tuple[str, ...]) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """``rows`` given column by column, the keys ``shared`` once (their value in the first row)."""
    columns = {key: [row[key] for row in rows] for key in rows[0] if key not in shared}
    return columns, {key: rows[0][key] for key in shared}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(json_values, min_size=1, max_size=6), shared_record=json_values)
def test_rows_given_by_column_are_the_rows_a_core_insert_stores(records: list[Any], shared_record: Any,
                                                                scratch: Path) -> None:
    """insert_columns stores what a Core insert of the same rows stores: values given once for every row (a JSON
    value, a timestamp, NULL) converted as each row's own would be."""
    at = datetime(2026, 12, 3, 17, 4, 5, 123456, tzinfo=timezone(timedelta(hours=-3)))
    for record_shared in (False, True):
        rows = [_row(n, shared_record if record_shared else {"text": record}, at) for n, record in enumerate(records)]
        shared = ("run_id", "store", "created_at", "undone_at", "task_run_id") + (("record",) if record_shared else ())
        columns, constants = _by_columns(rows, shared)
        by_column = scratch / "columns.db"
        by_column.unlink(missing_ok=True)
        engine = make_engine(f"sqlite:///{by_column}")
        Base.metadata.create_all(engine)
        with session_factory(engine)() as session, session.begin():
            assert insert_columns(session, PRUNE, columns, constants) == len(rows)
        engine.dispose()
        _, core = _both(scratch, PRUNE, rows)
        assert _stored(by_column, "prune_actions") == core


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_rows_given_by_column_read_back_through_the_models(kind: str, tmp_path: Path) -> None:
    at = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
    rows = [_row(n, None, at) for n in range(4)]
    columns, constants = _by_columns(rows, ("run_id", "record", "created_at", "undone_at"))
    with empty_catalog(kind, tmp_path) as url:
        engine = make_engine(url)
        try:
            Base.metadata.create_all(engine)
            with session_factory(engine)() as session, session.begin():
                assert insert_columns(session, PRUNE, columns, constants) == 4
            with session_factory(engine, write=False)() as session:
                got = list(session.scalars(sa.select(PruneAction).order_by(PruneAction.id)))
                # a record given once as None is JSON null in every row, as the Core path stores it, not SQL NULL
                stored = session.execute(sa.text("SELECT record IS NULL, undone_at IS NULL FROM prune_actions")).all()
        finally:
            engine.dispose()
    assert [(a.run_id, a.record_id, a.record, a.created_at, a.undone_at) for a in got] == [
        ("run", f"p{n}", None, at, None) for n in range(4)]
    assert [tuple(map(bool, row)) for row in stored] == [(False, True)] * 4


def test_columns_that_do_not_make_rows_are_refused(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    Base.metadata.create_all(engine)
    at = datetime(2026, 1, 2, tzinfo=UTC)
    columns, constants = _by_columns([_row(0, {}, at), _row(1, {}, at)], ("run_id", "created_at"))
    with session_factory(engine)() as session, session.begin():
        with pytest.raises(ValueError, match="different lengths"):
            insert_columns(session, PRUNE, {**columns, "score": [0.5]}, constants)
        with pytest.raises(ValueError, match="both row by row and as a constant"):
            insert_columns(session, PRUNE, columns, {**constants, "store": "/t"})
        with pytest.raises(ValueError, match="at least one column"):
            insert_columns(session, PRUNE, {}, constants)
        with pytest.raises(KeyError):
            insert_columns(session, PRUNE, columns, {**constants, "no_such_column": 1})
        assert insert_columns(session, PRUNE, {k: [] for k in columns}, constants) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(PRUNE)) == 0
    engine.dispose()
