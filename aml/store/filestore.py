"""File stores: a directory of memory documents (Loom's ``.loom/memory`` and anything below it).

:class:`FileStore` walks the tree, reads every regular file once (never writing, never following
symlinks), classifies it and extracts record views. :meth:`FileStore.scan` gathers everything into
a :class:`ScanResult`; :meth:`FileStore.scan_tallies` has worker processes read the documents and send back
what a scan without record views keeps of each (``monitor health``).

Layout rules (DESIGN.md, "Memory stores"): Loom agents are the top-level directories that hold a
Loom agent file (``patterns.json``, ``solutions.json``, ``decisions.json``, ``metrics.json``,
``context.json``, ``index.json``, optionally ``.gz``/``.zst``) or a ``sessions/`` directory, except
``global config monitoring audit backup``, hidden directories and aml's own ``.aml*`` entries.
Root files are not agents. Aitor sessions and TinyTroupe files are recognised anywhere below the
root. aml's temporary files (``.aml-tmp-*``) and ``.aml*`` directories are skipped.
"""

from __future__ import annotations

import functools
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aml.gcpause import gc_paused
from aml.procpool import PARALLEL_MIN_BYTES, ordered_map
from aml.store.atomic import TMP_PREFIX
from aml.store.documents import (
    AGENT_FILES,
    NON_AGENT_DIRS,
    Document,
    DocumentError,
    DocumentInfo,
    base_name,
    max_document_bytes,
    read_document,
)
from aml.store.extract import Tally, records_from_document
from aml.store.records import Record
from aml.store.storeid import normalise_store_id

_R = TypeVar("_R")

PARALLEL_DOCUMENT_BYTES = 16 * 1024 * 1024
"""Files of at most this many bytes are read by worker processes (:meth:`FileStore.map_documents`, and
``optimize index``); larger ones are read by the task's process, one at a time, so memory holds one."""

AML_PREFIX = ".aml"
"""Entries whose name starts with this belong to aml (temp files, own folders) and are skipped."""


@dataclass(slots=True)
class ScanResult:
    """Everything one read of a store found.

    Attributes:
        store_id: the store's id.
        records: record views of every live item, in walk order (sorted paths); empty after a scan that
            kept none (``FileStore.scan(views=False)``).
        errors: every document that failed (parse errors, symlinks, oversize...), in walk order.
        documents: one :class:`DocumentInfo` per entry (failed ones carry ``error``).
        tally: counts, bytes and wrong types of every record, views kept or not
            (:class:`~aml.store.extract.Tally`).
    """

    store_id: str
    records: list[Record] = field(default_factory=list)
    errors: list[DocumentError] = field(default_factory=list)
    documents: list[DocumentInfo] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)

    @classmethod
    def empty(cls, store_id: str = "") -> ScanResult:
        """A result with nothing in it (e.g. for a store directory that does not exist)."""
        return cls(store_id)

    def agent_sizes(self) -> dict[str, int]:
        """Bytes on disk per agent: the sum of ``size_bytes`` of every entry attributed to the agent
        (failed and opaque files included). Files of no agent are left out.

        Returns:
            ``{agent: bytes}``, agents sorted by name.
        """
        sizes: Counter[str] = Counter()
        for info in self.documents:
            if info.agent is not None:
                sizes[info.agent] += info.size_bytes
        return dict(sorted(sizes.items()))

    def counts(self) -> dict[str, dict[str, int]]:
        """Number of records per agent and collection.

        Returns:
            ``{agent: {collection: count}}``, both levels sorted by name.
        """
        return _by_agent(self.tally.counts)

    def collection_bytes(self) -> dict[str, dict[str, int]]:
        """Record bytes (sum of :attr:`Record.size_bytes`, compact JSON) per agent and collection.

        Returns:
            ``{agent: {collection: bytes}}``, both levels sorted by name.
        """
        return _by_agent(self.tally.sizes)

    @property
    def record_count(self) -> int:
        """Number of records in the store (views kept or not)."""
        return self.tally.records

    def add(self, part: DocumentTally) -> None:
        """Add one document's :class:`DocumentTally` (documents added in walk order)."""
        self.tally.merge(part.tally)
        self.documents.append(part.info)
        if part.error is not None:
            self.errors.append(part.error)

    @property
    def wrong_type_findings(self) -> list[dict[str, str]]:
        """Every field of a wrong type: ``{"file", "record_id", "pointer", "field", "found", "expected"}``."""
        return self.tally.wrong_types

    @property
    def total_bytes(self) -> int:
        """Bytes on disk of every entry of the store (sum of ``st_size``)."""
        return sum(info.size_bytes for info in self.documents)

    def agents(self) -> list[str]:
        """Every agent seen (Loom agent directories, session and persona names), sorted."""
        return sorted(
            {i.agent for i in self.documents if i.agent is not None} | {agent for agent, _ in self.tally.counts}
        )

    def records_of(self, agent: str | None = None, collection: str | None = None) -> list[Record]:
        """Records filtered by agent and/or collection (``None`` = any)."""
        return [
            r
            for r in self.records
            if (agent is None or r.agent == agent) and (collection is None or r.collection == collection)
        ]


