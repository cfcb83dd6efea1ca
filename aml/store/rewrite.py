"""The one way aml rewrites a JSON document: splice its text, so every byte it does not change stays the writer's.

Every writer of memory documents goes through this module: prune removes items from a list (a Loom
collection, an Aitor session's ``conversation_history``, a TinyTroupe agent's
``episodic_memory.memory``) and its undo puts them back; ``optimize gc`` removes invalid and duplicate
records; ``migrate`` replaces the records it changes. None of them re-serialises the document: the
list's elements are located by their character spans in the decoded text (:func:`find_list`), and the
list region is rebuilt (:func:`rebuild`, :func:`remove_elements`, :func:`replace_elements`) from the
exact text of the elements that stay, with the separators the writer used. Fields aml does not know,
key order, number formatting, escapes, indentation, a byte order mark and a trailing newline are
therefore kept as the writer wrote them, two writers removing the same records produce the same
bytes, and an undo restores the original bytes exactly.

A record whose content changes (a migration) has to be serialised anew: :func:`detect_json_style`
reads the writer's layout (indentation unit, separators, ASCII escapes) from the document and
:func:`dumps_element` writes the new record in it, indented to the column the old one started at.
Loom's runtime (``JSON.stringify(data, null, 2)``) and its Python tools (``json.dump(data, f,
indent=2, ensure_ascii=False)``) both write two-space indentation, non-ASCII characters as is.

The file's encoding is kept too (:func:`encode_text`): gzip files written by zlib or pako are
recompressed with zlib at the level their header names (Loom's runtime writes pako level 6, which zlib
level 6 reproduces byte for byte), so that a prune followed by its undo gives back the identical file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from json.decoder import scanstring  # type: ignore[attr-defined]
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any, BinaryIO, Final

from aml.store.codec import Encoding, encode
from aml.store.documents import decode_bytes, read_file_bytes
from aml.store.jsontext import is_strict_json

_DECODER: Final = json.JSONDecoder()
_WS: Final = re.compile(r"[ \t\n\r]*")
_BOM: Final = "\ufeff"


class SpliceError(ValueError):
    """The document's text does not have the list the plan or undo expects (or is not JSON)."""


@dataclass(frozen=True, slots=True)
class Layout:
    """Whitespace and separators of a list as its writer formatted it.

    Attributes:
        lead: text between ``[`` and the first element (``"\\n  "`` for ``indent=2`` at top level).
        sep: text between two elements (``",\\n  "``), ``None`` when the list never had two.
        trail: text between the last element and ``]`` (``"\\n"``).
    """

    lead: str
    sep: str | None
    trail: str

    def to_dict(self) -> dict[str, str | None]:
        """``{"lead", "sep", "trail"}``."""
        return {"lead": self.lead, "sep": self.sep, "trail": self.trail}

    @classmethod
    def from_dict(cls, data: Any) -> Layout | None:
        """Inverse of :meth:`to_dict`; ``None`` for anything else."""
        if not isinstance(data, dict):
            return None
        lead, sep, trail = data.get("lead"), data.get("sep"), data.get("trail")
        if isinstance(lead, str) and isinstance(trail, str) and (sep is None or isinstance(sep, str)):
            return cls(lead, sep, trail)
        return None


@dataclass(slots=True)
class ListSpan:
    """Where a JSON array and its elements are in a text.

    Attributes:
        open: offset of ``[``.
        close: offset of ``]``.
        starts, ends: offsets of each element's first character and one past its last.
        items: each element parsed (or what :func:`find_list`'s ``keep`` kept of it).
    """

    open: int
    close: int
    starts: list[int]
    ends: list[int]
    items: list[Any]

    def __len__(self) -> int:
        return len(self.starts)

    def element_text(self, text: str, index: int) -> str:
        """The exact source text of element ``index``."""
        return text[self.starts[index] : self.ends[index]]

    def sep_after(self, text: str, index: int) -> str | None:
        """The separator after element ``index`` (``None`` for the last one)."""
        if index + 1 >= len(self.starts):
            return None
        return text[self.ends[index] : self.starts[index + 1]]

    def layout(self, text: str) -> Layout | None:
        """The list's :class:`Layout` (``sep`` from the first pair, ``None`` for a one-element
        list); ``None`` for an empty list."""
        if not self.starts:
            return None
        sep = text[self.ends[0] : self.starts[1]] if len(self.starts) > 1 else None
        return Layout(text[self.open + 1 : self.starts[0]], sep, text[self.ends[-1] : self.close])


