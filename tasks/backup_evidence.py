"""Which snapshots exist for a store, for health's ``recent_backup`` check, and which restore drills passed,
for its ``restore_tested`` check (:func:`drill_evidence`).

Evidence comes from two places: the catalog's ``backups`` rows (with their verification state) and
the backup repository's ``backup_metadata.json`` summary, which aml's repository, Loom's Python
``backup.py`` and restic-shaped repositories written by aml all keep in the seeds' format. A backup
the catalog marks as failed verification stays failed whatever the summary says.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from aml.backup.storage import is_remote_url, redact_url
from aml.health.checks import BackupEvidence, DrillEvidence
from aml.store.timestamps import parse_timestamp
from models import queries
from workers.settings import Settings


def repository_path(store_root: Path, settings: Settings) -> Path | str:
    """The backup repository of a file store: ``AML_BACKUP_ROOT`` (a directory, or an ``sftp://`` or ``s3://``
    URL, returned as a string) or ``<store>/../memory-backup``."""
    if settings.backup_root:
        if is_remote_url(settings.backup_root):
            return settings.backup_root
        return Path(settings.backup_root).expanduser()
    return store_root.parent / "memory-backup"


def repository_cache(settings: Settings, url: str) -> Path:
    """The local cache of a remote repository: ``$AML_HOME/backup-cache/<16 hex digits of the sha256 of its
    URL without password>``."""
    return settings.home / "backup-cache" / hashlib.sha256(redact_url(url).encode()).hexdigest()[:16]


def repository_files(store_root: Path, settings: Settings) -> Path:
    """Where the store's repository's files can be read on this host: the directory, or a remote one's cache."""
    repo = repository_path(store_root, settings)
    return repository_cache(settings, repo) if isinstance(repo, str) else repo


def repository_name(store_root: Path, settings: Settings) -> str:
    """The repository as the catalog names it: its path, or its URL without password."""
    repo = repository_path(store_root, settings)
    return redact_url(repo) if isinstance(repo, str) else str(repo)


def _summary_entries(repo: Path) -> list[dict[str, Any]]:
    path = repo / "backup_metadata.json"
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return []
    backups = data.get("backups") if isinstance(data, dict) else None
    return [b for b in backups if isinstance(b, dict)] if isinstance(backups, list) else []


def _other_store(source: object, here: str) -> bool:
    """``source`` (a summary entry's ``source_path``) is an existing directory other than ``here``."""
    return isinstance(source, str) and bool(source) and os.path.isdir(source) and os.path.realpath(source) != here


def backup_evidence(session: Session, store_id: str, store_root: Path, settings: Settings) -> list[BackupEvidence]:
    """Every snapshot known for ``store_id``.

    Args:
        session: catalog session.
        store_id: normalised store id.
        store_root: the store's directory.
        settings: runtime settings (backup root).

    Returns:
        One :class:`BackupEvidence` per backup id (catalog state wins over the summary). Summary
        entries whose ``source_path`` names another store (a shared ``AML_BACKUP_ROOT``) are not
        this store's evidence; entries without one, or naming a path absent here (Loom summaries written
        on another host), are.
    """
    found: dict[str, BackupEvidence] = {}
    repo = repository_files(store_root, settings)
    here = os.path.realpath(store_root)
    shared = bool(settings.backup_root)
    for entry in _summary_entries(repo):
        when = parse_timestamp(entry.get("timestamp"))
        backup_id = entry.get("backup_id")
        if when is None or not isinstance(backup_id, str):
            continue
        if shared and _other_store(entry.get("source_path"), here):
            continue  # another store's snapshot in a shared AML_BACKUP_ROOT
        found[backup_id] = BackupEvidence(backup_id, when, repository_name(store_root, settings))
    for row in queries.list_backups(session, store_id):
        found[row.backup_id] = BackupEvidence(row.backup_id, row.created_at, "catalog", row.verify_status)
    return sorted(found.values(), key=lambda b: b.time)


def drill_evidence(session: Session, store_id: str, store_root: Path, settings: Settings,
                   now: datetime | None = None) -> list[DrillEvidence]:
    """The store's finished restore drills, for health's ``restore_tested`` check.

    Args:
        session: catalog session.
        store_id: normalised store id.
        store_root: the store's directory.
        settings: runtime settings (repository location, ``drill_max_age_days``).
        now: the instant the window ends (default now, UTC).

    Returns:
        The drills of the store's current repository that finished within ``AML_DRILL_MAX_AGE_DAYS``, plus the
        most recent one that passed or failed, whatever its age (a failed drill stays critical until one
        passes), newest first.
    """
    now = now or datetime.now(UTC)
    repo = repository_name(store_root, settings)
    since = now - timedelta(days=settings.drill_max_age_days)
    rows = queries.list_restore_drills(session, store=store_id, repository=repo, since=since,
                                       statuses=("passed", "failed", "error"), limit=500)
    rows += queries.list_restore_drills(session, store=store_id, repository=repo, statuses=("passed", "failed"),
                                        limit=1)
    seen: set[int] = set()
    out: list[DrillEvidence] = []
    for r in rows:
        if r.id in seen:
            continue
        seen.add(r.id)
        out.append(DrillEvidence(time=r.finished_at or r.started_at, status=r.status, backup_id=r.backup_id,
                                 agent=r.agent, failures=len(r.failures or []), error=r.error))
    return sorted(out, key=lambda d: d.time, reverse=True)
