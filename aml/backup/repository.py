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
      keys/<key_id>                  encrypted repositories only: key slots (see :mod:`aml.backup.crypto`)
      verify_state.json              when each pack was last read back (rotating ``read_data_subset``)
      full_*/ incr_*/ backup-*.tar.gz  legacy Loom backups, left where they are (:mod:`aml.backup.legacy`)

An encrypted repository (``init(encrypt=True, password=...)``) has an ``"encryption"`` member in
``config.json`` and stores every pack, index file, manifest and dictionary sealed (:mod:`aml.backup.crypto`);
open it with ``Repository(path, password=...)``.

The default repository of a store at ``S`` is ``S/../memory-backup`` (the seeds' convention).

A repository on another host is named by URL (``sftp://user@host/path``, ``s3://bucket/prefix``, see
:mod:`aml.backup.storage`): ``path`` is then a local cache of its small objects, written through to the
storage (:mod:`aml.backup.remote`), and ``url`` names the repository in messages.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from aml.gcpause import gc_paused
from aml.store.atomic import atomic_write, fsync_dir
from aml.store.timestamps import utc_iso_z

from . import crypto, remote
from ._common import TMP_PREFIX
from .errors import BackupError, PasswordRequired, RepositoryFormatError, RepositoryNotFound, WrongPassword
from .lock import RepositoryLock
from .storage import Storage, StorageExists, StorageOptions, is_remote_url, open_storage, redact_url

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
        encryption: ``{"cipher", "ids", "kdf"}`` for an encrypted repository, else None.
    """

    id: str
    created: str
    pack_size: int = DEFAULT_PACK_SIZE
    chunk_size: int = DEFAULT_CHUNK_SIZE
    compression_level: int = DEFAULT_LEVEL
    version: int = REPO_VERSION
    encryption: dict[str, str] | None = None

    @property
    def encrypted(self) -> bool:
        """Whether the repository is encrypted."""
        return self.encryption is not None

    def to_dict(self) -> dict[str, Any]:
        """Return the ``config.json`` document."""
        doc: dict[str, Any] = {
            "format": REPO_FORMAT,
            "version": self.version,
            "id": self.id,
            "created": self.created,
            "pack_size": self.pack_size,
            "chunk_size": self.chunk_size,
            "compression": {"codec": "zstd", "level": self.compression_level},
        }
        if self.encryption is not None:
            doc["encryption"] = dict(self.encryption)
        return doc

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
        enc = doc.get("encryption")
        if enc is not None and (not isinstance(enc, dict) or enc.get("cipher") != crypto.CIPHER
                                or enc.get("ids") != "hmac-sha256"):
            raise RepositoryFormatError(f"unsupported encryption {enc!r}")
        try:
            return cls(
                id=str(doc["id"]),
                created=str(doc["created"]),
                pack_size=int(doc["pack_size"]),
                chunk_size=int(doc.get("chunk_size", DEFAULT_CHUNK_SIZE)),
                compression_level=int(comp.get("level", DEFAULT_LEVEL)),
                encryption=None if enc is None else {str(k): str(v) for k, v in enc.items()},
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
        path: the repository directory, or the URL of a remote repository (``sftp://``, ``s3://``).
        password: the password of an encrypted repository (ignored by a plain one). Never stored on disk.
        cache_dir: a remote repository's cache directory (default
            :func:`aml.backup.remote.default_cache_dir`); ignored for a local one.
        storage_options: timeouts and credentials of a remote repository.
        storage: a storage to use as the repository (any :class:`Storage`; ``path`` then only names it in
            messages and ``cache_dir`` is required).

    Raises:
        StorageError: a malformed or unsupported URL.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        password: str | bytes | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        storage_options: StorageOptions | None = None,
        storage: Storage | None = None,
    ) -> None:
        location = os.fspath(path)
        self.storage = storage
        if storage is not None or (isinstance(location, str) and is_remote_url(location)):
            if storage is None:
                self.url = redact_url(location)
                self.storage = open_storage(location, storage_options)
            else:
                if cache_dir is None:
                    raise ValueError("a Repository given a storage needs a cache_dir")
                self.url = storage.url
            assert self.storage is not None
            self.path = Path(os.path.abspath(cache_dir or remote.default_cache_dir(self.url)))
            remote.attach(self.path, self.storage)
        else:
            self.path = Path(os.path.abspath(location))
            self.url = str(self.path)
        self._config: RepositoryConfig | None = None
        self._password = password.encode() if isinstance(password, str) else password
        self._unlocked_id: str | None = None
        self._pulled = False

    def __repr__(self) -> str:
        return f"Repository({self.url!r})"

    @property
    def remote(self) -> bool:
        """Whether the repository is on another host (``path`` is then its local cache)."""
        return self.storage is not None

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
        """True if ``config.json`` exists (in the storage, for a remote repository).

        Raises:
            StorageError: a remote storage cannot be reached.
        """
        if self.storage is not None:
            return self.storage.stat("config.json") is not None
        return (self.path / "config.json").is_file()

    # lifecycle ------------------------------------------------------------------------------------
    def init(
        self,
        *,
        pack_size: int = DEFAULT_PACK_SIZE,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        compression_level: int = DEFAULT_LEVEL,
        exist_ok: bool = False,
        encrypt: bool = False,
        kdf: dict[str, int] | None = None,
    ) -> Repository:
        """Create the repository layout and ``config.json``.

        Existing content (legacy backups, ``backup_metadata.json``) is kept.

        Args:
            encrypt: create an encrypted repository: a random master key in a first key slot wrapped by
                the password given to the constructor (required).
            kdf: scrypt parameters ``{"n", "r", "p"}`` of that slot (default :data:`crypto.DEFAULT_KDF`).
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
            raise BackupError(f"{self.url}: repository already initialised")
        if encrypt and not self._password:
            raise PasswordRequired(f"an encrypted repository needs a password: {self.url}")
        self.path.mkdir(parents=True, exist_ok=True)
        if self.storage is not None:
            self._pull()  # an empty cache, whatever an earlier attempt left
        master: crypto.MasterKey | None = None
        key_id: str | None = None
        if encrypt:
            assert self._password is not None
            master = crypto.MasterKey.generate()
            (self.path / "keys").mkdir(exist_ok=True)
            key_id = self._write_key(master, self._password, kdf)
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
            encryption=dict(crypto.ENCRYPTION_CONFIG) if encrypt else None,
        )
        data = json.dumps(config.to_dict(), indent=2).encode() + b"\n"
        # publish without clobbering a config written concurrently: temp file + link
        tmp = self.path / f"{TMP_PREFIX}config-{uuid.uuid4().hex}"
        atomic_write(tmp, data, sync_dir=False)
        try:
            os.link(tmp, self.path / "config.json")
        except FileExistsError:  # initialised concurrently: that config wins, and our key slot goes
            if key_id is not None:
                (self.keys_dir / key_id).unlink(missing_ok=True)
            master = None
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(self.path)
        if self.storage is not None:
            try:
                remote.published(self.path, self.path / "config.json", data)  # after the key slot
            except StorageExists:  # initialised concurrently from elsewhere: that one is the repository,
                if key_id is not None:  # and our key slot (for a master key nobody uses) goes
                    remote.removed(self.path, self.keys_dir / key_id)
                master = None
                self._pull()
        self._config = None
        if master is not None and json.loads((self.path / "config.json").read_bytes()).get("id") == config.id:
            crypto.register(self.path, config.id, master)
            self._unlocked_id = config.id
        return self.open()

    def open(self) -> Repository:
        """Load and validate ``config.json``.

        Returns:
            self.

        Raises:
            RepositoryNotFound: no ``config.json``.
            RepositoryFormatError: unreadable or unsupported config.
            PasswordRequired: encrypted, and no password was given (nor a key unlocked in this process).
            WrongPassword: encrypted, and no key slot opens with the password.
        """
        path = self.path / "config.json"
        if self.storage is not None and not self._pulled:
            self._pull()
        try:
            raw = path.read_bytes()
        except FileNotFoundError as exc:
            raise RepositoryNotFound(f"{self.url}: not an aml backup repository (no config.json)") from exc
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise RepositoryFormatError(f"{path}: {exc}") from exc
        config = RepositoryConfig.from_dict(doc)
        if config.encrypted:
            self._unlock(config)
        self._config = config
        return self

    def _pull(self) -> None:
        mirror = remote.mirror_for(self.path)
        assert mirror is not None and self.storage is not None
        remote.pull(mirror)
        self._pulled = True

    def refresh(self) -> Repository:
        """Re-read a remote repository's small objects into the cache (what other hosts wrote since);
        nothing to do for a local one. Returns self."""
        if self.storage is not None:
            self._pull()
            self._config = None
        return self

    # encryption -----------------------------------------------------------------------------------
    @property
    def keys_dir(self) -> Path:
        """``keys/``: key slots of an encrypted repository."""
        return self.path / "keys"

    def _unlock(self, config: RepositoryConfig) -> None:
        try:
            crypto.key_for(self.path)
            if self._password is None or self._unlocked_id == config.id:
                return  # unlocked earlier in this process
        except PasswordRequired:
            if self._password is None:
                raise
        for _slot, doc in self._slots():
            master = crypto.open_key_slot(doc, self._password)
            if master is not None:
                crypto.register(self.path, config.id, master)
                self._unlocked_id = config.id
                return
        raise WrongPassword(f"wrong password or no key slot for it: {self.url}")

    def _slots(self) -> list[tuple[crypto.KeySlot, dict[str, Any]]]:
        out: list[tuple[crypto.KeySlot, dict[str, Any]]] = []
        try:
            names = sorted(os.listdir(self.keys_dir))
        except FileNotFoundError:
            return out
        for name in names:
            if name.startswith(TMP_PREFIX):
                continue
            try:
                out.append(crypto.parse_key_slot(name, (self.keys_dir / name).read_bytes()))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a damaged slot opens nothing; verify names it
        return out

    def _write_key(self, master: crypto.MasterKey, password: bytes, kdf: dict[str, int] | None) -> str:
        key_id, raw = crypto.make_key_slot(master, password, kdf=kdf)
        atomic_write(self.keys_dir / key_id, raw, mode=0o400)
        remote.published(self.path, self.keys_dir / key_id, raw)
        return key_id

    @property
    def encrypted(self) -> bool:
        """Whether the repository is encrypted (opens it)."""
        return self.config.encrypted

    def master_key(self) -> crypto.MasterKey | None:
        """The unlocked master key (None for a plain repository); opens the repository."""
        self.config  # noqa: B018 - opens and unlocks
        return crypto.key_for(self.path)

    def list_keys(self) -> list[crypto.KeySlot]:
        """The key slots (public parts only), oldest first. Opens (and so checks the password)."""
        self.master_key()
        return sorted((slot for slot, _ in self._slots()), key=lambda s: (s.created, s.id))

    def add_key(self, password: str | bytes, *, kdf: dict[str, int] | None = None) -> str:
        """Add a key slot for another password (the repository must open with the current one).

        Returns:
            The new key id.

        Raises:
            BackupError: the repository is not encrypted.
        """
        master = self.master_key()
        if master is None:
            raise BackupError(f"repository is not encrypted: {self.url}")
        return self._write_key(master, password.encode() if isinstance(password, str) else password, kdf)

    def remove_key(self, key_id: str) -> None:
        """Remove a key slot (by id or unique prefix); the last one is never removed.

        Raises:
            BackupError: not encrypted, no such slot, ambiguous prefix, or it is the last slot.
        """
        if self.master_key() is None:
            raise BackupError(f"repository is not encrypted: {self.url}")
        slots = [s.id for s, _ in self._slots()]
        match = [s for s in slots if s.startswith(key_id)] if key_id else []
        if len(match) != 1:
            raise BackupError(f"no key slot {key_id!r}" if not match else f"key id {key_id!r} is ambiguous")
        if len(slots) <= 1:
            raise BackupError(f"refusing to remove the last key slot of {self.url}")
        remote.removed(self.path, self.keys_dir / match[0])
        fsync_dir(self.keys_dir)

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
        """Ids of the native snapshots (manifest headers present), sorted by name (a remote repository is
        opened first, so that its cache is filled)."""
        if self.storage is not None and not self._pulled and self.is_initialized():
            self.open()
        try:
            names = os.listdir(self.snapshots_dir)
        except FileNotFoundError:
            return []
        return sorted(n[:-5] for n in names if n.endswith(".json") and not n.startswith(TMP_PREFIX))

    def info(self) -> dict[str, Any]:
        """Return a JSON-ready description: path, config, snapshot count."""
        out: dict[str, Any] = {"path": self.url, "initialized": self.is_initialized()}
        if self.storage is not None:
            out["cache"] = str(self.path)
        if self.is_initialized():
            out["config"] = asdict(self.config)
            out["snapshots"] = len(self.snapshot_ids())
            out["encrypted"] = self.config.encrypted
        return out


