"""Fresh catalog databases for tests: a new SQLite file, or a new PostgreSQL schema dropped afterwards."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from workers import catalog

PG_URL = os.environ.get("AML_TEST_POSTGRES_URL")


def postgres_schema_url(base_url: str, schema: str, *options: str) -> str:
    """``base_url`` with ``search_path`` set to ``schema`` (plus further ``-c`` ``options``)."""
    url = make_url(base_url)
    existing = url.query.get("options")
    merged = " ".join([*([existing] if isinstance(existing, str) else existing or ()), f"-csearch_path={schema}",
                       *options])
    return url.update_query_dict({"options": merged}).render_as_string(hide_password=False)


@contextlib.contextmanager
def empty_catalog(kind: str, tmp_path: Path, *pg_options: str) -> Iterator[str]:
    """Yield the URL of an empty catalog database of ``kind`` (``"sqlite"`` or ``"postgres"``).

    PostgreSQL gets a schema of its own in ``AML_TEST_POSTGRES_URL`` (skipped when unset), dropped after.
    """
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'catalog.db'}"
        try:
            yield url
        finally:
            catalog.dispose_engines(url)
        return
    if not PG_URL:
        pytest.skip("AML_TEST_POSTGRES_URL is not set")
    schema = f"aml_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = postgres_schema_url(PG_URL, schema, *pg_options)
    try:
        yield url
    finally:
        catalog.dispose_engines(url)
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
