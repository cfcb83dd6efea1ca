"""Exceptions raised by the backup engine.

Every error the engine raises on purpose derives from :class:`BackupError`, so a caller (the Celery task,
the CLI) can catch one type and still tell the cases apart.
"""

from __future__ import annotations

from collections.abc import Iterable


class BackupError(Exception):
    """Base class of every error raised by :mod:`aml.backup`."""


class RepositoryNotFound(BackupError):
    """The path holds no initialised aml repository (``config.json`` missing)."""


class RepositoryFormatError(BackupError):
    """``config.json`` exists but is unreadable or has an unsupported format version."""


class SnapshotNotFound(BackupError):
    """No snapshot (native or legacy) has the requested id, or none matches a point in time."""


class LockError(BackupError):
    """The repository is locked by another live process in a conflicting mode."""


class UnsafePathError(BackupError):
    """A manifest or archive names a path that would escape the restore target.

    Raised for absolute paths, ``..`` or empty components, NUL bytes, symlink entries, and entries that
    conflict with each other (a file used as a directory). Nothing is written when it is raised.
    """


class CorruptionError(BackupError):
    """Stored data does not match its checksum or cannot be decoded.

    Attributes:
        location: the damaged repository file, relative to the repository root (e.g.
            ``packs/ab/ab12...``, ``index/<id>.json``, ``snapshots/<backup_id>.json``).
        objects: sha256 (hex) of the damaged objects, if known.
        snapshots: backup ids of the snapshots that reference the damage, if known.
        files: ``"<backup_id>:<path>"`` of the affected files, if known.
    """

    def __init__(
        self,
        message: str,
        *,
        location: str | None = None,
        objects: Iterable[str] = (),
        snapshots: Iterable[str] = (),
        files: Iterable[str] = (),
    ) -> None:
        super().__init__(message)
        self.location = location
        self.objects = list(objects)
        self.snapshots = list(snapshots)
        self.files = list(files)


class PasswordRequired(BackupError):
    """The repository is encrypted and no password (or unlocked key) was given."""


class WrongPassword(BackupError):
    """No key slot of the encrypted repository opens with the password given."""
