"""The backup repository: layout, ``config.json``, locks.

Layout (DESIGN.md, "The backup repository")::

    memory-backup/
      config.json                    {"format": "aml-backup-repository", "version": 1, "id", "created",
                                      "pack_size", "chunk_size", "compression": {"codec": "zstd", "level"}}
      backup_metadata.json           the seeds' summary (see :mod:`aml.backup.summary`)
      snapshots/<backup_id>.json     manifest header (see :mod:`aml.backup.manifest`)
      snapshots/bodies/<sha256>.zst  manifest body: the file list, zstd-compressed column JSON
      packs/<aa>/<pack_sha256>       pack files (see :mod:`aml.backup.pack`)
      index/<index_sha256>.json      index files (see :mod:`aml.backup.index`)
      dicts/<sha256>.zdict           the zstd dictionary new packs are compressed with (trained on the first
                                     backup's files; a copy travels in every pack, so losing it loses nothing)
      archives/                      records that prune archived instead of deleting (not used here)
      locks/                         lock files (see :mod:`aml.backup.lock`)
      verify_state.json              when each pack was last read back (rotating ``read_data_subset``)
      full_*/ incr_*/ backup-*.tar.gz  legacy Loom backups, left where they are (:mod:`aml.backup.legacy`)

The default repository of a store at ``S`` is ``S/../memory-backup`` (the seeds' convention).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aml.store.atomic import atomic_write, fsync_dir
from aml.store.timestamps import utc_iso_z

from ._common import TMP_PREFIX
from .errors import BackupError, RepositoryFormatError, RepositoryNotFound
from .lock import RepositoryLock

REPO_FORMAT = "aml-backup-repository"
REPO_VERSION = 1
DEFAULT_PACK_SIZE = 16 * 1024 * 1024
"""Target pack size in bytes (16 MiB)."""
DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024
"""Files larger than this many bytes are stored as several objects of this size (16 MiB)."""
DEFAULT_LEVEL = 3
"""zstd level: level 3 is zstd's default, ~300 MB/s on one core, and what restic's "auto" mode matches."""
SUMMARY_FILE = "backup_metadata.json"

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_LEVEL",
    "DEFAULT_PACK_SIZE",
    "Repository",
    "RepositoryConfig",
    "default_repository_path",
]


def default_repository_path(store_root: str | os.PathLike[str]) -> Path:
    """Return the default repository of a store: ``<store>/../memory-backup`` (absolute)."""
    return Path(os.path.abspath(os.fspath(store_root))).parent / "memory-backup"


@dataclass(frozen=True)
class RepositoryConfig:
    """Contents of ``config.json``.

    Attributes:
        id: random repository id (hex).
        created: creation time, ISO 8601 UTC ``Z``.
        pack_size: target pack size in bytes.
        chunk_size: maximum object size in bytes (larger files are split).
        compression_level: zstd level.
        version: repository format version.
    """

    id: str
    created: str
    pack_size: int = DEFAULT_PACK_SIZE
    chunk_size: int = DEFAULT_CHUNK_SIZE
    compression_level: int = DEFAULT_LEVEL
    version: int = REPO_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Return the ``config.json`` document."""
        return {
            "format": REPO_FORMAT,
            "version": self.version,
            "id": self.id,
            "created": self.created,
            "pack_size": self.pack_size,
            "chunk_size": self.chunk_size,
            "compression": {"codec": "zstd", "level": self.compression_level},
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> RepositoryConfig:
        """Parse a ``config.json`` document.

        Raises:
            RepositoryFormatError: unknown format, version or codec.
        """
        if not isinstance(doc, dict) or doc.get("format") != REPO_FORMAT:
            raise RepositoryFormatError("config.json is not an aml backup repository config")
        if doc.get("version") != REPO_VERSION:
            raise RepositoryFormatError(f"unsupported repository version {doc.get('version')!r}")
        comp = doc.get("compression") or {}
        if comp.get("codec") != "zstd":
            raise RepositoryFormatError(f"unsupported compression {comp.get('codec')!r}")
        try:
            return cls(
                id=str(doc["id"]),
                created=str(doc["created"]),
                pack_size=int(doc["pack_size"]),
                chunk_size=int(doc.get("chunk_size", DEFAULT_CHUNK_SIZE)),
                compression_level=int(comp.get("level", DEFAULT_LEVEL)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RepositoryFormatError(f"config.json: {exc}") from exc


class Repository:
    """A backup repository directory.

    ``Repository(path)`` does no I/O; call :meth:`init` to create one or :meth:`open` to load an existing
    one. A path holding only legacy Loom backups (no ``config.json``) is a valid, uninitialised
    repository: legacy backups can be listed and restored, and :meth:`init` adds the aml layout next to
    them without touching them.

    Args:
        path: the repository directory.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(os.path.abspath(os.fspath(path)))
        self._config: RepositoryConfig | None = None

    def __repr__(self) -> str:
        return f"Repository({str(self.path)!r})"

    @classmethod
    def for_store(cls, store_root: str | os.PathLike[str]) -> Repository:
        """Return the default repository of a store (``<store>/../memory-backup``), not opened."""
        return cls(default_repository_path(store_root))

    # layout ---------------------------------------------------------------------------------------
    @property
    def snapshots_dir(self) -> Path:
        """``snapshots/``: manifest headers."""
        return self.path / "snapshots"

    @property
    def bodies_dir(self) -> Path:
        """``snapshots/bodies/``: manifest bodies, named by sha256."""
        return self.path / "snapshots" / "bodies"

    @property
    def index_dir(self) -> Path:
        """``index/``."""
        return self.path / "index"

    @property
    def packs_dir(self) -> Path:
        """``packs/``."""
        return self.path / "packs"

    @property
    def locks_dir(self) -> Path:
        """``locks/``."""
        return self.path / "locks"

    @property
    def summary_path(self) -> Path:
        """``backup_metadata.json``."""
        return self.path / SUMMARY_FILE

    def is_initialized(self) -> bool:
        """True if ``config.json`` exists."""
        return (self.path / "config.json").is_file()

    # lifecycle ------------------------------------------------------------------------------------
    def init(
        self,
        *,
        pack_size: int = DEFAULT_PACK_SIZE,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        compression_level: int = DEFAULT_LEVEL,
        exist_ok: bool = False,
    ) -> Repository:
        """Create the repository layout and ``config.json``.

        Existing content (legacy backups, ``backup_metadata.json``) is kept.

        Args:
            pack_size: target pack size in bytes (default 16 MiB).
            chunk_size: files above this many bytes are split into objects of this size (16 MiB).
            compression_level: zstd level (default 3).
            exist_ok: if already initialised, open it instead of raising.

        Returns:
            self, opened.

        Raises:
            BackupError: already initialised and ``exist_ok`` is False.
            OSError: on I/O errors.
        """
        if pack_size < 1024 or chunk_size < 1024:
            raise ValueError("pack_size and chunk_size must be at least 1024 bytes")
        if self.is_initialized():
            if exist_ok:
                return self.open()
            raise BackupError(f"{self.path}: repository already initialised")
        self.path.mkdir(parents=True, exist_ok=True)
        for sub in ("snapshots/bodies", "index", "archives", "locks"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        for i in range(256):
            (self.packs_dir / f"{i:02x}").mkdir(parents=True, exist_ok=True)
        for d in (self.packs_dir, self.snapshots_dir, self.path):
            fsync_dir(d)
        config = RepositoryConfig(
            id=uuid.uuid4().hex,
            created=utc_iso_z(datetime.now(UTC)),
            pack_size=pack_size,
            chunk_size=chunk_size,
            compression_level=compression_level,
        )
        data = json.dumps(config.to_dict(), indent=2).encode() + b"\n"
        # publish without clobbering a config written concurrently: temp file + link
        tmp = self.path / f"{TMP_PREFIX}config-{uuid.uuid4().hex}"
        atomic_write(tmp, data, sync_dir=False)
        try:
            os.link(tmp, self.path / "config.json")
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(self.path)
        self._config = None
        return self.open()

    def open(self) -> Repository:
        """Load and validate ``config.json``.

        Returns:
            self.

        Raises:
            RepositoryNotFound: no ``config.json``.
            RepositoryFormatError: unreadable or unsupported config.
        """
        path = self.path / "config.json"
        try:
            raw = path.read_bytes()
        except FileNotFoundError as exc:
            raise RepositoryNotFound(f"{self.path}: not an aml backup repository (no config.json)") from exc
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise RepositoryFormatError(f"{path}: {exc}") from exc
        self._config = RepositoryConfig.from_dict(doc)
        return self

    def open_or_init(self, **kwargs: Any) -> Repository:
        """Open the repository, initialising it first if needed (``kwargs`` as for :meth:`init`)."""
        if self.is_initialized():
            return self.open()
        return self.init(exist_ok=True, **kwargs)

    @property
    def config(self) -> RepositoryConfig:
        """The loaded configuration (opens the repository on first use).

        Raises:
            RepositoryNotFound, RepositoryFormatError: as for :meth:`open`.
        """
        if self._config is None:
            self.open()
        assert self._config is not None
        return self._config

    def lock(self, *, exclusive: bool = False, operation: str = "", wait: float = 0.0) -> RepositoryLock:
        """Return a (not yet acquired) lock; use ``with repo.lock(...):``.

        Args:
            exclusive: True for forget/prune/rebuild, False for backup/check/restore.
            operation: recorded in the lock file.
            wait: seconds to retry on conflict before raising :class:`LockError`.
        """
        return RepositoryLock(self.path, exclusive=exclusive, operation=operation, wait=wait)

    def snapshot_ids(self) -> list[str]:
        """Ids of the native snapshots (manifest headers present), sorted by name."""
        try:
            names = os.listdir(self.snapshots_dir)
        except FileNotFoundError:
            return []
        return sorted(n[:-5] for n in names if n.endswith(".json") and not n.startswith(TMP_PREFIX))

    def info(self) -> dict[str, Any]:
        """Return a JSON-ready description: path, config, snapshot count."""
        out: dict[str, Any] = {"path": str(self.path), "initialized": self.is_initialized()}
        if self.is_initialized():
            out["config"] = asdict(self.config)
            out["snapshots"] = len(self.snapshot_ids())
        return out


def as_repository(repo: Repository | str | os.PathLike[str]) -> Repository:
    """Accept a :class:`Repository` or a path."""
    return repo if isinstance(repo, Repository) else Repository(repo)
