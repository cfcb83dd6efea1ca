"""Knowing that a document parses, without building it in Python.

``json.loads`` builds every object and string of a document: about 40 MiB/s of Loom JSON on the
benchmark machine, most of the cost of an operation that only needs to know that a document parses
and has the shape its place requires. ``optimize compress`` is one: it re-encodes the same bytes and
never looks inside them, but it must never rewrite a document that does not parse. SQLite's JSON
parser (``json_valid``, ``json_each``: C, no Python objects) validates the same text at 250-400 MiB/s.

:class:`QuickCheck` answers "this document parses, and here is its kind" only when it can vouch for
what :func:`aml.store.documents.load_json` and :func:`~aml.store.documents.classify` would say;
otherwise it answers ``None`` and the caller parses the document fully (which also gives the exact
error, path and byte offset when there is one). It vouches only for:

* a document whose **position** decides its kind (:func:`aml.store.documents.place`): a Loom
  collection or archive (an array whose every element is an object: ``json_each``), root
  ``config.json`` or ``config/schema_version.json`` (an object), or any other positional kind that
  needs no shape (a Loom agent file). Documents whose content decides (``global/``,
  ``monitoring/``, sessions, anything unplaced) are always parsed;
* UTF-8 text without a byte order mark and without a NUL byte (SQLite's parser stops at a NUL;
  ``json.loads`` reports "Extra data").

Every text SQLite's parser accepts, Python's accepts too, with one exception that no memory writer
produces: arrays or objects nested more than about 1,000 levels deep (Python's recursion limit; SQLite
3.40 allows 2,000). Such a document is valid JSON (RFC 8259), which is what compress needs; the full
parse that gc, health and the index use reports it as ``invalid_json`` ("nested too deeply"). What
Python accepts and SQLite does not (``NaN``, ``Infinity``) is simply parsed fully.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from typing import Final

from aml.store.documents import CONTENT_FIRST_KINDS, DICT_KINDS, LIST_KINDS, DocumentKind, Placement

_LEADING_WS: Final = re.compile(rb"[ \t\r\n]*")
_NOT_ALL_OBJECTS: Final = "SELECT count(*) FROM json_each(?) WHERE type <> 'object'"
_VALID: Final = "SELECT json_valid(?)"


class QuickCheck:
    """Vouches for documents that parse, using SQLite's JSON parser (see the module docstring).

    One instance per operation; safe to share between threads. If this SQLite build has no JSON
    functions, or ``enabled`` is false, it vouches for nothing (every document is parsed fully).
    """

    def __init__(self, *, enabled: bool = True) -> None:
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        if not enabled:
            return
        try:
            conn = sqlite3.connect(":memory:", check_same_thread=False)
            conn.execute("SELECT json_valid('[]'), (SELECT count(*) FROM json_each('[{}]'))").fetchone()
        except sqlite3.Error:
            return
        self._conn = conn

    @property
    def available(self) -> bool:
        """Whether SQLite's JSON functions are there (else :meth:`kind` always answers ``None``)."""
        return self._conn is not None

    def close(self) -> None:
        """Release the SQLite connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def kind(self, decoded: bytes, placement: Placement) -> DocumentKind | None:
        """The kind :func:`~aml.store.documents.classify` would give ``decoded`` at ``placement``, if
        the document parses and has the shape that kind requires; ``None`` when this check cannot
        vouch for it (then parse it fully: it may still parse, or it may not).

        Args:
            decoded: the document's decoded bytes (after gzip/zstd).
            placement: its position (:func:`aml.store.documents.place`).
        """
        kind = placement.kind
        if kind is None or kind in CONTENT_FIRST_KINDS or self._conn is None or b"\x00" in decoded:
            return None
        lead = _LEADING_WS.match(decoded)
        first = decoded[lead.end() : lead.end() + 1] if lead is not None else b""
        if kind in LIST_KINDS and first != b"[":
            return None
        if kind in DICT_KINDS and first != b"{":
            return None
        try:
            text = decoded.decode("utf-8")  # strict, as load_json; a BOM fails SQLite's parser below
        except UnicodeDecodeError:
            return None
        sql = _NOT_ALL_OBJECTS if kind in LIST_KINDS else _VALID
        try:
            with self._lock:
                (answer,) = self._conn.execute(sql, (text,)).fetchone()
        except sqlite3.Error:  # "malformed JSON", or anything else: let the full parse decide
            return None
        ok = answer == 0 if kind in LIST_KINDS else answer == 1
        return kind if ok else None
