"""Undo of a prune run: put back exactly the records it removed or archived, and nothing else.

Each ``prune_actions`` row has a payload written by :func:`aml.prune.apply.apply_plan`, kept in one of the
catalog's undo logs of its document (``prune_undo_logs``, :mod:`models.undolog`; in the row's ``record`` column
for rows written before catalog revision 0006)::

    {
      "v": 2,
      "item": {"id": <its id>} | null,                 # its key: null when it has no string id
      "text": <its exact source text in the document>,
      "list": <JSON pointer of its list ("" for a Loom collection)>,
      "index": <its position in the list before the run>,
      "prev": {"id": ...} | {"sha256": ...} | null,   # the element just before it, before the run
      "next": {"id": ...} | {"sha256": ...} | null,   # the first following element the run kept
      "layout": {"lead", "sep", "trail"} | null,      # the list's whitespace, for an emptied list
      "archive": "<agent>/decisions_<run>.json.gz" | null   # under <repository>/archives/
    }

Rows of payload version 1 hold the record parsed whole as ``item``; undo reads of it only what it reads of a
version 2 row, its key (:func:`aml.store.rewrite.element_key`), so either version undoes the same way (and
code that knows only version 1 reads version 2 rows right).

Elements are recognised by their ``id`` when they have one (Loom items), else by the sha256 of their
exact text. For each document, in order of original index, a record is put back:

* not at all if it is already there (same id, or same exact text): undo is idempotent;
* right after its ``prev`` element if that is present (or was itself just put back);
* else right before its ``next`` element if that is present;
* else at ``min(index, len)``.

Only the list region changes, spliced as in :mod:`aml.store.rewrite`: records other than the restored
ones, including changes an agent made after the prune, stay exactly as they are now. When nothing
else changed, the document comes back byte-identical (gzip included). Restored decisions are then
removed from the run's archive file. Documents that are missing or no longer parse are reported and
left alone (never rewritten).

Rows are written ahead of each document's rewrite (:mod:`aml.prune.apply`), so a run killed between
the two leaves rows whose records were never removed: undo finds them already present and changes
nothing for them. :func:`present_entries` applies the same test without writing, for a resumed run.
"""

from __future__ import annotations

import functools
import zlib
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aml.gcpause import gc_paused
from aml.prune.archive import remove_records_from_archive
from aml.prune.locate import locate
from aml.prune.writebehind import WriteBehind
from aml.store.atomic import atomic_open
from aml.store.documents import DocumentError
from aml.store.filestore import PARALLEL_DOCUMENT_BYTES
from aml.store.rewrite import (
    PIECE_CHARS,
    Layout,
    ListSpan,
    SpliceError,
    check_parses,
    element_key,
    find_list,
    key_only,
    read_text,
    rebuild,
    rebuilt_parses,
    rebuilt_pieces,
    write_text,
)


@dataclass(frozen=True, slots=True)
class UndoEntry:
    """One record to put back (a ``prune_actions`` row).

    Attributes:
        action_id: the row's id (reported back so the caller can mark it undone).
        document: store-relative path of the document.
        record_id: the record's id.
        payload: the row's undo payload (see the module docstring).
    """

    action_id: int
    document: str
    record_id: str
    payload: dict[str, Any]


def lean_payload(payload: dict[str, Any], shared: dict[Any, Any] | None = None, *, owned: bool = False
                 ) -> dict[str, Any]:
    """What undo reads of a row's payload, with less held: a version 1 row's parsed ``item`` is kept whole
    only when it must go back out of an archive (``archive`` set); otherwise only what
    :func:`aml.store.rewrite.element_key` reads of it (:func:`aml.store.rewrite.key_only`), which is all a
    version 2 row holds. Undo does the same with either (the record's exact ``text`` is what it puts back).

    Args:
        payload: the row's undo payload (not changed, unless ``owned``).
        shared: a dict kept by the caller across the rows of a run: equal ``layout`` values (one per list,
            the same in every row of it) are then held once, not once per row.
        owned: ``payload`` is the caller's own (decoded for this call, nothing else holds it): it is made lean in
            place and returned, instead of a lean copy being made beside it (a large document's payloads are then
            not held twice while its log is read).

    Returns:
        The payload to put in an :class:`UndoEntry` (its values are only read).
    """
    archive = payload.get("archive")
    if isinstance(archive, str) and archive:
        return payload
    lean = payload if owned else {**payload}
    lean["item"] = key_only(0, payload.get("item"))
    layout = lean.get("layout")
    if shared is not None and isinstance(layout, dict) and all(isinstance(v, str | None) for v in layout.values()):
        key = (("layout", layout["lead"], layout["sep"], layout["trail"]) if layout.keys() == _LAYOUT_KEYS
               else ("layout", *sorted(layout.items())))  # the usual dict keyed by its three values, in one order
        lean["layout"] = shared.setdefault(key, layout)
    return lean


