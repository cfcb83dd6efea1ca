"""aml settings, read from ``AML_*`` environment variables.

Every variable, its default and its unit is listed in :data:`ENV_VARS` (the README's configuration
table is generated from the same list). Defaults come from the seeds (Loom ``scripts/aml``: monitor
thresholds 60/80 MiB per agent, 600/800 MiB per store; retention 30 days, at most 100 backups).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aml.health.thresholds import Thresholds

ENV_VARS: dict[str, tuple[str, str]] = {
    "AML_HOME": ("~/.aml", "data directory: embedded SQLite catalog, logs"),
    "AML_BROKER_URL": ("redis://127.0.0.1:6379/0", "Celery broker (Redis)"),
    "AML_RESULT_BACKEND": ("same as AML_BROKER_URL", "Celery result backend"),
    "AML_CATALOG_URL": ("sqlite:///$AML_HOME/catalog.db", "SQLAlchemy URL of the catalog"),
    "AML_LOCK_URL": ("same as AML_BROKER_URL", "Redis used for per-store locks"),
    "AML_STORES": ("(empty)", "comma-separated store paths/URLs that beat maintains"),
    "AML_BACKUP_ROOT": ("<store>/../memory-backup", "backup repository location"),
    "AML_VISIBILITY_TIMEOUT": ("43200", "Redis visibility timeout, seconds (12 h)"),
    "AML_AGENT_WARNING_MB": ("60", "per-agent size warning, MiB (1024² bytes)"),
    "AML_AGENT_CRITICAL_MB": ("80", "per-agent size critical, MiB"),
    "AML_STORE_WARNING_MB": ("600", "store size warning, MiB"),
    "AML_STORE_CRITICAL_MB": ("800", "store size critical, MiB"),
    "AML_QUERY_WARNING_MS": ("50", "record lookup time warning, milliseconds"),
    "AML_QUERY_CRITICAL_MS": ("100", "record lookup time critical, milliseconds"),
    "AML_CACHE_HIT_WARNING": ("0.6", "cache hit rate warning below, ratio 0-1"),
    "AML_CACHE_HIT_CRITICAL": ("0.5", "cache hit rate critical below, ratio 0-1"),
    "AML_BACKUP_MAX_AGE_HOURS": ("24", "a backup older than this is not recent, hours"),
    "AML_RETENTION_DAYS": ("30", "backup retention, days"),
    "AML_MAX_BACKUPS": ("100", "maximum snapshots kept"),
    "AML_LOCK_TIMEOUT": ("60", "seconds a second destructive task waits for a store lock"),
}
"""Environment variable -> (default, meaning). The README documents the same table."""


def _env_float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not a number") from exc


@dataclass(frozen=True)
class Settings:
    """All runtime settings. Build with :func:`load_settings`; override with :meth:`replace`."""

    home: Path
    broker_url: str
    result_backend: str
    catalog_url: str
    lock_url: str
    stores: tuple[str, ...] = ()
    backup_root: str | None = None
    visibility_timeout: int = 43200
    retention_days: int = 30
    max_backups: int = 100
    lock_timeout: float = 60.0
    thresholds: Thresholds = field(default_factory=Thresholds)

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied (dataclasses.replace)."""
        return replace(self, **changes)


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Read settings from ``environ`` (default ``os.environ``).

    Returns:
        A :class:`Settings`.

    Raises:
        ValueError: a numeric variable does not parse; the message names it.
    """
    env = dict(os.environ if environ is None else environ)
    home = Path(env.get("AML_HOME") or "~/.aml").expanduser()
    broker = env.get("AML_BROKER_URL") or "redis://127.0.0.1:6379/0"
    thresholds = Thresholds(
        agent_warning_mb=_env_float(env, "AML_AGENT_WARNING_MB", 60),
        agent_critical_mb=_env_float(env, "AML_AGENT_CRITICAL_MB", 80),
        store_warning_mb=_env_float(env, "AML_STORE_WARNING_MB", 600),
        store_critical_mb=_env_float(env, "AML_STORE_CRITICAL_MB", 800),
        query_warning_ms=_env_float(env, "AML_QUERY_WARNING_MS", 50),
        query_critical_ms=_env_float(env, "AML_QUERY_CRITICAL_MS", 100),
        cache_hit_warning=_env_float(env, "AML_CACHE_HIT_WARNING", 0.6),
        cache_hit_critical=_env_float(env, "AML_CACHE_HIT_CRITICAL", 0.5),
        backup_max_age_hours=_env_float(env, "AML_BACKUP_MAX_AGE_HOURS", 24),
    )
    return Settings(
        home=home,
        broker_url=broker,
        result_backend=env.get("AML_RESULT_BACKEND") or broker,
        catalog_url=env.get("AML_CATALOG_URL") or f"sqlite:///{home / 'catalog.db'}",
        lock_url=env.get("AML_LOCK_URL") or broker,
        stores=tuple(s.strip() for s in (env.get("AML_STORES") or "").split(",") if s.strip()),
        backup_root=env.get("AML_BACKUP_ROOT") or None,
        visibility_timeout=int(_env_float(env, "AML_VISIBILITY_TIMEOUT", 43200)),
        retention_days=int(_env_float(env, "AML_RETENTION_DAYS", 30)),
        max_backups=int(_env_float(env, "AML_MAX_BACKUPS", 100)),
        lock_timeout=_env_float(env, "AML_LOCK_TIMEOUT", 60),
        thresholds=thresholds,
    )
