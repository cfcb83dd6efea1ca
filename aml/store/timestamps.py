"""Timestamps as the origin systems write them, compared as aware UTC.

Forms met in real data (data/DATA.md):

* TypeScript (Loom runtime): ``2026-03-24T03:18:32.025Z`` (milliseconds, ``Z``);
* Loom migration >= 1.1: ``2025-12-06T22:58:25.942000+00:00`` (microseconds, ``+00:00``);
* Python tools, Aitor, TinyTroupe: naive ``2026-11-22T10:48:19.384477`` (taken as UTC; Python's
  ``isoformat`` drops the fraction when it is zero: ``2026-11-07T10:52:50``);
* epoch seconds or milliseconds, as numbers or numeric strings.

:func:`parse_timestamp` reads all of them. Fields whose writer only ever writes ISO text (every
timestamp of a Loom item) are read with :func:`parse_iso_timestamp`, which refuses numbers, so an
integer ``lastUsed`` is reported as a wrong type instead of being read as a 1970 date.
:func:`detect_style` and :func:`format_like` let an editor write a new instant in the style the
document's writer used; :func:`utc_iso_z` is what aml writes in its own files.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Final, Literal

TimestampValue = str | int | float
"""A timestamp as stored in a document: an ISO 8601 string, or epoch seconds/milliseconds."""

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

EPOCH_MS_THRESHOLD: Final = 100_000_000_000
"""Epoch numbers at or above this (1e11) are milliseconds, below are seconds.

1e11 seconds is the year 5138; 1e11 milliseconds is 1973-03-03, so real values never collide."""

_ISO_RE: Final = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})(?P<sep>[T ])(?P<time>\d{2}:\d{2}:\d{2})"
    r"(?:\.(?P<frac>\d+))?(?P<offset>Z|[+-]\d{2}:\d{2})?$"
)
_NUMERIC_RE: Final = re.compile(r"^[+-]?\d+(?:\.(?P<frac>\d+))?$")


@dataclass(frozen=True, slots=True)
class TimestampStyle:
    """How a writer formats timestamps.

    Attributes:
        kind: ``"iso"`` (ISO 8601 text), ``"epoch_s"`` or ``"epoch_ms"`` (numbers since 1970 UTC).
        offset: for ``iso``: ``"Z"``, ``"naive"`` (no offset; the instant is written in UTC), or a
            fixed ``"+HH:MM"``/``"-HH:MM"`` (the instant is converted to that offset).
        digits: fractional-second digits for ``iso`` (0 = none, 3 = ms, 6 = µs); decimal places
            for epoch values written as floats or numeric strings.
        sep: ``"T"`` or ``" "`` between date and time (``iso`` only).
        as_type: ``"str"``, ``"int"`` or ``"float"``: the JSON type of the value.
    """

    kind: Literal["iso", "epoch_s", "epoch_ms"] = "iso"
    offset: str = "Z"
    digits: int = 3
    sep: str = "T"
    as_type: Literal["str", "int", "float"] = "str"


TS_STYLE: Final = TimestampStyle("iso", "Z", 3)
"""Loom's TypeScript runtime: ``2026-03-24T03:18:32.025Z``."""
PY_AWARE_STYLE: Final = TimestampStyle("iso", "+00:00", 6)
"""Python ``datetime.isoformat()`` of an aware UTC value: ``2025-12-06T22:58:25.942000+00:00``."""
PY_NAIVE_STYLE: Final = TimestampStyle("iso", "naive", 6)
"""Python ``datetime.isoformat()`` of a naive value: ``2026-11-22T10:48:19.384477``."""


def to_utc(dt: datetime) -> datetime:
    """Return ``dt`` as an aware UTC datetime; a naive value is taken to be UTC already."""
    if dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def parse_timestamp(value: object) -> datetime | None:
    """Parse a stored timestamp into an aware UTC datetime.

    Args:
        value: an ISO 8601 string (``Z``, numeric offset, or naive = UTC; ``T`` or space separator),
            epoch seconds or milliseconds as ``int``/``float`` or a numeric string (see
            :data:`EPOCH_MS_THRESHOLD`), or a ``datetime`` (naive = UTC).

    Returns:
        The instant as aware UTC, or ``None`` when ``value`` is missing, empty, of another type
        (``bool`` included), unparseable or out of ``datetime``'s range. Never raises.
    """
    if type(value) is str:  # the usual case first: the checks below cost more than the parse
        return _parse_text(value)
    if isinstance(value, datetime):
        return to_utc(value)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return _from_epoch(value)
    if not isinstance(value, str):
        return None
    return _parse_text(value)


def _parse_text(value: str) -> datetime | None:
    """:func:`parse_timestamp` of a string."""
    text = value.strip()
    if not text:
        return None
    if text[4:5] != "-" and _NUMERIC_RE.match(text):  # a "-" at index 4 is never numeric
        number: int | float = float(text) if "." in text else int(text)
        return _from_epoch(number)
    return _from_iso(text)


