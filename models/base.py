"""Declarative base of the catalog, its constraint naming convention, the UTC timestamp type and partial indexes.

Imports only SQLAlchemy and the standard library (see DESIGN.md, "Layout").
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Index, Integer, MetaData, text
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.schema import CreateIndex
from sqlalchemy.types import TypeDecorator, TypeEngine

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Every constraint gets a deterministic name, so Alembic can find it again: autogenerate diffs
stay stable and SQLite batch operations (which recreate the table) can drop or alter it by name."""

BigIntPK: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")
"""Primary-key type of the tables that grow without bound (time series, prune actions): 64-bit on
PostgreSQL; ``INTEGER`` on SQLite, the only type SQLite auto-increments (its rowid is 64-bit anyway)."""


PARTIAL_WHERE = "aml_where"
"""Key of a partial index's condition (a :func:`sqlalchemy.text` clause) in its ``Index.info``
(:func:`partial_index`)."""


def partial_index(name: str, *columns: str, where: str, unique: bool = False) -> Index:
    """An index over the rows for which ``where`` (SQL text) holds: ``CREATE [UNIQUE] INDEX ... WHERE <where>``, the
    same statement on SQLite and PostgreSQL.

    The condition is kept in the index's ``info`` and written by the DDL compiler (:func:`_create_partial_index`)
    rather than given as ``sqlite_where=``/``postgresql_where=``: SQLAlchemy checks a ``postgresql_*`` argument by
    importing its PostgreSQL dialect package (the asyncpg, psycopg and pg8000 dialects with it), about 45 ms of CPU
    in every command that opens a SQLite catalog (issue 12). The catalog's tables are made by its migrations, which
    name the condition per dialect themselves; this serves ``create_all`` (tests) and keeps the models saying what
    the migrations made (``tests/test_catalog.py`` compares the two).

    Two tools do not see the condition, since it is not a dialect argument: Alembic's autogenerate (a migration
    adding a partial index must name it itself, ``sqlite_where=``/``postgresql_where=``, as revisions 0001 and 0005
    do) and ``Table.to_metadata``, which copies an index's arguments but not its ``info`` (aml copies no table).

    Args:
        name: the index's name.
        columns: the indexed columns' names.
        where: the condition, SQL that both dialects read alike (e.g. ``"resolved_at IS NULL"``).
        unique: a unique index (unique among the rows the condition selects).

    Returns:
        The :class:`sqlalchemy.Index`, to list in a table's ``__table_args__``.
    """
    return Index(name, *columns, unique=unique, info={PARTIAL_WHERE: text(where)})


@compiles(CreateIndex)
def _create_partial_index(create: CreateIndex, compiler: Any, **kw: Any) -> str:
    """``CREATE INDEX`` as the dialect writes it, followed by ``WHERE <condition>`` for a :func:`partial_index`, the
    condition compiled as SQLAlchemy's SQLite and PostgreSQL dialects compile their own (``%`` escaped for drivers
    of the ``format`` parameter style, such as psycopg2)."""
    sql: str = compiler.visit_create_index(create, **kw)
    where = create.element.info.get(PARTIAL_WHERE)
    if where is None:
        return sql
    return f"{sql} WHERE {compiler.sql_compiler.process(where, include_table=False, literal_binds=True)}"


def utcnow() -> datetime:
    """The current instant as an aware UTC datetime."""
    return datetime.now(UTC)


SCHEMA_REVISION = "0006"
"""The newest catalog migration (``models/migrations/versions``): a catalog stamped with it needs no Alembic at
run time (:func:`workers.catalog.ensure_catalog`). A test checks it is Alembic's head."""


def as_utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC datetime; a naive value is taken as UTC (DESIGN.md rule)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def iso_z(value: datetime | None) -> str | None:
    """``value`` as ISO 8601 UTC with ``Z`` (what aml writes everywhere), ``None`` for ``None``; a naive value is
    taken as UTC. (The engine's :func:`aml.store.timestamps.utc_iso_z` does the same; ``models`` imports
    nothing of ``aml``.)"""
    return None if value is None else as_utc(value).isoformat().replace("+00:00", "Z")


class UTCDateTime(TypeDecorator[datetime]):
    """An instant, stored in UTC, always read back as an aware UTC ``datetime``.

    PostgreSQL stores it as ``timestamp with time zone``. SQLite has no time zones: the value is
    converted to UTC and stored naive (``YYYY-MM-DD HH:MM:SS.ffffff``, which sorts and compares
    correctly as text), and marked UTC again when read. Binding a naive datetime takes it as UTC;
    binding an aware one in any zone converts it. Both databases therefore behave the same.
    """

    impl = DateTime
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(timezone=True)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC; strip the zone where the database cannot store one."""
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        value = as_utc(value)
        if dialect.name == "postgresql":
            return value
        return value.replace(tzinfo=None)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        """Return an aware UTC datetime (``None`` stays ``None``)."""
        if value is None:
            return None
        if isinstance(value, str):  # a raw value written by another tool
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return as_utc(value)


class Base(DeclarativeBase):
    """Declarative base of every catalog table; its metadata carries :data:`NAMING_CONVENTION`."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
