"""A Bloom filter over record ids: "is this id anywhere in the store?" without opening a document.

Built with ``rbloom`` (a Rust Bloom filter for Python) and saved next to the index as
``<store>/.aml/index.bloom``. No false negatives: an id that was added is always reported present.
False positives happen at about the configured rate (default 0.1 %); the query engine confirms a
"maybe" against the index.

File format: the 8 bytes ``AMLBLM01``, a 4-byte big-endian header length, a JSON header
``{"hash": "blake2b-128", "items", "false_positive_rate", "created_at"}``, then rbloom's own
``save_bytes()`` payload. rbloom's persistence needs a hash function that is stable across processes
(Python's ``hash`` of a str is salted per process): ids are hashed with BLAKE2b to 128 bits, as the
signed integer rbloom expects.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from rbloom import Bloom

from aml.store.atomic import atomic_write
from aml.store.timestamps import now_utc, utc_iso_z

MAGIC: Final = b"AMLBLM01"
HASH_NAME: Final = "blake2b-128"
DEFAULT_FALSE_POSITIVE_RATE: Final = 0.001
"""Target false positive rate of a new filter (ratio)."""


class BloomFormatError(ValueError):
    """A Bloom filter file that is not ours, is truncated, or uses an unknown hash."""


def id_hash(value: Any) -> int:
    """Process-independent 128-bit hash of an id (its ``str``), as a signed int for rbloom."""
    digest = hashlib.blake2b(str(value).encode("utf-8"), digest_size=16).digest()
    return int.from_bytes(digest, "big", signed=True)


class IdBloom:
    """A Bloom filter of record ids.

    Args:
        expected_items: how many ids will be added (sizes the filter; at least 1).
        false_positive_rate: target false positive rate, ratio 0-1 (exclusive).

    Attributes:
        items: ids added (duplicates counted once per add).
        false_positive_rate: the target rate.
    """

    def __init__(self, expected_items: int, false_positive_rate: float = DEFAULT_FALSE_POSITIVE_RATE) -> None:
        if not 0.0 < false_positive_rate < 1.0:
            raise ValueError("false_positive_rate must be between 0 and 1")
        self.false_positive_rate = false_positive_rate
        self.items = 0
        self._bloom = Bloom(max(1, expected_items), false_positive_rate, hash_func=id_hash)

    @classmethod
    def build(cls, ids: Iterable[str], *, false_positive_rate: float = DEFAULT_FALSE_POSITIVE_RATE) -> IdBloom:
        """A filter holding every id of ``ids``."""
        values = list(ids)
        bloom = cls(len(values), false_positive_rate)
        bloom.update(values)
        return bloom

    def add(self, record_id: str) -> None:
        """Add one id."""
        self._bloom.add(record_id)
        self.items += 1

    def update(self, ids: Iterable[str]) -> None:
        """Add many ids."""
        values = list(ids)
        self._bloom.update(values)
        self.items += len(values)

    def __contains__(self, record_id: object) -> bool:
        """``False``: the id was certainly never added. ``True``: it probably was."""
        return record_id in self._bloom

    @property
    def size_in_bits(self) -> int:
        """Size of the bit array, bits."""
        return int(self._bloom.size_in_bits)

    def to_bytes(self) -> bytes:
        """The file format described in the module docstring."""
        header = json.dumps({"hash": HASH_NAME, "items": self.items, "false_positive_rate": self.false_positive_rate,
                             "created_at": utc_iso_z(now_utc())}).encode("utf-8")
        return MAGIC + struct.pack(">I", len(header)) + header + self._bloom.save_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> IdBloom:
        """Load a filter written by :meth:`to_bytes`.

        Raises:
            BloomFormatError: not our format, truncated, or another hash function.
        """
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
            raise BloomFormatError("not an aml Bloom filter file")
        (n,) = struct.unpack(">I", data[len(MAGIC) : len(MAGIC) + 4])
        start = len(MAGIC) + 4
        try:
            header = json.loads(data[start : start + n])
        except ValueError as exc:
            raise BloomFormatError(f"bad header: {exc}") from exc
        if not isinstance(header, dict) or header.get("hash") != HASH_NAME:
            raise BloomFormatError(f"unknown hash {header.get('hash') if isinstance(header, dict) else header!r}")
        obj = cls.__new__(cls)
        obj.false_positive_rate = float(header.get("false_positive_rate", DEFAULT_FALSE_POSITIVE_RATE))
        obj.items = int(header.get("items", 0))
        try:
            obj._bloom = Bloom.load_bytes(data[start + n :], id_hash)
        except (ValueError, OSError) as exc:
            raise BloomFormatError(f"bad payload: {exc}") from exc
        return obj

    def save(self, path: str | os.PathLike[str]) -> bytes:
        """Write the filter to ``path`` atomically; returns the bytes written."""
        data = self.to_bytes()
        atomic_write(path, data)
        return data

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> IdBloom:
        """Read a filter saved by :meth:`save`.

        Raises:
            OSError: the file cannot be read.
            BloomFormatError: see :meth:`from_bytes`.
        """
        return cls.from_bytes(Path(path).read_bytes())
