"""Health thresholds, with the sources of their numbers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    """Health thresholds. Sizes in MiB (1024² bytes), times in milliseconds, hours or days, rates 0-1.

    Sources: Loom ``scripts/aml/monitoring.py`` ``MemoryMonitor`` defaults (agent 60/80 MiB,
    global 600/800 MiB, backups younger than 24 h, index younger than 24 h), the foundation
    issue (lookup time 50/100 ms, cache hit rate 60/50 %) and the restore drills issue (a drill passed
    within 14 days: two weekly drills, so one missed drill does not warn; the seeds' best practice "Test
    restores occasionally to verify backup integrity").
    """

    agent_warning_mb: float = 60.0
    agent_critical_mb: float = 80.0
    store_warning_mb: float = 600.0
    store_critical_mb: float = 800.0
    query_warning_ms: float = 50.0
    query_critical_ms: float = 100.0
    cache_hit_warning: float = 0.6
    cache_hit_critical: float = 0.5
    backup_max_age_hours: float = 24.0
    index_max_age_hours: float = 24.0
    drill_max_age_days: float = 14.0
