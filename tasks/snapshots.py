"""Snapshots taken by tasks: recording them in the catalog, and the safety snapshot before a destructive step.

Every destructive operation (prune, gc, migrate, restore over a live store) calls
:func:`safety_snapshot` first and records the returned id with its run, so that what it changed can
always be put back with ``aml <store> backup restore --backup-id ID``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session

from aml.backup import BackupError, Repository, SnapshotResult, create_snapshot
from aml.backup.progress import ProgressCallback
from aml.backup.storage import StorageOptions, is_remote_url
from aml.prune.archive import ARCHIVE_DIR
from aml.store.storeid import keyspace_id
from models import queries
from tasks.backup_evidence import repository_cache, repository_path
from tasks.base import Catalog, normalize_store, store_path
from workers.settings import Settings

NOT_CONTENT = ("symlink:", "not a regular file")
"""Archiver reasons for entries that hold no content aml could lose (symlinks, special files): they
do not block a safety snapshot. Any other error (unreadable file or directory) does."""


def backup_password(settings: Settings) -> bytes | None:
    """The password of encrypted backup repositories: ``AML_BACKUP_PASSWORD_FILE``'s first line, or None.

    Read by the process that opens the repository (the worker, or the CLI inline), never carried in task
    arguments, results or the catalog.

    Raises:
        BackupError: the file is set but cannot be read, or is empty.
    """
    if not settings.backup_password_file:
        return None
    path = Path(settings.backup_password_file).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BackupError(f"cannot read the backup password file {path}: {exc.strerror or exc}") from None
    password = raw.split(b"\n", 1)[0].rstrip(b"\r")
    if not password:
        raise BackupError(f"the backup password file {path} is empty")
    return password


def storage_options(settings: Settings) -> StorageOptions:
    """How to reach a remote backup repository: ``AML_BACKUP_TIMEOUT``, ``AML_BACKUP_SFTP_KEY_FILE``,
    ``AML_BACKUP_SFTP_KNOWN_HOSTS``."""
    return StorageOptions(timeout=settings.backup_timeout, sftp_key_file=settings.backup_sftp_key_file,
                          sftp_known_hosts=settings.backup_sftp_known_hosts)


def open_repository(location: Path | str, settings: Settings) -> Repository:
    """A :class:`Repository` at a path or remote URL, with the password of ``AML_BACKUP_PASSWORD_FILE`` when
    set (used only if the repository is encrypted) and, for a remote one, its cache under ``AML_HOME`` and the
    storage options of :func:`storage_options`."""
    if isinstance(location, str) and is_remote_url(location):
        return Repository(location, password=backup_password(settings), cache_dir=repository_cache(settings, location),
                          storage_options=storage_options(settings))
    return Repository(Path(location).expanduser(), password=backup_password(settings))


def repository_for(store_root: Path, settings: Settings) -> Repository:
    """The backup repository of a file store (``AML_BACKUP_ROOT`` or ``<store>/../memory-backup``), opened
    with :func:`open_repository`."""
    return open_repository(repository_path(store_root, settings), settings)


def archive_root(store_root: Path, settings: Settings) -> Path:
    """Where prune archives a file store's decisions (and ``prune undo`` finds them): the repository's
    ``archives/`` for a local repository; for a remote one (whose local directory is a disposable cache),
    ``$AML_HOME/prune-archives/<16 hex digits of the sha256 of the store id>``."""
    repo = repository_path(store_root, settings)
    if isinstance(repo, str):
        digest = hashlib.sha256(normalize_store(str(store_root)).encode()).hexdigest()[:16]
        return settings.home / "prune-archives" / digest
    return Path(repo) / ARCHIVE_DIR


def is_keyspace(store: str) -> bool:
    """Whether a store argument names a Redis keyspace (``redis://``, ``rediss://``, ``unix://``)."""
    return store.strip().startswith(("redis://", "rediss://", "unix://"))


def store_id_of(store: str) -> str:
    """The store id of a store argument: a keyspace's URL without password (:func:`keyspace_id`), or the
    normalised path of a file store (:func:`tasks.base.normalize_store`)."""
    return keyspace_id(store) if is_keyspace(store) else normalize_store(store)


def keyspace_repository(store: str, settings: Settings) -> Repository:
    """The backup repository of a Redis keyspace: ``AML_BACKUP_ROOT`` if set, else
    ``$AML_HOME/keyspace-backups/<first 16 hex digits of the sha256 of the keyspace id>`` (one per
    server and database; the password never enters the name)."""
    if settings.backup_root:
        return open_repository(settings.backup_root, settings)
    digest = hashlib.sha256(keyspace_id(store).encode()).hexdigest()[:16]
    return Repository(settings.home / "keyspace-backups" / digest, password=backup_password(settings))


def repository_of(store_id: str, settings: Settings) -> Repository:
    """The backup repository of any store id: :func:`keyspace_repository` or :func:`repository_for`."""
    return keyspace_repository(store_id, settings) if is_keyspace(store_id) else repository_for(
        store_path(store_id), settings)


def run_file(settings: Settings, kind: str, task_id: str | None) -> Path:
    """Where a keyspace task keeps the keys it is about to change: ``AML_HOME/<kind>/<task id>.json``.

    Named by the Celery task id, which a redelivered task keeps, so the attempt after a killed worker finds
    (and extends, :func:`aml.trace.keyspace.save_first_values`) what the killed one saved; without a task id,
    by the UTC time. The directory is created.
    """
    name = task_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    if "/" in name or name.startswith("."):
        raise ValueError(f"not a usable task id for a file name: {name!r}")
    directory = settings.home / kind
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{name}.json"


def record_snapshot(session: Session, store_id: str, result: SnapshotResult) -> None:
    """Insert (or update) the catalog's ``backups`` row for a snapshot just written.

    Args:
        session: catalog session (the caller commits).
        store_id: normalised store id.
        result: what :func:`aml.backup.create_snapshot` returned.
    """
    queries.record_backup(
        session,
        backup_id=result.backup_id,
        store=store_id,
        repository=result.repository,
        backup_type="incremental" if result.backup_type == "incremental" else "full",
        created_at=datetime.fromisoformat(result.time.replace("Z", "+00:00")),
        file_count=result.file_count,
        total_size_bytes=result.total_size_bytes,
        stored_size_bytes=result.stored_bytes,
        parent_backup_id=result.parent_backup_id,
        agents=result.agents,
        tags=result.tags,
        description=result.description,
    )


def safety_snapshot(
    catalog: Catalog,
    store_id: str,
    store_root: Path,
    settings: Settings,
    *,
    reason: str,
    tags: Iterable[str] = (),
    progress: ProgressCallback | None = None,
) -> SnapshotResult:
    """Take an incremental snapshot of the store before a destructive step, and record it.

    Args:
        catalog: the operation's catalog opener (:data:`tasks.base.Catalog`).
        store_id: normalised store id.
        store_root: the store's directory.
        settings: runtime settings (repository location).
        reason: why (e.g. ``"pre-prune"``, ``"pre-migrate"``); stored as a tag and the description.
        tags: more tags.
        progress: progress callback for the backup.

    Returns:
        The snapshot's :class:`SnapshotResult`; its ``backup_id`` is what the run records.

    Raises:
        aml.backup.BackupError: the snapshot could not be taken; the destructive step must not run.
    """
    result = create_snapshot(store_root, repository_for(store_root, settings), incremental=True,
                             tags=[reason, *tags], description=f"safety snapshot before {reason}",
                             progress=progress)
    unread = [e for e in result.errors if not e["reason"].startswith(NOT_CONTENT)]
    if unread:
        # A snapshot that misses a file's content is no safety net for it: the caller must not go on.
        listed = "; ".join(f"{e['path']}: {e['reason']}" for e in unread[:10])
        raise BackupError(f"safety snapshot {result.backup_id} could not read {len(unread)} "
                          f"entries ({listed}); refusing to change the store")
    with catalog() as session:
        record_snapshot(session, store_id, result)
    return result
