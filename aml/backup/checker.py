"""Verifying a repository (restic's ``check``), and naming every piece of damage it finds.

Structure (always): every index file's sha256 matches its name and it parses; every manifest header
matches its embedded checksum and its body matches its sha256 and decodes; every object a manifest
references is in the index; every pack the index names exists with the recorded size (a missing or
truncated pack is named with the objects the index places in it, and the snapshots and files that
reference them, without reading data).

Data (``read_data``, or a rotating ``read_data_subset``): each selected pack is read once, its sha256 is
compared with its name (any flipped bit anywhere in the file), and every object in it is decompressed
and re-hashed. Damage is reported with the pack, the objects, and the snapshots and files
(``"<backup_id>:<path>"``) that need them.

``verify_state.json`` records when each pack was last read, so a daily ``read_data_subset=0.1`` reads
the packs least recently verified first and covers the whole repository every ten days.

Orphans (a warning, not damage): packs that no index file names are what a killed (or a still running)
backup leaves; :attr:`CheckResult.orphans` gives their count, bytes and ages, and how many are older
than the grace period after which ``rotate`` removes them (:data:`~aml.backup.retention.ORPHAN_GRACE`).
Indexed packs that no snapshot references (a backup killed after its index, or ``forget`` without
prune) are counted there too, as ``unused``.

Symlink entries are checked like every path (safe, no entry below a link); they hold no object.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zstandard

from aml import procpool
from aml.procpool import ordered_map
from aml.store.atomic import atomic_write
from aml.store.names import text_names
from aml.store.timestamps import utc_iso_z

from . import crypto, remote
from ._common import TMP_PREFIX
from .crypto import parse_key_slot
from .errors import BackupError, CorruptionError, SnapshotNotFound, UnsafePathError
from .index import list_pack_ids, load_index
from .manifest import Manifest, load_body, read_header
from .pack import PackReader, open_pack
from .progress import ProgressCallback, Reporter
from .repository import Repository, as_repository, local_collector_paused
from .restorer import validate_tables
from .retention import ORPHAN_GRACE
from .storage import StorageError

VERIFY_STATE = "verify_state.json"

__all__ = ["CheckResult", "Problem", "check", "parse_subset"]


@dataclass
class Problem:
    """One finding of :func:`check`.

    Attributes:
        kind: ``index_corrupt``, ``manifest_corrupt``, ``body_corrupt``, ``manifest_unsafe``,
            ``object_missing`` (referenced, not in the index), ``pack_missing``, ``pack_size``,
            ``pack_hash`` (pack bytes changed), ``key_corrupt`` (a key slot file changed),
            ``object_corrupt`` (an object does not decode or re-hash), ``legacy`` (a legacy Loom backup is
            damaged); warnings: ``pack_unindexed``,
            ``body_unreferenced``, ``snapshot_errors``.
        location: the damaged file, relative to the repository root.
        message: human-readable description.
        objects: damaged or unreachable object ids.
        snapshots: affected snapshot ids.
        files: affected files as ``"<backup_id>:<path>"``.
    """

    kind: str
    location: str
    message: str
    objects: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


@dataclass
class CheckResult:
    """Outcome of :func:`check`.

    Attributes:
        ok: no errors (warnings allowed).
        errors: damage found (see :class:`Problem`).
        warnings: harmless findings (leftovers of interrupted backups, ...).
        damaged_snapshots: snapshot id -> affected paths (``"<manifest>"`` when the manifest itself is
            damaged).
        snapshots_checked, packs_checked: structure checks done.
        packs_read, objects_read, bytes_read: data read back (bytes of pack files).
        read_data: whether data was read; ``subset`` describes the selection.
        orphans: packs in no index file: ``{"packs", "bytes", "oldest", "newest"`` (mtimes, ISO 8601 UTC, or
            None), ``"oldest_age_seconds", "newest_age_seconds", "grace_seconds", "removable_packs",
            "removable_bytes"`` (older than the grace period: the next ``rotate`` removes them),
            ``"unused_packs", "unused_bytes"}`` (indexed packs holding no object any snapshot references).
        duration_seconds: wall time.
    """

    ok: bool = True
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    damaged_snapshots: dict[str, list[str]] = field(default_factory=dict)
    snapshots_checked: int = 0
    packs_checked: int = 0
    packs_read: int = 0
    objects_read: int = 0
    bytes_read: int = 0
    read_data: bool = False
    subset: str | None = None
    orphans: dict[str, Any] = field(default_factory=dict)
    duration_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (file names that are not valid UTF-8 escaped as ``\\xNN``)."""
        return text_names({
            "ok": self.ok,
            "errors": [p.to_dict() for p in self.errors],
            "warnings": [p.to_dict() for p in self.warnings],
            "damaged_snapshots": self.damaged_snapshots,
            "snapshots_checked": self.snapshots_checked,
            "packs_checked": self.packs_checked,
            "packs_read": self.packs_read,
            "objects_read": self.objects_read,
            "bytes_read": self.bytes_read,
            "read_data": self.read_data,
            "subset": self.subset,
            "orphans": dict(self.orphans),
            "duration_seconds": self.duration_seconds,
        })


