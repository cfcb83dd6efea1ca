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

from .archiver import NON_AGENT_DIRS, SnapshotResult, create_snapshot, scan_store
from .checker import CheckResult, Problem, check
from .errors import (
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
from .excludes import DEFAULT_EXCLUDES, Excludes, read_exclude_file
from .index import Index, load_index, rebuild_index
from .legacy import LegacyBackup, find_legacy
from .listing import DamagedSnapshot, SnapshotInfo, list_damaged_snapshots, list_snapshots
from .manifest import DirTable, FileTable, LinkTable, Manifest, load_manifest, read_header, write_manifest
from .progress import Progress, ProgressCallback
from .repository import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_LEVEL,
    DEFAULT_PACK_SIZE,
    Repository,
    RepositoryConfig,
    default_repository_path,
)
from .restorer import RestoreResult, resolve_at, restore
from .retention import (
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
