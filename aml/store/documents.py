"""Documents of a file store: reading one file safely, decoding it, and classifying it by content.

A *document* is one regular file below a store root. Reading never writes, never follows a symlink,
and never opens a file larger than a limit. Failures become :class:`DocumentError` values (path,
byte offset, reason) that are reported and left alone: aml never writes back a document that
failed to parse (DESIGN.md, "Reading real data").
"""

from __future__ import annotations

import codecs
import errno
import json
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal, overload

import msgspec

from aml.store import accessors as acc
from aml.store.codec import CodecError, Encoding, decode, sniff

DEFAULT_MAX_BYTES: Final = 256 * 1024 * 1024
"""Files larger than this (256 MiB, on disk) are reported as ``too_large`` and not read, unless
``AML_MAX_DOCUMENT_MB`` says otherwise (:func:`max_document_bytes`)."""

MAX_DOCUMENT_SETTING: Final = "AML_MAX_DOCUMENT_MB"
"""The environment variable (MiB) that sets the limit of one document; named in every ``too_large`` error."""

DEFAULT_DECODE_RATIO: Final = 4
"""A compressed file may decode to at most this many times the on-disk limit."""


def max_document_bytes() -> int:
    """The on-disk size limit of one document, bytes: ``AML_MAX_DOCUMENT_MB`` (MiB, read from the environment
    at each call, so a worker and the CLI agree with their settings) or :data:`DEFAULT_MAX_BYTES`. A value
    that is not a positive number is ignored here (the settings refuse it at start-up)."""
    raw = os.environ.get(MAX_DOCUMENT_SETTING, "").strip()
    try:
        mib = float(raw) if raw else 0.0
    except ValueError:
        mib = 0.0
    return int(mib * 1024 * 1024) if mib > 0 else DEFAULT_MAX_BYTES


def _limit_text(limit: int) -> str:
    return (f"the {limit}-byte limit of one document ({MAX_DOCUMENT_SETTING}={limit / (1024 * 1024):.4g}; "
            "raise it to read this file)")

DocumentKind = Literal[
    "loom_collection",  # <agent>/patterns.json | solutions.json | decisions.json (list of items)
    "loom_archive",  # global/archived-decisions.json (list of decisions of several agents)
    "loom_item_copy",  # a list of Loom items elsewhere: backup/<agent>-<iso>/, memory-backup copies
    "loom_agent_file",  # <agent>/metrics.json | context.json | index.json
    "loom_config",  # root config.json
    "loom_schema_version",  # config/schema_version.json
    "loom_global",  # other global/*.json
    "loom_monitoring",  # monitoring/*.json (Python monitoring.py)
    "loom_backup_metadata",  # Python backup.py backup_metadata.json
    "loom_ts_backup_meta",  # TS BackupManager backup-<ms>-<rand>.meta.json
    "aitor_session",  # Aitor export_memory() session
    "tinytroupe_spec",  # TinyPerson.save_specification(...)
    "tinytroupe_cache",  # TinyTroupe simulation cache
    "json_other",  # JSON that is none of the above
    "opaque",  # not JSON (README.md, tarballs, Redis dumps): listed and sized, never parsed
    "symlink",  # a symbolic link: reported, not followed
    "special",  # a FIFO, socket or device: reported, not opened
    "unknown",  # a file that could not be read or decoded before its kind was known
]

ErrorCode = Literal[
    "truncated_json",
    "invalid_json",
    "not_utf8",
    "wrong_type",
    "corrupt_gzip",
    "corrupt_zstd",
    "too_large",
    "symlink",
    "not_regular",
    "unreadable",
]

NON_AGENT_DIRS: Final = frozenset({"global", "config", "monitoring", "audit", "backup"})
"""Top-level directories of a Loom store that are not agents."""

AGENT_FILES: Final = frozenset(
    {"patterns.json", "solutions.json", "decisions.json", "metrics.json", "context.json", "index.json"}
)
"""File names (after removing a ``.gz``/``.zst`` suffix) that mark a Loom agent directory."""

_COMPRESSED_SUFFIXES: Final = (".gz", ".zst", ".zstd")


