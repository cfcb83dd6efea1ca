"""File names that are not valid UTF-8: exact where they are stored, escaped where they are shown.

On Linux a file name is any bytes but ``/`` and NUL. Python hands them over as ``str`` with every byte
that is not part of valid UTF-8 mapped to a lone surrogate U+DC80..U+DCFF (PEP 383 ``surrogateescape``,
what ``os.fsdecode``, ``os.listdir`` and ``os.scandir`` do). Such a ``str`` cannot be encoded as UTF-8:
JSON written with ``ensure_ascii=False``, SQLite, PostgreSQL and the terminal all refuse it.

* The backup repository keeps names **exact** (see :mod:`aml.backup.manifest`).
* Everything that is text for people or other programs (task results, ``--json``, the catalog, alert
  fingerprints, ``backup_metadata.json``, messages) uses :func:`text_name`: each byte that is not valid
  UTF-8 is written ``\\xNN`` (Python's ``backslashreplace``, as ``aml.trace`` already shows Redis keys),
  and a valid name is returned unchanged (the same object: no cost for the common case).
* A path kept as text (a catalog row) finds its file again with :func:`resolve_text_path`.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

__all__ = ["is_text", "name_bytes", "resolve_text_path", "text_name", "text_names"]


def is_text(name: str) -> bool:
    """True if ``name`` is valid Unicode text (no lone surrogate: it encodes as UTF-8)."""
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def text_name(name: str) -> str:
    """``name`` as valid text: bytes that are not UTF-8 escaped as ``\\xNN``; valid names unchanged.

    Args:
        name: a file name or path as Python got it from the OS (``surrogateescape``), or any string.

    Returns:
        ``name`` itself when it is valid text; else a copy where each surrogate-escaped byte is ``\\xNN``
        (and any other lone surrogate ``\\udXXX``). Idempotent.
    """
    if is_text(name):
        return name
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte (e.g. from a JSON "\\ud800")
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def text_names(obj: Any) -> Any:
    """``obj`` (JSON-like: dicts, lists, tuples, strings, scalars) with :func:`text_name` applied to every
    string, dict keys included. Containers without such strings are returned as they are.

    The common case, no such string anywhere, is settled in one C pass: msgspec encodes ``obj`` as UTF-8 JSON,
    which fails on any lone surrogate (a prune plan's 27,000 actions: ~10 ms against ~150 ms walked in Python).
    """
    try:
        _ENCODE(obj)
    except (UnicodeEncodeError, TypeError, ValueError, RecursionError):  # a name to escape, or not JSON-like
        return _text_names(obj)
    return obj


_ENCODE = msgspec.json.Encoder().encode


def _text_names(obj: Any) -> Any:
    """:func:`text_names`, walked."""
    if isinstance(obj, str):
        return text_name(obj)
    if isinstance(obj, dict):
        changed = False
        out: dict[Any, Any] = {}
        for k, v in obj.items():
            k2, v2 = _text_names(k), _text_names(v)
            changed = changed or k2 is not k or v2 is not v
            out[k2] = v2
        return out if changed else obj
    if isinstance(obj, list | tuple):
        items = [_text_names(v) for v in obj]
        if all(a is b for a, b in zip(obj, items, strict=True)):
            return obj
        return items if isinstance(obj, list) else tuple(items)
    return obj


def name_bytes(name: str) -> bytes:
    """The exact bytes of a file name Python got from the OS (``os.fsencode``)."""
    return os.fsencode(name)


def resolve_text_path(root: str | os.PathLike[str], text_path: str) -> str:
    """The store-relative path whose text form (:func:`text_name`) is ``text_path``.

    A path recorded as text (e.g. ``prune_actions.document_path`` in the catalog) lost the exact bytes of
    a name that is not valid UTF-8. Each component that is not found as written is looked up among its
    directory's entries whose :func:`text_name` equals it.

    Args:
        root: the store directory.
        text_path: ``/``-separated relative path, as text.

    Returns:
        The exact relative path (``surrogateescape``) when every escaped component has exactly one match;
        else ``text_path`` unchanged (the caller then finds it missing, as it would have).
    """
    if "\\x" not in text_path or os.path.lexists(os.path.join(root, text_path)):
        return text_path
    current = ""
    for part in text_path.split("/"):
        base = os.path.join(root, current) if current else os.fspath(root)
        found = part
        if "\\x" in part and not os.path.lexists(os.path.join(base, part)):
            try:
                names = os.listdir(base)
            except OSError:
                return text_path
            matches = [n for n in names if not is_text(n) and text_name(n) == part]
            if len(matches) != 1:
                return text_path
            found = matches[0]
        current = f"{current}/{found}" if current else found
    return current
