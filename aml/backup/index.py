"""The repository index: where every object lives (pack, offset, length, uncompressed size).

Format: ``index/<index_id>.json``, where ``index_id`` is the sha256 (hex) of the file's bytes, so a
flipped bit is detected on load even when the JSON still parses::

    {"format": "aml-index", "version": 1,
     "supersedes": ["<index_id>", ...],            # index files this one replaces (prune, rebuild)
     "packs": [{"id": "<pack sha256>", "size": <pack bytes>,
                "ids": "<sha256 hex of object 0><sha256 hex of object 1>...",   # 64 chars each
                "offsets": [...], "lengths": [...], "sizes": [...]}]}       # bytes; one per object

Columns instead of one JSON object per entry keep the file small and fast to parse at 100,000 objects.
An index file is written after the packs it describes are durable, and before any manifest that needs
it. All index files are merged on load; files listed in another valid file's ``supersedes`` are ignored
(a prune interrupted after writing its new index but before deleting the old ones stays consistent).

In an encrypted repository the file's bytes are the document sealed (:mod:`aml.backup.crypto`, associated
data ``index``), and ``index_id`` is the sha256 of the sealed bytes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aml.store.atomic import atomic_write
from aml.store.jsontext import dumps_compact, loads

from . import crypto, remote
from ._common import TMP_PREFIX
from .errors import CorruptionError
from .pack import PackInfo, open_pack, parse_trailer

INDEX_FORMAT = "aml-index"
INDEX_VERSION = 1

Location = tuple[str, int, int, int]
"""(pack id, offset, compressed length, uncompressed size); offsets and lengths in bytes."""

__all__ = [
    "INDEX_FORMAT",
    "Index",
    "IndexProblem",
    "Location",
    "list_index_ids",
    "list_pack_ids",
    "load_index",
    "rebuild_index",
    "serialize_index",
    "write_index",
]


@dataclass(slots=True)
class IndexProblem:
    """A damaged index file found while loading.

    Attributes:
        index_id: the file's id (its name without ``.json``).
        reason: what is wrong (checksum mismatch, JSON error, bad format).
        packs: pack ids the file claims to describe, when it still parses.
        objects: object ids the file claims, when it still parses.
    """

    index_id: str
    reason: str
    packs: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)


@dataclass
class Index:
    """All index files merged.

    Attributes:
        objects: object id -> :data:`Location` (the first location seen when an object is duplicated).
        packs: pack id -> pack size in bytes, for every pack some index describes.
        pack_entries: pack id -> its entries ``(object id, offset, length, size)`` including duplicates.
        files: index id -> pack ids it describes (only the files that were merged).
        problems: damaged index files (only when loaded with ``strict=False``).
        untrusted: object ids whose only location comes from a damaged index file.
    """

    objects: dict[str, Location] = field(default_factory=dict)
    packs: dict[str, int] = field(default_factory=dict)
    pack_entries: dict[str, list[tuple[str, int, int, int]]] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)
    problems: list[IndexProblem] = field(default_factory=list)
    untrusted: set[str] = field(default_factory=set)

    def __contains__(self, oid: object) -> bool:
        return oid in self.objects

    def __len__(self) -> int:
        return len(self.objects)

    def add_pack(self, info: PackInfo) -> None:
        """Merge a freshly written pack (used during backup so later files dedup against it)."""
        self._add(info.id, info.size, [(e.id, e.offset, e.length, e.size) for e in info.entries])

    def _add(self, pack_id: str, size: int, entries: list[tuple[str, int, int, int]]) -> None:
        if pack_id in self.packs:
            return
        self.packs[pack_id] = size
        self.pack_entries[pack_id] = entries
        objects = self.objects
        for oid, off, ln, sz in entries:
            if oid not in objects:
                objects[oid] = (pack_id, off, ln, sz)


def serialize_index(packs: Iterable[PackInfo], supersedes: Iterable[str] = ()) -> bytes:
    """Encode packs' entries as index file bytes (see module docstring)."""
    doc: dict[str, Any] = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "supersedes": sorted(set(supersedes)),
        "packs": [
            {
                "id": p.id,
                "size": p.size,
                "ids": "".join(e.id for e in p.entries),
                "offsets": [e.offset for e in p.entries],
                "lengths": [e.length for e in p.entries],
                "sizes": [e.size for e in p.entries],
            }
            for p in packs
        ],
    }
    return dumps_compact(doc).encode("ascii")


def write_index(root: Path | str, packs: Iterable[PackInfo], supersedes: Iterable[str] = ()) -> str:
    """Write one index file describing ``packs`` (atomic, fsynced).

    Args:
        root: repository root.
        packs: packs that are already durable.
        supersedes: ids of index files this one replaces.

    Returns:
        The new index id (sha256 hex of the file's bytes).

    Raises:
        OSError: on write failure.
    """
    root = Path(root)
    data = crypto.seal_for(crypto.key_for(root), serialize_index(packs, supersedes), b"index")
    index_id = hashlib.sha256(data).hexdigest()
    path = root / "index" / f"{index_id}.json"
    if not path.exists():
        atomic_write(path, data, mode=0o444)
        remote.published(root, path, data)
    return index_id


