"""The catalog at run time: its schema (Alembic), engines and sessions.

- The schema is Alembic's (``models/migrations/``, shipped in the package); never ``create_all``.
  :func:`upgrade` / :func:`downgrade` / :func:`current_revision` / :func:`head_revision` drive it
  from Python (``aml db upgrade`` calls :func:`upgrade`), from any working directory.
- :func:`ensure_catalog` is what tasks call before touching the catalog: an embedded SQLite
  catalog is created and upgraded on first use; a shared database (PostgreSQL) is never
  migrated behind its operator's back, and a schema behind the code raises
  :class:`CatalogBehindError` naming the command to run.
- Engines are cached per URL for the life of the process (and dropped in a forked child, so a
  Celery prefork worker never shares a connection with its parent).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.util import asbool

from models.base import SCHEMA_REVISION
from models.engine import SQLITE_BEGIN_OPTION, make_engine, session_factory

if TYPE_CHECKING:  # Alembic is imported only when a schema must be read from scripts or changed
    from alembic.config import Config

__all__ = [
    "CatalogBehindError",
    "CatalogError",
    "alembic_config",
    "alembic_dir",
    "check_catalog_url",
    "current_revision",
    "default_catalog_url",
    "dispose_engines",
    "downgrade",
    "ensure_catalog",
    "get_engine",
    "head_revision",
    "session_scope",
    "upgrade",
]


class CatalogError(RuntimeError):
    """The catalog cannot be used: its migrations are missing, its schema is unknown to this aml, or its URL names an
    in-memory database."""


class CatalogBehindError(CatalogError):
    """The catalog's schema is older than this aml's; the message says which command upgrades it."""

    def __init__(self, url: str, current: str | None, head: str) -> None:
        self.url = url
        self.current = current
        self.head = head
        super().__init__(
            f"the catalog {url} is at schema revision {current or 'none (empty database)'}, "
            f"this aml needs {head}: run `aml db upgrade` (AML_CATALOG_URL={url})"
        )


_ENGINES: dict[str, Engine] = {}
_SESSIONS: dict[tuple[str, bool], sessionmaker[Session]] = {}
_ENSURED: set[str] = set()
_LOCK = threading.RLock()


def default_catalog_url() -> str:
    """``$AML_CATALOG_URL``, else ``sqlite:///$AML_HOME/catalog.db`` (``AML_HOME`` default ``~/.aml``)."""
    url = os.environ.get("AML_CATALOG_URL")
    if url:
        return url
    home = Path(os.environ.get("AML_HOME") or "~/.aml").expanduser()
    return f"sqlite:///{home / 'catalog.db'}"


def _display(url: str) -> str:
    """``url`` with its password masked, for messages."""
    return make_url(url).render_as_string(hide_password=True)


@functools.lru_cache(maxsize=64)
def _key(url: str) -> str:
    """The canonical form of ``url`` that engines and sessions are cached under (parsed once per URL: every
    :func:`session_scope` needs it)."""
    return make_url(url).render_as_string(hide_password=False)


def _is_sqlite_file(backend: str, database: str | None) -> bool:
    if backend != "sqlite" or not database:
        return False
    return database != ":memory:" and not database.startswith("file:")


def _is_sqlite_memory(backend: str, database: str | None, query: Mapping[str, Any]) -> bool:
    """Whether a SQLite URL names an in-memory database (https://www.sqlite.org/inmemorydb.html): no file
    (``sqlite://``) or ``:memory:``; with ``uri=true``, a URI filename ``file::memory:``, or ``mode=memory`` or
    ``vfs=memdb`` among its parameters (SQLAlchemy's pysqlite dialect passes them on only with ``uri=true``; without
    it, it opens the name as a file and ignores them)."""
    if backend != "sqlite":
        return False
    if not database or database == ":memory:":
        return True
    uri = query.get("uri")
    if not (isinstance(uri, str) and asbool(uri)):
        return False
    name = database[5:] if database.startswith("file:") else None
    return name in ("", ":memory:") or query.get("mode") == "memory" or query.get("vfs") == "memdb"


def alembic_dir() -> Path:
    """The Alembic script directory (``env.py``, ``versions/``): ``models/migrations`` inside the
    installed package, so ``aml db upgrade`` works from any directory and from a wheel.

    Raises:
        CatalogError: the package was installed without its migrations.
    """
    import models

    path = Path(models.__file__).resolve().parent / "migrations"
    if not ((path / "env.py").is_file() and (path / "versions").is_dir()):
        raise CatalogError(f"the catalog migrations are missing from the installed package: {path}")
    return path


def alembic_config(url: str) -> Config:
    """An Alembic :class:`~alembic.config.Config` for the catalog at ``url``, usable from any directory.

    ``script_location`` is :func:`alembic_dir`; ``sqlalchemy.url`` is ``url`` (``alembic/env.py``
    uses it when no connection is handed over in ``config.attributes["connection"]``).
    """
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(alembic_dir()).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest schema revision this aml knows (read from the migration scripts; the code's own
    :data:`models.base.SCHEMA_REVISION` must equal it, which a test checks)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if head is None:
        raise CatalogError(f"no migrations in {alembic_dir() / 'versions'}")
    return head


