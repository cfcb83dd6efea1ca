"""Small helpers shared by the backup modules: time formatting, canonical JSON, hashing."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from datetime import UTC, datetime
from typing import Any

from aml.store.atomic import TMP_PREFIX

__all__ = [
    "TMP_PREFIX",
    "canonical_json",
    "hostname",
    "iso_z",
    "parse_time",
    "sha256_hex",
]


def iso_z(when: datetime) -> str:
    """Format an instant as ISO 8601 UTC with a ``Z`` suffix and microseconds when non-zero.

    Args:
        when: aware datetime (naive values are taken as UTC).

    Returns:
        e.g. ``"2026-11-22T10:48:19.384477Z"`` or ``"2026-11-22T10:48:19Z"``.
    """
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    when = when.astimezone(UTC)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if when.microsecond:
        text += f".{when.microsecond:06d}"
    return text + "Z"


def parse_time(value: str | int | float | datetime) -> datetime:
    """Parse a timestamp in any form the origin systems write and return an aware UTC datetime.

    Accepts ``...Z``, ``+00:00`` offsets, naive ISO (taken as UTC), and epoch seconds or milliseconds
    (numbers above 10**11 are milliseconds).

    Raises:
        ValueError: if the value is not a timestamp.
    """
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, int | float):
        seconds = value / 1000.0 if abs(value) > 1e11 else float(value)
        dt = datetime.fromtimestamp(seconds, UTC)
    else:
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def canonical_json(obj: Any) -> bytes:
    """Serialise ``obj`` to canonical JSON bytes (sorted keys, no spaces, UTF-8): the form hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    """Return the hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def hostname() -> str:
    """Return this host's name (used in manifests and lock files)."""
    try:
        return socket.gethostname()
    except OSError:  # pragma: no cover
        return os.uname().nodename
