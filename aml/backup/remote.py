"""Repositories on another host: a local metadata cache written through to a :class:`Storage`.

The engine works on a directory. For a remote repository (``sftp://``, ``s3://``) that directory is a
cache (``~/.cache/aml/backup/<digest>``, as restic keeps one) holding the repository's small objects:
``config.json``, ``keys/``, ``index/``, ``snapshots/`` (headers and bodies), ``dicts/`` and the summaries.
Packs are never kept there: they are read from the storage when needed (verify, restore, prune) and
uploaded as soon as they are written.

- :func:`attach` links a cache directory to its storage; :func:`pull` makes the cache's small objects
  exactly those of the storage (downloading new ones, dropping ones another host deleted, dropping
  any pack left in the cache) and records the storage's pack listing.
- Every file the engine publishes in the repository calls :func:`published` right after its local
  atomic write, and every removal calls :func:`removed`: the object is uploaded (or deleted) there and
  then, synchronously. So the storage sees the engine's own order: packs, then the index that names
  them, then the manifest body and the snapshot header; a failure (a timeout) raises out of the engine
  before the header is written, and the storage holds at most unreferenced packs (orphans), never a
  visible broken snapshot.

A local repository has no mirror: every function here is then a no-op or a plain file operation.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aml.store.atomic import TMP_PREFIX, atomic_write

from .storage import ObjectInfo, Storage, StorageError, StorageExists, StorageNotFound, check_name

__all__ = [
    "CACHED_PREFIXES",
    "RemoteMirror",
    "attach",
    "default_cache_dir",
    "location",
    "mirror_for",
    "pack_buffer",
    "pack_stat",
    "published",
    "pull",
    "removed",
    "stored_pack",
]

CACHED_PREFIXES = ("keys/", "index/", "snapshots/", "dicts/")
"""Object names (directories) the cache holds a copy of; ``packs/`` and ``locks/`` are never cached."""
CACHED_FILES = ("config.json", "backup_metadata.json", "verify_state.json")
"""Top-level objects the cache holds a copy of."""
MUTABLE = ("backup_metadata.json", "verify_state.json")
"""Objects replaced in place (every other object is written once, under a content or random name)."""
CONTENT_ADDRESSED = ("packs/", "index/", "snapshots/bodies/", "dicts/")
"""Objects named by their content's hash: an existing one already holds the same bytes."""


@dataclass
class RemoteMirror:
    """A cache directory and the storage it mirrors.

    Attributes:
        root: the cache directory (the engine's repository root).
        storage: where the repository is.
        packs: pack id -> its object (size in bytes, mtime), from the last listing plus what was written;
            None until the first :func:`pull` (reading it pulls).
    """

    root: Path
    storage: Storage
    packs: dict[str, ObjectInfo] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


_MIRRORS: dict[str, RemoteMirror] = {}