class DocumentError(Exception):
    """A document that could not be read or has the wrong shape. Reported, never written back.

    Attributes:
        path: absolute path of the file.
        offset: byte offset of the problem, or ``None``. For compressed files the offset is in the
            decoded bytes.
        reason: human-readable explanation naming the problem.
        code: machine-readable category (:data:`ErrorCode`).
        relpath: path relative to the store root (POSIX), when known.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        offset: int | None,
        reason: str,
        *,
        code: ErrorCode = "unreadable",
        relpath: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.offset = offset
        self.reason = reason
        self.code: ErrorCode = code
        self.relpath = relpath
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{self.path}: {reason}{where}")

    def __reduce__(self) -> tuple[Any, ...]:  # keep pickling/copying working with keyword args
        return (_rebuild_error, (str(self.path), self.offset, self.reason, self.code, self.relpath))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DocumentError):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash((str(self.path), self.offset, self.reason, self.code))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"path", "relpath", "offset", "code", "reason"}``."""
        return {
            "path": str(self.path),
            "relpath": self.relpath,
            "offset": self.offset,
            "code": self.code,
            "reason": self.reason,
        }


def _rebuild_error(
    path: str, offset: int | None, reason: str, code: ErrorCode, relpath: str | None
) -> DocumentError:
    return DocumentError(path, offset, reason, code=code, relpath=relpath)


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """Summary of one file of a store.

    Attributes:
        relpath: path relative to the store root, POSIX separators.
        agent: owning agent, or ``None`` (root files, global/config/monitoring files, backup copies).
        kind: :data:`DocumentKind`.
        collection: Loom collection for ``loom_collection`` (``patterns``...), ``archived_decisions``
            for ``loom_archive``, else ``None``.
        encoding: sniffed encoding, ``None`` if the file was not read.
        size_bytes: size on disk (``st_size``), in bytes.
        record_count: number of records extracted from it (0 for copies, config and opaque files).
        mtime_ns: modification time, nanoseconds since the epoch (UTC).
        error: error code if the document failed (see :class:`DocumentError`), else ``None``.
    """

    relpath: str
    agent: str | None
    kind: DocumentKind
    collection: str | None
    encoding: Encoding | None
    size_bytes: int
    record_count: int
    mtime_ns: int
    error: ErrorCode | None = None


@dataclass(slots=True)
class Document:
    """One file, read and classified.

    Attributes:
        path: absolute path.
        relpath: path relative to the store root, POSIX separators.
        kind, agent, collection, encoding, size_bytes, mtime_ns: as in :class:`DocumentInfo`.
        data: the parsed JSON value (``None`` for opaque, failed, symlink and special entries).
        error: the failure, or ``None``.
        decoded_size: size of the decoded bytes (after gzip/zstd), 0 if not read.
        types_clean: ``True`` when read with ``check_types`` and proven to hold no field of a wrong type
            (:func:`~aml.store.accessors.types_clean`): :func:`~aml.store.accessors.wrong_types` is ``()``
            for every item, so readers skip it. ``False`` says nothing.
        ctime_ns: status change time of the file as read, nanoseconds since the epoch (0 if not read).
    """

    path: Path
    relpath: str
    kind: DocumentKind
    agent: str | None
    collection: str | None
    encoding: Encoding | None
    size_bytes: int
    mtime_ns: int
    data: Any = None
    error: DocumentError | None = None
    decoded_size: int = 0
    types_clean: bool = False
    ctime_ns: int = 0

    def info(self, record_count: int = 0) -> DocumentInfo:
        """This document's :class:`DocumentInfo` with ``record_count`` records."""
        return DocumentInfo(
            relpath=self.relpath,
            agent=self.agent,
            kind=self.kind,
            collection=self.collection,
            encoding=self.encoding,
            size_bytes=self.size_bytes,
            record_count=record_count,
            mtime_ns=self.mtime_ns,
            error=self.error.code if self.error else None,
        )


@dataclass(frozen=True, slots=True)
class Placement:
    """What a file's position in a Loom store says about it (before its content is read).

    Attributes:
        kind: the kind required by the position, or ``None`` when content decides.
        agent: the Loom agent directory the file is in, or ``None``.
        collection: the Loom collection for ``loom_collection``/``loom_archive``.
    """

    kind: DocumentKind | None
    agent: str | None
    collection: str | None = None


# --------------------------------------------------------------------------- reading