@dataclass(slots=True)
class DocumentText:
    """A document read for editing.

    Attributes:
        raw: the bytes on disk (empty when read with ``read_text(..., keep_raw=False)``).
        encoding: sniffed encoding (kept when writing back).
        gzip_level: for gzip written by zlib/pako, the level its header names (:func:`gzip_level_of`),
            else ``None``.
        text: the decoded UTF-8 text (a leading BOM kept).
        size: ``st_size`` when read.
        mtime_ns: ``st_mtime_ns`` when read.
        mode: permission bits.
        ino: ``st_ino`` when read (an atomic rewrite by anyone changes it).
        digest: the SHA-256 of ``text`` as UTF-8 (the decoded bytes) when read with ``read_text(..., digest=True)``,
            else ``None``.
    """

    raw: bytes
    encoding: Encoding
    gzip_level: int | None
    text: str
    size: int
    mtime_ns: int
    mode: int
    ino: int = 0
    digest: bytes | None = None

    def unchanged_on_disk(self, path: str | os.PathLike[str]) -> bool:
        """True if ``path`` still has the size, mtime and inode it had when this text was read."""
        try:
            st = os.lstat(path)
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns, st.st_ino) == (self.size, self.mtime_ns, self.ino)

    def encoded(self, text: str) -> bytes:
        """``text`` encoded the way this document was (:func:`encode_text`)."""
        return encode_text(text, self.encoding, self.gzip_level)


def pointer_tokens(pointer: str) -> list[str]:
    """Split an RFC 6901 JSON pointer into unescaped tokens (``""`` -> ``[]``).

    Raises:
        SpliceError: a non-empty pointer that does not start with ``/``.
    """
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise SpliceError(f"bad JSON pointer {pointer!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def read_text(path: str | os.PathLike[str], *, relpath: str | None = None, keep_raw: bool = True,
              digest: bool = False) -> DocumentText:
    """Read, decode and (for gzip) fingerprint a document for editing (never follows a symlink).

    Args:
        path: the file.
        relpath: its store-relative path, for errors.
        keep_raw: keep the bytes on disk in :attr:`DocumentText.raw`; ``False`` leaves ``raw`` empty, so
            that a large document is held once (as its text), not twice.
        digest: set :attr:`DocumentText.digest`, hashed from the decoded bytes (the text is not encoded again).

    Raises:
        aml.store.DocumentError: unreadable, symlink, oversize, or corrupt compression.
        SpliceError: not UTF-8.
    """
    raw, st = read_file_bytes(path, relpath=relpath)
    decoded, encoding = decode_bytes(raw, path, relpath=relpath)
    doc = document_text(raw, st, decoded, encoding, path)
    if digest:  # decoded is valid UTF-8 (document_text decoded it): its bytes are those of the text
        doc.digest = hashlib.sha256(decoded).digest()
    if not keep_raw:
        doc.raw = b""
    return doc


def document_text(raw: bytes, st: os.stat_result, decoded: bytes, encoding: Encoding,
                  path: str | os.PathLike[str]) -> DocumentText:
    """The :class:`DocumentText` of a file already read (``raw``, ``st``) and decoded.

    Raises:
        SpliceError: ``decoded`` is not UTF-8.
    """
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpliceError(f"{path}: not UTF-8 at byte {exc.start}") from exc
    level = gzip_level_of(raw) if encoding == "gzip" else None
    return DocumentText(raw, encoding, level, text, st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode),
                        st.st_ino)


def gzip_level_of(raw: bytes) -> int | None:
    """The zlib level to recompress a gzip file with so that zlib would write the same header.

    zlib (and pako, its port that Loom's runtime uses) writes a 10-byte header with no flags, mtime 0,
    OS 3 (Unix) and an XFL byte that names the level class: 2 for level 9, 4 for level 1, 0 otherwise.
    For such a header this returns 9, 1 or 6 (zlib's and pako's default): recompressing with it gives
    the writer's exact bytes whenever the writer used that level, which is the case for Loom's files,
    so a prune followed by its undo restores them byte for byte. For any other header (another
    compressor, a file name or mtime in the header) it returns ``None``: aml's own gzip encoder is used.

    Args:
        raw: the file's bytes (only the first 10 are looked at).
    """
    if len(raw) < 10 or raw[:4] != b"\x1f\x8b\x08\x00" or raw[4:8] != b"\x00\x00\x00\x00" or raw[9] != 3:
        return None
    return {2: 9, 4: 1}.get(raw[8], 6)


