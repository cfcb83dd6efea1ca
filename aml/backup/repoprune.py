"""The repository prune: removing what no snapshot references (restic's ``repository/prune``).

What to keep comes from the snapshots that remain (the forget policy, :mod:`~aml.backup.policy`, and
:func:`~aml.backup.retention.forget` decide which remain); this module only collects the garbage.

``prune_unreferenced`` deletes objects that no manifest references: packs with no referenced object are
deleted, packs with some are repacked (referenced frames copied as they are, after re-verifying them),
leftovers of interrupted backups (packs in no index, orphan manifest bodies, temporary files) are
removed once older than a grace period. Order: new packs (fsynced) -> one new index that supersedes all
old ones -> old index files deleted -> old packs deleted. A crash at any point leaves a consistent
repository.

**Orphans and the grace period.** A backup writes all its packs first and the one index file naming them
only at its end (then the manifest body, then the header): for the whole run, up to the backup task's
6 h time limit, its packs are in no index, exactly like the leftovers of a backup that was killed. restic
deletes such packs at once, relying on its lock alone. aml's exclusive lock keeps a running backup out
too (a backup holds a shared lock), but a lock from another host counts as stale after 30 minutes
without a refresh (:mod:`aml.backup.lock`), and a stalled backup (a paused VM, a stopped process, a
partitioned NFS client) resumes after its lock was taken over. So a pack in no index, an orphan body and
a temporary file are removed only when their mtime is older than ``orphan_grace`` seconds (default
:data:`ORPHAN_GRACE`, 24 h: well above the 6 h time limit and the 12 h Redis visibility timeout after
which a task can run a second time, and a killed nightly backup's leftovers are gone by the next
night's or the one after's rotate). The grace period is the safeguard for lock failures; the lock
still prevents the usual race (an object in the index that a running backup deduplicated against).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aml.store.atomic import fsync_dir

from . import crypto, remote
from ._common import TMP_PREFIX
from .errors import CorruptionError, SnapshotNotFound
from .index import Index, list_index_ids, list_pack_ids, load_index, write_index
from .manifest import load_body, read_header
from .pack import PackEntry, PackInfo, PackReader, PackWriter, pack_path, read_pack
from .progress import ProgressCallback, Reporter
from .repository import Repository, as_repository

ORPHAN_GRACE = 24 * 3600.0
"""Seconds a pack in no index (or an orphan manifest body, a temporary file) must have existed before it is
removed (see the module docstring)."""

__all__ = ["ORPHAN_GRACE", "PruneResult", "prune_unreferenced"]


@dataclass
class PruneResult:
    """What :func:`prune_unreferenced` did (or would do). Sizes in bytes.

    Attributes:
        dry_run: nothing was changed.
        packs_before, packs_after: pack files before / after.
        packs_deleted: packs with no referenced object (deleted whole).
        packs_repacked: partly used packs rewritten into new packs.
        packs_written: new packs.
        unindexed_packs_deleted, unindexed_bytes_deleted: packs in no index file (interrupted backups)
            older than the grace period, and their bytes.
        unindexed_packs_kept, unindexed_bytes_kept: packs in no index file younger than the grace
            period (perhaps a backup still running), kept.
        orphan_grace_seconds: the grace period applied.
        objects_removed: unreferenced (or duplicate) objects dropped.
        bytes_before, bytes_after: total pack bytes.
        bodies_deleted: orphan manifest bodies removed (older than the grace period).
        temp_files_deleted: stale ``.aml-tmp-*`` files removed (older than the grace period).
        index_files_replaced: old index files superseded by the new one.
        duration_seconds: wall time.
    """

    dry_run: bool
    packs_before: int = 0
    packs_after: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    unindexed_packs_deleted: int = 0
    unindexed_bytes_deleted: int = 0
    unindexed_packs_kept: int = 0
    unindexed_bytes_kept: int = 0
    orphan_grace_seconds: float = ORPHAN_GRACE
    objects_removed: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    bodies_deleted: int = 0
    temp_files_deleted: int = 0
    index_files_replaced: int = 0
    duration_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


def prune_unreferenced(
    repo: Repository | str | os.PathLike[str],
    *,
    dry_run: bool = False,
    repack_threshold: float = 0.0,
    repack: Iterable[str] = (),
    progress: ProgressCallback | None = None,
    lock_wait: float = 0.0,
    orphan_grace: float = ORPHAN_GRACE,
) -> PruneResult:
    """Remove every object that no manifest references, repacking partly used packs.

    Args:
        repo: the repository (or its path).
        dry_run: report only.
        repack_threshold: repack a partly used pack only if its unused bytes exceed this fraction of
            its size (default 0: always, so nothing unreferenced survives).
        repack: pack ids to rewrite even if fully used (e.g. a pack whose header or trailer ``check``
            found damaged while every object still verifies).
        progress: called with ``"prune"`` progress events (files = objects copied).
        lock_wait: seconds to wait for other locks before failing.
        orphan_grace: packs in no index, orphan manifest bodies and temporary files are removed only when
            older than this many seconds (default :data:`ORPHAN_GRACE`, 24 h; 0 removes them all: only
            when no backup can be running, see the module docstring).

    Returns:
        A :class:`PruneResult`.

    Raises:
        CorruptionError: an index file or a manifest is damaged, a referenced object is missing, or an
            object being repacked fails verification; nothing is deleted then (run ``check``; repair the
            index with :func:`~aml.backup.index.rebuild_index`; forget damaged snapshots by id).
        LockError: another process holds a lock.
    """
    repo = as_repository(repo).open()
    with repo.lock(exclusive=True, operation="prune", wait=lock_wait):
        return prune_locked(
            repo, dry_run=dry_run, repack_threshold=repack_threshold, progress=progress, force=set(repack),
            orphan_grace=orphan_grace,
        )


@dataclass
class _PrunePlan:
    """What a prune removes and rewrites (restic's ``PlanPrune``); nothing of it is done yet."""

    index: Index
    referenced: set[str]  # objects the remaining snapshots need
    keep: list[str] = field(default_factory=list)  # packs kept as they are
    delete: list[str] = field(default_factory=list)  # packs with no referenced object
    repack: list[str] = field(default_factory=list)  # packs whose referenced objects are copied to new packs
    unindexed: list[str] = field(default_factory=list)  # packs in no index, older than the grace period
    body_files: list[str] = field(default_factory=list)  # orphan manifest bodies, older than the grace period
    temps: list[Path] = field(default_factory=list)  # temporary files, older than the grace period

    def used(self, pack_id: str) -> list[tuple[str, int, int, int]]:
        """The entries of ``pack_id`` that are referenced (and indexed in that pack)."""
        index = self.index
        return [e for e in index.pack_entries[pack_id] if e[0] in self.referenced and index.objects[e[0]][0] == pack_id]


def prune_locked(
    repo: Repository,
    *,
    dry_run: bool,
    repack_threshold: float,
    progress: ProgressCallback | None,
    without: set[str] | None = None,
    force: set[str] | None = None,
    orphan_grace: float = ORPHAN_GRACE,
) -> PruneResult:
    """:func:`prune_unreferenced` with the exclusive lock already held; ``without``: snapshots just
    forgotten (a dry run has not deleted them), ``force``: packs to rewrite even if fully used."""
    t0 = time.monotonic()
    res = PruneResult(dry_run=dry_run, orphan_grace_seconds=orphan_grace)
    cutoff = time.time() - orphan_grace  # orphans with an mtime at or after this may belong to a running backup
    plan = _plan_prune(repo, res, repack_threshold, without or set(), force or set(), cutoff)
    if dry_run:
        _estimate(plan, res)
    else:
        _do_prune(repo, plan, res, progress)
    res.duration_seconds = round(time.monotonic() - t0, 6)
    return res


def _plan_prune(
    repo: Repository, res: PruneResult, repack_threshold: float, without: set[str], force: set[str], cutoff: float
) -> _PrunePlan:
    root = repo.path
    index = load_index(root, strict=False, include_damaged=False)
    if index.problems:
        raise CorruptionError(
            "prune refused: damaged index files "
            + ", ".join(p.index_id for p in index.problems)
            + " (rebuild the index first)",
            location="index/",
        )
    referenced, bodies = _referenced(repo, without)
    missing = [o for o in referenced if o not in index.objects]
    if missing:
        raise CorruptionError(
            f"prune refused: {len(missing)} referenced objects are in no index", objects=sorted(missing)
        )
    plan = _PrunePlan(index, referenced)
    plan.unindexed = _unindexed_packs(root, index, cutoff, res)
    _classify_packs(plan, force, repack_threshold, res)
    plan.body_files = _orphan_bodies(repo, bodies, cutoff)
    plan.temps = [t for t in _temp_files(repo) if _older(t, cutoff)]
    res.packs_deleted = len(plan.delete)
    res.packs_repacked = len(plan.repack)
    res.unindexed_packs_deleted = len(plan.unindexed)
    res.bodies_deleted = len(plan.body_files)
    res.temp_files_deleted = len(plan.temps)
    return plan


def _referenced(repo: Repository, without: set[str]) -> tuple[set[str], set[str]]:
    """The objects and the manifest bodies the snapshots (but those in ``without``) reference."""
    root = repo.path
    referenced: set[str] = set()
    bodies: set[str] = set()
    for bid in repo.snapshot_ids():
        if bid in without:  # forgotten (a dry run has not deleted them)
            continue
        try:
            m = load_body(root, read_header(root, bid))
        except (CorruptionError, SnapshotNotFound) as exc:
            raise CorruptionError(
                f"prune refused: snapshot {bid} is damaged ({exc}); forget it by id first", snapshots=[bid]
            ) from exc
        referenced |= m.referenced_objects()
        bodies.add(m.body_sha256)
    return referenced, bodies


def _unindexed_packs(root: Path, index: Index, cutoff: float, res: PruneResult) -> list[str]:
    """Packs in no index older than ``cutoff`` (to delete); counts the pack bytes and the younger ones."""
    on_disk = list_pack_ids(root)
    res.packs_before = len(on_disk)
    sizes = {}
    mtimes = {}
    for p in on_disk:
        sizes[p], mtimes[p] = remote.pack_stat(root, p) or (0, 0.0)
    res.bytes_before = sum(sizes.values())
    unindexed = []
    for p in on_disk:
        if p in index.packs:
            continue
        if mtimes[p] < cutoff:
            unindexed.append(p)
            res.unindexed_bytes_deleted += sizes[p]
        else:
            res.unindexed_packs_kept += 1
            res.unindexed_bytes_kept += sizes[p]
    return unindexed


def _classify_packs(plan: _PrunePlan, force: set[str], repack_threshold: float, res: PruneResult) -> None:
    """Sort the indexed packs into kept, deleted (nothing used) and repacked (partly used, or forced)."""
    index = plan.index
    for pack_id, size in index.packs.items():
        entries = index.pack_entries[pack_id]
        used = plan.used(pack_id)
        unused = len(entries) - len(used)
        if pack_id in force and used:
            res.objects_removed += unused
            plan.repack.append(pack_id)
        elif not unused:
            plan.keep.append(pack_id)
        elif not used:
            res.objects_removed += unused
            plan.delete.append(pack_id)
        elif size and (sum(e[2] for e in entries) - sum(e[2] for e in used)) / size > repack_threshold:
            res.objects_removed += unused
            plan.repack.append(pack_id)
        else:
            plan.keep.append(pack_id)


def _orphan_bodies(repo: Repository, bodies: set[str], cutoff: float) -> list[str]:
    """Manifest bodies no snapshot references, older than ``cutoff``."""
    try:
        return [
            n
            for n in os.listdir(repo.bodies_dir)
            if n.endswith(".zst") and n[:-4] not in bodies and not n.startswith(TMP_PREFIX)
            and _older(repo.bodies_dir / n, cutoff)
        ]
    except FileNotFoundError:
        return []


def _estimate(plan: _PrunePlan, res: PruneResult) -> None:
    """A dry run: what the repository would hold after the prune."""
    index = plan.index
    kept_bytes = sum(index.packs[p] for p in plan.keep)
    repack_bytes = sum(sum(e[2] for e in plan.used(p)) for p in plan.repack)
    res.bytes_after = kept_bytes + repack_bytes
    res.packs_after = len(plan.keep) + (1 if plan.repack else 0)
    res.index_files_replaced = len(index.files) if plan.delete or plan.repack else 0


def _do_prune(repo: Repository, plan: _PrunePlan, res: PruneResult, progress: ProgressCallback | None) -> None:
    """Carry out ``plan`` in the crash-safe order (restic's ``DoPrune``): new packs (fsynced), one new index
    superseding all old ones, old index files deleted, then old packs, orphan bodies."""
    root = repo.path
    for t in plan.temps:
        t.unlink(missing_ok=True)
    new_packs = _repack(repo, plan, progress) if plan.repack else []
    res.packs_written = len(new_packs)
    old_ids = list_index_ids(root)
    if plan.delete or plan.repack or len(old_ids) > 1:
        index = plan.index
        kept_infos = [
            PackInfo(p, index.packs[p], [PackEntry(*e) for e in index.pack_entries[p]]) for p in sorted(plan.keep)
        ]
        new_id = write_index(root, kept_infos + new_packs, supersedes=old_ids)
        for old in old_ids:
            if old != new_id:
                remote.removed(root, root / "index" / f"{old}.json")
        fsync_dir(root / "index")
        res.index_files_replaced = len([o for o in old_ids if o != new_id])
    written = {p.id for p in new_packs}  # a repacked pack can come out byte-identical: keep it
    for p in plan.delete + plan.repack + plan.unindexed:
        if p not in written:
            remote.removed(root, pack_path(root, p))
    for n in plan.body_files:
        remote.removed(root, repo.bodies_dir / n)
    after = list_pack_ids(root)
    res.packs_after = len(after)
    res.bytes_after = sum((remote.pack_stat(root, p) or (0, 0.0))[0] for p in after)


def _repack(repo: Repository, plan: _PrunePlan, progress: ProgressCallback | None) -> list[PackInfo]:
    """Copy the referenced objects of the packs to repack into new packs (frames copied as they are, after
    re-verifying them; one writer per compression dictionary). Returns the new packs (fsynced)."""
    root = repo.path
    cfg = repo.config
    rep = Reporter(progress, "prune")
    writers: dict[str | None, PackWriter] = {}
    hasher = crypto.id_hasher(root)  # keyed object ids in an encrypted repository
    new_packs: list[PackInfo] = []
    try:
        for pack_id in sorted(plan.repack):
            reader = PackReader(read_pack(root, pack_id), pack_id, hasher)
            key = reader.dictionary.sha256 if reader.dictionary is not None else None
            writer = writers.get(key)
            if writer is None:
                writer = writers[key] = PackWriter(
                    root,
                    target_size=cfg.pack_size,
                    level=cfg.compression_level,
                    dictionary=reader.dictionary,
                    threaded=False,
                )
            for oid, off, ln, sz in plan.used(pack_id):
                try:
                    reader.decompress(oid, off, ln, sz)
                except CorruptionError as exc:
                    raise CorruptionError(
                        f"prune aborted: object {oid} in pack {pack_id} is damaged; nothing was deleted",
                        location=f"packs/{pack_id[:2]}/{pack_id}",
                        objects=[oid],
                    ) from exc
                writer.add_frame(oid, bytes(reader.frame(off, ln)), sz)
                rep.state.files_done += 1
                rep.state.bytes_done += sz
                rep.tick()
        for writer in writers.values():
            new_packs.extend(writer.flush())
    finally:
        for writer in writers.values():
            writer.close()
    rep.done()
    return new_packs


def _older(path: Path, cutoff: float) -> bool:
    """True if ``path``'s mtime is before ``cutoff`` (epoch seconds); False if it is gone."""
    try:
        return os.stat(path, follow_symlinks=False).st_mtime < cutoff
    except FileNotFoundError:
        return False


def _temp_files(repo: Repository) -> list[Path]:
    out: list[Path] = []
    dirs = [repo.path, repo.snapshots_dir, repo.bodies_dir, repo.index_dir]
    with contextlib.suppress(FileNotFoundError):
        dirs += [repo.packs_dir / d for d in os.listdir(repo.packs_dir)]
    for d in dirs:
        try:
            names = os.listdir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        out.extend(d / n for n in names if n.startswith(TMP_PREFIX))
    return out
