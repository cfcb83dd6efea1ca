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

A migration reads a file in one streaming pass (:func:`read_collection`, then :func:`iter_spans`):
its list is never built, only one item is in memory at a time, and the new text is spliced as the
items go by (:func:`aml.store.rewrite.dumps_element`).
:func:`load_collection` and :func:`render` (the whole document parsed, then spliced) are the
reference, used for any file the streaming pass cannot vouch for (see :mod:`aml.migrate.plan`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
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
    return parse_collection(read_collection(root, relpath, max_bytes=max_bytes), agents)


@dataclass(slots=True)
class RawFile:
    """One collection file as read from disk, decoded but not parsed (see :func:`read_collection`).

    Attributes:
        relpath: store-relative POSIX path.
        path: absolute path.
        raw: the bytes on disk.
        stat: ``os.fstat`` of the open file.
        decoded: ``raw`` decoded (the same object for ``plain``).
        encoding: ``plain``, ``gzip`` or ``zstd`` (sniffed).
    """

    relpath: str
    path: Path
    raw: bytes
    stat: os.stat_result
    decoded: bytes
    encoding: Encoding


def read_collection(root: Path, relpath: str, *, max_bytes: int | None = None) -> RawFile:
    """Read and decode one collection file (never follows a symlink); the first half of
    :func:`load_collection`.

    Args:
        root: the store root.
        relpath: store-relative path from :func:`collection_files`.
        max_bytes: on-disk size limit in bytes (default ``AML_MAX_DOCUMENT_MB``).

    Returns:
        The :class:`RawFile`.

    Raises:
        DocumentError: unreadable, too large, or corrupt gzip/zstd.
    """
    path = root / relpath
    if max_bytes is None:
        max_bytes = max_document_bytes()
    raw, st = read_file_bytes(path, max_bytes=max_bytes, relpath=relpath)
    decoded, encoding = decode_bytes(raw, path, max_output=DEFAULT_DECODE_RATIO * max_bytes, relpath=relpath)
    return RawFile(relpath, path, raw, st, decoded, encoding)


def parse_collection(read: RawFile, agents: frozenset[str]) -> LoadedFile:
    """Parse and shape-check a file from :func:`read_collection`; the second half of
    :func:`load_collection`.

    Args:
        read: the file's bytes.
        agents: the store's Loom agents (decides the file's placement).

    Returns:
        The :class:`LoadedFile`.

    Raises:
        DocumentError: not UTF-8, invalid or truncated JSON, or not a list of objects.
    """
    path, relpath = read.path, read.relpath
    parts = PurePosixPath(relpath).parts
    data = load_json(read.decoded, path, relpath=relpath)
    classify(data, parts, place(parts, agents), path)
    try:
        text = document_text(read.raw, read.stat, read.decoded, read.encoding, path)
    except ValueError as exc:  # load_json accepted it, so this cannot happen
        raise DocumentError(path, None, "not UTF-8", code="not_utf8", relpath=relpath) from exc
    return LoadedFile(relpath, path, sha256(read.raw), read.stat.st_size, read.stat.st_mtime_ns, read.encoding,
                      detect_json_style(text.text), data, text)


class IrregularText(ValueError):
    """Raised by :func:`iter_elements` where the text is not a plain JSON list it can stream: the
    caller falls back to :func:`parse_collection`, which reports the exact error (or parses it)."""


_DECODER: Final = json.JSONDecoder()
_WS: Final = re.compile(r"[ \t\n\r]*")


def iter_elements(decoded: bytes) -> Iterator[Any]:
    """The elements of a document that is a JSON list, parsed one at a time (the list itself is never
    built, so only one element is in memory at once).

    Accepts exactly what :func:`aml.store.documents.load_json` accepts when its result is a list (see
    :func:`iter_spans`), so each element equals what ``json.loads`` would put in the list.

    Args:
        decoded: the decoded bytes of the document.

    Yields:
        Each element, in order.

    Raises:
        IrregularText: not UTF-8, not valid JSON, or not a list (after the elements before the
            problem were yielded).
    """
    try:
        text = decoded.decode("utf-8")  # a BOM becomes U+FEFF, which iter_spans skips
    except UnicodeDecodeError as exc:
        raise IrregularText("not UTF-8") from exc
    for _, _, element in iter_spans(text):
        yield element


def iter_spans(text: str) -> Iterator[tuple[int, int, Any]]:
    """Where the elements of a JSON list are in ``text``, and their values, one at a time.

    Accepts exactly what :func:`aml.store.documents.load_json` accepts when its result is a list: a
    leading BOM is skipped, whitespace is JSON's four characters, every element goes through the
    same scanner as ``json.loads`` (``JSONDecoder.raw_decode``) and nothing but whitespace may
    follow the list. The offsets are those :func:`aml.store.rewrite.find_list` finds for ``""``.

    Args:
        text: the decoded document (a leading BOM allowed).

    Yields:
        ``(start, end, element)``: the element is ``text[start:end]``. The last one is yielded only
        once the closing ``]`` and the end of the text have been checked.

    Raises:
        IrregularText: not valid JSON, or not a list (after the elements before the problem were
            yielded).
    """
    ws, decode, n = _WS.match, _DECODER.raw_decode, len(text)
    i = ws(text, 1 if text.startswith("\ufeff") else 0).end()  # type: ignore[union-attr]
    if text[i : i + 1] != "[":
        raise IrregularText("not a list")
    i = ws(text, i + 1).end()  # type: ignore[union-attr]
    if text[i : i + 1] == "]":
        if ws(text, i + 1).end() != n:  # type: ignore[union-attr]
            raise IrregularText("extra data")
        return
    while True:
        start = i
        try:
            element, end = decode(text, i)
        except (ValueError, RecursionError) as exc:
            raise IrregularText("invalid JSON") from exc
        i = ws(text, end).end()  # type: ignore[union-attr]
        mark = text[i : i + 1]
        if mark == ",":
            yield start, end, element
            i = ws(text, i + 1).end()  # type: ignore[union-attr]
        elif mark == "]" and ws(text, i + 1).end() == n:  # type: ignore[union-attr]
            yield start, end, element
            return
        else:
            raise IrregularText("invalid JSON")


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