def base_name(name: str) -> str:
    """``name`` without a trailing ``.gz``/``.zst``/``.zstd`` (Python tools write ``x.json.gz``)."""
    for suffix in _COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_file_bytes(
    path: str | os.PathLike[str], *, max_bytes: int | None = None, relpath: str | None = None
) -> tuple[bytes, os.stat_result]:
    """Read a regular file without following symlinks, without blocking on FIFOs and, where the
    OS allows, without updating its access time.

    Args:
        path: the file.
        max_bytes: refuse files whose size on disk exceeds this many bytes (default
            :func:`max_document_bytes`).
        relpath: store-relative path, copied into errors.

    Returns:
        ``(bytes, stat of the open file)``.

    Raises:
        DocumentError: ``symlink``, ``not_regular``, ``too_large`` or ``unreadable``.
    """
    flags = (
        os.O_RDONLY
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_NONBLOCK", 0)
        | getattr(os, "O_CLOEXEC", 0)
    )
    noatime = getattr(os, "O_NOATIME", 0)
    if max_bytes is None:
        max_bytes = max_document_bytes()
    try:
        try:
            fd = os.open(path, flags | noatime)
        except PermissionError:  # O_NOATIME needs ownership; retry without it
            if not noatime:
                raise
            fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DocumentError(
                path, None, "symbolic link, not followed", code="symlink", relpath=relpath
            ) from exc
        raise DocumentError(path, None, f"cannot open: {exc.strerror or exc}", relpath=relpath) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DocumentError(path, None, "not a regular file", code="not_regular", relpath=relpath)
        if st.st_size > max_bytes:
            raise DocumentError(
                path,
                None,
                f"file is {st.st_size} bytes, over {_limit_text(max_bytes)}; not read",
                code="too_large",
                relpath=relpath,
            )
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # grew while we read
                raise DocumentError(
                    path, None, f"file grew over {_limit_text(max_bytes)}", code="too_large", relpath=relpath
                )
        return b"".join(chunks), st
    except OSError as exc:
        raise DocumentError(path, None, f"cannot read: {exc.strerror or exc}", relpath=relpath) from exc
    finally:
        os.close(fd)


def decode_bytes(
    raw: bytes, path: str | os.PathLike[str], *, max_output: int | None = None, relpath: str | None = None
) -> tuple[bytes, Encoding]:
    """:func:`aml.store.codec.decode` with failures as :class:`DocumentError`.

    Raises:
        DocumentError: ``corrupt_gzip``/``corrupt_zstd``, or ``too_large`` when the (sound) data decodes to
            more than ``max_output`` bytes (never called corrupt: gc quarantines corrupt files).
    """
    try:
        return decode(raw, max_output=max_output)
    except CodecError as exc:
        if exc.over_limit or exc.encoding == "plain":
            message = (f"{exc}; not read (the decoded limit is {DEFAULT_DECODE_RATIO} x {MAX_DOCUMENT_SETTING}: "
                       "raise it to read this file)")
            raise DocumentError(path, None, message, code="too_large", relpath=relpath) from exc
        code: ErrorCode = "corrupt_zstd" if exc.encoding == "zstd" else "corrupt_gzip"
        raise DocumentError(path, None, str(exc), code=code, relpath=relpath) from exc


_fast_decode: Final = msgspec.json.Decoder().decode
"""msgspec's JSON decoder to plain Python values: about 2.5 times as fast as ``json.loads`` on Loom documents
and it reads the bytes as they are (``json.loads`` needs a decoded ``str`` copy of the whole document first).
It accepts strictly less than ``json.loads`` and builds the same values from what it accepts (tests compare
the two on generated documents); on anything it refuses (``NaN``, ``Infinity``, numbers beyond a double,
lone surrogate escapes, invalid JSON) :func:`load_json` asks ``json.loads``, which keeps the standard
library's answer, and its error, in every case."""