_LAYOUT_KEYS: Final = frozenset({"lead", "sep", "trail"})


@dataclass
class UndoResult:
    """What :func:`undo_entries` did.

    Attributes:
        restored: action ids whose record was put back.
        already_present: action ids whose record was already in its document (nothing to do).
        failed: ``{"action_id", "document", "reason"}`` for records that could not be put back.
        documents: store-relative paths rewritten.
        archives_updated: archive files the restored decisions were removed from.
        archive_errors: ``{"archive", "reason"}`` for archive files that could not be read or rewritten (damaged,
            not a JSON list, a failed write): the decisions restored from them stay in them as well.
    """

    restored: list[int] = field(default_factory=list)
    already_present: list[int] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    documents: list[str] = field(default_factory=list)
    archives_updated: list[str] = field(default_factory=list)
    archive_errors: list[dict[str, str]] = field(default_factory=list)

    @property
    def done(self) -> list[int]:
        """Action ids that are undone now (restored or already present)."""
        return self.restored + self.already_present

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "restored": len(self.restored),
            "already_present": len(self.already_present),
            "failed": self.failed,
            "documents": self.documents,
            "archives_updated": self.archives_updated,
            "archive_errors": self.archive_errors,
        }


def _key(anchor: Any) -> tuple[str, str] | None:
    if isinstance(anchor, dict) and len(anchor) == 1:
        (kind, value), = anchor.items()
        if kind in ("id", "sha256") and isinstance(value, str):
            return kind, value
    return None


def undo_entries(root: Path, entries: Iterable[UndoEntry], *, archive_root: Path | None = None) -> UndoResult:
    """Put back the records of ``entries`` into the store at ``root`` (see the module docstring).

    Args:
        root: the store directory.
        entries: the run's rows not undone yet (any order).
        archive_root: ``<backup repository>/archives`` (to take restored decisions out of the run's
            archive file); ``None`` leaves archive files as they are.

    Returns:
        An :class:`UndoResult`.

    Raises:
        OSError: a write failed (documents rewritten before stay rewritten; rerunning undo is safe).
    """
    by_doc: defaultdict[str, list[UndoEntry]] = defaultdict(list)
    for e in entries:
        by_doc[e.document].append(e)
    order = sorted(by_doc)
    return undo_documents(root, ((relpath, by_doc.pop(relpath)) for relpath in order), archive_root=archive_root)


