"""Archived decisions: prune moves decisions into the backup repository's ``archives/<agent>/``.

Layout (DESIGN.md, "The backup repository"; the seeds' ``_archive_items`` writes the same shape)::

    <repository>/archives/<agent>/decisions_<run_id>.json.gz

Each file is gzip-compressed JSON (isal's gzip, :func:`aml.store.codec.encode`): a list of the archived items
exactly as they were (UTF-8; each item's own text as its document held it, one per line after two spaces:
indent 2 for a Loom document; see :func:`add_texts_to_archive`), one file per agent and prune run, so a
retried run rewrites its own file and ``prune undo`` knows which file to take its items back from. Every
write is atomic (temp file, fsync, rename, fsync dir): a crash leaves the old archive or the new one. Prune
writes the archive *before* it rewrites the agent's ``decisions.json``, so an archived decision exists in at
least one of the two at every instant.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec

from aml.store import codec
from aml.store.atomic import atomic_write, fsync_dir
from aml.store.jsontext import loads
from aml.store.rewrite import LOOM_STYLE, dumps_element

ARCHIVE_DIR: Final = "archives"
"""Folder of the backup repository that holds archived records."""

_SAFE: Final = re.compile(r"[^A-Za-z0-9._@+-]")


def _component(name: str) -> str:
    """A safe single path component for an agent or run id (no separators, no ``..``)."""
    cleaned = _SAFE.sub("_", name).lstrip(".") or "_"
    return cleaned[:200]


def archive_file(archive_root: Path, agent: str, run_id: str) -> Path:
    """Where run ``run_id`` archives ``agent``'s decisions: ``<archive_root>/<agent>/decisions_<run_id>.json.gz``."""
    return archive_root / _component(agent) / f"decisions_{_component(run_id)}.json.gz"


def canonical_item(item: Any) -> str:
    """How archive files compare items: canonical JSON (sorted keys, compact, UTF-8 as is)."""
    return json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


_canonical = canonical_item


