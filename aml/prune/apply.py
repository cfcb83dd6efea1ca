"""Carrying out a prune plan: atomic rewrites of the touched documents, decisions archived first.

For each document of the plan, in path order:

1. read it again and check it is the document the plan saw (same size and mtime, and every planned
   record still at its index with the same id and size); otherwise it is left alone and reported as
   a conflict (an agent wrote it in between; the next run plans it again). On a large store, worker
   processes find the planned lists' elements in the next documents meanwhile (:mod:`aml.prune.locate`);
   their offsets are used only for a text with the same SHA-256 as the one read here;
2. write the decisions to archive into ``<archive_root>/<agent>/decisions_<run_id>.json.gz``
   (:mod:`aml.prune.archive`), atomically;
3. cut the planned records out of the decoded text (:func:`aml.store.rewrite.removal_pieces`, as
   ``optimize gc`` does: every other byte stays as the writer wrote it), after making sure the result
   parses (:func:`aml.store.rewrite.rebuilt_parses`: a Loom collection, whose list is the whole
   document, is known to parse from the checks of the splice; any other document is parsed again),
   and write it, encoded as the file was (gzip stays gzip), to a temporary file next to it, piece by
   piece (:func:`aml.store.rewrite.write_text`: a large document is not held twice more in memory), and
   fsync it;
4. meanwhile, in a thread of its own, hand the document's :class:`AppliedRecord` rows to ``before_publish``
   (write-ahead: the caller records them durably, so that undo can find them, *before* the records leave the
   document); both steps end before the next one starts;
5. replace the file with the temporary one atomically (rename, fsync directory).

A crash at any point leaves every document either as it was or as the plan wants it, never torn, and
every record already removed from a document has its undo row (recorded in step 4). A crash between
steps 4 and 5 leaves rows for records still in their document: undo finds them "already present", and
a resumed run drops those rows before it plans again (:func:`aml.prune.undo.present_entries`).
The caller takes the pre-prune snapshot before calling :func:`apply_plan`; the ``payload`` of an
:class:`AppliedRecord` is the undo payload the catalog keeps for it (see :mod:`aml.prune.undo`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from aml.gcpause import gc_paused
from aml.prune.archive import add_texts_to_archive, archive_file
from aml.prune.locate import Located, locate, located_ahead
from aml.prune.plan import PlannedAction, PrunePlan
from aml.prune.writebehind import OneThread
from aml.store.atomic import atomic_open
from aml.store.documents import DocumentError
from aml.store.loomlock import loom_lock_held
from aml.store.rewrite import (
    Layout,
    ListSpan,
    SpliceError,
    check_parses,
    element_key,
    read_text,
    rebuilt_parses,
    removal_pieces,
    write_text,
)

log = logging.getLogger(__name__)

PAYLOAD_VERSION = 2
"""Version of the undo payload written by :func:`apply_plan`: 2 holds the record's key as
``item`` (``{"id": <id>}`` or ``null``) and its exact ``text``; 1 held the whole record parsed as ``item``, a third
of each row's bytes for nothing undo reads (:mod:`aml.prune.undo` reads both the same way)."""


@dataclass(frozen=True, slots=True)
class AppliedRecord:
    """One record a run removed or archived, with what undo needs.

    The record is kept as its place in the document's text, not as parsed values: a document's
    records are parsed again one at a time, when their :attr:`payload` is read (by the write-ahead
    hook, in batches), so a run never holds every removed record of a large document as objects.

    Attributes:
        action: the planned action.
        source: the text the record is in: the whole decoded document while the document is applied,
            the record's own text once :meth:`detached`.
        start, end: the record's character offsets in ``source``.
        list_pointer: RFC 6901 pointer of the list it was in.
        index: its index in that list.
        prev, next: :func:`aml.store.rewrite.element_key` anchors of the element before it and of the
            next element that stays (``None`` at the ends).
        layout: the list's :class:`~aml.store.rewrite.Layout` (``None`` for an empty list).
        archive: its archive file relative to the archive root, for an archived record.
        key: what :func:`aml.store.rewrite.key_only` keeps of it: ``{"id": <id>}``, or ``None`` when it has
            no string id (undo then knows it by its text's digest).
    """

    action: PlannedAction
    source: str
    start: int
    end: int
    list_pointer: str
    index: int
    prev: dict[str, str] | None
    next: dict[str, str] | None
    layout: Layout | None
    archive: str | None
    key: dict[str, str] | None

    @property
    def text(self) -> str:
        """The record's exact source text."""
        return self.source[self.start : self.end]

    @property
    def payload(self) -> dict[str, Any]:
        """``{"v", "item", "text", "list", "index", "prev", "next", "layout", "archive"}`` (see
        :mod:`aml.prune.undo`), JSON-serialisable: the undo payload the catalog keeps; ``item`` is the record's
        key (:attr:`key`), all of it that undo reads."""
        return {
            "v": PAYLOAD_VERSION,
            "item": self.key,
            "text": self.text,
            "list": self.list_pointer,
            "index": self.index,
            "prev": self.prev,
            "next": self.next,
            "layout": self.layout.to_dict() if self.layout is not None else None,
            "archive": self.archive,
        }

    def detached(self) -> AppliedRecord:
        """This record holding only its own text (not its document's)."""
        return replace(self, source=self.text, start=0, end=self.end - self.start)


