"""Measured record lookups for ``performance_ok``, taken during health's one read of the store.

A :class:`LookupProbe` is made before the scan and sees every document the scan reads
(:meth:`LookupProbe.visit`, the scan's ``visit`` hook), so that no document is read or parsed a second
time for the probe, whatever its size (issue 12: a probe that re-read a 200 MB document for each of
its 50 lookups took 8 s per lookup).

* **With a record index** (``optimize index``: ``.aml/index.sqlite``), a lookup is what
  ``aml <store> query --id`` does: the Bloom filter and the index find the record by id, and its value
  comes from the record cache or the warm set, else from its document (:class:`aml.optimize.QueryEngine`,
  one new engine per probe, empty record cache). The sample is drawn from the index (records of Loom
  collections, in at most :data:`PROBE_DOCUMENTS` documents, read by health's own process); when the scan
  reaches a sampled record's document, the engine is handed that parsed document
  (:meth:`~aml.optimize.QueryEngine.adopt_document`, only if the file still has the size and mtime it was
  read with) and the record's lookups are timed then. ``source`` is ``"index"``.
* **Without an index** (or one that cannot be read), a lookup is what an agent's own tools do once
  they hold a document: find the record by id in the parsed list. A bounded sample of the Loom
  collection documents (at most :data:`PROBE_DOCUMENTS`, chosen deterministically before the scan from the
  agent directories) is probed while the scan holds each one, in health's own process (the scan's workers
  read the rest, :meth:`aml.store.FileStore.scan_tallies`). ``source`` is ``"documents"``.

Mean and p95 are in milliseconds (``time.perf_counter``). The probe reads only; it never writes.
"""

from __future__ import annotations

import os
import random
import sqlite3
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from aml.optimize.cache import DocStamp
from aml.optimize.files import INDEX_FILE
from aml.optimize.query import QueryEngine
from aml.store import Document, FileStore
from aml.store.documents import LazyItems, base_name

PROBE_COLLECTIONS: Final = ("patterns", "solutions", "decisions")
"""The Loom collections whose records the probe looks up."""

_COLLECTION_FILES: Final = frozenset(f"{c}.json" for c in PROBE_COLLECTIONS)

PROBE_DOCUMENTS: Final = 4
"""The lookups are timed in records of this many documents, more where these hold fewer records than lookups
(without an index: sampled, their shares in proportion to their sizes; with one: those of the first records a
sample of the index draws). Health reads these documents in its own process, where the lookups are timed on the
scan's read, and leaves the rest of the store to worker processes (:meth:`aml.store.FileStore.scan_tallies`).
Four is a choice, not a source's number: on the benchmark's store (24 collection documents, two workers) the
health process then reads and times about as much as each worker reads."""

BYTES_PER_LOOKUP: Final = 16 * 1024
"""Without an index, documents are added to the sample until they hold this many bytes per lookup, so that they
can hold every lookup of the sample: a Loom record takes 0.8-1.2 KB as Loom writes it (the collections of
``shared/data/loom``, measured), so 16 KiB is over ten records per lookup."""


def find_by_id(doc: Any, record_id: str) -> bool:
    """Whether a parsed Loom collection (a JSON list) holds a top-level item with this ``id``: the
    lookup of an agent's tools that hold the document."""
    items = doc if isinstance(doc, list) else []
    return any(isinstance(item, dict) and str(item.get("id")) == record_id for item in items)


