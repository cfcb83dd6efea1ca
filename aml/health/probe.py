"""Measured record lookups for ``performance_ok``.

When the store has a record index (``optimize index``: ``.aml/index.sqlite``), a lookup goes through
it the way ``aml <store> query --id`` does: the Bloom filter and the index find the record, and its
value comes from the record cache or the warm set, else from its document
(:class:`aml.optimize.QueryEngine`, a new engine per probe). Without an index, or if the index cannot
be read, a lookup is what an agent's own tools do: open the document that holds the record, decode
it (gzip/zstd sniffed), parse the JSON and find the record by id. The probe times that for a
deterministic sample of records and reports mean and p95 in milliseconds (time.perf_counter). It
reads only; it never writes.
"""

from __future__ import annotations

import json
import random
import sqlite3
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aml.optimize.files import INDEX_FILE
from aml.optimize.query import QueryEngine
from aml.store import Record
from aml.store.codec import decode


def _find(doc: Any, record_id: str) -> bool:
    items = doc if isinstance(doc, list) else []
    return any(isinstance(item, dict) and str(item.get("id")) == record_id for item in items)


def lookup(root: Path, relpath: str, record_id: str) -> bool:
    """Look one record up the way an agent's tools do without an index.

    Args:
        root: store root directory.
        relpath: the document's path relative to ``root``.
        record_id: the record's ``id``.

    Returns:
        ``True`` if the document holds a top-level item with that id.

    Raises:
        OSError, ValueError: the document cannot be read or parsed.
    """
    raw = (root / relpath).read_bytes()
    data, _ = decode(raw)
    return _find(json.loads(data), record_id)


def probe_lookups(root: Path, records: Sequence[Record], *, sample: int = 50, seed: int = 0) -> list[float]:
    """Time ``sample`` record lookups (fewer if the store has fewer records).

    Only records that live directly in a top-level JSON list (Loom collections) are sampled.

    Args:
        root: store root.
        records: record views from a scan.
        sample: number of lookups.
        seed: seed of the deterministic sample, so that runs compare.

    Returns:
        Lookup durations in milliseconds, one per lookup. Lookups that fail (the file changed
        under us) are skipped.
    """
    candidates = [r for r in records if r.collection in ("patterns", "solutions", "decisions")]
    if not candidates:
        return []
    rng = random.Random(seed)
    chosen = rng.sample(candidates, min(sample, len(candidates)))
    if (root / INDEX_FILE).is_file():
        indexed = _probe_indexed(root, chosen)
        if indexed is not None:
            return indexed
    times: list[float] = []
    for record in chosen:
        start = time.perf_counter()
        try:
            lookup(root, record.location.path, record.id)
        except (OSError, ValueError):
            continue
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def _probe_indexed(root: Path, chosen: Sequence[Record]) -> list[float] | None:
    """Time the lookups through the index; ``None`` when the index cannot be used (fall back)."""
    try:
        with QueryEngine(root) as engine:
            times: list[float] = []
            for record in chosen:
                start = time.perf_counter()
                hit = engine.lookup(record.id)
                elapsed = time.perf_counter() - start
                if hit is not None and hit.item is not None:
                    times.append(elapsed * 1000.0)
            return times if times or not chosen else None
    except (OSError, ValueError, sqlite3.Error):
        return None


def summarize(times_ms: Sequence[float]) -> tuple[float, float]:
    """Return ``(mean, p95)`` of lookup times in milliseconds; ``(0.0, 0.0)`` for no lookups."""
    if not times_ms:
        return 0.0, 0.0
    if len(times_ms) == 1:
        return times_ms[0], times_ms[0]
    return statistics.fmean(times_ms), statistics.quantiles(times_ms, n=20, method="inclusive")[-1]