def read_archive(path: Path) -> list[Any]:
    """The items of an archive file (``[]`` if it does not exist).

    Raises:
        ValueError: the file exists but is not a gzip JSON list.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    data = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    if not isinstance(data, list):
        raise ValueError(f"{path}: not a JSON list")
    return data


def archive_text(items: list[Any]) -> str:
    """The JSON text of an archive file holding ``items``: exactly ``json.dumps(items, indent=2,
    ensure_ascii=False)``, produced by :func:`aml.store.rewrite.dumps_element` in :data:`LOOM_STYLE` (the same
    settings), which joins indented containers several times faster than ``json``'s pure-Python indenting
    encoder and falls back to ``json.dumps`` itself for anything it does not handle.

    Args:
        items: the archived items (JSON values).

    Returns:
        The text (before UTF-8 encoding and gzip).

    Raises:
        TypeError: an item is not JSON-serialisable (as ``json.dumps`` raises it).
        ValueError: a circular reference (as ``json.dumps`` raises it).
    """
    return dumps_element(items, LOOM_STYLE)


def _write(path: Path, items: list[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = archive_text(items).encode("utf-8")
    except UnicodeEncodeError:  # a string with a lone surrogate (an id written "\udcff"): JSON escapes keep it
        data = json.dumps(items, indent=2, ensure_ascii=True).encode("ascii")
    atomic_write(path, codec.encode(data, "gzip"))


def add_to_archive(path: Path, items: Iterable[Any]) -> int:
    """Add items to an archive file (atomically), skipping ones already in it.

    Returns:
        The number of items added.

    Raises:
        OSError: the archive cannot be written (then the caller must not remove the items).
        ValueError: an existing archive file is not a JSON list.
    """
    current = read_archive(path)
    if current:
        known = {_canonical(x) for x in current}
        new = [x for x in items if _canonical(x) not in known]
    else:  # a new archive (the usual case): nothing to compare with
        new = list(items)
    if new or not path.exists():
        _write(path, current + new)
    return len(new)


def add_texts_to_archive(path: Path, texts: Sequence[str]) -> int:
    """Add records given by their exact JSON texts (as prune cut them out of their document) to an archive file,
    atomically.

    A new archive file (the usual case: one per agent and run) holds the texts themselves, as a JSON list laid
    out as :func:`archive_text` lays one out (``[``, each element on a line of its own after two spaces, ``]``):
    the records exactly as their writer wrote them, without parsing and serialising each one again (for a
    document Loom wrote with ``JSON.stringify(items, null, 2)`` that is the text :func:`archive_text` makes of
    the parsed items). An archive that exists already (a retried run), or texts that cannot be written as UTF-8,
    go through :func:`add_to_archive`.

    Args:
        path: the archive file.
        texts: each record's JSON text, as in its document (each one JSON value).

    Returns:
        The number of records added.

    Raises:
        OSError: the archive cannot be written (then the caller must not remove the records).
        ValueError: an existing archive file is not a JSON list, or a text is not JSON.
    """
    if path.exists() or not texts:
        return add_to_archive(path, [loads(t) for t in texts])
    try:
        data = ("[\n  " + ",\n  ".join(texts) + "\n]").encode("utf-8")
    except UnicodeEncodeError:  # not text a document holds: written by json instead
        return add_to_archive(path, [loads(t) for t in texts])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, codec.encode(data, "gzip"))
    return len(texts)


def remove_from_archive(path: Path, items: Iterable[Any]) -> int:
    """Remove items (compared as canonical JSON) from an archive file, atomically; the file is
    deleted when it becomes empty.

    Returns:
        The number of items removed (0 when the file does not exist).
    """
    return remove_records_from_archive(path, items=list(items))


_STRICT: Final = msgspec.json.Decoder()


def _sorted_json(value: Any) -> bytes:
    return msgspec.json.encode(value, order="sorted")


def remove_records_from_archive(path: Path, texts: Collection[str] = (), items: Collection[Any] = ()) -> int:
    """Remove from an archive file the items equal to the records given, atomically; the file is deleted when it
    becomes empty. Undo gives the records it put back as their exact JSON text, so that it holds strings, not
    parsed records, until it reaches the archive.

    Two items are equal when their canonical JSON is (:func:`canonical_item`: ``json.dumps`` with sorted keys).
    When the archive and every text are strict JSON (what msgspec reads: no ``NaN`` or ``Infinity``, no number
    beyond a double, no lone surrogate escape) and no parsed item is given, msgspec's sorted encoding stands in
    for ``json.dumps``: both read the same values from strict JSON (tests/test_store_load_json.py) and write
    each finite value one way only, so the same items compare equal, in about a fifth of the time. Otherwise
    every side goes through ``json.dumps``.

    Args:
        path: the archive file.
        texts: the JSON texts of records to remove.
        items: parsed records to remove.

    Returns:
        The number of items removed (0 when the file does not exist).

    Raises:
        ValueError: the file exists but is not a gzip JSON list, or a text is not JSON.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return 0
    data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    keys: list[str] | list[bytes] | None = None
    if not items:
        try:
            current = _STRICT.decode(data)
            if isinstance(current, list):
                drop: set[str] | set[bytes] = {_sorted_json(_STRICT.decode(t)) for t in texts}
                keys = [_sorted_json(x) for x in current]
        except (msgspec.DecodeError, RecursionError, UnicodeEncodeError):
            keys = None  # not strict JSON: json.dumps compares them
    if keys is None:
        current = json.loads(data)
        if isinstance(current, list):
            drop = {_canonical(x) for x in items} | {_canonical(loads(t)) for t in texts}
            keys = [_canonical(x) for x in current]
    if not isinstance(current, list) or keys is None:
        raise ValueError(f"{path}: not a JSON list")
    kept = [x for x, key in zip(current, keys, strict=True) if key not in drop]
    if len(kept) == len(current):
        return 0
    if kept:
        _write(path, kept)
    else:
        path.unlink()
        fsync_dir(path.parent)
    return len(current) - len(kept)
