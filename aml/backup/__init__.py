"""The backup engine: content-addressed, deduplicated snapshots of a memory store (restic's shape).

One concern per module:

* :mod:`~aml.backup.repository` - layout, ``config.json``, locks (:mod:`~aml.backup.lock`)
* :mod:`~aml.backup.crypto` - encryption at rest: key slots, sealed objects, keyed object ids
* :mod:`~aml.backup.pack` - pack files of zstd-compressed objects
* :mod:`~aml.backup.index` - object id -> (pack, offset, length, size)
* :mod:`~aml.backup.manifest` - snapshot manifests (header + compressed column body)
* :mod:`~aml.backup.archiver` - :func:`create_snapshot`
* :mod:`~aml.backup.excludes` - what a backup leaves out (aml's derived files, restic ``--exclude`` patterns)
* :mod:`~aml.backup.checker` - :func:`check`
* :mod:`~aml.backup.restorer` - :func:`restore`, :func:`resolve_at`: plans with
  :mod:`~aml.backup.restore_plan`, reads with :mod:`~aml.backup.filerestorer`, writes with
  :mod:`~aml.backup.fileswriter`
* :mod:`~aml.backup.retention` - :func:`forget`, :func:`rotate`: the forget policy
  (:mod:`~aml.backup.policy`) then the repository prune (:mod:`~aml.backup.repoprune`,
  :func:`prune_unreferenced`)
* :mod:`~aml.backup.legacy` - Loom's own backups (Python ``full_*/incr_*``, TypeScript ``backup-*.tar.gz``)
* :mod:`~aml.backup.listing` - :func:`list_snapshots` (native and legacy)
* :mod:`~aml.backup.summary` - ``backup_metadata.json``, the seeds' summary

Pure engine: no Celery, no catalog. Results are dataclasses with ``to_dict()``. Units: bytes, seconds,
UTC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aml.lazy import lazy_exports

if TYPE_CHECKING:
    from aml.backup.archiver import NON_AGENT_DIRS, SnapshotResult, create_snapshot, scan_store
    from aml.backup.checker import CheckResult, Problem, check
    from aml.backup.errors import (
        BackupError,
        CorruptionError,
        LockError,
        PasswordRequired,
        RepositoryFormatError,
        RepositoryNotFound,
        SnapshotNotFound,
        UnsafePathError,
        WrongPassword,
    )
    from aml.backup.excludes import DEFAULT_EXCLUDES, Excludes, read_exclude_file
    from aml.backup.index import Index, load_index, rebuild_index
    from aml.backup.legacy import LegacyBackup, find_legacy
    from aml.backup.listing import DamagedSnapshot, SnapshotInfo, list_damaged_snapshots, list_snapshots
    from aml.backup.manifest import DirTable, FileTable, LinkTable, Manifest, load_manifest, read_header, write_manifest
    from aml.backup.progress import Progress, ProgressCallback
    from aml.backup.repository import (
        DEFAULT_CHUNK_SIZE,
        DEFAULT_LEVEL,
        DEFAULT_PACK_SIZE,
        Repository,
        RepositoryConfig,
        default_repository_path,
    )
    from aml.backup.restorer import RestoreResult, resolve_at, restore
    from aml.backup.retention import (
        ORPHAN_GRACE,
        Decision,
        ForgetResult,
        PruneResult,
        RetentionPolicy,
        apply_policy,
        forget,
        parse_duration,
        prune_unreferenced,
        rotate,
    )

_SOURCES = {
    "NON_AGENT_DIRS": "archiver", "SnapshotResult": "archiver", "create_snapshot": "archiver",
    "scan_store": "archiver",
    "CheckResult": "checker", "Problem": "checker", "check": "checker",
    "BackupError": "errors", "CorruptionError": "errors", "LockError": "errors", "PasswordRequired": "errors",
    "RepositoryFormatError": "errors", "RepositoryNotFound": "errors", "SnapshotNotFound": "errors",
    "UnsafePathError": "errors", "WrongPassword": "errors",
    "DEFAULT_EXCLUDES": "excludes", "Excludes": "excludes", "read_exclude_file": "excludes",
    "Index": "index", "load_index": "index", "rebuild_index": "index",
    "LegacyBackup": "legacy", "find_legacy": "legacy",
    "DamagedSnapshot": "listing", "SnapshotInfo": "listing", "list_damaged_snapshots": "listing",
    "list_snapshots": "listing",
    "DirTable": "manifest", "FileTable": "manifest", "LinkTable": "manifest", "Manifest": "manifest",
    "load_manifest": "manifest", "read_header": "manifest", "write_manifest": "manifest",
    "Progress": "progress", "ProgressCallback": "progress",
    "DEFAULT_CHUNK_SIZE": "repository", "DEFAULT_LEVEL": "repository", "DEFAULT_PACK_SIZE": "repository",
    "Repository": "repository", "RepositoryConfig": "repository", "default_repository_path": "repository",
    "RestoreResult": "restorer", "resolve_at": "restorer", "restore": "restorer",
    "ORPHAN_GRACE": "retention", "Decision": "retention", "ForgetResult": "retention", "PruneResult": "retention",
    "RetentionPolicy": "retention", "apply_policy": "retention", "forget": "retention",
    "parse_duration": "retention", "prune_unreferenced": "retention", "rotate": "retention",
}
"""Where each public name lives: the package imports a submodule on first use of one of its names (PEP 562),
so the health check (``aml.backup.storage``, ``.summary``) does not import the archiver, restorer, crypto..."""


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES, globals())


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_EXCLUDES",
    "DEFAULT_LEVEL",
    "DEFAULT_PACK_SIZE",
    "NON_AGENT_DIRS",
    "ORPHAN_GRACE",
    "BackupError",
    "CheckResult",
    "CorruptionError",
    "DamagedSnapshot",
    "Decision",
    "DirTable",
    "Excludes",
    "FileTable",
    "ForgetResult",
    "Index",
    "LegacyBackup",
    "LinkTable",
    "LockError",
    "Manifest",
    "PasswordRequired",
    "Problem",
    "Progress",
    "ProgressCallback",
    "PruneResult",
    "Repository",
    "RepositoryConfig",
    "RepositoryFormatError",
    "RepositoryNotFound",
    "RestoreResult",
    "RetentionPolicy",
    "SnapshotInfo",
    "SnapshotNotFound",
    "SnapshotResult",
    "UnsafePathError",
    "WrongPassword",
    "apply_policy",
    "check",
    "create_snapshot",
    "default_repository_path",
    "find_legacy",
    "forget",
    "list_damaged_snapshots",
    "list_snapshots",
    "load_index",
    "load_manifest",
    "parse_duration",
    "prune_unreferenced",
    "read_exclude_file",
    "read_header",
    "rebuild_index",
    "resolve_at",
    "restore",
    "rotate",
    "scan_store",
    "write_manifest",
]