def _parse(data: bytes, index_id: str) -> tuple[list[str], list[tuple[str, int, list[tuple[str, int, int, int]]]]]:
    doc = loads(data)
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise ValueError("not an aml index file")
    if doc.get("version") != INDEX_VERSION:
        raise ValueError(f"unsupported index version {doc.get('version')!r}")
    packs = []
    for p in doc["packs"]:
        ids: str = p["ids"]
        offsets, lengths, sizes = p["offsets"], p["lengths"], p["sizes"]
        n = len(offsets)
        if len(ids) != 64 * n or len(lengths) != n or len(sizes) != n:
            raise ValueError(f"pack {p.get('id')}: column lengths differ")
        entries = list(zip([ids[i : i + 64] for i in range(0, 64 * n, 64)], offsets, lengths, sizes, strict=True))
        packs.append((str(p["id"]), int(p["size"]), entries))
    return [str(s) for s in doc.get("supersedes", [])], packs


def list_index_ids(root: Path | str) -> list[str]:
    """Return the ids of all index files (sorted), skipping temporary files."""
    root = Path(root)
    try:
        names = os.listdir(root / "index")
    except FileNotFoundError:
        return []
    return sorted(n[:-5] for n in names if n.endswith(".json") and not n.startswith(TMP_PREFIX))


def load_index(root: Path | str, *, strict: bool = True, include_damaged: bool = True) -> Index:
    """Load and merge every index file of the repository at ``root``.

    Args:
        root: repository root.
        strict: raise on the first damaged file (default); with False, damaged files are recorded in
            :attr:`Index.problems`.
        include_damaged: (non-strict only) a damaged file that still parses contributes its entries
            after every intact file, so a checker can still name the packs and objects it describes.
            Backups pass False: they never deduplicate against an untrusted entry.

    Returns:
        The merged :class:`Index`.

    Raises:
        CorruptionError: (strict only) an index file's sha256 differs from its name or it does not parse.
        OSError: if an index file cannot be read.
    """
    root = Path(root)
    key = crypto.key_for(root)
    index = Index()
    loaded: list[tuple[str, list[str], list[tuple[str, int, list[tuple[str, int, int, int]]]], bool]] = []
    for index_id in list_index_ids(root):
        path = root / "index" / f"{index_id}.json"
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # removed by a concurrent prune
            continue
        ok = hashlib.sha256(data).hexdigest() == index_id
        reason = "" if ok else "sha256 of the file differs from its name"
        try:
            supersedes, packs = _parse(crypto.unseal_for(key, data, b"index", f"index/{index_id}.json"), index_id)
        except (ValueError, KeyError, TypeError, CorruptionError) as exc:
            reason = (reason + "; " if reason else "") + f"unreadable: {exc}"
            if strict:
                raise CorruptionError(f"index/{index_id}.json: {reason}", location=f"index/{index_id}.json") from exc
            index.problems.append(IndexProblem(index_id, reason))
            continue
        if not ok:
            if strict:
                raise CorruptionError(f"index/{index_id}.json: {reason}", location=f"index/{index_id}.json")
            index.problems.append(
                IndexProblem(
                    index_id,
                    reason,
                    packs=[p[0] for p in packs],
                    objects=[e[0] for p in packs for e in p[2]],
                )
            )
            if not include_damaged:
                continue
        loaded.append((index_id, supersedes, packs, ok))
    superseded = {s for _, sup, _, ok in loaded if ok for s in sup}
    # trusted files first, so a damaged file never shadows a good location
    for index_id, _, packs, ok in sorted(loaded, key=lambda t: not t[3]):
        if index_id in superseded:
            continue
        index.files[index_id] = [p[0] for p in packs]
        for pack_id, size, entries in packs:
            if not ok:
                index.untrusted.update(e[0] for e in entries if e[0] not in index.objects)
            index._add(pack_id, size, entries)
    return index


def rebuild_index(root: Path | str) -> tuple[str, list[str], list[str]]:
    """Rebuild the index from the packs' own trailers and replace every existing index file.

    Used to repair a damaged index. A pack whose bytes no longer match its name but whose trailer still
    parses is indexed anyway (its intact objects stay usable; ``check --read-data`` names the damaged
    ones). A pack whose trailer is unreadable is left out.

    Args:
        root: repository root (the caller holds an exclusive lock).

    Returns:
        (new index id, ids of unreadable packs left out, ids of damaged packs indexed anyway).

    Raises:
        OSError: on write failure.
    """
    root = Path(root)
    key = crypto.key_for(root)
    old = list_index_ids(root)
    infos: list[PackInfo] = []
    unreadable: list[str] = []
    damaged: list[str] = []
    for pack_id in list_pack_ids(root):
        data = remote.stored_pack(root, pack_id)
        if hashlib.sha256(data).hexdigest() != pack_id:
            damaged.append(pack_id)
        try:
            entries = parse_trailer(open_pack(key, pack_id, data), location=f"packs/{pack_id[:2]}/{pack_id}")
        except CorruptionError:
            unreadable.append(pack_id)
            continue
        infos.append(PackInfo(pack_id, len(data), entries))
    new_id = write_index(root, infos, supersedes=old)
    for index_id in old:
        if index_id != new_id:
            remote.removed(root, root / "index" / f"{index_id}.json")
    return new_id, unreadable, damaged


def list_pack_ids(root: Path | str) -> list[str]:
    """Return the ids of every pack file present under ``packs/`` (sorted), skipping temporary files."""
    root = Path(root)
    listed = remote.pack_ids(root)
    if listed is not None:
        return listed
    packs_dir = root / "packs"
    out: list[str] = []
    try:
        subs = sorted(os.listdir(packs_dir))
    except FileNotFoundError:
        return out
    for sub in subs:
        try:
            names = os.listdir(packs_dir / sub)
        except (NotADirectoryError, FileNotFoundError):
            continue
        out.extend(n for n in sorted(names) if not n.startswith(TMP_PREFIX) and len(n) == 64)
    return out