def load_json(data: bytes, path: str | os.PathLike[str], *, relpath: str | None = None) -> Any:
    """Parse decoded bytes as UTF-8 JSON (a leading UTF-8 BOM is allowed), exactly as ``json.loads`` does
    (Python's extensions included: ``NaN``, ``Infinity``, lone surrogate escapes), faster (msgspec).

    Args:
        data: decoded bytes.
        path: for errors.
        relpath: for errors.

    Returns:
        The JSON value.

    Raises:
        DocumentError: ``not_utf8`` (offset of the first bad byte), ``truncated_json`` (the text
            ends inside a value) or ``invalid_json`` (offset of the error), both with byte offsets.
    """
    skip = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return _fast_decode(memoryview(data)[skip:] if skip else data)
    except (msgspec.DecodeError, RecursionError):
        pass  # not strict JSON, or not JSON at all: the standard library decides, and names the error
    try:
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(
            path,
            exc.start + skip,
            f"not UTF-8: byte 0x{data[exc.start + skip]:02x}",
            code="not_utf8",
            relpath=relpath,
        ) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        offset = skip + len(text[: exc.pos].encode("utf-8"))
        stripped = len(text.rstrip())
        truncated = exc.pos >= stripped or exc.msg.startswith("Unterminated string")
        code: ErrorCode = "truncated_json" if truncated else "invalid_json"
        label = "truncated JSON" if truncated else "invalid JSON"
        raise DocumentError(path, offset, f"{label}: {exc.msg}", code=code, relpath=relpath) from exc
    except RecursionError as exc:
        raise DocumentError(
            path, None, "invalid JSON: nested too deeply", code="invalid_json", relpath=relpath
        ) from exc


