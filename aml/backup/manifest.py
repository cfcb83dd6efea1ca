r"""Snapshot manifests: the complete list of a store's files at one instant.

A manifest is two files, written in this order:

1. the **body** ``snapshots/bodies/<sha256>.zst``: zstd-compressed JSON with one array per column::

       {"format": "aml-snapshot-files", "version": 1,
        "files": {"path": [...],                 # relative to the store root, "/"-separated, sorted
                  "sha256": "<hex><hex>...",     # 64 hex chars per file: sha256 of the whole content
                  "size": [...], "mtime_ns": [...], "mode": [...], "inode": [...],
                  "chunks": {"<i>": "<hex><hex>..."}},   # only files above the chunk size: object ids
        "dirs":  {"path": [...], "mode": [...], "mtime_ns": [...]},   # every directory, empty or not
        "links": {"path": [...], "target": [...], "mtime_ns": [...]}} # symlinks; the key only when there are some

   Its name is the sha256 of the stored (compressed) bytes. Columns compress and parse far better than
   one JSON object per file: ~100,000 files take a few MB and load in well under a second. A file's
   content is object ``sha256`` (or the ``chunks`` list for large files).

   **Symlinks** (``links``) are stored as links: the target exactly as ``readlink`` returned it (relative,
   absolute, dangling or pointing outside the store: it is never followed, at backup or at restore) and
   the link's own mtime. A link holds no object. No other entry may lie below a link. A body with a
   ``links`` table is refused by aml versions before it (they reject unknown entry kinds), so an older
   restore never silently drops links; bodies without links are unchanged, byte for byte.

   **Names are bytes.** A path or link target is a JSON string; a byte that is not part of valid UTF-8
   is the code point U+DC80 + (byte - 0x80) (Python's ``surrogateescape``, PEP 383: what ``os.scandir``
   returns), always written as the ASCII escape ``\udcXX`` (the body is ``ensure_ascii`` JSON). Valid
   UTF-8 names are plain strings, so every body written before this note reads the same, and a name
   with any bytes but ``/`` and NUL is restored byte-exact. (Text shown to people escapes those bytes as
   ``\xNN`` instead: :func:`aml.store.names.text_name`.) The same encoding applies to the header's
   ``source_path``, ``agents`` and ``errors[].path``. An encrypted repository can hold the body as it
   is: it is just bytes to encrypt.

2. the **header** ``snapshots/<backup_id>.json``: small, human-readable JSON with the snapshot's
   summary (``backup_id, backup_type, parent_backup_id, time, end_time, source_path, hostname, tags,
   description, file_count, dir_count, link_count, total_size_bytes, agents, errors, excludes, stats``),
   the body's sha256 and size, and ``sha256``: the sha256 of the header's canonical JSON (sorted keys, no
   spaces; surrogates as their ``surrogatepass`` bytes) without that field. It is published last, with a
   no-clobber link, so a snapshot is visible only when complete. ``link_count`` and ``excludes`` (the
   exclude patterns the backup applied, :mod:`aml.backup.excludes`; an exact restore leaves matching
   paths of the target alone) are absent from older headers and read as ``0`` / ``[]``.

A flipped bit in a header or body is detected even when the JSON still parses.

In an encrypted repository both files are sealed (:mod:`aml.backup.crypto`): the body with associated
data ``body`` (named by the sha256 of the sealed bytes), the header with ``header:<backup_id>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import zstandard

from aml.store.atomic import atomic_write, fsync_dir
from aml.store.jsontext import dumps_compact, loads
from aml.store.timestamps import require_timestamp, utc_iso_z

from . import crypto, remote
from ._common import TMP_PREFIX, canonical_json
from .errors import CorruptionError, SnapshotNotFound, UnsafePathError
from .storage import StorageExists

MANIFEST_FORMAT = "aml-snapshot"
BODY_FORMAT = "aml-snapshot-files"
MANIFEST_VERSION = 1
BODY_LEVEL = 1
"""zstd level of manifest bodies: on their hex and path columns level 1 is both the fastest and the smallest."""

__all__ = [
    "DirTable",
    "FileTable",
    "LinkTable",
    "Manifest",
    "check_relpath",
    "decode_body",
    "encode_body",
    "load_body",
    "load_manifest",
    "read_header",
    "write_manifest",
]


def check_relpath(path: str) -> None:
    """Check that a manifest path is safe to join below a restore target (any bytes but NUL per name).

    Raises:
        UnsafePathError: empty, absolute, contains a NUL byte, or has an empty, ``.`` or ``..``
            component.
    """
    if not path or path.startswith("/") or "\x00" in path:
        raise UnsafePathError(f"unsafe path in manifest: {path!r}")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise UnsafePathError(f"unsafe path in manifest: {path!r}")


@dataclass
class FileTable:
    """The files of a snapshot, as parallel columns (index ``i`` is one file).

    Attributes:
        path: relative paths (``/``-separated).
        sha256: sha256 hex of each file's whole content.
        size: sizes in bytes.
        mtime_ns: modification times, nanoseconds since the epoch.
        mode: permission bits (``st_mode & 0o7777``).
        inode: inode numbers at backup time (change detection only).
        chunks: for files stored as several objects: file index -> object ids, in order.
    """

    path: list[str] = field(default_factory=list)
    sha256: list[str] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    mtime_ns: list[int] = field(default_factory=list)
    mode: list[int] = field(default_factory=list)
    inode: list[int] = field(default_factory=list)
    chunks: dict[int, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.path)

    def append(
        self,
        path: str,
        sha256: str,
        size: int,
        mtime_ns: int,
        mode: int,
        inode: int,
        chunks: list[str] | None = None,
    ) -> None:
        """Add one file (``chunks``: object ids when the file is stored as several objects)."""
        if chunks is not None and len(chunks) != 1:
            self.chunks[len(self.path)] = chunks
        self.path.append(path)
        self.sha256.append(sha256)
        self.size.append(size)
        self.mtime_ns.append(mtime_ns)
        self.mode.append(mode)
        self.inode.append(inode)

    def objects_of(self, i: int) -> list[str]:
        """Object ids holding file ``i``'s content, in order."""
        c = self.chunks.get(i)
        return c if c is not None else [self.sha256[i]]

    def sorted(self) -> FileTable:
        """Return a copy sorted by path."""
        order = sorted(range(len(self.path)), key=self.path.__getitem__)
        out = FileTable(
            [self.path[i] for i in order],
            [self.sha256[i] for i in order],
            [self.size[i] for i in order],
            [self.mtime_ns[i] for i in order],
            [self.mode[i] for i in order],
            [self.inode[i] for i in order],
        )
        if self.chunks:
            pos = {old: new for new, old in enumerate(order)}
            out.chunks = {pos[k]: v for k, v in self.chunks.items()}
        return out