def default_cache_dir(url: str) -> Path:
    """The cache directory of a remote repository: ``$XDG_CACHE_HOME/aml/backup/<16 hex digits of the
    sha256 of the URL>`` (``~/.cache`` without ``XDG_CACHE_HOME``)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "aml" / "backup" / hashlib.sha256(url.encode()).hexdigest()[:16]


def attach(root: Path, storage: Storage) -> RemoteMirror:
    """Make ``root`` the cache of ``storage`` (for this process); returns the mirror."""
    root = Path(os.path.abspath(root))
    root.mkdir(parents=True, exist_ok=True)
    mirror = _MIRRORS.get(str(root))
    if mirror is None or mirror.storage.url != storage.url:
        mirror = _MIRRORS[str(root)] = RemoteMirror(root, storage)
    return mirror  # another Repository on the same cache shares the mirror (its listing, its connection)


def mirror_for(root: Path | str) -> RemoteMirror | None:
    """The mirror whose cache is ``root``, or None for a local repository."""
    return _MIRRORS.get(os.path.abspath(root)) if _MIRRORS else None


def _cached(name: str) -> bool:
    return name in CACHED_FILES or name.startswith(CACHED_PREFIXES)


TEMP_GRACE = 3600.0
"""Seconds after which a temporary file or a pack left in the cache (a failed upload) is removed by
:func:`pull`; a younger one may belong to another process of this host writing right now."""


def pull(mirror: RemoteMirror) -> None:
    """Bring the cache in line with the storage (one listing; downloads only what changed).

    Small objects present remotely and absent (or of another size) locally are downloaded; the mutable
    summaries always are; cached objects the storage no longer has are removed from the cache (exactly:
    a prune holding the exclusive lock must not see an index file another host deleted), and so are
    temporary files and packs older than :data:`TEMP_GRACE`. The pack listing is recorded in ``mirror.packs``.

    Raises:
        StorageError: the storage cannot be listed or read.
    """
    root, storage = mirror.root, mirror.storage
    remote: dict[str, ObjectInfo] = {}
    packs: dict[str, ObjectInfo] = {}
    for obj in storage.list():
        try:
            check_name(obj.name, storage.url)
        except StorageError:
            continue  # never a path outside the cache (a storage listing "../x" or "/etc/x")
        if obj.name.startswith("packs/"):
            packs[obj.name.rsplit("/", 1)[-1]] = obj
        elif _cached(obj.name):
            remote[obj.name] = obj
    for name, obj in remote.items():
        path = root / name
        try:
            same = name not in MUTABLE and path.stat().st_size == obj.size
        except FileNotFoundError:
            same = False
        if not same:
            try:
                data = storage.read(name)
            except StorageNotFound:
                continue  # deleted since the listing
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data, sync_dir=False)
    old = time.time() - TEMP_GRACE
    for dirpath, _dirs, files in os.walk(root):
        for fn in files:
            full = os.path.join(dirpath, fn)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if fn.startswith(TMP_PREFIX) or rel.startswith("packs/"):
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(full).st_mtime < old:
                        os.unlink(full)
            elif _cached(rel) and rel not in remote:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(full)
    for sub in ("snapshots/bodies", "index", "dicts", "keys", "locks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    with mirror.lock:
        mirror.packs = packs


def published(root: Path | str, path: Path | str, data: bytes | None = None) -> None:
    """Upload a repository file the engine has just written (atomically) under ``root``; no-op locally.

    Args:
        root: the repository root (a remote repository's cache).
        path: the file written, under ``root``.
        data: its bytes (default: read back from ``path``). Pass them: another process on this host may
            :func:`pull` the same cache meanwhile and remove the local copy of an object not uploaded yet.

    A pack is removed from the cache once uploaded. An existing content-addressed object (same name, so
    same bytes) is kept as it is.

    Raises:
        StorageError: the upload failed (StorageTimeout when the storage stopped answering); the engine's
            operation must fail, and nothing that refers to the object is uploaded after it.
        StorageExists: a write-once object that is not content-addressed (a snapshot header, a key slot,
            ``config.json``) already exists remotely.
    """
    mirror = mirror_for(root)
    if mirror is None:
        return
    rel = os.path.relpath(path, mirror.root).replace(os.sep, "/")
    if data is None:
        data = Path(path).read_bytes()
    try:
        mirror.storage.write(rel, data, once=rel not in MUTABLE)
    except StorageExists:
        # content-addressed: the same bytes are there; else only our own write counts (a retried request
        # whose first answer was lost finds its own object)
        if not rel.startswith(CONTENT_ADDRESSED) and mirror.storage.read(rel) != data:
            raise
    if rel.startswith("packs/"):
        pack_id = rel.rsplit("/", 1)[-1]
        with mirror.lock:
            if mirror.packs is not None:
                mirror.packs[pack_id] = ObjectInfo(rel, len(data), time.time())
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def removed(root: Path | str, path: Path | str) -> None:
    """Remove a repository file, locally and (for a remote repository) from the storage.

    Raises:
        StorageError: the storage refused the deletion.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    mirror = mirror_for(root)
    if mirror is None:
        return
    rel = os.path.relpath(path, mirror.root).replace(os.sep, "/")
    mirror.storage.delete(rel)
    if rel.startswith("packs/"):
        with mirror.lock:
            if mirror.packs is not None:
                mirror.packs.pop(rel.rsplit("/", 1)[-1], None)


def location(root: Path | str) -> str:
    """How to name the repository at ``root`` to a user: its storage URL (no password) if remote, else the path."""
    mirror = mirror_for(root)
    return mirror.storage.url if mirror is not None else str(root)


def pack_ids(root: Path | str) -> list[str] | None:
    """The remote pack ids (sorted), or None for a local repository (the caller lists ``packs/``)."""
    mirror = mirror_for(root)
    if mirror is None:
        return None
    _ensure_listed(mirror)
    with mirror.lock:
        return sorted(mirror.packs or ())


def _ensure_listed(mirror: RemoteMirror) -> None:
    if mirror.packs is None:
        pull(mirror)


def pack_stat(root: Path | str, pack_id: str) -> tuple[int, float] | None:
    """``(size in bytes, mtime in epoch seconds)`` of a stored pack, or None if it is missing."""
    mirror = mirror_for(root)
    if mirror is None:
        try:
            st = os.stat(Path(root) / "packs" / pack_id[:2] / pack_id)
        except FileNotFoundError:
            return None
        return st.st_size, st.st_mtime
    _ensure_listed(mirror)
    with mirror.lock:
        obj = (mirror.packs or {}).get(pack_id)
    return None if obj is None else (obj.size, obj.mtime)


@contextlib.contextmanager
def pack_buffer(root: Path | str, pack_id: str) -> Iterator[Any]:
    """The stored bytes of a pack: a read-only memory map of the local file, or the downloaded object.

    Raises:
        FileNotFoundError: the pack does not exist (locally or remotely).
        OSError, StorageError: it cannot be read.
    """
    mirror = mirror_for(root)
    name = f"packs/{pack_id[:2]}/{pack_id}"
    if mirror is None:
        with open(Path(root) / name, "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                yield b""
                return
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                yield mm
        return
    try:
        data = mirror.storage.read(name)
    except StorageNotFound as exc:
        raise FileNotFoundError(str(exc)) from None
    yield data


def stored_pack(root: Path | str, pack_id: str) -> bytes:
    """The stored bytes of a pack (still encrypted in an encrypted repository), local or remote.

    Raises:
        FileNotFoundError: the pack does not exist.
        OSError, StorageError: it cannot be read.
    """
    mirror = mirror_for(root)
    name = f"packs/{pack_id[:2]}/{pack_id}"
    if mirror is None:
        with open(Path(root) / name, "rb", buffering=0) as fh:
            return fh.read()
    try:
        return mirror.storage.read(name)
    except StorageNotFound as exc:
        raise FileNotFoundError(str(exc)) from None
