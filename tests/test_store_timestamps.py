"""timestamps: every real form parses to the same aware UTC instant; styles round-trip."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aml.store.timestamps import (
    _ISO_MEMO,
    _ISO_MEMO_SIZE,
    PY_AWARE_STYLE,
    PY_NAIVE_STYLE,
    TS_STYLE,
    TimestampStyle,
    detect_style,
    format_like,
    iso_timestamp_form,
    parse_iso_timestamp,
    parse_timestamp,
    utc_iso_z,
)

INSTANT = datetime(2026, 3, 24, 3, 18, 32, 25000, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        "2026-03-24T03:18:32.025Z",  # TypeScript
        "2026-03-24T03:18:32.025000+00:00",  # Loom migration
        "2026-03-24T03:18:32.025000",  # Python naive (UTC)
        "2026-03-24 03:18:32.025",  # space separator
        "2026-03-24T05:18:32.025+02:00",  # other offsets are converted
        1774322312.025,  # epoch seconds (float)
        1774322312025,  # epoch milliseconds (int)
        "1774322312025",  # numeric string, milliseconds
        "1774322312.025",  # numeric string, seconds
    ],
)
def test_all_forms_parse_to_the_same_utc_instant(value: object) -> None:
    parsed = parse_timestamp(value)
    assert parsed == INSTANT
    assert parsed is not None and parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)


def test_epoch_seconds_int_and_naive_datetime() -> None:
    assert parse_timestamp(1774322312) == INSTANT.replace(microsecond=0)
    assert parse_timestamp(datetime(2026, 3, 24, 3, 18, 32, 25000)) == INSTANT


@pytest.mark.parametrize("value", [None, "", "not a date", True, [], {}, float("nan"), "2026-13-01T00:00:00"])
def test_garbage_is_none(value: object) -> None:
    assert parse_timestamp(value) is None


def test_detect_real_styles() -> None:
    assert detect_style("2026-03-24T03:18:32.025Z") == TS_STYLE
    assert detect_style("2025-12-06T22:58:25.942000+00:00") == PY_AWARE_STYLE
    assert detect_style("2026-11-22T10:48:19.384477") == PY_NAIVE_STYLE
    assert detect_style("2026-11-07T10:52:50") == TimestampStyle("iso", "naive", 0)
    assert detect_style(1795344336419) == TimestampStyle("epoch_ms", digits=0, as_type="int")
    assert detect_style("2026-11-22") is None


def test_editor_keeps_writer_style() -> None:
    later = datetime(2026, 11, 22, 10, 48, 19, 384477, tzinfo=UTC)
    assert format_like(later, TS_STYLE) == "2026-11-22T10:48:19.384Z"  # ms truncated like JS
    assert format_like(later, PY_AWARE_STYLE) == "2026-11-22T10:48:19.384477+00:00"
    assert format_like(later, PY_NAIVE_STYLE) == "2026-11-22T10:48:19.384477"
    assert format_like(later, detect_style(1795344336419)) == 1795344499384  # type: ignore[arg-type]
    assert utc_iso_z(later) == "2026-11-22T10:48:19.384477Z"
    assert utc_iso_z(datetime(2026, 1, 1)) == "2026-01-01T00:00:00.000000Z"


_instants = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2999, 12, 31), timezones=st.just(UTC)
)


@settings(max_examples=150, deadline=None)
@given(
    dt=_instants,
    offset=st.sampled_from(["Z", "naive", "+00:00", "+05:30", "-08:00"]),
    digits=st.sampled_from([0, 3, 6]),
    sep=st.sampled_from(["T", " "]),
)
def test_iso_round_trip(dt: datetime, offset: str, digits: int, sep: str) -> None:
    text = format_like(dt, TimestampStyle("iso", offset, digits, sep))
    assert isinstance(text, str)
    style = detect_style(text)
    assert style == TimestampStyle("iso", offset, digits, sep)
    parsed = parse_timestamp(text)
    assert parsed is not None
    assert format_like(parsed, style) == text
    # the parsed instant is dt truncated to the written precision
    assert timedelta(0) <= dt - parsed < timedelta(microseconds=10 ** (6 - digits))


_epoch_instants = st.datetimes(  # epoch ms below 1e11 (before 1973-03-03) read as seconds
    min_value=datetime(1974, 1, 1), max_value=datetime(2999, 12, 31), timezones=st.just(UTC)
)


@settings(max_examples=100, deadline=None)
@given(
    dt=_epoch_instants,
    kind=st.sampled_from(["epoch_s", "epoch_ms"]),
    as_type=st.sampled_from(["int", "str"]),
)
def test_epoch_round_trip(dt: datetime, kind: str, as_type: str) -> None:
    value = format_like(dt, TimestampStyle(kind, digits=0, as_type=as_type))  # type: ignore[arg-type]
    style = detect_style(value)
    assert style is not None and style.kind == kind
    parsed = parse_timestamp(value)
    assert parsed is not None
    assert format_like(parsed, style) == value


@settings(max_examples=100, deadline=None)
@given(dt=_epoch_instants, digits=st.integers(min_value=1, max_value=3))
def test_epoch_float_and_decimal_string_round_trip(dt: datetime, digits: int) -> None:
    for as_type in ("float", "str"):
        value = format_like(dt, TimestampStyle("epoch_s", digits=digits, as_type=as_type))
        style = detect_style(value)
        parsed = parse_timestamp(value)
        assert style is not None and parsed is not None
        assert format_like(parsed, style) == value


def test_fixed_offset_is_converted() -> None:
    text = format_like(INSTANT, TimestampStyle("iso", "+02:00", 3))
    assert text == "2026-03-24T05:18:32.025+02:00"
    assert parse_timestamp(text) == INSTANT.astimezone(timezone(timedelta(hours=2)))


# ---------------------------------------------------------------- ISO text: the rules, memo included

_NUMERIC = re.compile(r"^[+-]?\d+(?:\.\d+)?$")


def _reference_iso(value: str) -> datetime | None:
    """parse_iso_timestamp's rules for a string, spelled out: numeric text (epoch forms) is refused,
    anything else is what datetime.fromisoformat reads of the stripped text, as aware UTC."""
    text = value.strip()
    if not text or _NUMERIC.match(text):
        return None
    try:
        parsed = datetime.fromisoformat(text)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


_ISO_LIKE = st.one_of(
    st.text(alphabet="0123456789-:.TZ+ W\u00e9", max_size=34),
    st.sampled_from(["2026-03-24T03:18:32.025Z", " 2026-03-24T03:18:32.025Z\n", "2025-12-06T22:58:25.942000+00:00",
                     "2026-11-22T10:48:19.384477", "2026-11-07 10:52:50", "20260324", "2026-03-24", "1774322312",
                     "1774322312.025", "-12", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                     "2026-W12-3", "2026-03-24T03:18", "2026-03-24T03:18:32.0251234Z", ""]),
    st.datetimes(timezones=st.sampled_from([None, UTC, timezone(timedelta(hours=-5))])).map(datetime.isoformat),
)


@settings(max_examples=500, deadline=None)
@given(value=_ISO_LIKE)
def test_iso_text_follows_the_rules_twice(value: str) -> None:
    """parse_iso_timestamp and iso_timestamp_form of a string agree with the spelled-out rules, on the
    first (parsed) and the second (memoised) call; parse_timestamp reads the same instant."""
    expected = _reference_iso(value)
    if _NUMERIC.match(value.strip()):
        form: str | None = "string (epoch number)"
    else:
        form = None if expected is not None else "string (not a timestamp)"
    for _ in range(2):
        assert parse_iso_timestamp(value) == expected
        assert iso_timestamp_form(value) == form
    if form != "string (epoch number)":
        assert parse_timestamp(value) == expected
    if expected is not None:
        assert expected.tzinfo is UTC


def test_iso_memo_stays_bounded_and_right() -> None:
    values = [f"2026-03-24T03:{m:02d}:{s:02d}Z" for m in range(60) for s in range(60)]
    for value in values:
        assert parse_iso_timestamp(value) == datetime.fromisoformat(value)
    assert len(_ISO_MEMO) <= _ISO_MEMO_SIZE
    assert all(parse_iso_timestamp(v) == datetime.fromisoformat(v) for v in values[::97])
    assert iso_timestamp_form(12) == "integer" and parse_iso_timestamp(12) is None


def reference_utc_iso_z(dt: datetime) -> str:
    """utc_iso_z as first written: ISO text of the UTC instant, microseconds, ``Z``."""
    utc = dt.replace(tzinfo=UTC) if dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None else dt.astimezone(UTC)
    return (f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
            f".{utc.microsecond:06d}Z")


class LaterDatetime(datetime):
    """A datetime subclass (the fast path of utc_iso_z is for datetime itself)."""


@settings(max_examples=300, deadline=None)
@given(dt=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
       zone=st.sampled_from([None, UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-11))]),
       fold=st.sampled_from([0, 1]))
def test_utc_iso_z_matches_the_plain_formatter(dt: datetime, zone: timezone | None, fold: int) -> None:
    value = dt.replace(tzinfo=zone, fold=fold)
    assert utc_iso_z(value) == reference_utc_iso_z(value) == str(format_like(value, TimestampStyle("iso", "Z", 6)))
    sub = LaterDatetime.combine(value.date(), value.timetz())
    assert utc_iso_z(sub) == reference_utc_iso_z(value)


def test_utc_iso_z_edges() -> None:
    assert utc_iso_z(datetime(5, 1, 2, 3, 4, 5, tzinfo=UTC)) == "0005-01-02T03:04:05.000000Z"
    assert utc_iso_z(datetime(9999, 12, 31, 23, 59, 59, 999999)) == "9999-12-31T23:59:59.999999Z"
    assert utc_iso_z(datetime(2026, 1, 1, 5, 30, tzinfo=timezone(timedelta(hours=5, minutes=30)))) == (
        "2026-01-01T00:00:00.000000Z")
    assert utc_iso_z(datetime(2026, 1, 1, tzinfo=timezone(timedelta(0)))) == "2026-01-01T00:00:00.000000Z"