def encode_text(text: str, encoding: Encoding, gzip_level: int | None) -> bytes:
    """Encode an edited text the way its file was encoded (see :class:`DocumentText`)."""
    data = text.encode("utf-8")
    if encoding == "gzip" and gzip_level is not None:
        return zlib.compress(data, gzip_level, wbits=31)
    return encode(data, encoding)


class TextSink:
    """Writes a document's new text to a file as it is made, encoded the way the document was
    (:func:`encode_text`), without the whole text or its bytes in memory: pieces are gathered into runs
    of about :data:`PIECE_CHARS` characters and each run is encoded and written; gzip at a known level
    goes through one zlib stream (whose output does not depend on how its input is split, so the bytes
    are those of :func:`encode_text`). Other encodings (zstd, gzip of another writer) are joined and
    encoded whole at :meth:`close`.

    Args:
        fh: a binary file open for writing (e.g. from :func:`aml.store.atomic.atomic_open`); it is emptied
            first (:meth:`reset`).
        encoding, gzip_level: as in :class:`DocumentText`.
        digest: keep the SHA-256 of the bytes written (:meth:`close` returns it); without it :meth:`close`
            returns ``""`` and the bytes are not hashed (about 0.1 s per 60 MB written).

    Attributes:
        bytes_written: bytes written to ``fh`` so far (encoded).

    :meth:`write`, :meth:`write_range` and :meth:`close` raise ``OSError`` when the file cannot be written.
    """

    def __init__(self, fh: BinaryIO, encoding: Encoding, gzip_level: int | None, *, digest: bool = True) -> None:
        self._fh, self._encoding, self._level, self._digest = fh, encoding, gzip_level, digest
        self.reset()

    def reset(self) -> None:
        """Forget everything written: the file is emptied (for a writer that starts over)."""
        self._fh.seek(0)
        self._fh.truncate()
        self._run: list[str] = []
        self._size = 0
        self.bytes_written = 0
        self._hash = hashlib.sha256() if self._digest else None
        self._zlib = (zlib.compressobj(self._level, zlib.DEFLATED, 31)
                      if self._encoding == "gzip" and self._level is not None else None)

    @property
    def _streams(self) -> bool:
        return self._encoding == "plain" or self._zlib is not None

    def write(self, piece: str) -> None:
        """Append ``piece`` to the text."""
        self._run.append(piece)
        self._size += len(piece)
        if self._size >= PIECE_CHARS and self._streams:
            self._flush_run()

    def write_range(self, text: str, start: int, end: int) -> None:
        """Append ``text[start:end]``, sliced at most :data:`PIECE_CHARS` at a time (an unchanged stretch of
        a large document is never copied whole)."""
        for piece in _pieces(text, start, end):
            self.write(piece)

    def _flush_run(self) -> None:
        data = "".join(self._run).encode("utf-8")
        self._run, self._size = [], 0
        self._emit(self._zlib.compress(data) if self._zlib is not None else data)

    def _emit(self, data: bytes) -> None:
        if self._hash is not None:
            self._hash.update(data)
        self.bytes_written += self._fh.write(data)

    def close(self) -> str:
        """Write what is left (and gzip's trailer); returns the hex SHA-256 of every byte written (``""`` for a
        sink made without ``digest``).

        Raises:
            OSError: the write failed.
        """
        if not self._streams:
            self._emit(encode_text("".join(self._run), self._encoding, self._level))
            self._run, self._size = [], 0
        else:
            self._flush_run()
            if self._zlib is not None:
                self._emit(self._zlib.flush())
        return self._hash.hexdigest() if self._hash is not None else ""


def write_text(fh: BinaryIO, pieces: Iterable[str], encoding: Encoding, gzip_level: int | None) -> int:
    """Write the text made of ``pieces`` to ``fh`` (emptied first) exactly as ``encode_text("".join(pieces),
    ...)`` would encode it, through a :class:`TextSink`.

    Args:
        fh: a binary file open for writing (e.g. from :func:`aml.store.atomic.atomic_open`).
        pieces: the text, in order (e.g. :func:`removal_pieces`).
        encoding, gzip_level: as in :class:`DocumentText`.

    Returns:
        The number of bytes written.

    Raises:
        OSError: the write failed.
    """
    sink = TextSink(fh, encoding, gzip_level, digest=False)
    write, write_range = sink.write, sink.write_range
    for piece in pieces:
        if len(piece) <= PIECE_CHARS:  # the usual piece (an element, a separator): no slicing to do
            write(piece)
        else:  # a whole document given as one piece is encoded in runs too
            write_range(piece, 0, len(piece))
    sink.close()
    return sink.bytes_written