def undo_documents(root: Path, documents: Iterable[tuple[str, Sequence[UndoEntry]]], *,
                   archive_root: Path | None = None) -> UndoResult:
    """:func:`undo_entries` fed one document at a time, so that at most two documents' rows, texts and spans are in
    memory at once: the one being written (in a thread: :mod:`aml.prune.writebehind`) and the next one, worked out
    meanwhile (a caller reading the rows from the catalog can fetch them per document); a document whose text is
    longer than :data:`~aml.store.filestore.PARALLEL_DOCUMENT_BYTES` characters (a small gzip file may hold one) is
    written before the next one is asked for, so that memory never holds one beside another.

    Each document's lists are found here (:func:`aml.prune.locate.locate`: a Loom collection's by msgspec), not by
    worker processes as prune's apply does: with nothing planned to decode, finding them costs less than a worker's
    second read of the document and the pickling of what it found (issue 12: 1.06-1.16 s against 1.13-1.30 s for
    undo of 27,394 records in 24 documents, and a fifth less CPU, interleaved runs).

    Args:
        root: the store directory.
        documents: ``(store-relative path, that document's rows not undone yet)`` pairs, each document
            once, in the order to restore them (:func:`undo_entries` uses path order); a lazy iterable
            is consumed one pair at a time.
        archive_root: as for :func:`undo_entries`.

    Returns:
        An :class:`UndoResult` (its lists in the order of ``documents``, archives in path order).

    Raises:
        OSError: a write failed (documents rewritten before stay rewritten; rerunning undo is safe).
    """
    result = UndoResult()
    archived: defaultdict[str, _Restored] = defaultdict(_Restored)  # archive -> its records put back
    done = functools.partial(_record, result, archived)
    # each document written in a thread while the next is worked out (aml.prune.writebehind): about 0.15 s of
    # fsync for 24 documents overlaps the next document's catalog read, text read and splice
    with WriteBehind[_Undone, str | None]("aml-undo-write", done) as writes:
        for relpath, doc_entries in documents:
            undone = _undo_one(root, relpath, doc_entries)
            if undone is None:
                continue
            if isinstance(undone, str):  # reported after the document before it, whose write may be in flight
                writes.wait()
                result.failed.extend({"action_id": e.action_id, "document": relpath, "reason": undone}
                                     for e in doc_entries)
                continue
            if undone.write is None:  # nothing to write: recorded in document order all the same
                writes.wait()
                done(undone)
                continue
            writes.submit(relpath, undone.write, undone)
            if undone.size > PARALLEL_DOCUMENT_BYTES:  # never a large document's text beside the next document's
                writes.wait()
    if archive_root is not None:
        for archive, restored in sorted(archived.items()):
            path = archive_root / archive
            try:
                if remove_records_from_archive(path, texts=restored.texts, items=restored.items):
                    result.archives_updated.append(str(path))
            except (OSError, EOFError, zlib.error, ValueError) as exc:  # the documents are restored: say, go on
                result.archive_errors.append({"archive": str(path), "reason": f"{type(exc).__name__}: {exc}"})
    return result


@dataclass(slots=True)
class _Restored:
    """The archived records of one archive file that undo put back: their exact texts, or (a version 1 row
    without one) their parsed values."""

    texts: list[str] = field(default_factory=list)
    items: list[Any] = field(default_factory=list)


def _undo_one(root: Path, relpath: str, doc_entries: Sequence[UndoEntry]) -> _Undone | str | None:
    """Work out the undo of one document's entries (nothing written yet); ``None`` when there is nothing to publish
    (no entries: their rows' payloads could not be read, the caller reports them; the document is not read); why
    every entry failed when the document is missing or cannot be read or spliced."""
    if not doc_entries:
        return None
    try:
        with gc_paused():
            return _undo_document(root, relpath, list(doc_entries))
    except (DocumentError, SpliceError, FileNotFoundError) as exc:
        return _failure_reason(root, relpath, exc)


def _failure_reason(root: Path, relpath: str, exc: Exception) -> str:
    """Why a document's records could not be put back, as :attr:`UndoResult.failed` says it."""
    if isinstance(exc, FileNotFoundError):
        return "document is missing"
    if isinstance(exc, DocumentError) and exc.code == "unreadable" and not (root / relpath).exists():
        return "document is missing"
    return str(exc)


@dataclass(slots=True)
class _Undone:
    """One document's undo, worked out: all its ``entries``, the length of its text (characters: what memory holds,
    whatever the file's size on disk, gzip included), those restored or
    already present (``done``, in the order met; their action ids in ``restored`` and ``present``), those that cannot
    be (``failed``: no record text), and the write that puts the restored ones back (``None`` when there is nothing
    to write), which returns ``None``, or why the document could not be written (it is then as it was: a splice
    that turns out impossible as the text is made, the document gone)."""

    relpath: str
    entries: list[UndoEntry]
    size: int
    done: list[UndoEntry]
    restored: list[int]
    present: list[int]
    failed: list[dict[str, Any]]
    write: Callable[[], str | None] | None


def _record(result: UndoResult, archived: defaultdict[str, _Restored], undone: _Undone,
            unwritten: str | None = None) -> None:
    """Add what ``undone`` did to ``result`` (once its write, if any, is done), and its archived records to
    ``archived`` (by archive file); ``unwritten``: why its write failed (then every entry of it failed)."""
    if unwritten is not None:
        result.failed.extend({"action_id": e.action_id, "document": undone.relpath, "reason": unwritten}
                             for e in undone.entries)
        return
    result.failed.extend(undone.failed)
    if undone.write is not None:
        result.documents.append(undone.relpath)
    result.restored.extend(undone.restored)
    result.already_present.extend(undone.present)
    for e in undone.done:
        archive = e.payload.get("archive")
        if isinstance(archive, str) and archive:
            # the archive holds the record as its text reads (NaN included), not as the catalog's JSON keeps it
            text = e.payload.get("text")
            if isinstance(text, str):
                archived[archive].texts.append(text)
            else:
                archived[archive].items.append(e.payload.get("item"))


