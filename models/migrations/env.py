"""Alembic environment of the aml catalog.

The database is, in order of precedence:

1. ``config.attributes["connection"]``: an open connection handed over by the caller
   (``workers.catalog.upgrade`` does this; the migration then runs in the caller's transaction);
2. ``-x url=...`` on the ``alembic`` command line;
3. the ``sqlalchemy.url`` main option, when set programmatically (``workers.catalog.alembic_config``);
4. the environment variable ``AML_CATALOG_URL``;
5. ``sqlite:///$AML_HOME/catalog.db`` (``AML_HOME`` defaults to ``~/.aml``).

SQLite cannot alter tables in place, so migrations run in batch mode there (``render_as_batch``);
the naming convention of :data:`models.base.NAMING_CONVENTION` lets batch operations find
constraints by name.
"""

from __future__ import annotations

import os
from logging.config import fileConfig
from pathlib import Path
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection, make_url

from models import Base, UTCDateTime
from models.engine import make_engine

config = context.config
target_metadata = Base.metadata

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def catalog_url() -> str:
    """The catalog URL when no connection was handed over (see the module docstring)."""
    url = context.get_x_argument(as_dictionary=True).get("url")
    if url:
        return url
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    url = os.environ.get("AML_CATALOG_URL")
    if url:
        return url
    home = Path(os.environ.get("AML_HOME") or "~/.aml").expanduser()
    return f"sqlite:///{home / 'catalog.db'}"


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Autogenerate renders :class:`models.base.UTCDateTime` as its storage type, so migration
    scripts do not import the models (a migration must keep working after the models change)."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        # SQLite DDL is transactional too, once the driver's legacy mode is off (models.engine):
        # a failed migration leaves the previous schema, on either database.
        transactional_ddl=True,
        compare_type=True,
        render_item=render_item,
    )


def run_migrations_offline() -> None:
    """Emit the SQL to a script instead of running it (``alembic upgrade head --sql``)."""
    url = catalog_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=make_url(url).get_backend_name() == "sqlite",
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the handed-over connection, or on a new engine for :func:`catalog_url`."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return

    url = catalog_url()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(url)
    try:
        # On SQLite take the write lock up front: two processes upgrading at once run one after the other.
        with engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