def _ws(text: str, i: int) -> int:
    m = _WS.match(text, i)
    assert m is not None
    return m.end()


def _value_end(text: str, i: int) -> tuple[Any, int]:
    try:
        return _DECODER.raw_decode(text, i)
    except json.JSONDecodeError as exc:
        raise SpliceError(f"invalid JSON at character {exc.pos}: {exc.msg}") from exc
    except RecursionError as exc:  # a document, not the run, is what cannot be edited
        raise SpliceError(f"the value at character {i} is nested too deeply to be edited") from exc


def _member(text: str, i: int, key: str) -> int | None:
    """Offset of the value of ``key`` in the object at ``i`` (the last one if repeated, as
    ``json.loads`` keeps), or ``None``."""
    i = _ws(text, i + 1)
    found: int | None = None
    if text[i] == "}":
        return None
    while True:
        if text[i] != '"':
            raise SpliceError(f"expected a key at character {i}")
        name, i = scanstring(text, i + 1)
        i = _ws(text, i)
        if text[i] != ":":
            raise SpliceError(f"expected ':' at character {i}")
        i = _ws(text, i + 1)
        if name == key:
            found = i
        _, end = _value_end(text, i)
        i = _ws(text, end)
        if text[i] == ",":
            i = _ws(text, i + 1)
            continue
        if text[i] == "}":
            return found
        raise SpliceError(f"expected ',' or '}}' at character {i}")


ItemFilter = Callable[[int, Any], Any]
"""What :func:`find_list` keeps of each element: ``(index, parsed element) -> what ListSpan.items holds``."""


def offsets_only(index: int, item: Any) -> None:
    """A :data:`ItemFilter` that keeps nothing of the elements (each is still parsed, so checked): for a caller
    that needs only their offsets."""
    return None


def _array(text: str, i: int, keep: ItemFilter | None = None) -> ListSpan:
    span = ListSpan(i, -1, [], [], [])
    i = _ws(text, i + 1)
    if text[i] == "]":
        span.close = i
        return span
    while True:
        item, end = _value_end(text, i)
        span.starts.append(i)
        span.ends.append(end)
        span.items.append(item if keep is None else keep(len(span.items), item))
        i = _ws(text, end)
        if text[i] == ",":
            i = _ws(text, i + 1)
            continue
        if text[i] == "]":
            span.close = i
            return span
        raise SpliceError(f"expected ',' or ']' at character {i}")


def find_list(text: str, pointer: str, *, keep: ItemFilter | None = None) -> ListSpan:
    """Locate the JSON array at ``pointer`` and its elements.

    Args:
        text: the decoded document (a leading BOM is skipped).
        pointer: RFC 6901 pointer of the array (``""`` = the whole document); tokens name object
            members or array indexes.
        keep: what to keep of each element in :attr:`ListSpan.items`, called with its index and its
            parsed value as soon as it is parsed (default: the value). A caller that needs few of the
            values (or only their ids, see :func:`key_only`) keeps memory to those: each element is
            still parsed (checked), but the others are freed at once, not held for the whole list.

    Returns:
        The array's :class:`ListSpan`.

    Raises:
        SpliceError: the path does not exist, is not an array, or the text is not valid JSON there.
    """
    try:
        i = _ws(text, 1 if text.startswith(_BOM) else 0)
        for token in pointer_tokens(pointer):
            if text[i] == "{":
                found = _member(text, i, token)
                if found is None:
                    raise SpliceError(f"no member {token!r} on the path {pointer!r}")
                i = found
            elif text[i] == "[" and token.isdigit():
                span = _array(text, i, offsets_only)  # only the offsets are needed on the way
                index = int(token)
                if index >= len(span):
                    raise SpliceError(f"index {index} out of range on the path {pointer!r}")
                i = span.starts[index]
            else:
                raise SpliceError(f"cannot follow {token!r} on the path {pointer!r}")
        if text[i] != "[":
            raise SpliceError(f"{pointer or 'the document'} is not a JSON array")
        return _array(text, i, keep)
    except IndexError as exc:
        raise SpliceError("the text ends early") from exc