def looks_like_json(name: str, decoded: bytes) -> bool:
    """True if a file should be parsed as JSON: its name ends in ``.json`` (after removing a
    compression suffix), or its content starts (after whitespace/BOM) with ``{`` or ``[``."""
    if base_name(name).endswith(".json"):
        return True
    head = decoded[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    return head[:1] in (b"{", b"[")


# --------------------------------------------------------------------------- classification


def place(parts: tuple[str, ...], loom_agents: frozenset[str]) -> Placement:
    """Classify a file by its position in a Loom store.

    Args:
        parts: the store-relative path split into components.
        loom_agents: the store's Loom agent directories (see ``FileStore.agents``).

    Returns:
        A :class:`Placement`; ``kind=None`` means the content decides.
    """
    name = base_name(parts[-1])
    top = parts[0] if len(parts) > 1 else None
    agent = top if top in loom_agents else None
    if len(parts) == 1:
        return Placement("loom_config" if name == "config.json" else None, None)
    if agent is not None and len(parts) == 2:
        if name in ("patterns.json", "solutions.json", "decisions.json"):
            return Placement("loom_collection", agent, name.removesuffix(".json"))
        if name in AGENT_FILES:
            return Placement("loom_agent_file", agent)
    if len(parts) == 2 and top == "global":
        if name == "archived-decisions.json":
            return Placement("loom_archive", None, "archived_decisions")
        if name.endswith(".json"):
            return Placement("loom_global", None)
    if len(parts) == 2 and top == "config" and name == "schema_version.json":
        return Placement("loom_schema_version", None)
    if len(parts) == 2 and top == "monitoring" and name.endswith(".json"):
        return Placement("loom_monitoring", None)
    return Placement(None, agent)


LIST_KINDS: Final[frozenset[DocumentKind]] = frozenset({"loom_collection", "loom_archive"})
"""Positional kinds whose content must be a list of objects."""
DICT_KINDS: Final[frozenset[DocumentKind]] = frozenset({"loom_config", "loom_schema_version"})
"""Positional kinds whose content must be an object."""
CONTENT_FIRST_KINDS: Final[frozenset[DocumentKind]] = frozenset({"loom_global", "loom_monitoring"})
"""Positional kinds that yield to an Aitor session or TinyTroupe content found at their place."""


def classify(
    data: Any, parts: tuple[str, ...], placement: Placement, path: Path
) -> tuple[DocumentKind, str | None]:
    """Decide a parsed document's kind and owning agent, and check its shape.

    Positional kinds (``placement.kind``) win, except that an Aitor session or TinyTroupe spec or cache in
    ``global/`` or ``monitoring/`` is classified by its content; otherwise the content decides, in this order: Aitor
    session, TinyTroupe spec, TinyTroupe cache, Loom backup metadata, TS backup meta, list of Loom
    items (``loom_item_copy``), ``json_other``.

    Args:
        data: the parsed JSON value.
        parts: store-relative path components.
        placement: from :func:`place`.
        path: absolute path, for errors.

    Returns:
        ``(kind, agent or None)``.

    Raises:
        DocumentError: ``wrong_type`` when the content does not have the shape its position or
            content type requires (e.g. a ``patterns.json`` that is an object, or a list holding a
            non-object; an Aitor session whose ``conversation_history`` is not a list of objects).
    """
    relpath = "/".join(parts)
    kind = placement.kind
    if kind in LIST_KINDS:
        _require_list_of_objects(data, path, relpath, what=f"{parts[-1]} ({placement.collection})")
        return kind, placement.agent
    if kind in DICT_KINDS:
        if not isinstance(data, Mapping):
            raise DocumentError(
                path,
                None,
                f"{parts[-1]}: expected a JSON object, got {_json_type(data)}",
                code="wrong_type",
                relpath=relpath,
            )
        return kind, None
    if kind in CONTENT_FIRST_KINDS and (acc.is_aitor_session(data) or acc.is_tinytroupe_spec(data)
                                   or acc.is_tinytroupe_cache(data)):
        kind = None  # a session or spec placed in global/ or monitoring/ is still one ("anywhere below the root")
    if kind is not None:
        return kind, placement.agent
    if acc.is_aitor_session(data):
        for key in (*acc.SESSION_COLLECTIONS, "planning"):
            if key == "planning":
                value = data.get("planning")
                if value is not None and not isinstance(value, Mapping):
                    raise DocumentError(
                        path,
                        None,
                        f"Aitor session: 'planning' is {_json_type(value)}, expected an object",
                        code="wrong_type",
                        relpath=relpath,
                    )
                if isinstance(value, Mapping) and "todos" in value:
                    _require_list_of_objects(
                        value["todos"], path, relpath, what="Aitor session 'planning.todos'"
                    )
            elif key in data:
                _require_list_of_objects(data[key], path, relpath, what=f"Aitor session '{key}'")
        return "aitor_session", acc.session_agent_name(data) or placement.agent or _parent_name(parts, path)
    if acc.is_tinytroupe_spec(data):
        em = data.get("episodic_memory")
        if em is not None and not (isinstance(em, Mapping) and isinstance(em.get("memory", []), list)):
            raise DocumentError(
                path,
                None,
                "TinyPerson spec: 'episodic_memory.memory' is not a list",
                code="wrong_type",
                relpath=relpath,
            )
        return "tinytroupe_spec", acc.persona_name(data) or parts[-1].split(".")[0]
    if acc.is_tinytroupe_cache(data):
        names = {acc.persona_name(a) for e in data for a in acc.cache_entry_agents(e)} - {None}
        return "tinytroupe_cache", names.pop() if len(names) == 1 else None
    if acc.is_backup_metadata(data):
        return "loom_backup_metadata", None
    if acc.is_ts_backup_meta(data):
        return "loom_ts_backup_meta", None
    if isinstance(data, list) and data and all(acc.is_loom_item(x) for x in data):
        return "loom_item_copy", None
    return "json_other", placement.agent


def _require_list_of_objects(value: Any, path: Path, relpath: str, *, what: str) -> None:
    if not isinstance(value, list):
        raise DocumentError(
            path,
            None,
            f"{what}: expected a JSON list of objects, got {_json_type(value)}",
            code="wrong_type",
            relpath=relpath,
        )
    if all(type(item) is dict for item in value):  # what a parser makes: no ABC check per item
        return
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise DocumentError(
                path,
                None,
                f"{what}: item {i} is {_json_type(item)}, expected an object",
                code="wrong_type",
                relpath=relpath,
            )


def _parent_name(parts: tuple[str, ...], path: Path) -> str:
    """Agent fallback for a session file: its directory (skipping a ``sessions`` level)."""
    dirs = [*parts[:-1]]
    if dirs and dirs[-1] == "sessions":
        dirs.pop()
    if dirs:
        return dirs[-1]
    parent = path.parent
    return parent.parent.name if parent.name == "sessions" else parent.name


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


LAZY_ITEMS_BYTES: Final = 16 * 1024 * 1024
"""A list document (a Loom collection or the archive) whose decoded JSON is larger than this (bytes) is
read item by item by read-only scans that ask for it (:func:`read_document` ``lazy_items``): its items stay
undecoded bytes until each is used, so memory holds the document's bytes and one item at a time, not every
item's Python objects (5 to 7 times the document; issue 12, part 2: at most about 3 times the largest document).

The same 16 MiB as :data:`aml.store.filestore.PARALLEL_DOCUMENT_BYTES`, which measures the size on disk (a small
gzip file that decodes to more is read item by item, in a worker). At 64 MiB, a 60 MB document took ``monitor
health`` to 398 MB, ``prune --dry-run`` and ``optimize index`` to 386 MB (bound: 3 x 60 + 72 MB = 252 MB); read item
by item they peak at 202, 198 and 230 MB, 2-13 % slower (``benchmarks/scale.py`` ``--big-document-mb 60``). Without
a record index, health times no lookup in such a document (it would time decoding): it says so, and that the index
times them."""

_split_items: Final = msgspec.json.Decoder(list[msgspec.Raw]).decode

_FIRST_BYTE_TYPE: Final = {ord("{"): "an object", ord("["): "a list", ord('"'): "a string", ord("t"): "a boolean",
                           ord("f"): "a boolean", ord("n"): "null"}


def _decode_item(raw: msgspec.Raw) -> Any:
    try:
        return _fast_decode(raw)
    except (msgspec.DecodeError, RecursionError):  # a number beyond a double, a lone surrogate escape...
        return json.loads(bytes(raw).decode("utf-8"))  # ...as json.loads of the whole document reads it


class LazyItems(Sequence[Any]):
    """The items of a JSON list document, each decoded (as :func:`load_json` decodes) when it is read.

    A read-only view: every access decodes the item again and returns a new object, so changing one
    changes nothing here. ``len``, indexing, slicing and iteration work as on the list ``load_json`` returns.
    """

    __slots__ = ("_first_of_id", "_raws")

    def __init__(self, raws: list[msgspec.Raw]) -> None:
        self._raws = raws
        self._first_of_id: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self._raws)

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [_decode_item(raw) for raw in self._raws[index]]
        return _decode_item(self._raws[index])

    def __iter__(self) -> Iterator[Any]:
        for raw in self._raws:
            yield _decode_item(raw)

    def find_id(self, record_id: str) -> Any:
        """The first item that is an object whose ``id`` is ``record_id`` (decoded), or ``None``: what a scan of the
        list ``load_json`` returns finds, without decoding every item on every call. The first call reads each
        item's ``id`` alone (msgspec skips the rest) and keeps the first position of each; a call decodes the one
        item then."""
        first = self._first_of_id
        if first is None:
            first = self._first_of_id = {}
            for index, raw in enumerate(self._raws):
                try:
                    found = _decode_id(raw).id
                except (msgspec.DecodeError, RecursionError):  # not expected (the split read it): as an item reads
                    item = _decode_item(raw)
                    found = item.get("id") if isinstance(item, dict) else None
                if type(found) is str and found not in first:
                    first[found] = index
        position = first.get(record_id)
        return None if position is None else _decode_item(self._raws[position])