@dataclass
class DirTable:
    """The directories of a snapshot (every one, so empty directories are restored too)."""

    path: list[str] = field(default_factory=list)
    mode: list[int] = field(default_factory=list)
    mtime_ns: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.path)


@dataclass
class LinkTable:
    """The symlinks of a snapshot, as parallel columns (stored as links, never followed).

    Attributes:
        path: relative paths (``/``-separated) of the links themselves.
        target: each link's target exactly as ``readlink`` returned it (any bytes but NUL; may be
            absolute, relative, dangling or outside the store).
        mtime_ns: the links' own modification times, nanoseconds since the epoch.
    """

    path: list[str] = field(default_factory=list)
    target: list[str] = field(default_factory=list)
    mtime_ns: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.path)


@dataclass
class Manifest:
    """One snapshot: header fields, plus the file and directory tables once the body is loaded.

    Attributes:
        backup_id: ``full_YYYYMMDD_HHMMSS`` / ``incr_YYYYMMDD_HHMMSS`` (UTC), with ``_2``... if needed.
        backup_type: ``"full"`` or ``"incremental"``.
        time: start of the backup (aware UTC).
        source_path: absolute path of the store that was backed up.
        hostname: host that took it.
        parent_backup_id: the snapshot used for change detection (incremental), else None.
        end_time: end of the backup (aware UTC).
        tags, description: user labels.
        file_count, dir_count, link_count: entries stored (regular files, directories, symlinks).
        total_size_bytes: sum of the stored files' sizes (uncompressed bytes).
        agents: top-level directories that are agents (not ``global``, ``config``, ...).
        errors: ``[{"path", "reason"}]``: entries that were seen but not stored (unreadable files,
            special files such as fifos and sockets). The snapshot never claims a file it did not store.
        excludes: the exclude patterns the backup applied (restic's syntax, :mod:`aml.backup.excludes`);
            paths of a restore target that match them are not the snapshot's to remove.
        stats: counters of the run (files_read, bytes_read, files_unchanged, objects_added,
            bytes_added, stored_bytes).
        body_sha256, body_size: the body file's name and size in bytes.
        files, dirs, links: the tables (None until :func:`load_body`; ``links`` is an empty table for a
            snapshot without symlinks).
    """

    backup_id: str
    backup_type: str
    time: datetime
    source_path: str
    hostname: str
    parent_backup_id: str | None = None
    end_time: datetime | None = None
    tags: list[str] = field(default_factory=list)
    description: str | None = None
    file_count: int = 0
    dir_count: int = 0
    total_size_bytes: int = 0
    agents: list[str] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    body_sha256: str = ""
    body_size: int = 0
    files: FileTable | None = None
    dirs: DirTable | None = None
    links: LinkTable | None = None
    link_count: int = 0
    excludes: list[str] = field(default_factory=list)

    def header(self) -> dict[str, Any]:
        """The header document without its ``sha256`` field."""
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "backup_id": self.backup_id,
            "backup_type": self.backup_type,
            "parent_backup_id": self.parent_backup_id,
            "time": utc_iso_z(self.time),
            "end_time": utc_iso_z(self.end_time) if self.end_time else None,
            "source_path": self.source_path,
            "hostname": self.hostname,
            "tags": list(self.tags),
            "description": self.description,
            "file_count": self.file_count,
            "dir_count": self.dir_count,
            "link_count": self.link_count,
            "total_size_bytes": self.total_size_bytes,
            "agents": list(self.agents),
            "errors": list(self.errors),
            "excludes": list(self.excludes),
            "stats": dict(self.stats),
            "body": {"sha256": self.body_sha256, "size": self.body_size, "codec": "zstd+json"},
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the header)."""
        return self.header()

    @classmethod
    def from_header(cls, doc: dict[str, Any]) -> Manifest:
        """Build from a parsed header document.

        Raises:
            KeyError, TypeError, ValueError: missing or malformed fields.
        """
        if doc.get("format") != MANIFEST_FORMAT or doc.get("version") != MANIFEST_VERSION:
            raise ValueError("not an aml snapshot header of a supported version")
        body = doc["body"]
        return cls(
            backup_id=str(doc["backup_id"]),
            backup_type=str(doc["backup_type"]),
            time=require_timestamp(doc["time"]),
            source_path=str(doc["source_path"]),
            hostname=str(doc.get("hostname", "")),
            parent_backup_id=doc.get("parent_backup_id"),
            end_time=require_timestamp(doc["end_time"]) if doc.get("end_time") else None,
            tags=[str(t) for t in doc.get("tags", [])],
            description=doc.get("description"),
            file_count=int(doc["file_count"]),
            dir_count=int(doc.get("dir_count", 0)),
            total_size_bytes=int(doc["total_size_bytes"]),
            agents=[str(a) for a in doc.get("agents", [])],
            errors=list(doc.get("errors", [])),
            stats=dict(doc.get("stats", {})),
            body_sha256=str(body["sha256"]),
            body_size=int(body["size"]),
            link_count=int(doc.get("link_count", 0)),
            excludes=[str(p) for p in doc.get("excludes", [])],
        )

    def referenced_objects(self) -> set[str]:
        """Every object id the snapshot needs (body must be loaded)."""
        assert self.files is not None, "load_body first"
        files = self.files
        if not files.chunks:
            return set(files.sha256)
        out: set[str] = set()
        for i, sha in enumerate(files.sha256):
            c = files.chunks.get(i)
            if c is None:
                out.add(sha)
            else:
                out.update(c)
        return out


def _split_hex(s: str) -> list[str]:
    if len(s) % 64:
        raise ValueError("hex column length is not a multiple of 64")
    return [s[i : i + 64] for i in range(0, len(s), 64)]


def encode_body(files: FileTable, dirs: DirTable, links: LinkTable | None = None, *, level: int = BODY_LEVEL) -> bytes:
    """Encode the tables as body bytes (zstd-compressed column JSON; see module docstring).

    The ``links`` key is written only when there are symlinks, so a body without any is the same as
    before links were stored.
    """
    doc: dict[str, Any] = {
        "format": BODY_FORMAT,
        "version": MANIFEST_VERSION,
        "files": {
            "path": files.path,
            "sha256": "".join(files.sha256),
            "size": files.size,
            "mtime_ns": files.mtime_ns,
            "mode": files.mode,
            "inode": files.inode,
            "chunks": {str(k): "".join(v) for k, v in files.chunks.items()},
        },
        "dirs": {"path": dirs.path, "mode": dirs.mode, "mtime_ns": dirs.mtime_ns},
    }
    if links:
        doc["links"] = {"path": links.path, "target": links.target, "mtime_ns": links.mtime_ns}
    # compact JSON by msgspec; a body with a name holding non-UTF-8 bytes (surrogateescape code points) is
    # written by json.dumps, which escapes them as "\udcXX" (ensure_ascii)
    raw = dumps_compact(doc).encode("utf-8")
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(raw)


def decode_body(data: bytes) -> tuple[FileTable, DirTable, LinkTable]:
    """Decode body bytes.

    Returns:
        ``(files, dirs, links)``; ``links`` is empty for a body without symlinks.

    Raises:
        UnsafePathError: the body declares entry kinds aml does not know (devices, a later format...).
        ValueError, KeyError, TypeError, zstandard.ZstdError: malformed body.
    """
    doc = loads(zstandard.ZstdDecompressor().decompress(data))
    if doc.get("format") != BODY_FORMAT or doc.get("version") != MANIFEST_VERSION:
        raise ValueError("not an aml snapshot body of a supported version")
    extra = set(doc) - {"format", "version", "files", "dirs", "links"}
    if extra:
        raise UnsafePathError(f"manifest declares unsupported entry kinds {sorted(extra)} (e.g. devices)")
    f = doc["files"]
    files = FileTable(
        path=[str(p) for p in f["path"]],
        sha256=_split_hex(f["sha256"]),
        size=list(f["size"]),
        mtime_ns=list(f["mtime_ns"]),
        mode=list(f["mode"]),
        inode=list(f["inode"]),
        chunks={int(k): _split_hex(v) for k, v in f.get("chunks", {}).items()},
    )
    n = len(files.path)
    if not (len(files.sha256) == len(files.size) == len(files.mtime_ns) == len(files.mode) == len(files.inode) == n):
        raise ValueError("file columns differ in length")
    d = doc["dirs"]
    dirs = DirTable(path=[str(p) for p in d["path"]], mode=list(d["mode"]), mtime_ns=list(d["mtime_ns"]))
    if not (len(dirs.mode) == len(dirs.mtime_ns) == len(dirs.path)):
        raise ValueError("dir columns differ in length")
    links = LinkTable()
    lk = doc.get("links")
    if lk is not None:
        links = LinkTable(path=[str(p) for p in lk["path"]], target=[str(t) for t in lk["target"]],
                          mtime_ns=[int(t) for t in lk["mtime_ns"]])
        if not (len(links.target) == len(links.mtime_ns) == len(links.path)):
            raise ValueError("link columns differ in length")
    return files, dirs, links


def _header_bytes(m: Manifest) -> bytes:
    doc = m.header()
    doc["sha256"] = hashlib.sha256(canonical_json(doc)).hexdigest()
    return json.dumps(doc, indent=2, ensure_ascii=True).encode("ascii") + b"\n"


def write_manifest(
    root: Path | str,
    m: Manifest,
    *,
    taken: Callable[[str], bool] = lambda _id: False,
) -> str:
    """Write a manifest: body first (fsynced), then the header, published atomically without clobbering.

    If ``snapshots/<m.backup_id>.json`` exists or ``taken(id)`` is true (e.g. a legacy backup has that
    name), the id gets a suffix ``_2``, ``_3``... ; ``m.backup_id`` is updated.

    Args:
        root: repository root.
        m: the manifest with ``files`` and ``dirs`` set.
        taken: extra predicate for ids that are in use.

    Returns:
        The final backup id.

    Raises:
        OSError: on write failure (then no header is visible).
    """
    root = Path(root)
    assert m.files is not None and m.dirs is not None
    key = crypto.key_for(root)
    body = crypto.seal_for(key, encode_body(m.files, m.dirs, m.links), b"body")
    m.body_sha256 = hashlib.sha256(body).hexdigest()
    m.body_size = len(body)
    bodies = root / "snapshots" / "bodies"
    bodies.mkdir(parents=True, exist_ok=True)
    body_path = bodies / f"{m.body_sha256}.zst"
    if not body_path.exists():
        atomic_write(body_path, body, mode=0o444)
        remote.published(root, body_path, body)
    base = m.backup_id
    snaps = root / "snapshots"
    n = 1
    while True:
        cand = base if n == 1 else f"{base}_{n}"
        n += 1
        if taken(cand) or (snaps / f"{cand}.json").exists():
            continue
        m.backup_id = cand
        tmp = snaps / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        header = crypto.seal_for(key, _header_bytes(m), b"header:" + cand.encode("utf-8", "surrogatepass"))
        atomic_write(tmp, header, mode=0o444, sync_dir=False)
        try:
            os.link(tmp, snaps / f"{cand}.json")
        except FileExistsError:
            continue
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(snaps)
        try:
            remote.published(root, snaps / f"{cand}.json", header)  # last: the snapshot is visible from here on
        except StorageExists:  # another host published this name since the cache was pulled
            (snaps / f"{cand}.json").unlink(missing_ok=True)
            continue
        return cand


def read_header(root: Path | str, backup_id: str) -> Manifest:
    """Read and verify one manifest header (not the body).

    Args:
        root: repository root.
        backup_id: the snapshot id.

    Returns:
        The :class:`Manifest` without tables.

    Raises:
        SnapshotNotFound: no such header.
        CorruptionError: it does not parse, its ``sha256`` does not match, or its id differs from its name.
    """
    root = Path(root)
    location = f"snapshots/{backup_id}.json"
    if "/" in backup_id or backup_id.startswith("."):
        raise SnapshotNotFound(f"no snapshot {backup_id!r}")
    try:
        raw = (root / "snapshots" / f"{backup_id}.json").read_bytes()
    except FileNotFoundError as exc:
        raise SnapshotNotFound(f"no snapshot {backup_id!r}") from exc
    try:
        raw = crypto.unseal_for(crypto.key_for(root), raw, b"header:" + backup_id.encode("utf-8", "surrogatepass"),
                                location)
    except CorruptionError as exc:
        exc.snapshots = [backup_id]
        raise
    try:
        doc = json.loads(raw)
        claimed = doc.pop("sha256")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptionError(
            f"{location}: header does not parse: {exc}", location=location, snapshots=[backup_id]
        ) from exc
    if hashlib.sha256(canonical_json(doc)).hexdigest() != claimed:
        raise CorruptionError(f"{location}: header checksum mismatch", location=location, snapshots=[backup_id])
    try:
        m = Manifest.from_header(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptionError(f"{location}: bad header: {exc}", location=location, snapshots=[backup_id]) from exc
    if m.backup_id != backup_id:
        raise CorruptionError(f"{location}: header names {m.backup_id!r}", location=location, snapshots=[backup_id])
    return m


def load_body(root: Path | str, m: Manifest) -> Manifest:
    """Read, verify and decode a manifest's body into ``m.files`` / ``m.dirs``.

    Returns:
        ``m``.

    Raises:
        CorruptionError: body missing, checksum mismatch, or undecodable.
        UnsafePathError: the body declares entry kinds aml does not know (devices, a later format...).
    """
    root = Path(root)
    location = f"snapshots/bodies/{m.body_sha256}.zst"
    try:
        data = (root / location).read_bytes()
    except FileNotFoundError as exc:
        raise CorruptionError(
            f"{location}: manifest body of {m.backup_id} is missing", location=location, snapshots=[m.backup_id]
        ) from exc
    if hashlib.sha256(data).hexdigest() != m.body_sha256 or len(data) != m.body_size:
        raise CorruptionError(
            f"{location}: manifest body of {m.backup_id}: checksum mismatch", location=location, snapshots=[m.backup_id]
        )
    try:
        m.files, m.dirs, m.links = decode_body(crypto.unseal_for(crypto.key_for(root), data, b"body", location))
    except CorruptionError as exc:
        exc.snapshots = [m.backup_id]
        raise
    except UnsafePathError:
        raise
    except (ValueError, KeyError, TypeError, zstandard.ZstdError) as exc:
        raise CorruptionError(
            f"{location}: manifest body of {m.backup_id} does not decode: {exc}",
            location=location,
            snapshots=[m.backup_id],
        ) from exc
    return m


def load_manifest(root: Path | str, backup_id: str) -> Manifest:
    """Read and verify a manifest header and body.

    Raises:
        SnapshotNotFound, CorruptionError, UnsafePathError: as for :func:`read_header` and :func:`load_body`.
    """
    root = Path(root)
    return load_body(root, read_header(root, backup_id))


def iter_headers(root: Path | str, ids: Iterable[str]) -> list[tuple[str, Manifest | Exception]]:
    """Read several headers; damaged ones are returned as the exception instead of raising."""
    root = Path(root)
    out: list[tuple[str, Manifest | Exception]] = []
    for backup_id in ids:
        try:
            out.append((backup_id, read_header(root, backup_id)))
        except (CorruptionError, SnapshotNotFound) as exc:
            out.append((backup_id, exc))
    return out