def _from_iso(text: str) -> datetime | None:
    """``text`` (stripped, not numeric) read by ``datetime.fromisoformat`` as aware UTC, or ``None``. A lowercase
    ``z`` zone is UTC too (RFC 3339 section 5.6 allows ``t`` and ``z`` in lower case; Python 3.11 reads ``t``
    only)."""
    try:
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            if text[-1:] != "z":
                raise
            dt = datetime.fromisoformat(text[:-1] + "Z")
        tz = dt.tzinfo
        if tz is UTC:  # "Z" and "+00:00": to_utc would return dt itself
            return dt
        return to_utc(dt)
    except (ValueError, OverflowError):
        return None


def require_timestamp(value: object) -> datetime:
    """:func:`parse_timestamp` for values that must be a timestamp (aml's own manifests, locks, CLI input).

    Raises:
        ValueError: ``value`` is not a timestamp :func:`parse_timestamp` reads.
    """
    parsed = parse_timestamp(value)
    if parsed is None:
        raise ValueError(f"not a timestamp: {value!r}")
    return parsed


def parse_iso_timestamp(value: object) -> datetime | None:
    """Parse a timestamp that its writer always writes as ISO 8601 text.

    Unlike :func:`parse_timestamp`, numbers and numeric strings (epoch forms) are not read: where
    the writer never writes them, ``12345`` is a wrong value, not 1970-01-01T03:25:45Z.

    Args:
        value: the stored value.

    Returns:
        The instant as aware UTC, or ``None`` when ``value`` is not an ISO 8601 string aml can read
        (see :func:`iso_timestamp_form` for why). Never raises.
    """
    if type(value) is str:
        return _iso_text(value)[1]
    if not isinstance(value, str):
        return None
    return _iso_text_uncached(value)[1]


def iso_timestamp_form(value: object) -> str | None:
    """Why ``value`` is not an ISO 8601 timestamp string, as a JSON type name, or ``None`` when it is one.

    Returns:
        ``None`` for a string :func:`parse_iso_timestamp` reads; else ``"string (epoch number)"``,
        ``"string (not a timestamp)"`` or the JSON type of ``value`` (``"integer"``, ``"number"``,
        ``"null"``, ``"boolean"``, ``"array"``, ``"object"``).
    """
    if type(value) is str:
        return _iso_text(value)[0]
    if isinstance(value, str):
        return _iso_text_uncached(value)[0]
    return json_type(value)


_IsoText = tuple[str | None, datetime | None]

_ISO_MEMO: dict[str, _IsoText] = {}
"""Recent :func:`_iso_text` results. Extracting a Loom item reads each timestamp twice (its form
for :func:`~aml.store.accessors.wrong_types`, then its value), and ``evolution.created`` usually
repeats ``timestamp``: the memo parses each string once. Bounded by :data:`_ISO_MEMO_SIZE`."""
_ISO_MEMO_SIZE: Final = 256
_EPOCH_TEXT: Final[_IsoText] = ("string (epoch number)", None)
_NOT_TIMESTAMP: Final[_IsoText] = ("string (not a timestamp)", None)


def _iso_text(value: str) -> _IsoText:
    """``(iso_timestamp_form(value), parse_iso_timestamp(value))`` of a ``str``, memoised."""
    memo = _ISO_MEMO
    found = memo.get(value)
    if found is None:
        found = _iso_text_uncached(value)
        memo[value] = found
        if len(memo) > _ISO_MEMO_SIZE:
            memo.clear()
    return found


def _iso_text_uncached(value: str) -> _IsoText:
    text = value.strip()
    if text[4:5] != "-" and _NUMERIC_RE.match(text):  # a "-" at index 4 is never numeric
        return _EPOCH_TEXT
    parsed = _from_iso(text) if text else None
    return _NOT_TIMESTAMP if parsed is None else (None, parsed)


def json_type(value: object) -> str:
    """The JSON type name of a decoded JSON value: ``null``, ``boolean``, ``integer``, ``number``,
    ``string``, ``array``, ``object`` (anything else: its Python type name)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def detect_style(value: object) -> TimestampStyle | None:
    """Return the style in which ``value`` was written, so that edits can keep it.

    Args:
        value: a stored timestamp (see :func:`parse_timestamp`).

    Returns:
        The style, or ``None`` when ``value`` is not a timestamp in a form aml can reproduce
        (e.g. date-only or week dates, which :func:`parse_timestamp` may still read).
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        kind: Literal["epoch_s", "epoch_ms"] = "epoch_ms" if abs(value) >= EPOCH_MS_THRESHOLD else "epoch_s"
        if isinstance(value, int):
            return TimestampStyle(kind, digits=0, as_type="int")
        frac = repr(value).partition(".")[2]
        return TimestampStyle(kind, digits=len(frac) if frac.isdigit() else 6, as_type="float")
    if not isinstance(value, str):
        return None
    numeric = _NUMERIC_RE.match(value)
    if numeric:
        number = float(value)
        kind = "epoch_ms" if abs(number) >= EPOCH_MS_THRESHOLD else "epoch_s"
        return TimestampStyle(kind, digits=len(numeric.group("frac") or ""), as_type="str")
    m = _ISO_RE.match(value)
    if m is None or parse_timestamp(value) is None:
        return None
    return TimestampStyle(
        "iso",
        offset=m.group("offset") or "naive",
        digits=len(m.group("frac") or ""),
        sep=m.group("sep"),
    )


