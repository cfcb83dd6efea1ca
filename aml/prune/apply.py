"""Carrying out a prune plan: atomic rewrites of the touched documents, decisions archived first.

For each document of the plan, in path order:

1. read it again and check it is the document the plan saw (same size and mtime, and every planned
   record still at its index with the same id and size); otherwise it is left alone and reported as
   a conflict (an agent wrote it in between; the next run plans it again);
2. write the decisions to archive into ``<archive_root>/<agent>/decisions_<run_id>.json.gz``
   (:mod:`aml.prune.archive`), atomically;
3. rebuild the document's lists without the planned records by splicing the decoded text
   (:func:`aml.store.rewrite.remove_elements`, as ``optimize gc`` does: every other byte stays as the
   writer wrote it), check the result parses (:func:`aml.store.rewrite.check_rebuilt`: a Loom
   collection, whose list is the whole document, is known to parse from the checks of the splice;
   any other document is parsed again), and encode it as the file was encoded (gzip stays gzip);
4. hand the document's :class:`AppliedRecord` rows to ``before_publish`` (write-ahead: the caller
   records them durably, so that undo can find them, *before* the records leave the document);
5. replace the file atomically (temp file, fsync, rename, fsync directory).

A crash at any point leaves every document either as it was or as the plan wants it, never torn, and
every record already removed from a document has its undo row (recorded in step 4). A crash between
steps 4 and 5 leaves rows for records still in their document: undo finds them "already present", and
a resumed run drops those rows before it plans again (:func:`aml.prune.undo.present_entries`).
The caller takes the pre-prune snapshot before calling :func:`apply_plan`; the ``payload`` of an
:class:`AppliedRecord` is what ``prune_actions.record`` holds (see :mod:`aml.prune.undo`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aml.gcpause import gc_paused
from aml.prune.archive import add_to_archive, archive_file
from aml.prune.plan import PlannedAction, PrunePlan
from aml.store.atomic import atomic_write
from aml.store.documents import DocumentError
from aml.store.loomlock import loom_lock_held
from aml.store.records import item_size
from aml.store.rewrite import (
    ItemFilter,
    ListSpan,
    SpliceError,
    check_parses,
    check_rebuilt,
    element_key,
    find_list,
    key_only,
    read_text,
    remove_elements,
)

PAYLOAD_VERSION = 1
"""Version of the ``prune_actions.record`` payload written by :func:`apply_plan`."""


@dataclass(frozen=True, slots=True)
class AppliedRecord:
    """One record a run removed or archived, with what undo needs.

    Attributes:
        action: the planned action.
        payload: ``{"v", "item", "text", "list", "index", "prev", "next", "layout", "archive"}`` (see
            :mod:`aml.prune.undo`); JSON-serialisable.
    """

    action: PlannedAction
    payload: dict[str, Any]


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
    kind, value = element_key(span.items[index], span.element_text(text, index))
    return {kind: value}


def _keeper(planned: set[int]) -> ItemFilter:
    """What :func:`_apply_document` keeps of a list's elements: the planned ones whole, the others'
    keys (:func:`aml.store.rewrite.key_only`: all the ``prev``/``next`` anchors need)."""

    def keep(index: int, item: Any) -> Any:
        return item if index in planned else key_only(index, item)

    return keep


def _matches(action: PlannedAction, span: ListSpan) -> bool:
    if action.index >= len(span):
        return False
    item = span.items[action.index]
    if "#" not in action.record_id and (not isinstance(item, dict) or item.get("id") != action.record_id):
        return False
    return item_size(item) == action.size_bytes


BeforePublish = Callable[[str, list[AppliedRecord]], None]
"""Write-ahead hook of :func:`apply_plan`: ``(document, its records)``, called once the document's new
bytes are ready and its archive is written, just before the new bytes replace the file. It must make
the records durable (the ``prune_actions`` rows); if it raises, the document is not rewritten."""


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
    for relpath in sorted(by_doc):
        try:
            with gc_paused():
                applied = _apply_document(plan, relpath, by_doc.pop(relpath), run_id, archive_root, result,
                                          before_publish)
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
            result.applied.extend(applied)
        del applied  # the payloads reference the document's parsed items
        result.documents.append(relpath)
        if on_document is not None:
            on_document(relpath)
    return result


def _apply_document(plan: PrunePlan, relpath: str, actions: list[PlannedAction], run_id: str,
                    archive_root: Path | None, result: ApplyResult,
                    before_publish: BeforePublish | None) -> list[AppliedRecord] | None:
    path = plan.root / relpath
    state = plan.documents[relpath]
    if loom_lock_held(path):
        result.conflicts.append({"document": relpath, "reason": "locked by Loom's runtime (<file>.lock)"})
        return None
    doc = read_text(path)
    if (doc.size, doc.mtime_ns) != (state.size_bytes, state.mtime_ns):
        result.conflicts.append({"document": relpath, "reason": "changed since the plan was made"})
        return None
    text = doc.text
    lists: defaultdict[str, list[PlannedAction]] = defaultdict(list)
    for a in actions:
        lists[a.list_pointer].append(a)
    # the planned records parsed in full (checked, archived, recorded); of the others only their keys
    spans = {pointer: find_list(text, pointer, keep=_keeper({a.index for a in acts}))
             for pointer, acts in lists.items()}
    for pointer, acts in lists.items():
        bad = [a for a in acts if not _matches(a, spans[pointer])]
        if bad:
            result.conflicts.append({"document": relpath,
                                     "reason": f"record {bad[0].record_id} is no longer at {bad[0].pointer}"})
            return None

    applied: list[AppliedRecord] = []
    archived: defaultdict[str, list[Any]] = defaultdict(list)
    archive_of: dict[str, str] = {}  # agent -> its archive file, relative to archive_root
    new_text = text
    for pointer in sorted(lists, key=lambda p: spans[p].open, reverse=True):
        span = spans[pointer]
        removed = {a.index for a in lists[pointer]}
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
                archived[archive_rel].append(span.items[i])
            applied.append(AppliedRecord(a, {
                "v": PAYLOAD_VERSION,
                "item": span.items[i],
                "text": span.element_text(text, i),
                "list": pointer,
                "index": i,
                "prev": _key_dict(span, text, i - 1) if i > 0 else None,
                "next": _key_dict(span, text, following) if following is not None else None,
                "layout": layout.to_dict() if layout is not None else None,
                "archive": archive_rel,
            }))
        span.items.clear()  # the payloads hold the removed items; the others are not needed any more
        new_text = remove_elements(new_text, span, removed)
    if len(spans) == 1:  # never write a document that would not parse
        check_rebuilt(new_text, relpath, text, next(iter(spans.values())))
    else:
        check_parses(new_text, relpath)
    for archive_rel, items in sorted(archived.items()):
        assert archive_root is not None
        add_to_archive(archive_root / archive_rel, items)
        result.archives.append(str(archive_root / archive_rel))
    data = doc.encoded(new_text)
    if before_publish is not None:
        before_publish(relpath, applied)  # write-ahead: the undo rows exist before the records leave
    atomic_write(path, data, mode=doc.mode)
    result.bytes_before += doc.size
    result.bytes_after += len(data)
    return applied
