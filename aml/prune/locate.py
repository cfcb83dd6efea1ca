"""Finding a prune plan's records in their documents, ahead of :func:`aml.prune.apply.apply_plan`, in worker
processes.

``apply_plan`` rewrites one document at a time in the task's process. For each it must first find the
planned lists and their elements in the decoded text (:func:`aml.store.rewrite.find_list`: every element
parsed, so checked, and its offsets and key kept), which costs about as much as parsing the document; the
rest of its time goes to the undo rows (a catalog write) and the new file. :func:`located_ahead` has forked
workers (:func:`aml.procpool.ordered_map`) do that finding for the next documents while the task's process
records and writes the current one.

A worker decides nothing. It reads the document on its own and returns what it found with the SHA-256 of the
text it read; ``apply_plan`` reads the document itself as before (its size and mtime checked against the
plan's) and uses the worker's result only when the digest of its own text is the same, so the offsets are
those of the very text it cuts. Otherwise (the file changed in between), or when the worker could not read
or parse it, ``apply_plan`` locates the records itself, and reports what is wrong exactly as without
workers. Nothing a worker does writes anything.

Workers are used only for at least two documents holding at least :data:`aml.procpool.PARALLEL_MIN_BYTES`
together, each of at most :data:`aml.store.filestore.PARALLEL_DOCUMENT_BYTES`, where processes can be forked;
otherwise :func:`located_ahead` yields ``None``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aml.procpool import PARALLEL_MIN_BYTES, ordered_map, worker_processes
from aml.store.documents import decode_bytes, read_file_bytes
from aml.store.filestore import PARALLEL_DOCUMENT_BYTES
from aml.store.leanlist import find_top_list
from aml.store.records import item_size
from aml.store.rewrite import ItemFilter, ListSpan, find_list, key_only

__all__ = ["LOCATE_MAX_ELEMENTS", "LOCATE_WORKERS", "Located", "Seen", "locate", "located_ahead"]

log = logging.getLogger(__name__)

LOCATE_WORKERS = 2
"""Worker processes that locate documents ahead (the task's process is busy with the catalog and the writes)."""

Seen = dict[str, dict[int, tuple[str | None, int]]]
"""Per list pointer, per planned index: the element's ``id`` (``None`` without a string one) and its compact size
in bytes."""

LEAN_MAX_CHARS = PARALLEL_DOCUMENT_BYTES
"""A text of more characters is located by :func:`aml.store.rewrite.find_list` unless its UTF-8 is given: msgspec
reads bytes, and encoding a larger text here would hold the document twice (the memory bound of issue 12). The
copy a shorter text's encoding makes is at most four times as many bytes (64 MiB), about 16 MiB for ASCII."""

LOCATE_MAX_ELEMENTS = 32_768
"""A worker sends back nothing for a document whose lists hold more elements than this (the task's process then
locates it): a finding holds each element's offsets and key, about 250 bytes each, and up to two per worker wait
to be read, so findings take at most about 40 MB whatever the documents (a 16 MiB document of tiny records would
otherwise give one of hundreds of MB)."""


@dataclass(frozen=True, slots=True)
class Located:
    """The planned lists of one document as a worker found them.

    Attributes:
        digest: SHA-256 of the decoded text the offsets refer to, as UTF-8 (its decoded bytes).
        spans: per list pointer, its :class:`~aml.store.rewrite.ListSpan` (``items``: each element's key,
            :func:`~aml.store.rewrite.key_only`).
        seen: what the planned elements are now (:data:`Seen`), for the plan's checks.
    """

    digest: bytes
    spans: dict[str, ListSpan]
    seen: Seen

    def found_in(self, digest: bytes | None, pointers: Collection[str]) -> bool:
        """Whether these are the lists ``pointers`` of the very text whose SHA-256 is ``digest`` (the same pointers,
        the same digest: :attr:`aml.store.rewrite.DocumentText.digest`; ``None`` never matches): the only case
        where the caller may use :attr:`spans`, whose offsets index that text."""
        return digest is not None and self.spans.keys() == set(pointers) and self.digest == digest


def _keeper(planned: Collection[int], seen: dict[int, tuple[str | None, int]]) -> ItemFilter:
    """What is kept of a list's elements: their keys (:func:`aml.store.rewrite.key_only`: all the ``prev``/``next``
    anchors of undo need); of a planned one also its id and size in ``seen``."""

    def keep(index: int, item: Any) -> Any:
        if index in planned:  # only a string id is ever compared with the plan's: another is kept as None
            found = item.get("id") if isinstance(item, dict) else None
            seen[index] = (found if isinstance(found, str) else None, item_size(item))
        return key_only(index, item)

    return keep


def locate(text: str, lists: Mapping[str, Collection[int]], *, encoded: bytes | None = None
           ) -> tuple[dict[str, ListSpan], Seen]:
    """Find the lists ``lists`` names in ``text``: every element parsed (checked) and freed at once, of each
    only its key kept, and of the planned ones also their id and size.

    A document that is one array (``lists`` names only ``""``: a Loom collection) is located by msgspec when it
    can vouch for it (:func:`aml.store.leanlist.find_top_list`, about a third of the time) and its UTF-8 is given
    or it is at most :data:`LEAN_MAX_CHARS` long, else, as every other list, by :func:`aml.store.rewrite.find_list`;
    both give the same spans and the same :data:`Seen`.

    Args:
        text: a decoded document.
        lists: list pointer (RFC 6901) -> indexes of its planned elements.
        encoded: ``text.encode("utf-8")`` when the caller has it (else it is made here when needed).

    Returns:
        ``(spans, seen)``: per pointer its :class:`~aml.store.rewrite.ListSpan`, and :data:`Seen`.

    Raises:
        aml.store.rewrite.SpliceError: a pointer leads nowhere or to no array, or the text is not valid JSON
            there.
    """
    if lists.keys() == {""} and (encoded is not None or len(text) <= LEAN_MAX_CHARS):
        found = find_top_list(text.encode("utf-8") if encoded is None else encoded, lists[""], item_size)
        if found is not None:
            span, sizes = found
            keys = span.items
            return {"": span}, {"": {i: ((keys[i] or {}).get("id"), size) for i, size in sizes.items()}}
    seen: Seen = {pointer: {} for pointer in lists}
    spans = {pointer: find_list(text, pointer, keep=_keeper(frozenset(indexes), seen[pointer]))
             for pointer, indexes in lists.items()}
    return spans, seen


def _locate_file(job: tuple[str, Mapping[str, Collection[int]]]) -> Located | None:
    """A worker's part: the document at ``job[0]`` read and located, or ``None`` when that failed in any way
    (the task's process then does it again itself, and reports the reason)."""
    path, lists = job
    try:
        decoded, _ = decode_bytes(read_file_bytes(path)[0], path)  # as read_text reads it
        text = decoded.decode("utf-8")
        # decoded is the text's UTF-8: what the digest hashes (as read_text(digest=True) does), and what msgspec reads
        spans, seen = locate(text, lists, encoded=decoded)
    except Exception:  # nothing is decided here: the task's own path reads it again and names the error
        return None
    if sum(len(span) for span in spans.values()) > LOCATE_MAX_ELEMENTS:
        return None
    return Located(hashlib.sha256(decoded).digest(), spans, seen)


@contextlib.contextmanager
def located_ahead(root: Path, documents: Sequence[tuple[str, Mapping[str, Collection[int]], int]]
                  ) -> Iterator[Iterator[Located | None] | None]:
    """Locate ``documents`` in worker processes, in order, a few ahead of the reader.

    Only documents of up to :data:`~aml.store.filestore.PARALLEL_DOCUMENT_BYTES` go to the workers (as for
    the plan's reads): a worker holds one document's text, and the task's process holds its own, so a store
    of large documents never has several of them in memory at once; a larger document gets ``None`` and the
    task's process locates it.

    Args:
        root: the store's directory.
        documents: ``(store-relative path, {list pointer: planned indexes}, size on disk in bytes)`` in the
            order they are applied.

    Yields:
        ``None`` when the work stays in the task's process (fewer than two documents for the workers, less
        than :data:`~aml.procpool.PARALLEL_MIN_BYTES` in them, or no worker processes possible); else an
        iterator of one :class:`Located` (or ``None``: see above and :func:`_locate_file`) per document of
        ``documents``, in order. Leaving the context stops the workers.
    """
    small = [0 <= size <= PARALLEL_DOCUMENT_BYTES for _, _, size in documents]
    jobs = [(str(root / relpath), lists) for (relpath, lists, _), s in zip(documents, small, strict=True) if s]
    if (len(jobs) < 2 or sum(size for (_, _, size), s in zip(documents, small, strict=True) if s) < PARALLEL_MIN_BYTES
            or worker_processes(LOCATE_WORKERS, len(jobs)) < 2):
        yield None
        return
    with ordered_map(_locate_file, jobs, workers=LOCATE_WORKERS) as results:
        yield _findings(results, small)


def _findings(results: Iterator[Located | None], small: Sequence[bool]) -> Iterator[Located | None]:
    """One finding per document (``None`` for those not handed to the workers). If a result does not come back
    (it could not be pickled, say: a record nested deeper than ``pickle`` recurses), that document and the
    following ones get ``None``, with a warning: the task's process locates them itself."""
    alive = True
    for to_workers in small:
        found: Located | None = None
        if to_workers and alive:
            try:
                found = next(results)
            except Exception as exc:  # the task's own path reads each document and reports what is wrong
                log.warning("locating documents ahead stopped (%s: %s); the task's process locates the rest",
                            type(exc).__name__, exc)
                alive = False
        yield found
