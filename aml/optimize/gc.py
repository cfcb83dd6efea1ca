"""Garbage collection: invalid and duplicate records out of Loom collections; bad documents quarantined.

``optimize gc`` (DESIGN.md, "Compress and optimize"; the seeds' ``GarbageCollector``):

* a record **missing** ``id``, ``agent`` or ``timestamp`` is removed. For ``id`` and ``agent``
  missing means absent or an empty (or blank) string; for the time it means that neither
  ``timestamp`` nor ``lifecycle.created_at`` (v2.0 items may carry their creation time there) is
  present at all. A value that is present but of a type Loom never writes there (a ``null`` or
  numeric ``id`` or ``agent``; a ``null``, numeric or unparseable time) is a value gc could not
  read, not a missing one: the record is kept and reported (``wrong_type`` for every field of the
  wrong JSON type, see :func:`aml.store.accessors.wrong_types`, and ``bad_timestamps`` for times);
* an **exact duplicate** (the same JSON value, key order ignored) of an earlier record in the same
  collection document is removed; the first copy stays. Duplicates are only looked for within one
  document of one agent, never across agents (the seeds' collector kept one global set of ids and
  dropped a record because another agent had one with the same id);
* records with the same ``id`` but different content are **reported** (``id_conflicts``), not removed;
* a document that does not read or parse is reported and, with :func:`quarantine_unparseable`,
  copied to ``<store>/.aml/quarantine/``; it is never rewritten or deleted.

Only live Loom collections (``<agent>/{patterns,solutions,decisions}.json`` and
``global/archived-decisions.json``) are rewritten; Loom's ``backup/`` copies, sessions and every
other document are left alone. The engine is split in :func:`plan_gc` (reads only) and
:func:`apply_gc` (atomic rewrites) so that the caller can take a safety snapshot in between
(``tasks/compress.py`` does).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal

from aml.optimize.files import QUARANTINE_DIR, WRITER_SKIP_TOP
from aml.store import accessors as acc
from aml.store.atomic import atomic_open
from aml.store.codec import Encoding
from aml.store.documents import LAZY_ITEMS_BYTES, DocumentError, ErrorCode, LazyItems
from aml.store.filestore import FileStore
from aml.store.loomlock import loom_lock_held
from aml.store.quarantine import quarantine
from aml.store.records import json_pointer
from aml.store.rewrite import (
    ListSpan,
    SpliceError,
    check_parses,
    find_list,
    offsets_only,
    read_text,
    rebuilt_parses,
    removal_pieces,
    write_text,
)
from aml.store.timestamps import parse_iso_timestamp

GcReason = Literal["missing_id", "missing_agent", "missing_timestamp", "duplicate"]
"""Why a record is removed."""

GC_KINDS: Final = frozenset({"loom_collection", "loom_archive"})
"""Document kinds gc rewrites."""

QUARANTINE_CODES: Final[frozenset[ErrorCode]] = frozenset(
    {"truncated_json", "invalid_json", "not_utf8", "wrong_type", "corrupt_gzip", "corrupt_zstd"}
)
"""Failures whose document is copied to quarantine (content that exists but does not parse).
Symlinks, special files, oversize and unreadable files are reported only."""


@dataclass(frozen=True, slots=True)
class GcRemoval:
    """One record gc removes.

    Attributes:
        document: store-relative path of its document.
        pointer: RFC 6901 pointer of the record in the document as planned (e.g. ``"/12"``).
        index: its position in the document's list.
        id: its ``id`` (``None`` when missing).
        agent: its ``agent`` (``None`` when missing).
        collection: ``patterns``, ``solutions``, ``decisions`` or ``archived_decisions``.
        reason: :data:`GcReason`.
        duplicate_of: for duplicates, the pointer of the copy that stays.
    """

    document: str
    pointer: str
    index: int
    id: str | None
    agent: str | None
    collection: str
    reason: GcReason
    duplicate_of: str | None = None


@dataclass(frozen=True)
class GcDocument:
    """A collection document with records to remove.

    Attributes:
        relpath: store-relative path.
        collection: its collection.
        encoding: its encoding (kept when rewriting).
        size_bytes, mtime_ns, sha256: the file as planned (apply refuses a file that changed since).
        items: records in it.
        removals: what goes.
    """

    relpath: str
    collection: str
    encoding: Encoding
    size_bytes: int
    mtime_ns: int
    sha256: str
    items: int
    removals: tuple[GcRemoval, ...]


@dataclass
class GcPlan:
    """What gc would do; reads only.

    Attributes:
        store_id: the store.
        documents: collection documents with at least one removal.
        unparseable: every document that failed to read or parse (any kind, anywhere in the store).
        id_conflicts: ``{"document", "id", "pointers"}`` for ids held by different records.
        bad_timestamps: ``{"document", "pointer", "id", "timestamp"}`` for times that are present but
            do not read as ISO 8601 text (``null`` and numbers included); those records are kept.
        wrong_type: ``{"file", "record_id", "pointer", "field", "found", "expected"}`` per field of
            the wrong JSON type (:func:`aml.store.accessors.wrong_types`); those records are kept.
        documents_checked: collection documents examined.
        records_checked: records examined.
    """

    store_id: str
    documents: list[GcDocument] = field(default_factory=list)
    unparseable: list[DocumentError] = field(default_factory=list)
    id_conflicts: list[dict[str, Any]] = field(default_factory=list)
    bad_timestamps: list[dict[str, Any]] = field(default_factory=list)
    wrong_type: list[dict[str, Any]] = field(default_factory=list)
    documents_checked: int = 0
    records_checked: int = 0

    @property
    def removals(self) -> list[GcRemoval]:
        """Every planned removal, in document order."""
        return [r for d in self.documents for r in d.removals]

    def counts(self) -> dict[str, int]:
        """Planned removals per reason."""
        out: dict[str, int] = {}
        for r in self.removals:
            out[r.reason] = out.get(r.reason, 0) + 1
        return dict(sorted(out.items()))

    def as_dict(self, *, max_records: int = 500) -> dict[str, Any]:
        """JSON-ready plan (``records`` holds at most ``max_records`` removals)."""
        removals = self.removals
        return {
            "store": self.store_id,
            "documents_checked": self.documents_checked,
            "records_checked": self.records_checked,
            "records_to_remove": len(removals),
            "by_reason": self.counts(),
            "documents": [{"relpath": d.relpath, "collection": d.collection, "encoding": d.encoding,
                           "items": d.items, "remove": len(d.removals)} for d in self.documents],
            "records": [asdict(r) for r in removals[:max_records]],
            "records_truncated": len(removals) > max_records,
            "unparseable": [e.as_dict() for e in self.unparseable],
            "id_conflicts": self.id_conflicts,
            "bad_timestamps": self.bad_timestamps,
            "wrong_type": self.wrong_type,
        }


@dataclass
class GcResult:
    """What :func:`apply_gc` wrote.

    Attributes:
        written: ``{"relpath", "removed", "bytes_before", "bytes_after"}`` per rewritten document.
        removed: the removals actually applied.
        skipped: ``{"relpath", "reason"}`` for planned documents left alone (``changed`` since the
            plan, ``locked`` by Loom's runtime, ``unreadable`` now).
        duration_s: wall time, seconds.
    """

    written: list[dict[str, Any]] = field(default_factory=list)
    removed: list[GcRemoval] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"documents_written": len(self.written), "records_removed": len(self.removed),
                "written": self.written, "skipped": self.skipped, "duration_s": round(self.duration_s, 6)}


# --------------------------------------------------------------------------------- rules


def _missing(item: Mapping[str, Any], key: str) -> bool:
    """``key`` is absent or an empty/blank string (``null`` or a number is a wrong type, not missing)."""
    if key not in item:
        return True
    value = item[key]
    return isinstance(value, str) and not value.strip()


_ABSENT: Final = object()


def _timestamp_value(item: Mapping[str, Any]) -> Any:
    """``timestamp``, else ``lifecycle.created_at``; :data:`_ABSENT` when neither key exists (a
    present ``null`` or empty string is returned as is: a value, not a missing field)."""
    if "timestamp" in item:
        value = item["timestamp"]
        if value is None or (isinstance(value, str) and not value.strip()):
            lifecycle = item.get("lifecycle")
            if isinstance(lifecycle, Mapping) and parse_iso_timestamp(lifecycle.get("created_at")) is not None:
                return lifecycle["created_at"]
        return value
    lifecycle = item.get("lifecycle")
    if isinstance(lifecycle, Mapping) and "created_at" in lifecycle:
        return lifecycle["created_at"]
    return _ABSENT


def canonical(item: Any) -> str:
    """The JSON value of ``item`` with sorted keys and no whitespace: equal for exact duplicates."""
    return json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def plan_items(
    items: Iterable[Any], *, document: str, collection: str
) -> tuple[list[GcRemoval], list[dict[str, Any]], list[dict[str, Any]]]:
    """Apply gc's rules to the records of one collection document.

    Exact duplicates are found by the SHA-256 of each record's :func:`canonical` text, so that memory holds
    a digest per record, not a copy of the document.

    Args:
        items: the document's records, read once in order (a list, or :class:`~aml.store.documents.LazyItems`).
        document: its store-relative path (copied into the results).
        collection: its collection name.

    Returns:
        ``(removals, id_conflicts, bad_timestamps)``: see :class:`GcPlan`.
    """
    removals: list[GcRemoval] = []
    bad_ts: list[dict[str, Any]] = []
    first_copy: dict[bytes, str] = {}  # canonical digest -> pointer of its first copy
    by_id: dict[str, dict[bytes, str]] = {}
    for index, item in enumerate(items):
        pointer = json_pointer(index)
        if not isinstance(item, Mapping):
            continue  # a non-object never gets here: such a document fails to parse (wrong_type)
        rid, agent = item.get("id"), item.get("agent")
        rid_s = rid if isinstance(rid, str) else None
        agent_s = agent if isinstance(agent, str) else None
        reason: GcReason | None = None
        if _missing(item, "id"):
            reason = "missing_id"
        elif _missing(item, "agent"):
            reason = "missing_agent"
        elif _timestamp_value(item) is _ABSENT:
            reason = "missing_timestamp"
        if reason is not None:
            removals.append(GcRemoval(document, pointer, index, rid_s, agent_s, collection, reason))
            continue
        ts = _timestamp_value(item)
        if parse_iso_timestamp(ts) is None:
            bad_ts.append({"document": document, "pointer": pointer, "id": rid_s, "timestamp": ts})
        text = hashlib.sha256(canonical(item).encode("utf-8", "surrogatepass")).digest()
        kept = first_copy.get(text)  # the whole value, agent included: never a duplicate across agents
        if kept is not None:
            removals.append(GcRemoval(document, pointer, index, rid_s, agent_s, collection, "duplicate", kept))
            continue
        first_copy[text] = pointer
        if rid_s is not None:
            by_id.setdefault(rid_s, {}).setdefault(text, pointer)
    conflicts = [{"document": document, "id": rid, "pointers": sorted(copies.values(), key=_pointer_index)}
                 for rid, copies in by_id.items() if len(copies) > 1]
    return removals, conflicts, bad_ts


def _pointer_index(pointer: str) -> int:
    return int(pointer.rsplit("/", 1)[-1])


# --------------------------------------------------------------------------------- plan


def plan_gc(root: str | os.PathLike[str]) -> GcPlan:
    """Read the whole store and plan gc. Writes nothing.

    Args:
        root: the store directory.

    Returns:
        A :class:`GcPlan`.

    Raises:
        FileNotFoundError, NotADirectoryError: ``root`` is not a directory.
    """
    store = FileStore(root)
    plan = GcPlan(store.store_id)
    # a large collection is read item by item (LazyItems): its bytes and one item in memory, each pass
    for doc in store.iter_documents(lazy_items=LAZY_ITEMS_BYTES, check_types=True):
        if doc.error is not None:
            plan.unparseable.append(doc.error)
            continue
        top = PurePosixPath(doc.relpath).parts[0]
        if doc.kind not in GC_KINDS or top in WRITER_SKIP_TOP or not isinstance(doc.data, list | LazyItems):
            continue
        collection = doc.collection or "patterns"
        plan.documents_checked += 1
        plan.records_checked += len(doc.data)
        removals, conflicts, bad_ts = plan_items(doc.data, document=doc.relpath, collection=collection)
        plan.id_conflicts += conflicts
        plan.bad_timestamps += bad_ts
        for index, item in enumerate(() if doc.types_clean else doc.data):
            for wrong in acc.wrong_types(item, collection):
                rid = acc.item_id(item) if isinstance(item, Mapping) else None
                pointer = json_pointer(index)
                plan.wrong_type.append({"file": doc.relpath, "record_id": rid or f"{doc.relpath}#{pointer}",
                                        "pointer": pointer, **wrong.to_dict()})
        if removals:
            sha = hashlib.sha256(doc.path.read_bytes()).hexdigest()
            plan.documents.append(GcDocument(doc.relpath, collection, doc.encoding or "plain", doc.size_bytes,
                                             doc.mtime_ns, sha, len(doc.data), tuple(removals)))
    return plan


# --------------------------------------------------------------------------------- quarantine


def quarantine_unparseable(
    root: str | os.PathLike[str], plan: GcPlan, quarantine_dir: str | os.PathLike[str] | None = None
) -> list[dict[str, Any]]:
    """Copy every unparseable document of ``plan`` to the quarantine folder; originals untouched.

    Args:
        root: the store directory.
        plan: from :func:`plan_gc`.
        quarantine_dir: destination (default ``<store>/.aml/quarantine``, which scans skip).

    Returns:
        ``{"relpath", "code", "copy"}`` per document copied (``copy`` is store-relative when inside
        the store) and ``{"relpath", "code", "copy": None, "reason"}`` for entries not copied
        (symlinks, special, oversize or unreadable files, or a copy that failed).
    """
    base = Path(FileStore(root).root)
    qdir = Path(quarantine_dir) if quarantine_dir is not None else base / QUARANTINE_DIR
    out: list[dict[str, Any]] = []
    for error in plan.unparseable:
        entry: dict[str, Any] = {"relpath": error.relpath or str(error.path), "code": error.code}
        if error.code not in QUARANTINE_CODES:
            out.append({**entry, "copy": None, "reason": "not copied: " + error.reason})
            continue
        try:
            copy = quarantine(error, qdir)
        except (OSError, ValueError) as exc:
            out.append({**entry, "copy": None, "reason": f"copy failed: {exc}"})
            continue
        try:
            entry["copy"] = copy.relative_to(base).as_posix()
        except ValueError:
            entry["copy"] = str(copy)
        out.append(entry)
    return out


# --------------------------------------------------------------------------------- apply


class _Changed(Exception):
    """Raised inside :func:`apply_gc`'s temporary file: the document changed while it was rewritten."""


def _keeps_exactly(text: str, span: ListSpan, new_text: str, drop: set[int], relpath: str) -> bool:
    """Whether ``new_text`` is a JSON document whose list holds exactly the elements of ``span`` (in ``text``)
    not in ``drop``, each with its exact text, in order: the read-back check of a rewrite, element by element
    (the same texts are the same values), without the values of either document in memory.

    Raises:
        SpliceError: ``new_text`` does not parse.
    """
    if not rebuilt_parses(text, span):  # a list that is not the whole document: parse the new one whole
        check_parses(new_text, relpath)
    after = find_list(new_text, "", keep=offsets_only)
    kept = [i for i in range(len(span)) if i not in drop]
    return len(after) == len(kept) and all(
        new_text[after.starts[j] : after.ends[j]] == text[span.starts[i] : span.ends[i]] for j, i in enumerate(kept))


def apply_gc(root: str | os.PathLike[str], plan: GcPlan, *, fsync: bool = True) -> GcResult:
    """Remove the planned records, one atomic rewrite per document.

    Each document is re-read; if its bytes differ from the plan's (sha256), it is skipped
    (``changed``): run gc again. A document Loom's runtime holds its lock on is skipped (``locked``).
    The records are cut out of the decoded text by :func:`aml.store.rewrite.removal_pieces`, the
    splice prune uses: every other byte stays the writer's (records, fields, key order, number
    formats, indentation), so gc and prune removing the same records write the same bytes; the
    encoding is kept (gzip stays gzip, readable by Loom's runtime). The new text is read back before it
    is written: its list must hold exactly the other elements, each with its exact text, in order
    (``RuntimeError`` otherwise). A document over ``LAZY_ITEMS_BYTES`` (16 MiB) whose list is the whole
    document is not read back but streamed to its temporary file, as prune writes it (it parses by
    construction, :func:`aml.store.rewrite.rebuilt_parses`): memory holds its text once. Applying the
    same plan twice removes nothing the second time.

    Args:
        root: the store directory.
        plan: from :func:`plan_gc` (take the safety snapshot before calling this).
        fsync: fsync each rewritten file before its rename.

    Returns:
        A :class:`GcResult`.

    Raises:
        OSError: a write failed (that document is unchanged; earlier ones stay rewritten).
        RuntimeError: a rewritten document did not read back (that document is unchanged).
    """
    started = time.perf_counter()
    base = FileStore(root).root
    result = GcResult()
    for gdoc in plan.documents:
        path = base / gdoc.relpath
        if loom_lock_held(path):
            result.skipped.append({"relpath": gdoc.relpath, "reason": "locked"})
            continue
        try:
            doc = read_text(path, relpath=gdoc.relpath)
            if hashlib.sha256(doc.raw).hexdigest() != gdoc.sha256:
                result.skipped.append({"relpath": gdoc.relpath, "reason": "changed"})
                continue
            doc.raw = b""  # only the text is needed from here: a large document is held once
            span = find_list(doc.text, "", keep=offsets_only)
        except (DocumentError, SpliceError) as exc:
            reason = exc.reason if isinstance(exc, DocumentError) else str(exc)
            result.skipped.append({"relpath": gdoc.relpath, "reason": f"unreadable: {reason}"})
            continue
        drop = {r.index for r in gdoc.removals}
        # the same splice as prune (same records removed, same bytes); read back unless the document is large
        # and its list is the whole document, which then parses by construction (as prune writes it)
        pieces: Iterable[str] = removal_pieces(doc.text, [(span, drop)])
        if len(doc.text) <= LAZY_ITEMS_BYTES or not rebuilt_parses(doc.text, span):
            new_text = "".join(pieces)
            if not _keeps_exactly(doc.text, span, new_text, drop, gdoc.relpath):
                raise RuntimeError(f"{gdoc.relpath}: rewritten document does not read back")
            pieces = (new_text,)
        try:
            with atomic_open(path, mode=doc.mode, fsync=fsync) as fh:  # renamed over the file if the block ends
                written = write_text(fh, pieces, doc.encoding, doc.gzip_level)  # encoded in runs, never whole
                if not doc.unchanged_on_disk(path):
                    raise _Changed
        except _Changed:
            result.skipped.append({"relpath": gdoc.relpath, "reason": "changed"})
            continue
        result.removed.extend(gdoc.removals)
        result.written.append({"relpath": gdoc.relpath, "removed": len(drop), "bytes_before": doc.size,
                               "bytes_after": written})
    result.duration_s = time.perf_counter() - started
    return result