PIECE_CHARS: Final = 4 * 1024 * 1024
"""Largest piece of text :func:`removal_pieces` yields, in characters (at most 16 MiB encoded)."""


def _pieces(text: str, start: int, end: int) -> Iterator[str]:
    """``text[start:end]`` in slices of at most :data:`PIECE_CHARS`."""
    for at in range(start, end, PIECE_CHARS):
        yield text[at : min(end, at + PIECE_CHARS)]


def rebuild(text: str, span: ListSpan, elements: Sequence[tuple[str, str | None]], *,
            layout: Layout | None = None) -> str:
    """Replace the array at ``span`` with ``elements``: :func:`rebuilt_pieces` joined.

    Args:
        text: the document text the span was found in.
        span: the array.
        elements: ``(element text, separator after it or None)`` in order; a ``None`` separator is
            replaced by the list's usual separator (the first pair's, else ``layout.sep``).
        layout: the list's layout as recorded earlier, used when the text cannot show it (the list
            is empty or has one element).

    Returns:
        The new text. An empty ``elements`` gives ``[]``, as ``JSON.stringify`` and ``json.dumps``
        write an empty list.

    Raises:
        SpliceError: elements to write but no way to know the separator.
    """
    return "".join(rebuilt_pieces(text, span, elements, layout=layout))


def rebuilt_pieces(text: str, span: ListSpan, elements: Iterable[tuple[str, str | None]], *,
                   layout: Layout | None = None) -> Iterator[str]:
    """The pieces of ``text`` with the array at ``span`` replaced by ``elements`` (see :func:`rebuild`),
    in order. ``elements`` is read as the pieces are, so a generator of slices of ``text`` rebuilds a large
    list without a copy of its elements in memory (undo, :func:`write_text`).

    Raises:
        SpliceError: elements to write but no way to know the separator (raised when reached).
    """
    seen = span.layout(text)
    known = seen if seen is not None else layout
    lead, trail = (known.lead, known.trail) if known is not None else ("", "")
    usual = seen.sep if seen is not None and seen.sep is not None else (layout.sep if layout else None)
    yield from _pieces(text, 0, span.open + 1)
    pending: tuple[str, str | None] | None = None
    for following in elements:
        if pending is None:
            yield lead
        else:
            element, sep = pending
            chosen = sep if sep is not None else usual
            if chosen is None:
                raise SpliceError("cannot tell the list's separator; no layout recorded")
            yield element
            yield chosen
        pending = following
    if pending is not None:  # an empty list is "[]": no lead or trail
        yield pending[0]
        yield trail
    yield from _pieces(text, span.close, len(text))


def key_only(index: int, item: Any) -> dict[str, str] | None:
    """A :data:`ItemFilter` that keeps of an element only what :func:`element_key` reads: ``{"id": <id>}``
    for an object with a string ``id``, else ``None`` (the key is then the text's digest)."""
    if isinstance(item, dict):
        found = item.get("id")
        if isinstance(found, str):
            return {"id": found}
    return None


def element_key(item: Any, element_text: str) -> tuple[str, str]:
    """How undo recognises an element: ``("id", <id>)`` for an object with a string ``id`` (Loom
    items, Aitor todos), else ``("sha256", <hex digest of its exact text>)``."""
    if isinstance(item, dict) and isinstance(item.get("id"), str):
        return "id", item["id"]
    return "sha256", hashlib.sha256(element_text.encode("utf-8")).hexdigest()


def removal_pieces(text: str, edits: Iterable[tuple[ListSpan, Collection[int]]]) -> Iterator[str]:
    """The pieces of ``text`` without, for each ``(span, removed)`` of ``edits``, the elements of ``span``
    at the indexes ``removed``; every other byte as it was.

    Between two elements that stay, the separator is the one the writer put after the first of them;
    an emptied list becomes ``[]``. The text is yielded in runs of the original (at most
    :data:`PIECE_CHARS` each), never as single elements, so joining or encoding it costs about one
    copy of the document.

    Args:
        text: the document text the spans were found in (:func:`find_list`).
        edits: lists and the indexes to remove from each; the lists must not overlap or nest.

    Yields:
        Pieces of the new text, in order.

    Raises:
        SpliceError: two lists overlap (one inside the other).
    """
    at = 0
    for span, removed in sorted(edits, key=lambda edit: edit[0].open):
        if span.open < at:
            raise SpliceError("lists inside one another cannot be edited in one pass")
        kept = [i for i in range(len(span)) if i not in removed]
        if not kept:  # an emptied list: "[]", as JSON.stringify and json.dumps write it
            yield from _pieces(text, at, span.open + 1)
            at = span.close
            continue
        yield from _pieces(text, at, span.starts[0])  # up to the first element: "[" and the list's lead
        first = previous = kept[0]
        for i in kept[1:]:
            if i != previous + 1:  # a run ends: it keeps the separator its last element had
                yield from _pieces(text, span.starts[first], span.starts[previous + 1])
                first = i
            previous = i
        yield from _pieces(text, span.starts[first], span.ends[previous])
        at = span.ends[-1]  # the list's trail and "]" follow
    yield from _pieces(text, at, len(text))


