"""Quarantine: keep a copy of a document that failed to parse, away from the store.

The original is never moved, edited or deleted (the origin tools lost data by "repairing" such
files). The copy is written atomically next to a small JSON note saying why.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path, PurePosixPath

from aml.store.atomic import atomic_open, atomic_write
from aml.store.documents import DocumentError
from aml.store.timestamps import now_utc, utc_iso_z

NOTE_SUFFIX = ".error.json"
"""Suffix of the note written beside each quarantined copy."""


def quarantine(error: DocumentError, quarantine_dir: str | os.PathLike[str]) -> Path:
    """Copy the file named by ``error`` into ``quarantine_dir``; the original is left untouched.

    The copy goes to ``<quarantine_dir>/<relpath>.<sha256 of the content, 12 hex>`` (or the file
    name when ``error.relpath`` is unknown), so quarantining the same content twice writes the same
    file (idempotent) and different bad versions never overwrite each other. The copy keeps the
    original's mtime. Next to it, ``<copy>.error.json`` holds ``error.as_dict()`` plus
    ``quarantined_at`` (ISO 8601 UTC ``Z``) and ``sha256``.

    Args:
        error: the failure, as reported by a scan.
        quarantine_dir: destination folder (created if missing); must be outside the store being
            scanned or the copies will be scanned too.

    Returns:
        Path of the copy.

    Raises:
        ValueError: the entry is not a regular file (symlinks and special files are not copied).
        OSError: reading the original or writing the copy failed (nothing partial is left).
    """
    source = error.path
    st = os.lstat(source)
    if not os.path.isfile(source) or os.path.islink(source):
        raise ValueError(f"not a regular file, not quarantined: {source}")
    digest = hashlib.sha256()
    with open(source, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    sha = digest.hexdigest()
    rel = PurePosixPath(error.relpath) if error.relpath else PurePosixPath(source.name)
    if rel.is_absolute() or ".." in rel.parts:
        rel = PurePosixPath(source.name)
    dest = Path(quarantine_dir).joinpath(*rel.parts[:-1], f"{rel.name}.{sha[:12]}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        with open(source, "rb") as src, atomic_open(dest, mode=0o600, mtime_ns=st.st_mtime_ns) as out:
            shutil.copyfileobj(src, out, 1 << 20)
    note = {**error.as_dict(), "sha256": sha, "quarantined_at": utc_iso_z(now_utc())}
    atomic_write(dest.with_name(dest.name + NOTE_SUFFIX), json.dumps(note, indent=2).encode("utf-8") + b"\n")
    return dest