def parse_subset(subset: float | str) -> tuple[float | None, tuple[int, int] | None]:
    """Parse a ``read_data_subset`` value.

    Args:
        subset: a fraction ``0 < x <= 1`` (``0.1``), a percentage string (``"10%"``), a fraction string
            (``"0.1"``), or ``"n/N"`` (restic's form: group n of N, chosen by pack id).

    Returns:
        ``(x, None)`` for a fraction or ``(None, (n, N))`` for a group.

    Raises:
        ValueError: malformed or out of range.
    """
    if isinstance(subset, str):
        s = subset.strip()
        if "/" in s:
            a, b = s.split("/", 1)
            n, total = int(a), int(b)
            if not (1 <= n <= total):
                raise ValueError(f"subset {subset!r}: need 1 <= n <= N")
            return None, (n, total)
        frac = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    else:
        frac = float(subset)
    if not (0 < frac <= 1):
        raise ValueError(f"subset {subset!r}: fraction must be in (0, 1]")
    return frac, None


def _load_state(root: os.PathLike[str] | str) -> dict[str, str]:
    try:
        with open(os.path.join(root, VERIFY_STATE), "rb") as fh:
            doc = json.loads(fh.read())
        packs = doc.get("packs", {})
        return {str(k): str(v) for k, v in packs.items()} if isinstance(packs, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


@local_collector_paused
def check(
    repo: Repository | str | os.PathLike[str],
    *,
    read_data: bool = False,
    read_data_subset: float | str | None = None,
    include_legacy: bool = True,
    progress: ProgressCallback | None = None,
    lock_wait: float = 0.0,
    orphan_grace: float = ORPHAN_GRACE,
) -> CheckResult:
    """Check a repository's structure and, optionally, read its data back.

    Args:
        repo: the repository (or its path).
        read_data: read every pack, verify its sha256, decompress and re-hash every object.
        read_data_subset: read only part of the packs (implies reading data): a fraction (``0.1``,
            ``"10%"``) picks the packs least recently verified first (rotating; state in
            ``verify_state.json``), ``"n/N"`` picks group n of N by pack id.
        include_legacy: also read legacy Loom backups back and compare them with their checksums
            (when reading data).
        progress: called with :class:`~aml.backup.progress.Progress` events (phase ``"check"``; files =
            objects, bytes = pack bytes).
        lock_wait: seconds to wait for a conflicting exclusive lock before failing.
        orphan_grace: seconds after which an orphan pack counts as removable by ``rotate`` (reported in
            :attr:`CheckResult.orphans`).

    Returns:
        A :class:`CheckResult`; ``ok`` is False if any damage was found.

    A folder holding only legacy Loom backups (no ``config.json``) is accepted: with ``read_data`` its
    backups are read back and compared with their recorded checksums.

    Raises:
        RepositoryNotFound: no repository and no legacy backups at that path.
        RepositoryFormatError: unreadable or unsupported ``config.json``.
        LockError: an exclusive lock is held.
        ValueError: malformed ``read_data_subset``.
    """
    t0 = time.monotonic()
    repo = as_repository(repo)
    res = CheckResult(read_data=bool(read_data or read_data_subset))
    if not repo.is_initialized():
        from .legacy import find_legacy, verify_legacy

        if not find_legacy(repo):
            repo.open()  # raises RepositoryNotFound
        # a folder holding only Loom's own backups: check those
        res.snapshots_checked = len(find_legacy(repo))
        if res.read_data and include_legacy:
            for bid, msg in verify_legacy(repo):
                res.errors.append(Problem("legacy", bid, msg, snapshots=[bid]))
                res.damaged_snapshots.setdefault(bid, []).append(msg)
        res.ok = not res.errors
        res.duration_seconds = round(time.monotonic() - t0, 6)
        return res
    repo.open()
    root = repo.path
    subset = parse_subset(read_data_subset) if read_data_subset is not None and not read_data else None
    with repo.lock(exclusive=False, operation="check", wait=lock_wait), contextlib.ExitStack() as stack:
        # ---- index
        index = load_index(root, strict=False, include_damaged=True)
        for ip in index.problems:
            res.errors.append(
                Problem(
                    "index_corrupt",
                    f"index/{ip.index_id}.json",
                    f"index file {ip.index_id}: {ip.reason}",
                    objects=sorted(set(ip.objects) & index.untrusted),
                )
            )

        # ---- key slots (encrypted repositories): each file's sha256 is its name
        for name in _key_slot_names(repo.keys_dir):
            try:
                parse_key_slot(name, (repo.keys_dir / name).read_bytes())
            except (OSError, ValueError, KeyError, TypeError) as exc:
                res.errors.append(Problem("key_corrupt", f"keys/{name}", f"key slot {name}: {exc}"))

        # ---- packs: structure
        on_disk = set(list_pack_ids(root))
        pack_ok: dict[str, bool] = {}
        missing_packs: list[str] = []
        short_packs: list[tuple[str, int, int]] = []  # (pack id, actual size, indexed size)
        for pack_id, size in index.packs.items():
            res.packs_checked += 1
            if pack_id not in on_disk:
                missing_packs.append(pack_id)
                pack_ok[pack_id] = False
                continue
            stat = remote.pack_stat(root, pack_id)
            actual = -1 if stat is None else stat[0]
            if actual != size:
                # named with its objects, snapshots and files below, once the manifests are read; restore
                # refuses such a pack, so it is not read back either
                short_packs.append((pack_id, actual, size))
                pack_ok[pack_id] = False
                continue
            pack_ok[pack_id] = True
        now_s = time.time()
        orphan_stats: list[tuple[str, int, float]] = []  # (pack id, bytes, mtime)
        for pack_id in sorted(on_disk - set(index.packs)):
            pst = remote.pack_stat(root, pack_id)
            if pst is None:
                continue  # removed meanwhile
            size_b, mtime = pst
            orphan_stats.append((pack_id, size_b, mtime))
            age = max(0.0, now_s - mtime)
            when = "rotate removes it" if age > orphan_grace else (
                f"rotate removes it once older than {orphan_grace / 3600:g} h (a backup may still be writing it)")
            res.warnings.append(
                Problem(
                    "pack_unindexed",
                    f"packs/{pack_id[:2]}/{pack_id}",
                    f"pack in no index file ({size_b} bytes, {age / 3600:.1f} h old; left by an interrupted "
                    f"backup); {when}",
                )
            )
        res.orphans = _orphan_summary(orphan_stats, now_s, orphan_grace)

        # ---- packs: data (read by worker threads while this thread checks the manifests)
        chosen: list[str] = []
        jobs: Iterator[_PackOutcome] = iter(())
        state: dict[str, str] = {}
        if res.read_data:
            state = _load_state(root)
            candidates = sorted(p for p, ok in pack_ok.items() if ok)
            if subset is None:
                chosen = candidates
                res.subset = "all"
            elif subset[1] is not None:
                group, total = subset[1]
                chosen = [p for p in candidates if int(p[:8], 16) % total == group - 1]
                res.subset = f"{group}/{total}"
            else:
                frac = float(subset[0] or 1.0)
                k = min(len(candidates), math.ceil(frac * len(candidates)))
                chosen = sorted(candidates, key=lambda p: (state.get(p, ""), p))[:k]
                res.subset = f"{frac:.4g} (least recently verified first)"
            # started now, read below: the worker processes read packs while this thread checks manifests
            jobs = stack.enter_context(ordered_map(
                functools.partial(_verify_pack_job, root), [(p, index.pack_entries[p]) for p in chosen],
                workers=CHECK_WORKERS, processes=remote.mirror_for(root) is None
                and sum(index.packs[p] for p in chosen) >= procpool.PARALLEL_MIN_BYTES))

        # ---- manifests
        damaged_objects: dict[str, list[Problem]] = {}
        good: list[str] = []
        referenced: set[str] = set()
        bodies_used: set[str] = set()
        for backup_id in repo.snapshot_ids():
            res.snapshots_checked += 1
            try:
                m = read_header(root, backup_id)
            except (CorruptionError, SnapshotNotFound) as exc:
                res.errors.append(
                    Problem("manifest_corrupt", f"snapshots/{backup_id}.json", str(exc), snapshots=[backup_id])
                )
                res.damaged_snapshots[backup_id] = ["<manifest>"]
                continue
            bodies_used.add(m.body_sha256)
            try:
                load_body(root, m)
                assert m.files is not None and m.dirs is not None
                validate_tables(m.files, m.dirs, m.links)
            except CorruptionError as exc:
                res.errors.append(Problem("body_corrupt", exc.location or "", str(exc), snapshots=[backup_id]))
                res.damaged_snapshots[backup_id] = ["<manifest>"]
                continue
            except UnsafePathError as exc:
                res.errors.append(
                    Problem("manifest_unsafe", f"snapshots/{backup_id}.json", str(exc), snapshots=[backup_id])
                )
                res.damaged_snapshots[backup_id] = ["<manifest>"]
                continue
            refs = m.referenced_objects()
            missing = sorted(o for o in refs if o not in index.objects)
            if missing:
                prob = Problem(
                    "object_missing",
                    "index/",
                    f"snapshot {backup_id}: {len(missing)} referenced objects are in no index file",
                    objects=missing,
                )
                res.errors.append(prob)
                for o in missing:
                    damaged_objects.setdefault(o, []).append(prob)
            if m.errors:
                res.warnings.append(
                    Problem(
                        "snapshot_errors",
                        f"snapshots/{backup_id}.json",
                        f"snapshot {backup_id}: {len(m.errors)} entries were not stored at backup time",
                        snapshots=[backup_id],
                        files=[f"{backup_id}:{e.get('path')}" for e in m.errors],
                    )
                )
            referenced |= refs
            good.append(backup_id)
            m.files = None
            m.dirs = None
        for p in res.errors:
            if p.kind == "index_corrupt":
                for o in p.objects:
                    damaged_objects.setdefault(o, []).append(p)
        # a missing pack, or one whose size differs from the index's (truncated, or grown), loses every
        # object the index places in it: those referenced are named, with their snapshots and files
        lost_packs = [(pack_id, "pack_missing", "is missing") for pack_id in missing_packs]
        lost_packs += [(pid, "pack_size", f"is {actual} bytes, index says {size}") for pid, actual, size in short_packs]
        for pack_id, kind, what in lost_packs:
            objs = [e[0] for e in index.pack_entries[pack_id] if index.objects.get(e[0], ("",))[0] == pack_id]
            prob = Problem(
                kind,
                f"packs/{pack_id[:2]}/{pack_id}",
                f"pack {pack_id} {what} ({len(objs)} objects)",
                objects=sorted(set(objs) & referenced),
            )
            res.errors.append(prob)
            for o in prob.objects:
                damaged_objects.setdefault(o, []).append(prob)
        # indexed packs holding no referenced object (a backup killed after its index; forget without prune)
        unused = [p for p, entries in index.pack_entries.items()
                  if not any(e[0] in referenced and index.objects[e[0]][0] == p for e in entries)]
        res.orphans["unused_packs"] = len(unused)
        res.orphans["unused_bytes"] = sum(index.packs[p] for p in unused)
        # orphan bodies (a backup killed between body and header): harmless
        try:
            body_names = [n for n in os.listdir(repo.bodies_dir) if not n.startswith(TMP_PREFIX)]
        except FileNotFoundError:
            body_names = []
        for n in body_names:
            if n.endswith(".zst") and n[:-4] not in bodies_used:
                res.warnings.append(
                    Problem(
                        "body_unreferenced",
                        f"snapshots/bodies/{n}",
                        "manifest body referenced by no snapshot (interrupted backup); prune removes it",
                    )
                )

        # ---- packs: data results
        if res.read_data:
            rep = Reporter(progress, "check")
            rep.state.files_total = sum(len(index.pack_entries[p]) for p in chosen)
            rep.state.bytes_total = sum(index.packs[p] for p in chosen)
            now = utc_iso_z(datetime.now(UTC))
            for pack_id, outcome in zip(chosen, jobs, strict=True):
                loc = f"packs/{pack_id[:2]}/{pack_id}"
                if outcome.error:
                    prob = Problem(
                        "pack_missing" if outcome.size < 0 else "object_corrupt",
                        loc,
                        f"pack {pack_id}: {outcome.error}",
                        objects=sorted(outcome.bad),
                    )
                    res.errors.append(prob)
                    for o in outcome.bad:
                        damaged_objects.setdefault(o, []).append(prob)
                    if outcome.size < 0:
                        continue
                res.packs_read += 1
                res.bytes_read += outcome.size
                res.objects_read += outcome.objects
                if outcome.bad and not outcome.error:
                    prob = Problem(
                        "object_corrupt",
                        loc,
                        f"pack {pack_id}: {len(outcome.bad)} objects do not decode or do not match their sha256",
                        objects=sorted(outcome.bad),
                    )
                    res.errors.append(prob)
                    for o in outcome.bad:
                        damaged_objects.setdefault(o, []).append(prob)
                elif not outcome.hash_ok and not outcome.error:
                    res.errors.append(
                        Problem(
                            "pack_hash",
                            loc,
                            f"pack {pack_id}: file bytes differ from its name (header or trailer damaged); "
                            "every object still verifies, so no file is affected; "
                            "prune_unreferenced(repack=[pack id]) rewrites it",
                        )
                    )
                state[pack_id] = now
                rep.state.files_done += outcome.objects
                rep.state.bytes_done += outcome.size
                rep.state.files_read = res.objects_read
                rep.state.bytes_read = res.bytes_read
                rep.tick()
            rep.done()
            state = {p: t for p, t in state.items() if p in index.packs}
            with contextlib.suppress(OSError):
                state_doc = json.dumps({"version": 1, "packs": state}, indent=0).encode()
                atomic_write(root / VERIFY_STATE, state_doc)
                remote.published(root, root / VERIFY_STATE, state_doc)
            if include_legacy:
                from .legacy import verify_legacy

                for bid, msg in verify_legacy(repo):
                    res.errors.append(Problem("legacy", bid, msg, snapshots=[bid]))
                    res.damaged_snapshots.setdefault(bid, []).append(msg)

        # ---- name the snapshots and files behind damaged objects
        if damaged_objects:
            for backup_id in good:
                try:
                    m = load_body(root, read_header(root, backup_id))
                except BackupError:
                    continue
                _name_files(m, damaged_objects, res)
    res.ok = not res.errors
    res.duration_seconds = round(time.monotonic() - t0, 6)
    return res


def _orphan_summary(orphans: list[tuple[str, int, float]], now: float, grace: float) -> dict[str, Any]:
    """Count, bytes and ages of the packs in no index (see :attr:`CheckResult.orphans`)."""
    mtimes = [m for _, _, m in orphans]
    removable = [(size, m) for _, size, m in orphans if now - m > grace]

    def iso(t: float | None) -> str | None:
        return utc_iso_z(datetime.fromtimestamp(t, UTC)) if t is not None else None

    oldest, newest = (min(mtimes), max(mtimes)) if mtimes else (None, None)
    return {
        "packs": len(orphans),
        "bytes": sum(size for _, size, _ in orphans),
        "oldest": iso(oldest),
        "newest": iso(newest),
        "oldest_age_seconds": round(max(0.0, now - oldest), 3) if oldest is not None else None,
        "newest_age_seconds": round(max(0.0, now - newest), 3) if newest is not None else None,
        "grace_seconds": grace,
        "removable_packs": len(removable),
        "removable_bytes": sum(size for size, _ in removable),
    }


CHECK_WORKERS = 2
"""Packs verified in parallel: by forked worker processes in a local repository when they hold at least
:data:`~aml.procpool.PARALLEL_MIN_BYTES` (:func:`~aml.procpool.ordered_map`), else by threads (a remote
repository's storage clients stay in this process)."""


def _verify_pack_job(root: Path, job: tuple[str, list[tuple[str, int, int, int]]]) -> _PackOutcome:
    return _verify_pack(root, job[0], job[1])


@dataclass
class _PackOutcome:
    size: int = 0  # bytes read; -1 when unreadable
    objects: int = 0
    bad: list[str] = field(default_factory=list)
    hash_ok: bool = True
    error: str = ""


def _key_slot_names(keys_dir: Path) -> list[str]:
    try:
        return sorted(n for n in os.listdir(keys_dir) if not n.startswith(TMP_PREFIX))
    except FileNotFoundError:
        return []


def _verify_pack(root: Path, pack_id: str, entries: list[tuple[str, int, int, int]]) -> _PackOutcome:
    out = _PackOutcome()
    try:
        data = remote.stored_pack(root, pack_id)
    except StorageError:
        raise  # the storage did not answer: an operation error, not damage (FileNotFoundError is a missing pack)
    except OSError as exc:
        out.size = -1
        out.error = f"unreadable: {exc}"
        out.bad = [e[0] for e in entries]
        return out
    out.size = len(data)
    out.hash_ok = hashlib.sha256(data).hexdigest() == pack_id
    try:
        key = crypto.key_for(root)
        data = open_pack(key, pack_id, data)
        view = memoryview(data)
        reader = PackReader(view, pack_id)
    except CorruptionError as exc:
        out.error = str(exc)
        out.bad = [e[0] for e in entries]
        return out
    out.objects = len(entries)
    # the hot loop of read-data: what PackReader.decompress does, inlined
    decompress = reader.decompressor().decompress
    object_id = crypto.id_function(root)
    start, end = reader.objects_start, len(data)
    bad = out.bad
    for oid, off, ln, sz in entries:
        if off < start or off + ln > end:
            bad.append(oid)
            continue
        try:
            obj = decompress(view[off : off + ln], max_output_size=sz)
        except zstandard.ZstdError:
            bad.append(oid)
            continue
        if len(obj) != sz or object_id(obj) != oid:
            bad.append(oid)
    del reader
    view.release()
    return out


def _name_files(m: Manifest, damaged: dict[str, list[Problem]], res: CheckResult) -> None:
    assert m.files is not None
    files = m.files
    for i, path in enumerate(files.path):
        for o in files.objects_of(i):
            probs = damaged.get(o)
            if probs is None:
                continue
            label = f"{m.backup_id}:{path}"
            for p in probs:
                if m.backup_id not in p.snapshots:
                    p.snapshots.append(m.backup_id)
                if not p.files or p.files[-1] != label:
                    p.files.append(label)
            affected = res.damaged_snapshots.setdefault(m.backup_id, [])
            if not affected or affected[-1] != path:
                affected.append(path)
