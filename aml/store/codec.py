"""Content encodings of store files, sniffed from magic bytes, never from names.

Loom's runtime writes gzip bytes under ``.json`` names; aml may write zstd for stores only aml reads.
Everything else is taken as plain bytes. Writers keep a file's encoding unless the operation is
``compress`` (DESIGN.md, "Reading real data").
"""

from __future__ import annotations

import io
import zlib
from typing import Final, Literal, cast, get_args

import zstandard
from isal import igzip, isal_zlib

Encoding = Literal["plain", "gzip", "zstd"]
"""How a file's bytes are encoded: ``plain`` (as is), ``gzip`` (RFC 1952), ``zstd`` (RFC 8878)."""

ENCODINGS: Final[tuple[Encoding, ...]] = get_args(Encoding)
GZIP_MAGIC: Final = b"\x1f\x8b"
ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"

DEFAULT_GZIP_LEVEL: Final = isal_zlib.ISAL_DEFAULT_COMPRESSION
"""isal gzip level used when none is given (isal levels run 0-3; 3 is its best compression)."""
DEFAULT_ZSTD_LEVEL: Final = 3
"""zstd level used when none is given (same as ``zstd -3``)."""

_ZSTD_CHUNK: Final = 16 * 1024
_GZIP_ERRORS: Final = (
    OSError,
    EOFError,
    ValueError,
    zlib.error,
    cast("type[Exception]", isal_zlib.error),  # a class at runtime; the stubs call it an instance
)


class CodecError(ValueError):
    """Compressed bytes that cannot be decoded (corrupt or truncated), or output over a limit.

    Attributes:
        encoding: the encoding that was sniffed.
        reason: a short human-readable explanation.
        over_limit: the data is sound but decodes to more than the ``max_output`` asked for.
    """

    def __init__(self, encoding: Encoding, reason: str, *, over_limit: bool = False) -> None:
        super().__init__(f"{encoding} {reason}" if over_limit else f"corrupt {encoding}: {reason}")
        self.encoding: Encoding = encoding
        self.reason = reason
        self.over_limit = over_limit


def sniff(raw: bytes) -> Encoding:
    """Return the encoding of ``raw`` from its first bytes.

    Args:
        raw: the file's bytes (only the first 4 are looked at, so a prefix is enough).

    Returns:
        ``"gzip"`` for ``1f 8b``, ``"zstd"`` for ``28 b5 2f fd``, else ``"plain"``.
    """
    if raw.startswith(GZIP_MAGIC):
        return "gzip"
    if raw.startswith(ZSTD_MAGIC):
        return "zstd"
    return "plain"


def decode(raw: bytes, *, max_output: int | None = None) -> tuple[bytes, Encoding]:
    """Decode ``raw`` according to its sniffed encoding.

    Multi-member gzip and multi-frame zstd streams are decoded completely.

    Args:
        raw: the file's bytes.
        max_output: refuse to produce more than this many decoded bytes (guards against
            decompression bombs); ``None`` means no limit.

    Returns:
        ``(decoded bytes, encoding)``; for ``plain`` the input is returned unchanged.

    Raises:
        CodecError: corrupt or truncated gzip/zstd data, or decoded output over ``max_output``.
    """
    encoding = sniff(raw)
    if encoding == "gzip":
        return _gunzip(raw, max_output), encoding
    if encoding == "zstd":
        return _unzstd(raw, max_output), encoding
    if max_output is not None and len(raw) > max_output:
        raise CodecError("plain", f"more than {max_output} bytes", over_limit=True)
    return raw, encoding


def encode(data: bytes, encoding: Encoding, *, level: int | None = None) -> bytes:
    """Encode ``data`` with ``encoding``.

    Args:
        data: the decoded bytes.
        encoding: ``plain`` (returned unchanged), ``gzip`` (via ``isal.igzip``, readable by any
            gzip reader, e.g. Loom's pako) or ``zstd``.
        level: compression level; defaults to :data:`DEFAULT_GZIP_LEVEL` or
            :data:`DEFAULT_ZSTD_LEVEL`. gzip levels are isal's 0-3 (higher values are capped at 3).

    Returns:
        The encoded bytes.

    Raises:
        ValueError: unknown encoding.
    """
    if encoding == "plain":
        return data
    if encoding == "gzip":
        wanted = DEFAULT_GZIP_LEVEL if level is None else level
        isal_level = max(0, min(wanted, isal_zlib.ISAL_BEST_COMPRESSION))
        return igzip.compress(data, compresslevel=isal_level, mtime=0)
    if encoding == "zstd":
        return zstandard.ZstdCompressor(level=DEFAULT_ZSTD_LEVEL if level is None else level).compress(data)
    raise ValueError(f"unknown encoding {encoding!r}")


def _gunzip(raw: bytes, max_output: int | None) -> bytes:
    try:
        with igzip.GzipFile(fileobj=io.BytesIO(raw), mode="rb") as fh:
            out = fh.read() if max_output is None else fh.read(max_output + 1)
    except _GZIP_ERRORS as exc:
        raise CodecError("gzip", str(exc) or type(exc).__name__) from exc
    if max_output is not None and len(out) > max_output:
        raise CodecError("gzip", f"decodes to more than {max_output} bytes", over_limit=True)
    return out


def _unzstd(raw: bytes, max_output: int | None) -> bytes:
    # zstandard's stream_reader returns short output on truncated input without complaint, so each
    # frame is fed through a decompressobj and must reach its end (eof) to be accepted.
    decompressor = zstandard.ZstdDecompressor()
    out = bytearray()
    rest = raw
    try:
        while rest:
            dobj = decompressor.decompressobj()
            pos = 0
            while not dobj.eof and pos < len(rest):
                out += dobj.decompress(rest[pos : pos + _ZSTD_CHUNK])
                pos += _ZSTD_CHUNK
                if max_output is not None and len(out) > max_output:
                    raise CodecError("zstd", f"decodes to more than {max_output} bytes", over_limit=True)
            if not dobj.eof:
                raise CodecError("zstd", "truncated frame")
            rest = dobj.unused_data + rest[pos:]
    except zstandard.ZstdError as exc:
        raise CodecError("zstd", str(exc)) from exc
    return bytes(out)
