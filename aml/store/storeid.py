"""Store ids: the one normalisation of a store argument.

A store is named by a path or a URL, and that string, normalised, is its **store id** everywhere:
locks, catalog rows, metric labels, the index's ``meta.store_id`` (DESIGN.md, "Memory stores").
Every part of aml that turns a store argument into an id calls :func:`normalise_store_id`: the file
store, the query engine, the tasks (``tasks.base.normalize_store``) and the agent-side monitor, so
one store never has two ids. A Redis keyspace's id is its URL without password (:func:`keyspace_id`).
"""

from __future__ import annotations

import os


def normalise_store_id(store: str | os.PathLike[str]) -> str:
    """The store id of a store argument.

    Args:
        store: a directory (``~`` allowed; it need not exist) or a URL (``redis://host:6379/0``,
            anything with ``://``).

    Returns:
        For a URL, the URL as given apart from surrounding whitespace; for a path, its absolute form
        with ``~`` expanded, symlinks resolved and no trailing separator (``os.path.realpath``).

    Raises:
        ValueError: an empty (or blank) store argument.
    """
    text = os.fspath(store).strip()
    if not text:
        raise ValueError("store is empty")
    if "://" in text:
        return text
    return os.path.realpath(os.path.expanduser(text))


def keyspace_id(url: str) -> str:
    """The store id of a Redis database: its URL without password, with the database number always
    written (``redis://host:6379`` and ``redis://host:6379/0`` are one keyspace).

    Raises:
        ValueError: not a Redis URL.
    """
    from urllib.parse import urlsplit, urlunsplit

    url = url.strip()
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"{redact(url)} is not a Redis URL (redis://host:port/db)")
    parts = urlsplit(redact(url))
    if parts.scheme == "unix":
        return urlunsplit(parts)
    path = parts.path.strip("/") or "0"
    return urlunsplit(parts._replace(path=f"/{path}"))


def redact(url: str) -> str:
    """``url`` without its password (``redis://user:secret@host/0`` -> ``redis://user:***@host/0``)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
