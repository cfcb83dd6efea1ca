"""Store ids: the one normalisation of a store argument.

A store is named by a path or a URL, and that string, normalised, is its **store id** everywhere:
locks, catalog rows, metric labels, the index's ``meta.store_id`` (DESIGN.md, "Memory stores").
Every part of aml that turns a store argument into an id calls :func:`normalise_store_id`: the file
store, the query engine, the tasks (``tasks.base.normalize_store``) and the agent-side monitor, so
one store never has two ids.
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