@dataclass(frozen=True, slots=True)
class _ListIndex:
    """The elements of one list as they are now: where each key first occurs, and which of the texts
    looked for are there."""

    position: dict[tuple[str, str], int]
    present_texts: set[str]

    @classmethod
    def of(cls, span: ListSpan, text: str, wanted: Collection[str]) -> _ListIndex:
        """Index ``span`` (found in ``text`` with :func:`aml.store.rewrite.key_only`); of the elements'
        exact texts only those in ``wanted`` (the records' texts undo looks for) are kept."""
        position: dict[tuple[str, str], int] = {}
        present: set[str] = set()
        for i in range(len(span)):
            element = span.element_text(text, i)
            position.setdefault(element_key(span.items[i], element), i)
            if element in wanted:
                present.add(element)
        return cls(position, present)

    def holds(self, payload: dict[str, Any], item_text: str) -> bool:
        """Whether the record of ``payload`` is in the list (same id, or same exact text)."""
        own = element_key(payload.get("item"), item_text)
        return (own[0] == "id" and own in self.position) or item_text in self.present_texts


def _texts(entries: Iterable[UndoEntry]) -> set[str]:
    return {t for e in entries if isinstance(t := e.payload.get("text"), str)}


def present_entries(root: Path, entries: Iterable[UndoEntry]) -> list[int]:
    """The action ids of ``entries`` whose record is in its document now, by the test undo uses for
    "already present" (same id, or same exact text, in the same list).

    A resumed prune run (the same run id after a crash) uses it to find the rows the crashed attempt
    wrote ahead of a rewrite that never happened (:mod:`aml.prune.apply`, step 4). Reads only.
    Entries whose document is missing, does not parse or lacks the list are not reported (unknown).

    Returns:
        The present entries' action ids, in the order of ``entries``.
    """
    by_doc: defaultdict[str, list[UndoEntry]] = defaultdict(list)
    for e in entries:
        by_doc[e.document].append(e)
    present: set[int] = set()
    for relpath, doc_entries in by_doc.items():
        try:
            text = read_text(root / relpath).text
        except (DocumentError, OSError):
            continue
        lists: dict[str, _ListIndex | None] = {}
        for e in doc_entries:
            pointer = str(e.payload.get("list", ""))
            if pointer not in lists:
                try:
                    lists[pointer] = _ListIndex.of(find_list(text, pointer, keep=key_only), text,
                                                   _texts(doc_entries))
                except SpliceError:
                    lists[pointer] = None
            index, item_text = lists[pointer], e.payload.get("text")
            if index is not None and isinstance(item_text, str) and index.holds(e.payload, item_text):
                present.add(e.action_id)
    return [e.action_id for docs in by_doc.values() for e in docs if e.action_id in present]


