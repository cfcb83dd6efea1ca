"""Engines and sessions for the catalog.

SQLite (the embedded default) is set up for several processes sharing one file: WAL journal
(readers never block the writer), ``busy_timeout`` 30 s (a writer waits for another instead of
failing at once), foreign keys enforced, and real transactions: the ``sqlite3`` driver's legacy
mode (no ``BEGIN`` before a ``SELECT``, broken ``SAVEPOINT``) is switched off and SQLAlchemy
emits ``BEGIN`` itself. A connection with the execution option ``sqlite_begin="IMMEDIATE"``
takes the write lock when its transaction starts, so a read-then-write transaction can never
fail half-way with "database is locked" because another process wrote in between;
:func:`session_factory` uses it for write sessions.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.orm import Session, sessionmaker

from aml.store.jsontext import dumps_compact, loads

BUSY_TIMEOUT_S = 30.0
"""How long a SQLite connection waits for a lock held by another connection, seconds."""

SQLITE_BEGIN_OPTION = "sqlite_begin"
"""Execution option naming the SQLite ``BEGIN`` mode: ``DEFERRED`` (default), ``IMMEDIATE``, ``EXCLUSIVE``."""

_BEGIN_MODES = frozenset({"DEFERRED", "IMMEDIATE", "EXCLUSIVE"})


def is_sqlite(url: str | URL) -> bool:
    """``True`` when ``url`` names a SQLite database."""
    return make_url(url).get_backend_name() == "sqlite"


def _on_sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Take transaction control away from the sqlite3 driver; see the module docstring.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")  # persistent in the file; "memory" for :memory:
        # NORMAL is durable enough with WAL: a crash never corrupts, at worst loses the last commits
        # on a power cut (not on a process crash).
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _on_sqlite_begin(conn: Connection) -> None:
    mode = str(conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")).upper()
    if mode not in _BEGIN_MODES:
        raise ValueError(f"{SQLITE_BEGIN_OPTION}={mode!r}: expected one of {sorted(_BEGIN_MODES)}")
    conn.exec_driver_sql(f"BEGIN {mode}")


def json_serializer(value: Any) -> str:
    """The catalog's JSON columns' text of ``value``: :func:`aml.store.jsontext.dumps_compact` (msgspec: a prune
    writes one row per removed record, and ``json.dumps`` was about 15 µs of each). Non-finite floats become
    ``null`` (PostgreSQL's ``json`` refuses ``NaN``), except in a value that also holds a lone surrogate, which
    ``json.dumps`` writes as it always did."""
    return dumps_compact(value)


def json_deserializer(text: str | bytes) -> Any:
    """A JSON column's value back from its text: :func:`aml.store.jsontext.loads` (msgspec, or ``json.loads`` for
    what only Python's reader accepts: rows written before by ``json.dumps`` may hold ``NaN``)."""
    return loads(text)


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """Create an engine for the catalog at ``url``.

    For SQLite: WAL, ``busy_timeout`` 30 s, foreign keys on, SQLAlchemy-controlled transactions
    (module docstring). Other databases get ``pool_pre_ping`` so a worker survives a database
    restart. JSON columns are written and read by :func:`json_serializer` and :func:`json_deserializer`.
    ``kwargs`` go to :func:`sqlalchemy.create_engine`.

    Returns:
        A new :class:`~sqlalchemy.Engine` (callers cache it; ``workers.catalog`` does).
    """
    url = make_url(url)
    kwargs.setdefault("json_serializer", json_serializer)
    kwargs.setdefault("json_deserializer", json_deserializer)
    if url.get_backend_name() == "sqlite":
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args.setdefault("timeout", BUSY_TIMEOUT_S)
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _on_sqlite_connect)
        event.listen(engine, "begin", _on_sqlite_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def session_factory(engine: Engine, *, write: bool = True) -> sessionmaker[Session]:
    """A :class:`~sqlalchemy.orm.sessionmaker` bound to ``engine``.

    Args:
        engine: from :func:`make_engine`.
        write: on SQLite, start every transaction with ``BEGIN IMMEDIATE`` (take the write lock
            up front, waiting up to the busy timeout); use ``write=False`` for read-only
            sessions, which then never wait for a writer. No effect on other databases.

    Sessions do not expire objects on commit, so rows returned by the query functions stay
    readable after the transaction ends.
    """
    bind: Engine = engine
    if write and engine.dialect.name == "sqlite":
        bind = engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
    return sessionmaker(bind=bind, expire_on_commit=False)
