"""The files a migration reads and rewrites: per-agent collections and ``config/schema_version.json``.

Scope (the same files Loom's ``MigrationManager._apply_migration_step`` rewrites): every Loom agent
directory's ``patterns.json``, ``solutions.json`` and ``decisions.json`` (a ``.gz``/``.zst`` suffix is
accepted, as everywhere in aml). Left alone, as Loom leaves them: ``global/archived-decisions.json``
(Loom's pruner keeps appending runtime-shaped decisions to it whatever the schema version),
``backup/<agent>-<time>/`` reset copies and any other copy of items. :mod:`aml.migrate.detect`
reports their versions separately.

Reading keeps what a rewrite needs to look like the original: the decoded text and the encoding
(sniffed, so gzip under a ``.json`` name stays gzip), the JSON layout, and the SHA-256 of the bytes on
disk (the journal's proof of which version of a file is there). A rewrite (:func:`render`) goes
through :mod:`aml.store.rewrite`, as prune's and gc's do: only the items a step changed are
serialised anew, in the file's own layout; every other byte stays as the writer wrote it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

from aml.store.codec import Encoding
from aml.store.documents import (
    DEFAULT_DECODE_RATIO,
    DocumentError,
    base_name,
    classify,
    decode_bytes,
    load_json,
    max_document_bytes,
    place,
    read_file_bytes,
)
from aml.store.filestore import FileStore
from aml.store.rewrite import DocumentText, JsonStyle, detect_json_style, document_text, find_list, replace_elements

COLLECTIONS: Final = ("patterns", "solutions", "decisions")
"""The per-agent collections a migration changes."""

SCHEMA_FILE: Final = "config/schema_version.json"
"""The store's claimed schema version, ``{"version", "updated_at", "migration_history": []}``."""


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def collection_files(store: FileStore) -> list[tuple[str, str, str]]:
    """The collection files of a store, sorted by path.

    Returns:
        ``[(relpath, agent, collection)]``, e.g. ``("debugger/patterns.json", "debugger", "patterns")``.

    Raises:
        FileNotFoundError, NotADirectoryError: the store root is not a directory.
    """
    out: list[tuple[str, str, str]] = []
    for agent in store.agents():
        with os.scandir(store.root / agent) as entries:
            names = sorted(e.name for e in entries if e.is_file(follow_symlinks=False) or e.is_symlink())
        for name in names:
            stem = base_name(name)
            if stem.endswith(".json") and stem[:-5] in COLLECTIONS:
                out.append((f"{agent}/{name}", agent, stem[:-5]))
    return out


@dataclass(slots=True)
class LoadedFile:
    """One collection file, read and parsed.

    Attributes:
        relpath: store-relative POSIX path.
        path: absolute path.
        sha256: hex SHA-256 of the bytes on disk.
        size_bytes: bytes on disk.
        mtime_ns: modification time (ns since the epoch) when read.
        encoding: ``plain``, ``gzip`` or ``zstd`` (sniffed).
        style: the JSON layout of the decoded text.
        data: the parsed list of items.
        text: the decoded text, for :func:`render`.
    """

    relpath: str
    path: Path
    sha256: str
    size_bytes: int
    mtime_ns: int
    encoding: Encoding
    style: JsonStyle
    data: list[Any]
    text: DocumentText


def load_collection(root: Path, relpath: str, agents: frozenset[str], *,
                    max_bytes: int | None = None) -> LoadedFile:
    """Read, decode, parse and shape-check one collection file (never follows a symlink).

    Args:
        root: the store root.
        relpath: store-relative path from :func:`collection_files`.
        agents: the store's Loom agents (decides the file's placement).
        max_bytes: on-disk size limit in bytes (default ``AML_MAX_DOCUMENT_MB``).

    Returns:
        The :class:`LoadedFile`.

    Raises:
        DocumentError: unreadable, corrupt gzip/zstd, not UTF-8, invalid or truncated JSON, or not a
            list of objects (``wrong_type``); path, byte offset and reason are in the error.
    """
    path = root / relpath
    parts = PurePosixPath(relpath).parts
    if max_bytes is None:
        max_bytes = max_document_bytes()
    raw, st = read_file_bytes(path, max_bytes=max_bytes, relpath=relpath)
    decoded, encoding = decode_bytes(raw, path, max_output=DEFAULT_DECODE_RATIO * max_bytes, relpath=relpath)
    data = load_json(decoded, path, relpath=relpath)
    classify(data, parts, place(parts, agents), path)
    try:
        text = document_text(raw, st, decoded, encoding, path)
    except ValueError as exc:  # load_json accepted it, so this cannot happen
        raise DocumentError(path, None, "not UTF-8", code="not_utf8", relpath=relpath) from exc
    return LoadedFile(relpath, path, sha256(raw), st.st_size, st.st_mtime_ns, encoding,
                      detect_json_style(text.text), data, text)


def render(loaded: LoadedFile, changed: Mapping[int, Any]) -> bytes:
    """The bytes to write for ``loaded`` with the items at the indexes of ``changed`` replaced by its
    values (:func:`aml.store.rewrite.replace_elements`: new items in the file's own JSON layout, every
    other byte as it was), encoded as the file was.

    Raises:
        aml.store.rewrite.SpliceError: the text is not the list it was when read (cannot happen for
            a :class:`LoadedFile`).
    """
    span = find_list(loaded.text.text, "")
    return loaded.text.encoded(replace_elements(loaded.text.text, span, changed, loaded.style))


def read_schema_file(root: Path) -> tuple[dict[str, Any] | None, DocumentError | None]:
    """Read ``config/schema_version.json``.

    Returns:
        ``(document, None)``; ``(None, None)`` when the file does not exist; ``(None, error)`` when it
        cannot be read or is not a JSON object.
    """
    path = root / SCHEMA_FILE
    if not os.path.lexists(path):
        return None, None
    try:
        raw, _ = read_file_bytes(path, relpath=SCHEMA_FILE)
        decoded, _ = decode_bytes(raw, path, relpath=SCHEMA_FILE)
        doc = load_json(decoded, path, relpath=SCHEMA_FILE)
    except DocumentError as exc:
        return None, exc
    if not isinstance(doc, dict):
        return None, DocumentError(path, None, "expected a JSON object", code="wrong_type", relpath=SCHEMA_FILE)
    return doc, None


def schema_bytes(doc: dict[str, Any]) -> bytes:
    """``config/schema_version.json`` as Loom writes it (``json.dump(data, f, indent=2)``)."""
    return json.dumps(doc, indent=2).encode("utf-8")