class _IdOnly(msgspec.Struct):
    """An item's ``id`` alone (any JSON value; its other members skipped)."""

    id: Any = None


_decode_id: Final = msgspec.json.Decoder(_IdOnly).decode


_UTF8_CHUNK: Final = 16 * 1024 * 1024


def valid_utf8(data: bytes | memoryview) -> bool:
    """Whether ``data`` is UTF-8, checked 16 MiB at a time (no ``str`` of the whole document)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for start in range(0, len(data), _UTF8_CHUNK):
            decoder.decode(data[start:start + _UTF8_CHUNK])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _lazy_list_of_objects(decoded: bytes, path: Path, relpath: str, *, what: str) -> LazyItems | None:
    """``decoded`` as :class:`LazyItems` when it is valid UTF-8 and a JSON list that msgspec splits into items,
    else ``None`` (:func:`load_json` then reads it, and names any error as it always does).

    Raises:
        DocumentError: ``wrong_type``: an item is not a JSON object (the message of the eager check).
    """
    skip = 3 if decoded.startswith(b"\xef\xbb\xbf") else 0
    body = memoryview(decoded)[skip:]
    if not valid_utf8(body):  # the item split does not check the bytes inside strings
        return None
    try:
        raws = _split_items(body)
    except (msgspec.DecodeError, RecursionError):
        return None
    for i, raw in enumerate(raws):
        first = memoryview(raw)[0]
        if first != 0x7B:  # "{"
            found = _FIRST_BYTE_TYPE.get(first, "a number")
            raise DocumentError(path, None, f"{what}: item {i} is {found}, expected an object", code="wrong_type",
                                relpath=relpath)
    return LazyItems(raws)


# --------------------------------------------------------------------------- one document


def read_document(
    path: Path,
    relpath: str,
    *,
    loom_agents: frozenset[str] = frozenset(),
    max_bytes: int | None = None,
    max_decoded_bytes: int | None = None,
    lazy_items: int | None = None,
    check_types: bool = False,
) -> Document:
    """Read, decode, parse and classify one regular file. Never raises for bad content: the
    failure is in ``Document.error``.

    Args:
        path: absolute path of the file.
        relpath: store-relative POSIX path (decides the Loom placement).
        loom_agents: the store's Loom agent directories.
        max_bytes: on-disk size limit (bytes; default :func:`max_document_bytes`).
        max_decoded_bytes: decoded size limit (bytes); default ``DEFAULT_DECODE_RATIO * max_bytes``.
        lazy_items: for read-only callers: a Loom collection or archive whose decoded JSON is larger than this
            many bytes gets ``data`` as :class:`LazyItems` instead of a list (e.g. :data:`LAZY_ITEMS_BYTES`);
            ``None``: always a list.
        check_types: for readers that look for wrong types: prove a Loom collection or archive read whole
            free of them in one C pass (``Document.types_clean``; about 2 ms per MB).

    Returns:
        The :class:`Document`.
    """
    if max_bytes is None:
        max_bytes = max_document_bytes()
    parts = PurePosixPath(relpath).parts
    placement = place(parts, loom_agents)
    doc = Document(
        path=path,
        relpath=relpath,
        kind=placement.kind or "unknown",
        agent=placement.agent,
        collection=placement.collection,
        encoding=None,
        size_bytes=0,
        mtime_ns=0,
    )
    try:
        try:
            st = os.lstat(path)
        except OSError as exc:  # gone since the store was listed: reported as a file that cannot be opened
            raise DocumentError(path, None, f"cannot open: {exc.strerror or exc}", relpath=relpath) from exc
        doc.size_bytes, doc.mtime_ns, doc.ctime_ns = st.st_size, st.st_mtime_ns, st.st_ctime_ns
        raw, st = read_file_bytes(path, max_bytes=max_bytes, relpath=relpath)
        doc.size_bytes, doc.mtime_ns, doc.ctime_ns = st.st_size, st.st_mtime_ns, st.st_ctime_ns
        doc.encoding = sniff(raw)
        parse_as_json = placement.kind is not None or base_name(parts[-1]).endswith(".json")
        if doc.encoding != "plain" and not parse_as_json:
            doc.kind = "opaque"  # e.g. a .tar.gz: sized and listed, not decompressed
            return doc
        limit = max_decoded_bytes if max_decoded_bytes is not None else DEFAULT_DECODE_RATIO * max_bytes
        decoded, _ = decode_bytes(raw, path, max_output=limit, relpath=relpath)
        doc.decoded_size = len(decoded)
        if not (parse_as_json or looks_like_json(parts[-1], decoded)):
            doc.kind = "opaque"
            return doc
        if lazy_items is not None and len(decoded) > lazy_items and placement.kind in LIST_KINDS:
            items = _lazy_list_of_objects(decoded, path, relpath, what=f"{parts[-1]} ({placement.collection})")
            if items is not None:
                doc.kind, doc.agent, doc.data = placement.kind, placement.agent, items
                return doc
        try:
            data = load_json(decoded, path, relpath=relpath)
        except DocumentError:
            if not parse_as_json:  # content merely looked like JSON: treat as opaque, not broken
                doc.kind = "opaque"
                return doc
            raise
        doc.kind, doc.agent = classify(data, parts, placement, path)
        doc.data = data
        if check_types and doc.kind in LIST_KINDS:
            skip = 3 if decoded.startswith(b"\xef\xbb\xbf") else 0
            doc.types_clean = acc.types_clean(memoryview(decoded)[skip:] if skip else decoded,
                                              doc.collection or "patterns")
    except DocumentError as exc:
        if exc.code == "symlink":
            doc.kind = "symlink"
        elif exc.code == "not_regular":
            doc.kind = "special"
        doc.error = exc
    return doc
