"""The record index as a prune plan's source for the documents it holds unchanged.

A plan reads every document of the store, except the live Loom collections the index
(``.aml/index.sqlite``, :mod:`aml.optimize.index`) read at least :data:`~aml.optimize.files.CHANGE_TICK_NS`
after their last change (mtime and ctime) and recorded with the same size, ``st_mtime_ns``, ``st_ctime_ns`` and inode as
they have now: for those it takes each record's rule fields, size and value inputs from
``documents.prune_fields`` (:mod:`aml.prune.fields`), which the index made from the same bytes with the same
functions. Any write, ``utime`` (``cp -p``, ``touch -r``) or ``chmod`` sets the ctime; a change within the
same timestamp step as the one before the read is ruled out by that step's margin (git's "racily clean"
rule). Applying a plan still re-reads every document it edits, refuses one that changed since the plan, and
checks each record's id at its position before removing it.

The index is not used when it is of another format, was made by another version of aml or of the prune
fields (:data:`~aml.prune.fields.FIELDS_VERSION`), or for another set of agent directories; a document is read
when the index holds it with an error, another encoding than plain JSON, another place in the store than its
path gives, above the store's size limit, or with prune fields that do not match their checksum, do not read
or do not match its record count (a damaged index).
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import PurePosixPath
from typing import NamedTuple

import aml
from aml.optimize.files import CHANGE_TICK_NS, INDEX_FILE, RECORD_INDEX_FORMAT
from aml.prune.fields import FIELDS_VERSION, LOOM_LIVE, IndexedItem, decode_document
from aml.store.documents import Placement, place
from aml.store.filestore import FileStore


class IndexedDocument(NamedTuple):
    """An unchanged live Loom collection, as the index holds it: its agent, collection and records in order."""

    agent: str
    collection: str
    items: list[IndexedItem]


class PlanIndex:
    """The index's unchanged live Loom collections of a store, opened read-only for one plan.

    Use :meth:`open`; then :meth:`document` for each file; :meth:`close` at the end.
    """

    def __init__(self, conn: sqlite3.Connection, documents: dict[str, tuple[int, int, int, int, str, str, int]],
                 max_bytes: int | None) -> None:
        self._conn = conn
        self._documents = documents
        self._max_bytes = max_bytes

    @classmethod
    def open(cls, store: FileStore) -> PlanIndex | None:
        """The store's index, or ``None`` when it has none this plan can use (missing, unreadable, of another
        format or version, or built for another set of agent directories)."""
        path = store.root / INDEX_FILE
        try:
            if not path.is_file():
                return None
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        except (OSError, sqlite3.Error):  # e.g. a .aml directory this user may not enter
            return None
        agents = frozenset(store.agents())
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if (meta.get("format") != RECORD_INDEX_FORMAT or meta.get("prune_fields") != FIELDS_VERSION
                    or meta.get("aml_version") != aml.__version__
                    or meta.get("loom_agents") != json.dumps(sorted(agents))):
                conn.close()
                return None
            documents = {
                row[0]: (row[1], row[2], row[3], row[4], row[5], row[6], row[7]) for row in conn.execute(
                    "SELECT relpath, size_bytes, mtime_ns, ino, ctime_ns, agent, collection, record_count "
                    "FROM documents WHERE kind = 'loom_collection' AND encoding = 'plain' AND error IS NULL "
                    "AND prune_fields IS NOT NULL AND max(mtime_ns, ctime_ns) < read_at_ns - ?", (CHANGE_TICK_NS,))
                if row[6] in LOOM_LIVE
                and place(PurePosixPath(row[0]).parts, agents) == Placement("loom_collection", row[5], row[6])
            }
        except sqlite3.Error:
            conn.close()
            return None
        return cls(conn, documents, store.max_bytes)

    def document(self, relpath: str, st: os.stat_result) -> IndexedDocument | None:
        """The items of ``relpath`` if the index holds it unchanged (same size, ``st_mtime_ns``, ``st_ctime_ns``
        and inode as ``st``, a regular file within the store's size limit) and its prune fields read back; else
        ``None`` (read it).

        Args:
            relpath: store-relative path.
            st: its ``lstat``.
        """
        known = self._documents.get(relpath)
        if (known is None or not stat.S_ISREG(st.st_mode)
                or known[:4] != (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
                or (self._max_bytes is not None and st.st_size > self._max_bytes)):
            return None
        agent, collection, count = known[4], known[5], known[6]
        try:
            row = self._conn.execute("SELECT prune_fields, prune_fields_digest FROM documents WHERE relpath = ?",
                                     (relpath,)).fetchone()
            items = (decode_document(row[0], row[1]) if row is not None and type(row[0]) is bytes
                     and type(row[1]) is str else None)
        except (sqlite3.Error, ValueError):
            return None
        if items is None or len(items) != count:
            return None
        return IndexedDocument(agent, collection, items)

    def close(self) -> None:
        """Close the database."""
        self._conn.close()