def check_catalog_url(url: str) -> URL:
    """``url`` parsed, once it is known to name a catalog that outlives the process.

    Raises:
        CatalogError: ``url`` names an in-memory SQLite database (``sqlite://``, ``:memory:``; with ``uri=true``,
            ``file::memory:``, ``mode=memory`` or ``vfs=memdb``).
        sqlalchemy.exc.ArgumentError: ``url`` is not a database URL.
    """
    parsed = make_url(url)
    if _is_sqlite_memory(parsed.get_backend_name(), parsed.database, parsed.query):
        raise CatalogError(
            f"the catalog {url} is an in-memory SQLite database, gone when the process ends: task runs, alerts and "
            "the records prune undo puts back must outlive the command; set AML_CATALOG_URL to a file "
            "(sqlite:////path/to/catalog.db) or a PostgreSQL URL")
    return parsed


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for ``url`` (default :func:`default_catalog_url`), created on first use.

    For a SQLite file, its parent directory is created. No schema check: see :func:`ensure_catalog`.

    Raises:
        CatalogError: ``url`` names an in-memory SQLite database (nothing would outlive the process).
    """
    url = url or default_catalog_url()
    key = _key(url)
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            parsed = check_catalog_url(url)
            if _is_sqlite_file(parsed.get_backend_name(), parsed.database):
                Path(str(parsed.database)).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = make_engine(parsed)
            _ENGINES[key] = engine
        return engine


def current_revision(url: str) -> str | None:
    """The schema revision the catalog at ``url`` is at, ``None`` for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _run(url: str, fn: Callable[[Config, str], None], revision: str) -> None:
    cfg = alembic_config(url)
    engine = get_engine(url)
    # One transaction for the whole migration; on SQLite it holds the write lock from the start,
    # so concurrent upgraders run one after the other and the later ones find nothing to do.
    with engine.connect().execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"}) as conn, conn.begin():
        cfg.attributes["connection"] = conn
        fn(cfg, revision)
    with _LOCK:
        _ENSURED.discard(_key(url))


def upgrade(url: str, revision: str = "head") -> None:
    """Upgrade the catalog at ``url`` to ``revision`` (default: the newest), in one transaction."""
    from alembic.command import upgrade as alembic_upgrade

    _run(url, alembic_upgrade, revision)


def downgrade(url: str, revision: str) -> None:
    """Downgrade the catalog at ``url`` to ``revision`` (``"base"`` drops every catalog table)."""
    from alembic.command import downgrade as alembic_downgrade

    _run(url, alembic_downgrade, revision)


def _stamped(engine: Engine) -> list[str] | None:
    """The revisions in the catalog's ``alembic_version`` table, ``None`` when it cannot be read (no table)."""
    try:
        with engine.connect() as conn:
            return [str(v) for v in conn.execute(text("SELECT version_num FROM alembic_version")).scalars()]
    except DBAPIError:
        return None


def ensure_catalog(url: str | None = None) -> Engine:
    """The engine of a catalog whose schema is at the newest revision.

    An embedded SQLite catalog is created (parent directory included) and upgraded as needed. Any
    other database is only checked: migrating a shared database is its operator's decision.

    Raises:
        CatalogBehindError: a non-SQLite catalog is behind; run ``aml db upgrade``.
        CatalogError: the catalog is at a revision this aml does not know (a newer aml migrated it).
    """
    url = url or default_catalog_url()
    key = _key(url)
    engine = get_engine(url)
    with _LOCK:
        if key in _ENSURED:
            return engine
        if _stamped(engine) == [SCHEMA_REVISION]:  # the common case, one query and no Alembic import
            _ENSURED.add(key)
            return engine
        from alembic.script import ScriptDirectory
        from alembic.util.exc import CommandError

        head = head_revision()
        current = current_revision(url)
        if current != head:
            script = ScriptDirectory.from_config(alembic_config(url))
            if current is not None:
                try:
                    known = script.get_revision(current) is not None
                except CommandError:
                    known = False
                if not known:
                    raise CatalogError(
                        f"the catalog {_display(url)} is at schema revision {current!r}, unknown to this "
                        f"aml (newest: {head}); it was migrated by a newer aml: upgrade aml"
                    )
            if engine.dialect.name != "sqlite":
                raise CatalogBehindError(_display(url), current, head)
            upgrade(url)
        _ENSURED.add(key)
        return engine


@contextmanager
def session_scope(url: str | None = None, *, write: bool = True) -> Iterator[Session]:
    """A session on the (ensured) catalog: commits when the block ends, rolls back on an exception.

    Args:
        url: catalog URL (default :func:`default_catalog_url`).
        write: on SQLite, take the write lock when the transaction starts (see
            :func:`models.engine.session_factory`); pass ``False`` for read-only work.
    """
    url = url or default_catalog_url()
    engine = ensure_catalog(url)
    key = (_key(url), write)
    with _LOCK:
        factory = _SESSIONS.get(key)
        if factory is None:
            factory = _SESSIONS[key] = session_factory(engine, write=write)
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_engines(url: str | None = None) -> None:
    """Close the cached engine of ``url`` (all of them when ``None``) and forget it."""
    with _LOCK:
        keys = list(_ENGINES) if url is None else [_key(url)]
        for key in keys:
            engine = _ENGINES.pop(key, None)
            if engine is not None:
                engine.dispose()
            _ENSURED.discard(key)
            for write in (True, False):
                _SESSIONS.pop((key, write), None)


def _after_fork_in_child() -> None:
    # Pooled connections belong to the parent: forget them without closing them. The lock may
    # have been held by a parent thread that does not exist here.
    global _LOCK
    _LOCK = threading.RLock()
    for engine in list(_ENGINES.values()):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_after_fork_in_child)
