"""Trace of a file store (Loom, Aitor, TinyTroupe files): records and bytes per agent and collection, so one
command and one time series (``trace_items`` / ``trace_bytes`` per subject) cover file stores and Redis
keyspaces alike.

A subject is ``<agent>/<collection>`` (``frontend-developer/patterns``); its ``keys`` are records (the
report says ``items: "records"``), its ``bytes`` the records' compact JSON bytes. Per agent, the bytes on
disk and the documents. Unused records: records whose writer keeps a last-use time (Loom patterns,
decisions, Aitor todos) not used for ``unused_idle_s``. Findings: rapid growth of a subject since the
previous trace, and mostly unused subjects. Read-only.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aml.store.filestore import FileStore
from aml.store.timestamps import utc_iso_z
from aml.trace.anomalies import AnomalyThresholds, find_anomalies


def _subject(records: int, nbytes: int, unused: int, examples: list[str]) -> dict[str, Any]:
    return {"keys": records, "bytes": nbytes, "avg_bytes": round(nbytes / records, 1) if records else 0,
            "without_ttl": 0, "with_ttl": records, "unused": unused, "examples": examples}


def trace_file_store(root: Path, *, previous: Mapping[str, tuple[float, float]] | None = None,
                     thresholds: AnomalyThresholds | None = None,
                     unused_idle_s: float = 7 * 86400.0) -> dict[str, Any]:
    """Trace a file store.

    Args:
        root: the store directory.
        previous: subject -> ``(records, bytes)`` of the previous trace, for growth.
        thresholds: anomaly thresholds (growth; unused share).
        unused_idle_s: a record whose last use is older than this (seconds) is unused.

    Returns:
        A report shaped as :func:`aml.trace.run.trace_keyspace`'s (``source`` ``"files"``, ``items``
        ``"records"``, ``patterns`` keyed by ``agent/collection``), plus ``agents`` (per agent: records,
        record bytes, bytes on disk, documents) and ``document_errors``.

    Raises:
        FileNotFoundError, NotADirectoryError: ``root`` is not a directory.
    """
    started, when = time.perf_counter(), datetime.now(UTC)
    store = FileStore(root)
    if not store.root.is_dir():
        raise NotADirectoryError(f"{store.root}: not a directory")
    scan = store.scan()
    cutoff = when.timestamp() - unused_idle_s
    counts: dict[str, list[Any]] = defaultdict(lambda: [0, 0, 0, []])
    for record in scan.records:
        entry = counts[f"{record.agent}/{record.collection}"]
        entry[0] += 1
        entry[1] += record.size_bytes
        if record.last_used_at is not None and record.last_used_at.timestamp() < cutoff:
            entry[2] += 1
        if len(entry[3]) < 5:
            entry[3].append(record.id)
    patterns = {name: _subject(*v) for name, v in sorted(counts.items(), key=lambda kv: (-kv[1][1], kv[0]))}
    agents: dict[str, dict[str, int]] = {}
    for info in scan.documents:
        if info.agent is None:
            continue
        a = agents.setdefault(info.agent, {"records": 0, "bytes": 0, "bytes_on_disk": 0, "documents": 0})
        a["bytes_on_disk"] += info.size_bytes
        a["documents"] += 1
        a["records"] += info.record_count
    for name, p in patterns.items():
        agent = name.rsplit("/", 1)[0]
        agents.setdefault(agent, {"records": 0, "bytes": 0, "bytes_on_disk": 0, "documents": 0})["bytes"] += p["bytes"]
    elapsed = time.perf_counter() - started
    total_records = len(scan.records)
    return {
        "source": "files",
        "items": "records",
        "store": store.store_id,
        "time": utc_iso_z(when),
        "duration_s": round(elapsed, 3),
        "keys": total_records,
        "bytes": sum(p["bytes"] for p in patterns.values()),
        "bytes_on_disk": scan.total_bytes,
        "keys_per_s": round(total_records / elapsed) if elapsed > 0 else None,
        "pattern_count": len(patterns),
        "patterns": patterns,
        "agents": dict(sorted(agents.items())),
        "document_errors": len(scan.errors),
        "companions": [],
        "anomalies": find_anomalies(patterns, [], previous, thresholds or AnomalyThresholds(), noun="records",
                                    unused_days=unused_idle_s / 86400),
        "compared_with_previous": previous is not None,
        "values": {},
        "with_ttl": total_records,
        "without_ttl": 0,
        "expired": 0,
        "partial": False,
        "error": None,
        "match": None,
    }