def remove_elements(text: str, span: ListSpan, removed: Collection[int]) -> str:
    """``text`` without the elements of ``span`` at the indexes ``removed`` (:func:`removal_pieces`
    joined). Prune and gc both remove records with :func:`removal_pieces`, so removing the same records
    gives the same bytes whichever of them does it.
    """
    return "".join(removal_pieces(text, [(span, removed)]))


def replace_elements(text: str, span: ListSpan, new: Mapping[int, Any], style: JsonStyle) -> str:
    """``text`` with the elements of ``span`` at the indexes of ``new`` replaced by its values,
    serialised in ``style`` (:func:`dumps_element`) at the column the old element started at. The
    other elements, the separators and everything outside the list keep their exact text.
    """
    if not new:
        return text
    elements: list[tuple[str, str | None]] = []
    for i in range(len(span)):
        sep = span.sep_after(text, i)
        if i in new:
            line_start = text.rfind("\n", 0, span.starts[i]) + 1
            lead = text[line_start : span.starts[i]]
            prefix = lead[: len(lead) - len(lead.lstrip(" \t"))]
            elements.append((dumps_element(new[i], style, prefix), sep))
        else:
            elements.append((span.element_text(text, i), sep))
    return rebuild(text, span, elements)


def check_parses(text: str, what: str) -> None:
    """Raise :class:`SpliceError` unless ``text`` (a leading BOM allowed) parses as JSON: an edited
    text is never written if it would not."""
    try:
        json.loads(text[1:] if text.startswith(_BOM) else text)
    except ValueError as exc:
        raise SpliceError(f"{what}: edited text does not parse ({exc}); left alone") from exc


_JSON_WS: Final = " \t\n\r"
_SEPARATOR: Final = re.compile(r"[ \t\n\r]*,[ \t\n\r]*")


def spans_whole_document(text: str, span: ListSpan) -> bool:
    """Whether the array of ``span`` is the whole of ``text``: only JSON whitespace (after a leading
    BOM) before its ``[`` and after its ``]``.

    :func:`find_list` then checked every character of ``text``: each element was parsed, each
    separator is whitespace, one comma, whitespace, and the list's lead and trail are whitespace.
    """
    head = text[1 : span.open] if text.startswith(_BOM) else text[: span.open]
    return not head.strip(_JSON_WS) and not text[span.close + 1 :].strip(_JSON_WS)


def is_json_value(text: str) -> bool:
    """Whether ``text`` is exactly one JSON value as ``json.loads`` reads it, with no whitespace around it (an
    element's text). Checked by msgspec first (about twice as fast on a record's text: undo checks every record
    it puts back), then by the standard library's decoder for what only it accepts (``NaN``)."""
    if text and text[0] not in _JSON_WS and text[-1] not in _JSON_WS and is_strict_json(text):
        return True
    try:
        _, end = _DECODER.raw_decode(text)
    except (ValueError, RecursionError):  # nested deeper than the decoder recurses: not known to parse
        return False
    return end == len(text)