def format_like(dt: datetime, style: TimestampStyle) -> TimestampValue:
    """Format ``dt`` in ``style``.

    ``format_like(parse_timestamp(x), detect_style(x)) == x`` for every ``x`` that
    :func:`detect_style` recognises (fractions longer than 6 digits come back zero-padded).

    Args:
        dt: the instant (naive = UTC).
        style: from :func:`detect_style` or one of :data:`TS_STYLE`, :data:`PY_AWARE_STYLE`,
            :data:`PY_NAIVE_STYLE`.

    Returns:
        A ``str``, ``int`` or ``float`` according to ``style.as_type``. Precision beyond
        ``style.digits`` is truncated for ISO text and integer epochs (as JavaScript's
        ``toISOString`` drops microseconds) and rounded for fractional epochs.

    Raises:
        ValueError: a malformed ``style.offset``.
    """
    utc = to_utc(dt)
    if style.kind == "iso":
        return _format_iso(utc, style)
    micros = (utc - EPOCH) // timedelta(microseconds=1)
    per_unit = 1_000 if style.kind == "epoch_ms" else 1_000_000
    if style.as_type == "int" or (style.as_type == "str" and style.digits == 0):
        whole = micros // per_unit
        return whole if style.as_type == "int" else str(whole)
    digits = min(style.digits, 6 if per_unit == 1_000_000 else 3)
    step = per_unit // 10**digits
    scaled = (micros + step // 2) // step  # units of 10**-digits, rounded: float epochs are inexact
    sign = "-" if scaled < 0 else ""
    whole, frac = divmod(abs(scaled), 10**digits)
    text = f"{sign}{whole}.{frac:0{digits}d}{'0' * (style.digits - digits)}"
    return float(text) if style.as_type == "float" else text


def utc_iso_z(dt: datetime) -> str:
    """Format ``dt`` the way aml writes its own files: ISO 8601 UTC, microseconds, ``Z``.

    Args:
        dt: the instant (naive = UTC).

    Returns:
        e.g. ``"2026-11-22T10:48:19.384477Z"``.
    """
    if type(dt) is datetime:  # the usual case: ``isoformat`` writes the same digits, in C
        tz = dt.tzinfo
        if tz is UTC:
            return dt.isoformat(timespec="microseconds")[:-6] + "Z"  # drop "+00:00"
        if tz is None:
            return dt.isoformat(timespec="microseconds") + "Z"
    return str(format_like(dt, _UTC_Z_STYLE))


_UTC_Z_STYLE: Final = TimestampStyle("iso", "Z", 6)
"""The style of :func:`utc_iso_z`."""


def now_utc() -> datetime:
    """The current time as aware UTC."""
    return datetime.now(UTC)


def _from_epoch(number: float) -> datetime | None:
    if isinstance(number, float) and not math.isfinite(number):
        return None
    try:
        if abs(number) >= EPOCH_MS_THRESHOLD:
            if isinstance(number, int):
                return EPOCH + timedelta(milliseconds=number)
            return EPOCH + timedelta(microseconds=round(number * 1000))
        if isinstance(number, int):
            return EPOCH + timedelta(seconds=number)
        return EPOCH + timedelta(microseconds=round(number * 1_000_000))
    except OverflowError:
        return None


def _format_iso(utc: datetime, style: TimestampStyle) -> str:
    if style.offset in ("Z", "naive"):
        local, suffix = utc, ("Z" if style.offset == "Z" else "")
    else:
        local, suffix = utc.astimezone(_parse_offset(style.offset)), style.offset
    text = (
        f"{local.year:04d}-{local.month:02d}-{local.day:02d}{style.sep}"
        f"{local.hour:02d}:{local.minute:02d}:{local.second:02d}"
    )
    if style.digits > 0:
        text += "." + f"{local.microsecond:06d}"[: style.digits].ljust(style.digits, "0")
    return text + suffix


def _parse_offset(offset: str) -> timezone:
    m = re.fullmatch(r"([+-])(\d{2}):(\d{2})", offset)
    if m is None:
        raise ValueError(f"bad UTC offset {offset!r}")
    delta = timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
    return timezone(-delta if m.group(1) == "-" else delta)
