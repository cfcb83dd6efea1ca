"""Small helpers shared by the backup modules: canonical JSON, hashing, host name.

Times are formatted and parsed by :mod:`aml.store.timestamps` (``utc_iso_z``, ``require_timestamp``).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from typing import Any

from aml.store.atomic import TMP_PREFIX

__all__ = [
    "TMP_PREFIX",
    "canonical_json",
    "hostname",
    "sha256_hex",
]


def canonical_json(obj: Any) -> bytes:
    """Serialise ``obj`` to canonical JSON bytes (sorted keys, no spaces, UTF-8): the form hashed.

    A string holding a file name's non-UTF-8 bytes (surrogateescape code points, see
    :mod:`aml.backup.manifest`) is encoded with ``surrogatepass``: never an error, and valid text gives
    exactly the bytes it always gave (existing checksums still match).
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


def sha256_hex(data: bytes) -> str:
    """Return the hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def hostname() -> str:
    """Return this host's name (used in manifests and lock files)."""
    try:
        return socket.gethostname()
    except OSError:  # pragma: no cover
        return os.uname().nodename