def as_repository(repo: Repository | str | os.PathLike[str]) -> Repository:
    """Accept a :class:`Repository` or a path.

    A :class:`Repository` given a password is opened here when it is initialised, so its key is unlocked
    before any engine function reads or writes it by path; so is a remote one, so that its cache is filled.
    """
    if not isinstance(repo, Repository):
        return Repository(repo)
    if repo.storage is not None and not repo._pulled and repo.is_initialized():
        repo.config  # noqa: B018 - a remote repository's cache is filled when it is opened
    elif repo._password is not None and repo.is_initialized():
        repo.config  # noqa: B018 - opens and unlocks (once)
    return repo


_Engine = TypeVar("_Engine", bound=Callable[..., Any])


def local_collector_paused(engine: _Engine) -> _Engine:
    """Run a backup engine function (its argument ``repo``: a :class:`Repository` or a location) with Python's
    cyclic collector paused when the repository is on this host (:func:`aml.gcpause.gc_paused`).

    A snapshot's entries, the index and the packs aml makes hold no reference cycles, and the collector's passes
    over 100,000 of them were a seventh to a fifth of an incremental backup and a verify (benchmarks/backup.py).
    A remote repository's client (boto3, paramiko) makes objects of its own, with cycles: it runs with the
    collector on."""
    position = list(inspect.signature(engine).parameters).index("repo")

    @functools.wraps(engine)
    def run(*args: Any, **kwargs: Any) -> Any:
        repo = kwargs["repo"] if "repo" in kwargs else args[position] if len(args) > position else None
        remote_repo = repo.remote if isinstance(repo, Repository) else isinstance(repo, str) and is_remote_url(repo)
        if remote_repo:
            return engine(*args, **kwargs)
        with gc_paused():
            return engine(*args, **kwargs)

    return cast(_Engine, run)