def _undo_document(root: Path, relpath: str, entries: list[UndoEntry]) -> _Undone:
    """Work out how to restore one document's records (read it, find them, splice), for
    :class:`~aml.prune.writebehind.WriteBehind` to write.

    Raises:
        FileNotFoundError: the document is missing.
        DocumentError: it cannot be read.
        SpliceError: its lists are not where the entries say, or it is not JSON there.
    """
    path = root / relpath
    if not path.exists():
        raise FileNotFoundError(path)
    doc = read_text(path, keep_raw=False)
    text = doc.text
    by_list: defaultdict[str, list[UndoEntry]] = defaultdict(list)
    for e in entries:
        by_list[str(e.payload.get("list", ""))].append(e)
    spans, _ = locate(text, {pointer: () for pointer in by_list})  # keys: all undo compares
    done: list[UndoEntry] = []
    restored: list[int] = []
    present: list[int] = []
    failed: list[dict[str, Any]] = []
    rebuilt: list[tuple[ListSpan, dict[int, list[str]], Layout | None]] = []  # (list, texts put back by gap, layout)
    for pointer in sorted(by_list, key=lambda p: spans[p].open, reverse=True):
        span = spans[pointer]
        now = _ListIndex.of(span, text, _texts(by_list[pointer]))
        span.items.clear()  # only offsets are needed from here: free the keys early
        position = now.position
        batch_gap: dict[tuple[str, str], int] = {}
        inserts: defaultdict[int, list[str]] = defaultdict(list)
        layout: Layout | None = None
        ordered = sorted(by_list[pointer], key=lambda e: int(e.payload.get("index", 0)))
        for e in ordered:
            payload = e.payload
            item_text = payload.get("text")
            if not isinstance(item_text, str):
                failed.append({"action_id": e.action_id, "document": relpath, "reason": "no record text"})
                continue
            own = element_key(payload.get("item"), item_text)
            if now.holds(payload, item_text):
                present.append(e.action_id)
                done.append(e)
                continue
            prev, nxt = _key(payload.get("prev")), _key(payload.get("next"))
            if prev is not None and prev in position:
                gap = position[prev] + 1
            elif prev is not None and prev in batch_gap:
                gap = batch_gap[prev]
            elif nxt is not None and nxt in position:
                gap = position[nxt]
            else:
                gap = min(int(payload.get("index", len(span))), len(span))
            batch_gap[own] = gap
            inserts[gap].append(item_text)
            layout = layout or Layout.from_dict(payload.get("layout"))
            restored.append(e.action_id)
            done.append(e)
        if inserts:
            rebuilt.append((span, inserts, layout))
    write: Callable[[], str | None] | None = None
    if rebuilt:
        only, only_inserts, only_layout = rebuilt[0]
        inserted = [t for group in only_inserts.values() for t in group]
        if len(rebuilt) == 1 and rebuilt_parses(text, only, inserted=inserted, layout=only_layout):
            pieces: Iterable[str] = rebuilt_pieces(text, only, _with_inserts(text, only, only_inserts),
                                                   layout=only_layout)
        else:  # never write a document that would not parse
            new_text = text
            for span, texts, used in rebuilt:  # from the last list to the first: earlier offsets hold
                new_text = rebuild(new_text, span, list(_with_inserts(text, span, texts)), layout=used)
            check_parses(new_text, relpath)
            pieces = (new_text,)

        def write() -> str | None:
            try:
                with atomic_open(path, mode=doc.mode) as fh:  # the pieces are made as they are written
                    write_text(fh, pieces, doc.encoding, doc.gzip_level)
            except (DocumentError, SpliceError, FileNotFoundError) as exc:  # this document only; it is as it was
                return _failure_reason(root, relpath, exc)
            return None

    return _Undone(relpath, entries, len(text), done, restored, present, failed, write)


def _with_inserts(text: str, span: ListSpan, inserts: Mapping[int, list[str]]) -> Iterator[tuple[str, str | None]]:
    """The elements of ``span`` with ``inserts`` (texts by the gap they go in: 0 before the first element,
    ``len(span)`` after the last) put in, as :func:`aml.store.rewrite.rebuilt_pieces` reads them: each
    inserted text with ``None`` (the list's usual separator), and the original elements between two gaps
    that receive texts in runs (:func:`_runs`), sliced from ``text`` as they are read."""
    first = 0
    for gap in sorted(g for g in inserts if 0 <= g <= len(span)):
        yield from _runs(text, span, first, gap)
        for inserted in inserts[gap]:
            yield inserted, None
        first = max(first, gap)
    yield from _runs(text, span, first, len(span))


def _runs(text: str, span: ListSpan, first: int, stop: int) -> Iterator[tuple[str, str | None]]:
    """Elements ``first..stop - 1`` of ``span`` as few pieces: each piece is consecutive elements with the
    writer's separators between them, as they are in ``text``, and the separator the writer put after its last
    one; a piece ends at the first element that takes it to :data:`~aml.store.rewrite.PIECE_CHARS` characters
    (one piece per element would cost the writer two calls per element; a piece per stretch would copy a large
    list whole)."""
    starts, ends = span.starts, span.ends
    while first < stop:
        last = first
        limit = starts[first] + PIECE_CHARS
        while last + 1 < stop and ends[last] < limit:
            last += 1
        yield text[starts[first] : ends[last]], span.sep_after(text, last)
        first = last + 1