@dataclass(slots=True)
class DocumentTally:
    """What a scan without record views keeps of one document (:meth:`FileStore.scan_tallies`): its summary,
    its error, the tally of its records and ``extra``, what the caller's function computed from it."""

    info: DocumentInfo
    error: DocumentError | None
    tally: Tally
    extra: Any = None


def tally_document(store_id: str, extra: Callable[[Document], Any] | None, doc: Document) -> DocumentTally:
    """The :class:`DocumentTally` of ``doc`` (what a worker of :meth:`FileStore.scan_tallies` returns)."""
    tally = Tally()
    count = tally.add_document(store_id, doc)
    return DocumentTally(doc.info(count), doc.error, tally, None if extra is None else extra(doc))


def _by_agent(per_key: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """``{(agent, collection): n}`` as ``{agent: {collection: n}}``, both levels sorted by name."""
    nested: defaultdict[str, dict[str, int]] = defaultdict(dict)
    for (agent, collection), n in sorted(per_key.items()):
        nested[agent][collection] = n
    return dict(nested)


class FileStore:
    """A memory store that is a directory.

    Args:
        root: the store directory (e.g. ``project/.loom/memory``).
        max_bytes: files larger than this on disk are reported (``too_large``) and not read;
            default ``AML_MAX_DOCUMENT_MB`` or 256 MiB (:func:`aml.store.documents.max_document_bytes`).
        max_decoded_bytes: limit on a file's decoded (decompressed) size; default 4 x ``max_bytes``.

    Attributes:
        root: the directory as an absolute resolved :class:`~pathlib.Path`.
        store_id: ``str(root)``: the id used in locks, catalog rows and metric labels
            (:func:`aml.store.storeid.normalise_store_id`).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        max_bytes: int | None = None,
        max_decoded_bytes: int | None = None,
    ) -> None:
        self.store_id = normalise_store_id(root)
        if "://" in self.store_id:
            raise ValueError(f"{self.store_id} is a URL, not a file store directory")
        self.root = Path(self.store_id)
        self.max_bytes = max_document_bytes() if max_bytes is None else max_bytes
        self.max_decoded_bytes = max_decoded_bytes

    def __repr__(self) -> str:
        return f"FileStore({self.store_id!r})"

    def agents(self) -> list[str]:
        """The Loom agent directories (see the module docstring), sorted. Cheap: lists directories
        only. Session and persona agents need a :meth:`scan`.

        Raises:
            NotADirectoryError, FileNotFoundError: the root is not a directory.
        """
        agents = []
        with os.scandir(self.root) as entries:
            for entry in entries:
                name = entry.name
                if name in NON_AGENT_DIRS or name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                    continue
                if _holds_agent_files(Path(entry.path)):
                    agents.append(name)
        return sorted(agents)

    def iter_documents(self, *, lazy_items: int | None = None, check_types: bool = False) -> Iterator[Document]:
        """Read every entry below the root, in sorted path order.

        Args:
            lazy_items: for read-only use: Loom collections and the archive larger than this (decoded bytes)
                come with their items undecoded until read (:class:`~aml.store.documents.LazyItems`;
                ``read_document``); ``None``: every document fully parsed.

        Yields:
            One :class:`Document` per regular file, symlink or special file (the latter two, and
            files that fail, with ``error`` set). Directories are descended (never via symlinks).

        Python's cyclic garbage collector is paused while the documents are read and used (until the
        iteration ends or is closed): parsed JSON and the record views built from it hold no reference
        cycles, so its full collections, triggered by the many objects a large document makes, only cost
        time (about a quarter of ``monitor health`` on a 75,000-record store).

        Raises:
            NotADirectoryError, FileNotFoundError: the root is not a directory.
        """
        with gc_paused():
            yield from self._documents(lazy_items, check_types)

    def _documents(self, lazy_items: int | None, check_types: bool) -> Iterator[Document]:
        read = functools.partial(_document_of, loom_agents=frozenset(self.agents()), max_bytes=self.max_bytes,
                                 max_decoded_bytes=self.max_decoded_bytes, lazy_items=lazy_items,
                                 check_types=check_types)
        for entry in self._walk(self.root, ""):
            yield read(entry)

    def map_documents(self, fn: Callable[[Document], _R], *, lazy_items: int | None = None,
                      check_types: bool = False, workers: int = 2,
                      parallel_max_bytes: int = PARALLEL_DOCUMENT_BYTES,
                      min_bytes_for_processes: int = PARALLEL_MIN_BYTES, here: Collection[str] = (),
                      visit: Callable[[Document], None] | None = None,
                      substitute: Callable[[str, os.stat_result], _R | None] | None = None) -> Iterator[_R]:
        """``fn(document)`` for every entry below the root, in sorted path order (the documents of
        :meth:`iter_documents`), computed by forked worker processes (:func:`aml.procpool.ordered_map`)
        for the files of up to ``parallel_max_bytes`` and here, one at a time, for larger ones and entries
        that are not regular files. ``fn`` reads what it needs of a document and returns something small
        that pickles (the document itself stays in the process that read it).

        Args:
            fn: a module-level function (or a ``functools.partial`` of one).
            lazy_items, check_types: as in :meth:`iter_documents`.
            workers: worker processes (threads where processes cannot be forked: :mod:`aml.procpool`).
            parallel_max_bytes: larger files are read here, so memory holds at most one of them.
            min_bytes_for_processes: when the files of up to ``parallel_max_bytes`` add up to less, threads
                read them (forking a pool costs more than it saves on a small store).
            here: store-relative paths of documents to read in this process, whatever their size.
            visit: called here with each document read here (``here``, larger files, entries that are not
                regular files), before ``fn``: what needs the document in this process (a lookup probe).
            substitute: called here with each regular file's store-relative path and ``lstat``, before anything
                reads it: a result other than ``None`` is yielded in place of ``fn``'s, and the file is not read
                (what a caller already knows of an unchanged file, e.g. from the record index).

        Yields:
            ``fn``'s result for each document, in path order.

        Raises:
            NotADirectoryError, FileNotFoundError: the root is not a directory.
            Exception: what ``fn`` raised.
        """
        read = functools.partial(_document_of, loom_agents=frozenset(self.agents()), max_bytes=self.max_bytes,
                                 max_decoded_bytes=self.max_decoded_bytes, lazy_items=lazy_items,
                                 check_types=check_types)
        entries = list(self._walk(self.root, ""))
        known: dict[str, _R] = {}
        if substitute is None:
            sizes = [_lstat_size(e[0]) if e[2] is None else -1 for e in entries]
        else:
            sizes = [_substituted(substitute, e, known) if e[2] is None else -1 for e in entries]
        small = [0 <= size <= parallel_max_bytes and e[1] not in here for e, size in zip(entries, sizes, strict=True)]
        total = sum(size for size, s in zip(sizes, small, strict=True) if s)
        with gc_paused(), ordered_map(functools.partial(_apply, fn, read),
                                      [e for e, s in zip(entries, small, strict=True) if s], workers=workers,
                                      processes=total >= min_bytes_for_processes) as results:
            done = iter(results)
            for entry, in_worker in zip(entries, small, strict=True):
                if entry[1] in known:
                    yield known.pop(entry[1])
                    continue
                if in_worker:
                    yield next(done)
                    continue
                doc = read(entry)
                if visit is not None:
                    visit(doc)
                yield fn(doc)

    def scan_tallies(self, extra: Callable[[Document], Any] | None = None, *, here: Collection[str] = (),
                     visit: Callable[[Document], None] | None = None, lazy_items: int | None = None,
                     workers: int = 2, min_bytes_for_processes: int = PARALLEL_MIN_BYTES) -> Iterator[DocumentTally]:
        """What :meth:`scan` with ``views=False`` keeps of each document, read by worker processes
        (:meth:`map_documents`): add each to a :class:`ScanResult` (:meth:`ScanResult.add`).

        Args:
            extra: a module-level function (or a partial of one) of a document, computed where it is read;
                its result (small, picklable) is the part's ``extra``.
            here, visit: as in :meth:`map_documents`: documents read in this process, and the function that
                sees each of them (a probe that times lookups in the held document).
            lazy_items: as in :meth:`iter_documents`.
            workers, min_bytes_for_processes: as in :meth:`map_documents` (threads below that many bytes).

        Yields:
            One :class:`DocumentTally` per entry, in path order.

        Raises:
            NotADirectoryError, FileNotFoundError: the root is not a directory.
        """
        return self.map_documents(functools.partial(tally_document, self.store_id, extra), lazy_items=lazy_items,
                                  check_types=True, workers=workers, here=here, visit=visit,
                                  min_bytes_for_processes=min_bytes_for_processes)

    def read_document(self, relpath: str) -> Document:
        """Read one document by its store-relative path (for writers that edit it next).

        Args:
            relpath: POSIX path relative to the root; must stay inside the root.

        Returns:
            The parsed :class:`Document` (``error`` is ``None``).

        Raises:
            ValueError: ``relpath`` is absolute or leaves the root.
            DocumentError: the document cannot be read or parsed.
        """
        parts = Path(relpath).parts
        if Path(relpath).is_absolute() or ".." in parts:
            raise ValueError(f"path outside the store: {relpath!r}")
        doc = read_document(
            self.root / relpath,
            "/".join(parts),
            loom_agents=frozenset(self.agents()),
            max_bytes=self.max_bytes,
            max_decoded_bytes=self.max_decoded_bytes,
        )
        if doc.error is not None:
            raise doc.error
        return doc

    def scan(self, visit: Callable[[Document], None] | None = None, *,
             lazy_items: int | None = None, views: bool = True) -> ScanResult:
        """Read the whole store into record views. Writes nothing.

        Args:
            visit: called with every :class:`Document` (parsed data included) before the scan keeps only
                its summary: a way to compute more from one read (e.g. per-session statistics).
            lazy_items: as in :meth:`iter_documents` (``visit`` then sees such a document's items as
                :class:`~aml.store.documents.LazyItems`).
            views: keep a :class:`Record` per item (``records``); ``False`` keeps only the tally (counts,
                bytes, wrong types), which skips building a view of each Loom item: about 40 % of
                ``monitor health`` on a 75,000-record store.

        Returns:
            A :class:`ScanResult` with records, errors and one :class:`DocumentInfo` per entry.

        Raises:
            NotADirectoryError, FileNotFoundError: the root is not a directory.
        """
        result = ScanResult(self.store_id)
        tally = result.tally
        for doc in self.iter_documents(lazy_items=lazy_items, check_types=True):
            if visit is not None:
                visit(doc)
            if views:
                records = records_from_document(self.store_id, doc)
                result.records.extend(records)
                count = tally.add_records(records)
            else:
                count = tally.add_document(self.store_id, doc)
            result.documents.append(doc.info(count))
            if doc.error is not None:
                result.errors.append(doc.error)
        return result

    def _walk(self, directory: Path, prefix: str) -> Iterator[tuple[Path, str, DocumentError | None]]:
        """Yield ``(path, relpath, error)`` for files, symlinks and special files, sorted."""
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if not prefix:
                raise
            yield (
                directory,
                prefix.rstrip("/"),
                DocumentError(
                    directory,
                    None,
                    f"cannot list directory: {exc.strerror or exc}",
                    relpath=prefix.rstrip("/"),
                ),
            )
            return
        for entry in entries:
            name = entry.name
            if name.startswith((TMP_PREFIX, AML_PREFIX)):
                continue
            path = Path(entry.path)
            relpath = prefix + name
            if entry.is_symlink():
                target = _readlink(path)
                yield (
                    path,
                    relpath,
                    DocumentError(
                        path,
                        None,
                        f"symbolic link to {target!r}, not followed",
                        code="symlink",
                        relpath=relpath,
                    ),
                )
            elif entry.is_dir(follow_symlinks=False):
                yield from self._walk(path, relpath + "/")
            elif entry.is_file(follow_symlinks=False):
                yield path, relpath, None
            else:
                yield (
                    path,
                    relpath,
                    DocumentError(
                        path,
                        None,
                        "not a regular file (FIFO, socket or device), not opened",
                        code="not_regular",
                        relpath=relpath,
                    ),
                )


def holds_agent_files(directory: Path) -> bool:
    """True for a Loom agent directory: it holds a Loom agent file (``patterns.json``...) or ``sessions/``."""
    return _holds_agent_files(directory)


def _holds_agent_files(directory: Path) -> bool:
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name == "sessions" and entry.is_dir(follow_symlinks=False):
                    return True
                if base_name(entry.name) in AGENT_FILES:
                    return True
    except OSError:
        return False
    return False


def _agent_of(relpath: str, loom_agents: frozenset[str]) -> str | None:
    top, sep, _ = relpath.partition("/")
    return top if sep and top in loom_agents else None


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def _document_of(entry: tuple[Path, str, DocumentError | None], *, loom_agents: frozenset[str],
                 max_bytes: int | None, max_decoded_bytes: int | None, lazy_items: int | None,
                 check_types: bool) -> Document:
    """The :class:`Document` of one entry of :meth:`FileStore._walk` (an entry that is not a regular file
    comes with its error, unread)."""
    path, relpath, error = entry
    if error is not None:
        return Document(
            path=path,
            relpath=relpath,
            kind="symlink" if error.code == "symlink" else "special" if error.code == "not_regular" else "unknown",
            agent=_agent_of(relpath, loom_agents),
            collection=None,
            encoding=None,
            size_bytes=_lstat_size(path),
            mtime_ns=_lstat_mtime(path),
            error=error,
        )
    return read_document(path, relpath, loom_agents=loom_agents, max_bytes=max_bytes,
                         max_decoded_bytes=max_decoded_bytes, lazy_items=lazy_items, check_types=check_types)


def _apply(fn: Callable[[Document], _R], read: Callable[[tuple[Path, str, DocumentError | None]], Document],
           entry: tuple[Path, str, DocumentError | None]) -> _R:
    """``fn`` of one entry's document (what a worker process of :meth:`FileStore.map_documents` runs)."""
    return fn(read(entry))


def _substituted(substitute: Callable[[str, os.stat_result], _R | None],
                 entry: tuple[Path, str, DocumentError | None], known: dict[str, _R]) -> int:
    """The size of a regular file for :meth:`FileStore.map_documents` (0 when it cannot be ``lstat``-ed), and
    ``substitute``'s result for it in ``known`` when there is one (then -1: read nowhere)."""
    path, relpath, _ = entry
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    result = substitute(relpath, st)
    if result is None:
        return st.st_size
    known[relpath] = result
    return -1


def _lstat_size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def _lstat_mtime(path: Path) -> int:
    try:
        return os.lstat(path).st_mtime_ns
    except OSError:
        return 0
