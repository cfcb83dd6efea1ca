"""``backup_metadata.json``: the seeds' summary of every backup, kept up to date for older tools.

Format (the Loom Python scripts' ``BackupMetadata``, same keys, so their loader still reads it)::

    {"version": "1.0.0",
     "backups": [{"backup_id", "backup_type": "full" | "incremental", "timestamp", "source_path",
                  "backup_path", "agents", "total_size_bytes", "file_count", "checksums",
                  "parent_backup_id", "compressed", "encrypted"}]}

For aml snapshots: ``timestamp`` is ISO 8601 UTC with ``Z``; ``backup_path`` is the manifest header;
``file_count``/``total_size_bytes`` describe the complete snapshot (every aml snapshot is complete,
incremental only in what it stored); ``checksums`` maps each path to its sha256 only when the snapshot
has at most :data:`CHECKSUMS_INLINE_MAX` files, and is ``{}`` above that (the manifest has them all:
100,000 inline checksums would make this file ~10 MB per snapshot). Legacy entries written by the seeds
are preserved unchanged. The file is rewritten atomically under an ``flock``. It is UTF-8 text for older
tools: a path, agent or store name whose bytes are not valid UTF-8 is written escaped (``\\xNN``,
:func:`aml.store.names.text_name`); the manifest keeps the exact name.

A file that does not parse is never deleted: it is kept as ``backup_metadata.json.corrupt-<UTC time>``
and the entries that can still be decoded from it (see :func:`salvage_entries`) are carried over, so
legacy backups keep their checksums and parents.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aml.store.atomic import atomic_write
from aml.store.names import text_name, text_names
from aml.store.timestamps import utc_iso_z

from . import crypto, remote
from ._common import TMP_PREFIX
from .errors import BackupError
from .manifest import Manifest, read_header

CHECKSUMS_INLINE_MAX = 200
SUMMARY_FILE = "backup_metadata.json"

__all__ = [
    "CHECKSUMS_INLINE_MAX",
    "read_summary",
    "salvage_entries",
    "salvage_summary",
    "summary_entry",
    "update_summary",
]

_ENTRY_START = re.compile(r'\{\s*"backup_id"\s*:')


def summary_entry(root: Path, m: Manifest) -> dict[str, Any]:
    """Return the ``backup_metadata.json`` entry for an aml snapshot (tables loaded or not)."""
    checksums: dict[str, str] = {}
    encrypted = crypto.is_encrypted(root)
    if m.files is not None and len(m.files) <= CHECKSUMS_INLINE_MAX and not encrypted:
        checksums = {text_name(p): sha for p, sha in zip(m.files.path, m.files.sha256, strict=True)}
    if encrypted:  # this file is not encrypted: no path, agent or checksum of the store in it
        return {"backup_id": m.backup_id, "backup_type": m.backup_type, "timestamp": utc_iso_z(m.time),
                "source_path": "", "backup_path": text_name(f"{remote.location(root)}/snapshots/{m.backup_id}.json"),
                "agents": [], "total_size_bytes": m.total_size_bytes, "file_count": m.file_count, "checksums": {},
                "parent_backup_id": m.parent_backup_id, "compressed": True, "encrypted": True}
    return {
        "backup_id": m.backup_id,
        "backup_type": m.backup_type,
        "timestamp": utc_iso_z(m.time),
        "source_path": text_name(m.source_path),
        "backup_path": text_name(f"{remote.location(root)}/snapshots/{m.backup_id}.json"),
        "agents": [text_name(a) for a in m.agents],
        "total_size_bytes": m.total_size_bytes,
        "file_count": m.file_count,
        "checksums": checksums,
        "parent_backup_id": m.parent_backup_id,
        "compressed": True,
        "encrypted": False,
    }


def read_summary(root: Path) -> dict[str, Any] | None:
    """Parse ``backup_metadata.json``.

    Returns:
        The document, or None if it is missing or unreadable (never raises for bad content).
    """
    try:
        doc = json.loads((root / SUMMARY_FILE).read_bytes())
    except (FileNotFoundError, ValueError, OSError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("backups"), list):
        return None
    return doc


def salvage_entries(data: bytes) -> list[dict[str, Any]]:
    """Recover the backup entries still decodable from a damaged ``backup_metadata.json``.

    Every ``{"backup_id": ...`` object that parses on its own is kept (the seeds and aml both write
    ``backup_id`` first); a truncated or damaged entry is lost, the others survive.

    Args:
        data: the file's bytes (any content; invalid UTF-8 is replaced).

    Returns:
        The entries (dicts with a string ``backup_id`` and a ``timestamp``) in file order, one per id
        (the last one wins). Never raises.
    """
    text = data.decode("utf-8", errors="replace")
    decoder = json.JSONDecoder()
    found: dict[str, dict[str, Any]] = {}
    end = 0
    for mt in _ENTRY_START.finditer(text):
        if mt.start() < end:
            continue  # inside an entry already decoded
        try:
            obj, stop = decoder.raw_decode(text, mt.start())
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("backup_id"), str) and "timestamp" in obj:
            found.pop(obj["backup_id"], None)
            found[obj["backup_id"]] = obj
            end = stop
    return list(found.values())


def salvage_summary(root: Path) -> list[dict[str, Any]]:
    """Entries recoverable from ``root/backup_metadata.json`` when it does not parse as a whole.

    Returns:
        :func:`salvage_entries` of the file, or ``[]`` if it is missing or unreadable. Never raises.
    """
    try:
        return salvage_entries((root / SUMMARY_FILE).read_bytes())
    except OSError:
        return []


def _is_native(entry: dict[str, Any], native: set[str]) -> bool:
    bid = str(entry.get("backup_id"))
    return bid in native or str(entry.get("backup_path") or "").endswith(f"/snapshots/{bid}.json")


def _keep_aside(root: Path, path: Path) -> Path:
    """Keep a damaged summary under a new name (hard link, never overwriting an earlier one)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    n = 1
    while True:
        aside = root / (f"{SUMMARY_FILE}.corrupt-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            os.link(path, aside)
            return aside
        except FileExistsError:
            n += 1
        except OSError:  # no hard links here: rename instead (still no overwrite: the name is free)
            if os.path.lexists(aside):
                n += 1
                continue
            os.rename(path, aside)
            return aside


@contextlib.contextmanager
def _flock(root: Path) -> Iterator[None]:
    locks = root / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / "summary.flock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def update_summary(root: Path, add: Iterable[dict[str, Any]] = (), remove: Iterable[str] = ()) -> None:
    """Add or replace entries and drop removed ones in ``backup_metadata.json``.

    The file is also reconciled with ``snapshots/``: an aml snapshot missing from it (a backup killed
    between its manifest and this file) is added, and an aml entry whose manifest is gone is dropped.
    Legacy entries are never touched. An existing file that does not parse is kept as
    ``backup_metadata.json.corrupt-<UTC time>[-N]`` (never deleted nor overwritten) and a new one is
    started with the legacy entries that could be recovered from it (:func:`salvage_entries`); aml
    entries are rebuilt from ``snapshots/``.

    Args:
        root: repository root.
        add: entries (see :func:`summary_entry`); an entry with an existing id replaces it.
        remove: backup ids to drop.

    Raises:
        OSError: on write failure (the old file is then intact, under its own name or kept aside).
    """
    add = list(add)
    drop = set(remove) | {e["backup_id"] for e in add}
    path = root / SUMMARY_FILE
    with _flock(root):
        snaps = root / "snapshots"
        native = (
            {n[:-5] for n in os.listdir(snaps) if n.endswith(".json") and not n.startswith(TMP_PREFIX)}
            if snaps.is_dir()
            else set()
        )
        doc = read_summary(root)
        if doc is None:
            carried: list[Any] = []
            if os.path.lexists(path):
                carried = [e for e in salvage_summary(root) if not _is_native(e, native)]
                _keep_aside(root, path)
            doc = {"version": "1.0.0", "backups": carried}
        kept = []
        for b in doc["backups"]:
            if not isinstance(b, dict):
                kept.append(b)
                continue
            bid = str(b.get("backup_id"))
            if bid in drop:
                continue
            if str(b.get("backup_path") or "").endswith(f"/snapshots/{bid}.json") and bid not in native:
                continue  # an aml snapshot that no longer exists
            kept.append(b)
        doc["backups"] = kept
        doc["backups"].extend(add)
        listed = {str(b.get("backup_id")) for b in kept if isinstance(b, dict)} | {e["backup_id"] for e in add}
        for bid in sorted(native - listed - set(remove)):
            try:
                doc["backups"].append(summary_entry(root, read_header(root, bid)))
            except BackupError:
                continue
        # text_names: a legacy entry read back with a "\udcXX" escape must not stop the write either
        text = json.dumps(text_names(doc), indent=2, ensure_ascii=False).encode("utf-8")
        atomic_write(path, text)
        remote.published(root, path, text)