class LookupProbe:
    """Times ``sample`` record lookups during one scan (see the module docstring).

    Args:
        root: store root directory.
        sample: number of lookups (fewer if the store has fewer records or documents).
        seed: seed of the deterministic sample, so that runs compare.

    Attributes:
        source: ``"index"`` (lookups through the record index), ``"documents"`` (lookups in the
            parsed documents) or ``"none"`` (nothing to look up).
        times_ms: one duration per completed lookup, milliseconds.
        unprobed: store-relative paths of the documents whose planned lookups (``"documents"`` source) were
            passed on to the next documents because their items are read one at a time
            (:class:`~aml.store.documents.LazyItems`): timing a search that decodes would not measure the
            search of a held document.
    """

    def __init__(self, root: Path, *, sample: int = 50, seed: int = 0) -> None:
        self.root = root
        self.sample = sample
        self.times_ms: list[float] = []
        self.source = "none"
        self._rng = random.Random(seed)
        self._engine: QueryEngine | None = None
        self._plan: dict[str, list[str]] = {}
        self._carry = 0
        self.unprobed: list[str] = []
        if sample <= 0 or not root.is_dir():
            return
        if (root / INDEX_FILE).is_file() and self._plan_from_index():
            self.source = "index"
        else:
            self._plan_documents()

    # ------------------------------------------------------------------ planning

    def _plan_from_index(self) -> bool:
        try:
            engine = QueryEngine(self.root)
        except (OSError, sqlite3.Error):
            return False
        try:
            chosen = engine.sample_records(self.sample, seed=self._rng.randrange(2**32),
                                           collections=PROBE_COLLECTIONS, documents=PROBE_DOCUMENTS)
        except (OSError, sqlite3.Error):
            engine.close()
            return False
        if not chosen:
            engine.close()
            return False
        for record_id, document in chosen:
            self._plan.setdefault(document, []).append(record_id)
        self._engine = engine
        return True

    def _plan_documents(self) -> None:
        candidates = sorted(_collection_documents(self.root))
        if not candidates:
            return
        shuffled = self._rng.sample(candidates, len(candidates))
        count = held = 0  # PROBE_DOCUMENTS documents, more while they hold too few bytes for the lookups
        for _, size in shuffled:
            if count >= min(self.sample, PROBE_DOCUMENTS) and held >= self.sample * BYTES_PER_LOOKUP:
                break
            count, held = count + 1, held + size
        docs = sorted(shuffled[:min(count, self.sample)])
        # lookups shared in proportion to the documents' sizes (records are, roughly); a document with
        # fewer records than its share passes the rest on to the documents after it (_visit_document)
        total = sum(size for _, size in docs) or 1
        shares = [self.sample * size / total for _, size in docs]
        quotas = [int(s) for s in shares]
        by_remainder = sorted(range(len(docs)), key=lambda i: (quotas[i] - shares[i], i))
        for i in by_remainder[: self.sample - sum(quotas)]:
            quotas[i] += 1
        for (relpath, _), quota in zip(docs, quotas, strict=True):
            self._plan[relpath] = [""] * quota  # ids are drawn from the document when the scan reads it
        self.source = "documents"

    # ------------------------------------------------------------------ the scan's hook

    @property
    def documents(self) -> frozenset[str]:
        """Store-relative paths of the documents whose lookups are still to be timed: the scan must read them in
        the probe's process and show each to :meth:`visit`."""
        return frozenset(self._plan)

    def visit(self, doc: Document) -> None:
        """Time the planned lookups of ``doc`` while the scan holds it (the scan's ``visit`` hook)."""
        planned = self._plan.pop(doc.relpath, None)
        if planned is None:
            return
        if self._engine is not None:
            if doc.error is None and doc.data is not None:
                self._visit_indexed(doc, planned)
            return
        wanted = len(planned) + self._carry
        if isinstance(doc.data, LazyItems):
            # items decoded one at a time: a lookup would time decoding, not the search of a held document
            self.unprobed.append(doc.relpath)
            self._carry = wanted
            return
        done = self._visit_document(doc, wanted) if doc.error is None and doc.data is not None else 0
        self._carry = wanted - done

    def _visit_indexed(self, doc: Document, ids: list[str]) -> None:
        engine = self._engine
        assert engine is not None
        stamp = DocStamp.of(doc.path)
        adopted = stamp is not None and (stamp.size, stamp.mtime_ns) == (doc.size_bytes, doc.mtime_ns)
        try:
            if adopted and stamp is not None:
                engine.adopt_document(doc.relpath, stamp, doc.data)
            for record_id in ids:
                start = time.perf_counter()
                hit = engine.lookup(record_id)
                elapsed = time.perf_counter() - start
                if hit is not None and hit.item is not None:
                    self.times_ms.append(elapsed * 1000.0)
        except (OSError, ValueError, sqlite3.Error):
            return
        finally:
            engine.forget_document(doc.relpath)  # keep at most the scan's current document in memory

    def _visit_document(self, doc: Document, n: int) -> int:
        """Time up to ``n`` lookups in ``doc``; returns how many were made."""
        made = 0
        for record_id in self._draw_ids(doc.data if isinstance(doc.data, list) else [], n):
            start = time.perf_counter()
            found = find_by_id(doc.data, record_id)
            elapsed = time.perf_counter() - start
            if found:
                self.times_ms.append(elapsed * 1000.0)
                made += 1
        return made

    def _draw_ids(self, items: list[Any], n: int) -> list[str]:
        """Up to ``n`` distinct ids of ``items``' objects, drawn at random positions: as many draws as ids are
        wanted when items have ids (a Loom collection), not a list of every id; the ids of all items, sampled,
        where draws keep missing (items without ids)."""
        picked: dict[str, None] = {}  # drawn ids, in draw order
        for _ in range(4 * n):
            if len(picked) >= n or not items:
                break
            item = items[self._rng.randrange(len(items))]
            if isinstance(item, dict) and item.get("id") is not None:
                picked[str(item["id"])] = None
        if len(picked) >= min(n, len(items)):
            return list(picked)
        ids = [str(item.get("id")) for item in items if isinstance(item, dict) and item.get("id") is not None]
        return self._rng.sample(ids, min(n, len(ids)))

    def close(self) -> None:
        """Release the index connection (the probe cannot be used afterwards)."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        self._plan.clear()

    def __enter__(self) -> LookupProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _collection_documents(root: Path) -> list[tuple[str, int]]:
    """``(store-relative path, size in bytes)`` of the Loom collection documents (``<agent>/patterns.json``...)
    of ``root``: a directory listing, no document read."""
    out = []
    try:
        agents = FileStore(root).agents()
    except OSError:
        return []
    for agent in agents:
        try:
            with os.scandir(root / agent) as entries:
                out += [(f"{agent}/{e.name}", e.stat(follow_symlinks=False).st_size) for e in entries
                        if base_name(e.name) in _COLLECTION_FILES and e.is_file(follow_symlinks=False)]
        except OSError:
            continue
    return out


def summarize(times_ms: Sequence[float]) -> tuple[float, float]:
    """Return ``(mean, p95)`` of lookup times in milliseconds; ``(0.0, 0.0)`` for no lookups."""
    if not times_ms:
        return 0.0, 0.0
    if len(times_ms) == 1:
        return times_ms[0], times_ms[0]
    return statistics.fmean(times_ms), statistics.quantiles(times_ms, n=20, method="inclusive")[-1]