def check_rebuilt(new_text: str, what: str, text: str, span: ListSpan, *, inserted: Iterable[str] = (),
                  layout: Layout | None = None) -> None:
    """:func:`check_parses` for ``new_text``, made by one :func:`rebuild` of ``span`` (found by
    :func:`find_list` in ``text``) from elements of the span and the ``inserted`` texts, with
    ``layout``, without parsing the whole document again when it cannot fail to parse.

    When the array is the whole document (:func:`spans_whole_document`), every piece of the rebuilt
    text is known valid: the document's own elements and separators were checked by :func:`find_list`,
    each inserted text is checked to be exactly one JSON value (:func:`is_json_value`) and the layout
    to be whitespace and a comma separator; valid pieces joined that way are valid JSON, so the parse
    would succeed. Otherwise (the list is inside a larger document, or a piece is not known valid),
    the whole new text is parsed, as :func:`check_parses` does.

    Args:
        new_text: the rebuilt document text.
        what: the document, for the error message.
        text: the text ``span`` was found in.
        span: the rebuilt array.
        inserted: texts of the elements that were not in ``text`` (undo's restored records).
        layout: the recorded layout given to :func:`rebuild`, if any.

    Raises:
        SpliceError: ``new_text`` does not parse.
    """
    if rebuilt_parses(text, span, inserted=inserted, layout=layout):
        return
    check_parses(new_text, what)


def rebuilt_parses(text: str, span: ListSpan, *, inserted: Iterable[str] = (), layout: Layout | None = None) -> bool:
    """Whether a rebuild of ``span`` (found in ``text``) from its own elements, the ``inserted`` texts and
    ``layout`` is known to parse without parsing it (the reasoning of :func:`check_rebuilt`); a removal
    (:func:`removal_pieces`) is such a rebuild with nothing inserted."""
    return (spans_whole_document(text, span) and _layout_valid(layout)
            and all(is_json_value(t) for t in inserted))


def _layout_valid(layout: Layout | None) -> bool:
    """Whether a recorded layout is JSON whitespace and a comma separator (or absent)."""
    if layout is None:
        return True
    return (not layout.lead.strip(_JSON_WS) and not layout.trail.strip(_JSON_WS)
            and (layout.sep is None or _SEPARATOR.fullmatch(layout.sep) is not None))


# ------------------------------------------------------------------------------ the writer's style

_NON_ASCII_ESCAPE: Final = re.compile(
    r"\\u(?:00[89a-fA-F][0-9a-fA-F]|0[1-9a-fA-F][0-9a-fA-F]{2}|[1-9a-fA-F][0-9a-fA-F]{3})"
)
"""A ``\\uXXXX`` escape of a non-ASCII character (U+0080 and above)."""
_KEY_SPACED: Final = re.compile(r'":[ \t]')
_KEY_TIGHT: Final = re.compile(r'":[^ \t]')
_ITEM_SPACED: Final = re.compile(r'[}\]"], [{\["]')
_ITEM_TIGHT: Final = re.compile(r'[}\]"],[{\["]')
_STYLE_SAMPLE: Final = 65536
"""Characters of a document :func:`detect_json_style` looks at (its layout is uniform)."""


def _count(pattern: re.Pattern[str], text: str) -> int:
    return sum(1 for _ in pattern.finditer(text))


@dataclass(frozen=True, slots=True)
class JsonStyle:
    """How a writer lays out JSON.

    Attributes:
        indent: the indentation unit (e.g. ``"  "`` or ``"\\t"``), or ``None`` for one line.
        item_sep: separator between items on one line (``","`` or ``", "``; only when ``indent`` is None).
        key_sep: separator between a key and its value (``":"`` or ``": "``).
        ensure_ascii: non-ASCII characters written as ``\\uXXXX`` escapes.
    """

    indent: str | None = "  "
    item_sep: str = ","
    key_sep: str = ": "
    ensure_ascii: bool = False


LOOM_STYLE: Final = JsonStyle()
"""What Loom writes: two spaces, ``": "``, UTF-8 as is."""


def detect_json_style(text: str) -> JsonStyle:
    """The layout of ``text`` (a JSON document), read from its first 64 KiB.

    Returns:
        Its :class:`JsonStyle`; :data:`LOOM_STYLE` choices where the text does not show them (e.g.
        ``[]`` says nothing about indentation).
    """
    body = text[1:] if text.startswith(_BOM) else text
    stripped = body[:_STYLE_SAMPLE].strip()
    indent: str | None = LOOM_STYLE.indent
    item_sep, key_sep = LOOM_STYLE.item_sep, LOOM_STYLE.key_sep
    if len(stripped) > 2 and stripped[0] in "[{":
        rest = stripped[1:]
        first_line_end = rest.find("\n")
        head = stripped[:4096]
        key_sep = ": " if _count(_KEY_SPACED, head) >= _count(_KEY_TIGHT, head) else ":"
        if first_line_end == -1 or rest[:first_line_end].strip():
            indent = None
            item_sep = ", " if _count(_ITEM_SPACED, head) > _count(_ITEM_TIGHT, head) else ","
        else:
            line = rest[first_line_end + 1 :]
            unit = line[: len(line) - len(line.lstrip(" \t"))]
            indent = unit or LOOM_STYLE.indent
    sample = body[:_STYLE_SAMPLE]
    ensure_ascii = sample.isascii() and _NON_ASCII_ESCAPE.search(sample) is not None
    return JsonStyle(indent, item_sep, key_sep, ensure_ascii)