@dataclass
class ApplyResult:
    """What :func:`apply_plan` did.

    Attributes:
        run_id: the run.
        applied: every record removed or archived, when :func:`apply_plan` keeps them (by default only
            without a ``before_publish`` hook: with one, the caller has each document's records as it
            goes, and the run holds no more than one document's payloads at a time).
        removed, archived: how many records were removed and archived (kept or not).
        documents: store-relative paths rewritten.
        archives: archive files written (absolute paths).
        conflicts: ``{"document", "reason"}`` for documents left alone.
        error: set when a write failed (disk full, permissions): the run stopped there; the documents
            listed in ``documents`` were rewritten, the rest were not.
        bytes_before, bytes_after: on-disk size of the rewritten documents before and after.
    """

    run_id: str
    applied: list[AppliedRecord] = field(default_factory=list)
    documents: list[str] = field(default_factory=list)
    archives: list[str] = field(default_factory=list)
    conflicts: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None
    bytes_before: int = 0
    bytes_after: int = 0
    removed: int = 0
    archived: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the payloads)."""
        return {
            "run_id": self.run_id,
            "removed": self.removed,
            "archived": self.archived,
            "documents": self.documents,
            "archives": self.archives,
            "conflicts": self.conflicts,
            "error": self.error,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "bytes_freed": self.bytes_before - self.bytes_after,
        }


def _key_dict(span: ListSpan, text: str, index: int) -> dict[str, str]:
    item = span.items[index]
    if isinstance(item, dict) and isinstance(found := item.get("id"), str):  # element_key's id, without the text
        return {"id": found}
    kind, value = element_key(item, span.element_text(text, index))
    return {kind: value}


def _matches(action: PlannedAction, seen: dict[int, tuple[str | None, int]]) -> bool:
    found = seen.get(action.index)
    if found is None:  # the list is shorter now
        return False
    record_id, size = found
    if "#" not in action.record_id and record_id != action.record_id:
        return False
    return size == action.size_bytes


BeforePublish = Callable[[str, list[AppliedRecord]], None]
"""Write-ahead hook of :func:`apply_plan`: ``(document, its records)``, called once the document's archive is
written, in a thread of its own while the new bytes are written and synced, and always before they replace the
file. It must make the records durable (the ``prune_actions`` rows); if it raises, the document is not
rewritten. It runs with no other call of it at the same time (documents are done one at a time)."""


def apply_plan(
    plan: PrunePlan,
    *,
    run_id: str,
    archive_root: Path | None = None,
    on_document: Callable[[str], None] | None = None,
    before_publish: BeforePublish | None = None,
    keep_applied: bool | None = None,
) -> ApplyResult:
    """Carry out ``plan`` (see the module docstring), one document at a time: a document's text, spans
    and payloads are dropped before the next one is read.

    Args:
        plan: from :func:`aml.prune.plan.build_plan`.
        run_id: the run's id (names the archive files).
        archive_root: ``<backup repository>/archives``; required when the plan archives decisions.
        on_document: called with each document's path after it is rewritten (progress).
        before_publish: called with each document's path and records before it is rewritten (see
            :data:`BeforePublish`); ``None`` when the caller records :attr:`ApplyResult.applied` itself.
        keep_applied: collect every :class:`AppliedRecord` in :attr:`ApplyResult.applied` (default: only
            when there is no ``before_publish``; the counts are kept either way).

    Returns:
        An :class:`ApplyResult`.

    Raises:
        ValueError: the plan archives decisions and no ``archive_root`` was given.
        Exception: whatever ``before_publish`` raised (that document and the later ones are left as
            they were).

    A failed write (``OSError``) does not raise: it stops the run and is reported in
    :attr:`ApplyResult.error`, so that the caller still records what was already done.
    """
    if archive_root is None and any(a.action == "archived" for a in plan.actions):
        raise ValueError("this plan archives decisions: archive_root (the repository's archives/) is required")
    if keep_applied is None:
        keep_applied = before_publish is None
    result = ApplyResult(run_id)
    by_doc: defaultdict[str, list[PlannedAction]] = defaultdict(list)
    for a in plan.actions:
        by_doc[a.document].append(a)
    order = sorted(by_doc)
    jobs = [(relpath, _planned_lists(by_doc[relpath]), plan.documents[relpath].size_bytes) for relpath in order]
    # one write-ahead thread for the run, started once: a thread started per document cost about 5 ms each
    write_ahead_thread = OneThread("aml-prune-write-ahead", "the write-ahead")
    with located_ahead(plan.root, jobs) as ahead, contextlib.closing(write_ahead_thread):
        for relpath in order:
            located = next(ahead) if ahead is not None else None  # the workers' finding, checked before use
            try:
                with gc_paused():
                    applied = _apply_document(plan, relpath, by_doc.pop(relpath), run_id, archive_root, result,
                                              before_publish, write_ahead_thread, located)
            except (DocumentError, SpliceError) as exc:
                result.conflicts.append({"document": relpath, "reason": str(exc)})
                continue
            except OSError as exc:
                result.error = f"{relpath}: {exc.strerror or exc}"
                break
            if applied is None:
                continue
            removed = sum(1 for a in applied if a.action.action == "removed")
            result.removed += removed
            result.archived += len(applied) - removed
            if keep_applied:
                result.applied.extend(a.detached() for a in applied)
            del applied  # the records reference the document's text
            result.documents.append(relpath)
            if on_document is not None:
                on_document(relpath)
    return result


def _planned_lists(actions: Iterable[PlannedAction]) -> dict[str, frozenset[int]]:
    """List pointer -> the indexes of its planned elements."""
    lists: defaultdict[str, set[int]] = defaultdict(set)
    for a in actions:
        lists[a.list_pointer].add(a.index)
    return {pointer: frozenset(indexes) for pointer, indexes in lists.items()}


def _apply_document(plan: PrunePlan, relpath: str, actions: list[PlannedAction], run_id: str,
                    archive_root: Path | None, result: ApplyResult, before_publish: BeforePublish | None,
                    write_ahead_thread: OneThread, located: Located | None = None) -> list[AppliedRecord] | None:
    path = plan.root / relpath
    state = plan.documents[relpath]
    if loom_lock_held(path):
        result.conflicts.append({"document": relpath, "reason": "locked by Loom's runtime (<file>.lock)"})
        return None
    doc = read_text(path, keep_raw=False, digest=located is not None)
    if (doc.size, doc.mtime_ns) != (state.size_bytes, state.mtime_ns):
        result.conflicts.append({"document": relpath, "reason": "changed since the plan was made"})
        return None
    text = doc.text
    lists: defaultdict[str, list[PlannedAction]] = defaultdict(list)
    for a in actions:
        lists[a.list_pointer].append(a)
    if located is not None and located.found_in(doc.digest, lists):
        spans, seen = located.spans, located.seen  # a worker found them in this very text
    else:
        spans, seen = locate(text, {pointer: {a.index for a in acts} for pointer, acts in lists.items()})
    for pointer, acts in lists.items():
        bad = [a for a in acts if not _matches(a, seen[pointer])]
        if bad:
            result.conflicts.append({"document": relpath,
                                     "reason": f"record {bad[0].record_id} is no longer at {bad[0].pointer}"})
            return None

    applied: list[AppliedRecord] = []
    archived: defaultdict[str, list[AppliedRecord]] = defaultdict(list)
    archive_of: dict[str, str] = {}  # agent -> its archive file, relative to archive_root
    edits: list[tuple[ListSpan, set[int]]] = []
    for pointer in sorted(lists, key=lambda p: spans[p].open):
        span = spans[pointer]
        removed = {a.index for a in lists[pointer]}
        edits.append((span, removed))
        layout = span.layout(text)
        kept_after: list[int | None] = [None] * len(span)
        nxt: int | None = None
        for i in range(len(span) - 1, -1, -1):
            kept_after[i] = nxt
            if i not in removed:
                nxt = i
        for a in sorted(lists[pointer], key=lambda a: a.index):
            i = a.index
            following = kept_after[i]
            archive_rel: str | None = None
            if a.action == "archived":
                assert archive_root is not None
                archive_rel = archive_of.get(a.agent)
                if archive_rel is None:
                    target = archive_file(archive_root, a.agent, run_id)
                    archive_rel = archive_of[a.agent] = target.relative_to(archive_root).as_posix()
            record = AppliedRecord(
                a, text, span.starts[i], span.ends[i], pointer, i,
                _key_dict(span, text, i - 1) if i > 0 else None,
                _key_dict(span, text, following) if following is not None else None,
                layout, archive_rel, span.items[i])
            applied.append(record)
            if archive_rel is not None:
                archived[archive_rel].append(record)
        span.items.clear()  # the anchors are taken: only the offsets are needed from here
    if len(spans) == 1 and rebuilt_parses(text, edits[0][0]):  # never write a document that would not parse
        pieces: Iterable[str] = removal_pieces(text, edits)
    else:
        new_text = "".join(removal_pieces(text, edits))
        check_parses(new_text, relpath)
        pieces = (new_text,)
    for archive_rel, records in sorted(archived.items()):
        assert archive_root is not None
        add_texts_to_archive(archive_root / archive_rel, [r.text for r in records])
        result.archives.append(str(archive_root / archive_rel))
    # replaces the file only when the block ends without error, once the new bytes are synced here
    with atomic_open(path, mode=doc.mode, fsync=False) as fh:
        write_ahead = None if before_publish is None else functools.partial(before_publish, relpath, applied)
        written = _write_beside(fh, lambda: write_text(fh, pieces, doc.encoding, doc.gzip_level), write_ahead,
                                write_ahead_thread)
    result.bytes_before += doc.size
    result.bytes_after += written
    return applied


def _write_beside(fh: BinaryIO, write: Callable[[], int], record: Callable[[], None] | None,
                  thread: OneThread) -> int:
    """Write a document's new bytes with ``write`` and sync them (``fh``), while ``record`` (the write-ahead: the
    document's ``prune_actions`` rows, committed) runs in ``thread`` (one for the run); return what ``write``
    returned once both are done. The catalog's work (SQLite's inserts and commit) and the file's (its bytes, its
    fsync) mostly leave the GIL: run side by side they take about the longer of the two instead of their sum.
    When no thread can be started (a process limit such as a container's ``pids.max``), ``record`` runs here
    after the sync, as before there was a thread.

    Nothing is published here: the caller renames the file only after this returns, so the rows are still durable
    before the records leave the document. If ``write`` fails, the write-ahead is waited for (its rows committed
    or not; its own error, if any, is logged) before the error goes up: rows for records that are still in their
    document, which the caller reconciles as after any failed write (:func:`tasks.prune.drop_unpublished`).

    Raises:
        OSError: ``write`` or the sync failed (whatever ``record`` did).
        Exception: whatever ``record`` raised, once the bytes are written.
    """

    def write_synced() -> int:
        written = write()
        fh.flush()
        os.fsync(fh.fileno())
        return written

    if record is None:
        return write_synced()
    recorded = thread.submit(record)
    if recorded is None:  # no thread to be had: one after the other
        written = write_synced()
        record()
        return written
    try:
        written = write_synced()
    except BaseException:
        failed = recorded.exception()  # waits: the rows are committed or not before anything else happens
        if failed is not None:  # the write's error goes up; this one is not lost
            log.error("prune: the write-ahead failed as well: %s: %s", type(failed).__name__, failed)
        raise
    recorded.result()  # its error, if any: the document is then not replaced
    return written