def dumps_element(value: Any, style: JsonStyle = LOOM_STYLE, prefix: str = "",
                  heads: dict[str, str] | None = None) -> str:
    """Serialise ``value`` in ``style`` as an element that starts at a line indented by ``prefix``
    (its inner lines are indented by ``prefix`` plus the style's units, as the writer's serialiser
    would have put them at that depth): exactly the text of ``json.dumps`` with the style's settings
    (:func:`_dumps_with_json`), an object or list in an indented style joined here about 3 times as fast.

    Args:
        value: the element (JSON values).
        style: the document's layout.
        prefix: the indentation of the line the element starts on.
        heads: a cache of key texts to share between the elements of one document in one ``style``
            (default: a new one per call).

    Returns:
        The element's text.
    """
    if style.indent is None or type(value) not in (dict, list):
        return _dumps_with_json(value, style, prefix)
    enc = encode_basestring_ascii if style.ensure_ascii else encode_basestring
    try:
        return _indented(value, "\n" + prefix, style.indent, style.key_sep, enc, {} if heads is None else heads)
    except (_Unsupported, RecursionError):
        return _dumps_with_json(value, style, prefix)


def _dumps_with_json(value: Any, style: JsonStyle, prefix: str) -> str:
    """:func:`dumps_element` through ``json.dumps`` itself (the reference of the fast path)."""
    if style.indent is None:
        return json.dumps(value, ensure_ascii=style.ensure_ascii, separators=(style.item_sep, style.key_sep))
    out = json.dumps(value, ensure_ascii=style.ensure_ascii, indent=style.indent, separators=(",", style.key_sep))
    return out.replace("\n", "\n" + prefix) if prefix else out  # JSON strings hold no raw newline


class _Unsupported(Exception):
    """A value :func:`dumps_element` leaves to ``json.dumps`` (:func:`_dumps_with_json`)."""


def _float_text(value: float) -> str:
    """A float as ``json.dumps`` writes it (``allow_nan``: ``NaN``, ``Infinity``, ``-Infinity``)."""
    if value != value:
        return "NaN"
    if value == math.inf:
        return "Infinity"
    if value == -math.inf:
        return "-Infinity"
    return float.__repr__(value)


def _indented(value: Any, nl: str, unit: str, key_sep: str, enc: Callable[[str], str],
              heads: dict[str, str]) -> str:
    """``value`` (an object or a list) as ``json.dumps(value, indent=unit, separators=(",", key_sep))``
    writes it, every newline followed by ``nl[1:]``: the containers' text is joined here, with one call
    per container (``json.dumps`` makes a generator step per token when it indents). ``heads`` caches
    each key's text followed by ``key_sep``."""
    inner = nl + unit
    parts: list[str] = []
    append = parts.append
    if type(value) is dict:
        if not value:
            return "{}"
        for key, v in value.items():
            head = heads.get(key)
            if head is None:
                if type(key) is not str:
                    raise _Unsupported
                head = heads[key] = enc(key) + key_sep
            t = type(v)
            if t is str:
                append(head + enc(v))
            elif t is dict or t is list:
                append(head + _indented(v, inner, unit, key_sep, enc, heads))
            elif v is None:
                append(head + "null")
            elif v is True:
                append(head + "true")
            elif v is False:
                append(head + "false")
            elif t is int:
                append(head + int.__repr__(v))
            elif t is float:
                append(head + _float_text(v))
            else:
                raise _Unsupported
        return "{" + inner + ("," + inner).join(parts) + nl + "}"
    if not value:
        return "[]"
    for v in value:
        t = type(v)
        if t is str:
            append(enc(v))
        elif t is dict or t is list:
            append(_indented(v, inner, unit, key_sep, enc, heads))
        elif v is None:
            append("null")
        elif v is True:
            append("true")
        elif v is False:
            append("false")
        elif t is int:
            append(int.__repr__(v))
        elif t is float:
            append(_float_text(v))
        else:
            raise _Unsupported
    return "[" + inner + ("," + inner).join(parts) + nl + "]"


