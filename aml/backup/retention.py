"""Retention (restic's ``forget``) and garbage collection (restic's ``prune``).

Policy semantics follow restic's ``ApplyPolicy`` (internal/data/snapshot_policy.go), with one deliberate
difference in time zones (below):

* snapshots are sorted newest first; ``keep_last`` keeps the n newest;
* ``keep_hourly/daily/weekly/monthly/yearly = n`` walk the list newest first and keep a snapshot whenever
  its bucket (YYYYMMDDHH, YYYYMMDD, ISO year+week, YYYYMM, YYYY; in UTC) differs from the last kept
  one's, until n snapshots were kept for that rule (``-1`` = unlimited); if counts are left when the
  oldest snapshot is reached, the oldest is kept too ("oldest ... snapshot");
* ``keep_within = "1y5m7d2h"`` (or a timedelta) keeps every snapshot strictly newer than the newest
  snapshot's time minus the duration (calendar arithmetic like Go's ``AddDate``, done in UTC; the newest
  snapshot taken in the future relative to ``now`` is ignored as the reference, as restic does);
* ``keep_tags`` (restic's ``--keep-tag``) keeps snapshots carrying all tags of any of the tag lists;
* a snapshot is removed only if no rule keeps it; a policy with no rule keeps everything;
* snapshots are grouped by (hostname, source path), restic's default ``--group-by host,paths``, and the
  policy is applied to each group: stores sharing a repository never evict each other's snapshots.

Time zones, a deliberate difference from restic: restic computes the buckets from each snapshot's
*local* time (the UTC offset recorded when the snapshot was taken), so a snapshot taken at 00:30 in
UTC+02:00 counts for that local day. aml converts every snapshot time to UTC first and computes buckets
(and ``keep_within``'s calendar arithmetic) in UTC, because aml compares all times as aware UTC
(DESIGN.md "Timestamps"): decisions then do not depend on the zone of the host that took a snapshot, and
DST changes never shift a bucket. The same 00:30+02:00 snapshot counts for the previous day (22:30 UTC).
Results equal restic's whenever snapshots were taken on hosts whose clocks run in UTC.

aml adds the seeds' rules (BackupConfig): ``retention_days`` keeps snapshots taken within that many days
before ``now`` (a keep rule, ORed with the others); ``max_backups`` is not a keep rule but a cap: it then
trims the kept set to the newest N (per group). A policy whose only setting is ``max_backups`` keeps the
newest N. The newest snapshot (of each group) is always kept. With no policy at all, :func:`forget`
applies the seeds' defaults ``retention_days=30, max_backups=100``. Legacy Loom backups are listed but
never removed by aml.

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
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aml.store.atomic import fsync_dir
from aml.store.timestamps import utc_iso_z

from . import crypto
from ._common import TMP_PREFIX
from .errors import CorruptionError, SnapshotNotFound
from .index import list_index_ids, list_pack_ids, load_index, write_index
from .manifest import load_body, read_header
from .pack import PackEntry, PackInfo, PackReader, PackWriter, pack_path, read_pack
from .progress import ProgressCallback, Reporter
from .repository import Repository, as_repository
from .summary import update_summary

ORPHAN_GRACE = 24 * 3600.0
"""Seconds a pack in no index (or an orphan manifest body, a temporary file) must have existed before it is
removed (see the module docstring)."""

__all__ = [
    "ORPHAN_GRACE",
    "Decision",
    "ForgetResult",
    "PruneResult",
    "RetentionPolicy",
    "apply_policy",
    "forget",
    "parse_duration",
    "prune_unreferenced",
    "rotate",
]

_DURATION = re.compile(r"(\d+)([ymdh])")


@dataclass(frozen=True)
class Duration:
    """A restic duration: calendar years, months, days and hours."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def __str__(self) -> str:
        return (
            "".join(
                f"{v}{u}" for v, u in ((self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h")) if v
            )
            or "0h"
        )


def parse_duration(text: str) -> Duration:
    """Parse restic's duration syntax, e.g. ``"1y5m7d2h"`` (y = years, m = months, d = days, h = hours).

    Raises:
        ValueError: malformed text.
    """
    s = text.strip()
    if not s or _DURATION.sub("", s):
        raise ValueError(f"invalid duration {text!r} (expected e.g. 1y5m7d2h)")
    vals = {"y": 0, "m": 0, "d": 0, "h": 0}
    for num, unit in _DURATION.findall(s):
        vals[unit] += int(num)
    return Duration(vals["y"], vals["m"], vals["d"], vals["h"])


def _go_add_date(t: datetime, years: int, months: int, days: int) -> datetime:
    """Go's ``time.AddDate``: add calendar units and normalise overflow (Oct 31 + 1 month = Dec 1)."""
    y = t.year + years
    m0 = t.month - 1 + months
    y += m0 // 12
    m = m0 % 12 + 1
    base = t.replace(year=y, month=m, day=1)
    return base + timedelta(days=t.day - 1 + days)


def _minus(t: datetime, d: Duration | timedelta) -> datetime:
    if isinstance(d, timedelta):
        return t - d
    return _go_add_date(t, -d.years, -d.months, -d.days) - timedelta(hours=d.hours)


@dataclass
class RetentionPolicy:
    """Which snapshots to keep (see module docstring for the exact semantics).

    Attributes:
        keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly: counts; -1 means
            unlimited; None or 0 disables the rule.
        keep_within: restic duration string (``"7d"``, ``"1y5m7d2h"``) or timedelta, relative to the
            newest snapshot.
        keep_tags: restic's ``--keep-tag``: each entry is a tag list ``"a,b"``; a snapshot having all
            tags of any entry is kept (``""`` matches untagged snapshots).
        retention_days: keep snapshots taken within this many days before ``now`` (seeds: 30).
        max_backups: a cap, not a keep rule: of the snapshots the rules keep, keep at most this many,
            the newest (seeds: 100). Alone (no keep rule), it keeps the newest ``max_backups``.
    """

    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: str | timedelta | None = None
    keep_tags: Sequence[str] = ()
    retention_days: float | None = None
    max_backups: int | None = None

    @classmethod
    def seeds_default(cls) -> RetentionPolicy:
        """The seeds' BackupConfig defaults: ``retention_days=30``, ``max_backups=100``."""
        return cls(retention_days=30, max_backups=100)

    def has_keep_rule(self) -> bool:
        """True if a rule that keeps snapshots is set: a restic ``keep_*`` rule or ``retention_days``.

        ``max_backups`` is not a keep rule: it only caps what the keep rules keep.
        """
        return any(
            (
                self.keep_last,
                self.keep_hourly,
                self.keep_daily,
                self.keep_weekly,
                self.keep_monthly,
                self.keep_yearly,
                self.keep_within,
                self.keep_tags,
                self.retention_days is not None,
            )
        )

    def is_empty(self) -> bool:
        """True if no rule is set, not even ``max_backups`` (then everything is kept)."""
        return not self.has_keep_rule() and self.max_backups is None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        d = asdict(self)
        if isinstance(self.keep_within, timedelta):
            d["keep_within"] = f"{self.keep_within.total_seconds()}s"
        d["keep_tags"] = list(self.keep_tags)
        return d


@dataclass
class Decision:
    """The fate of one snapshot under a policy.

    Attributes:
        backup_id: the snapshot.
        time: its time (aware UTC).
        keep: kept or removed.
        reasons: why kept (e.g. ``"daily snapshot"``, ``"within 7d"``, ``"newest snapshot"``) or why
            removed (``"matched no keep rule"``, ``"over max_backups=100"``).
    """

    backup_id: str
    time: datetime
    keep: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"backup_id": self.backup_id, "time": utc_iso_z(self.time), "keep": self.keep,
                "reasons": list(self.reasons)}


@dataclass
class _Bucket:
    count: int
    bucker: Callable[[datetime, int], int]
    reason: str
    last: int | None = None


def _ymdh(t: datetime, _nr: int) -> int:
    return t.year * 1000000 + t.month * 10000 + t.day * 100 + t.hour


def _ymd(t: datetime, _nr: int) -> int:
    return t.year * 10000 + t.month * 100 + t.day


def _yw(t: datetime, _nr: int) -> int:
    iso = t.isocalendar()
    return iso[0] * 100 + iso[1]


def _ym(t: datetime, _nr: int) -> int:
    return t.year * 100 + t.month


def _y(t: datetime, _nr: int) -> int:
    return t.year


def _always(_t: datetime, nr: int) -> int:
    return nr


def apply_policy(
    snapshots: Iterable[tuple[str, datetime] | tuple[str, datetime, Sequence[str]]],
    policy: RetentionPolicy,
    *,
    now: datetime | None = None,
) -> list[Decision]:
    """Decide which snapshots a policy keeps (pure function, no I/O).

    Args:
        snapshots: ``(backup_id, time)`` or ``(backup_id, time, tags)``; times aware (naive = UTC).
        policy: the rules.
        now: the current time for ``retention_days`` and restic's "latest not in the future" rule
            (default: now, UTC).

    Returns:
        One :class:`Decision` per snapshot, newest first.
    """
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    items: list[tuple[str, datetime, tuple[str, ...]]] = []
    for s in snapshots:
        t = s[1] if s[1].tzinfo else s[1].replace(tzinfo=UTC)
        items.append((s[0], t.astimezone(UTC), tuple(s[2]) if len(s) > 2 else ()))
    items.sort(key=lambda x: (x[1], x[0]), reverse=True)
    if not items:
        return []
    if policy.is_empty():
        return [Decision(i, t, True, ["no policy: keep everything"]) for i, t, _ in items]
    buckets = [
        _Bucket(policy.keep_last or 0, _always, "last snapshot"),
        _Bucket(policy.keep_hourly or 0, _ymdh, "hourly snapshot"),
        _Bucket(policy.keep_daily or 0, _ymd, "daily snapshot"),
        _Bucket(policy.keep_weekly or 0, _yw, "weekly snapshot"),
        _Bucket(policy.keep_monthly or 0, _ym, "monthly snapshot"),
        _Bucket(policy.keep_yearly or 0, _y, "yearly snapshot"),
    ]
    latest = None
    for _, t, _ in items:
        if t < now and (latest is None or t > latest):
            latest = t
    within: Duration | timedelta | None = None
    if policy.keep_within:
        within = policy.keep_within if isinstance(policy.keep_within, timedelta) else parse_duration(policy.keep_within)
    cutoff_days = now - timedelta(days=policy.retention_days) if policy.retention_days is not None else None
    cap_only = not policy.has_keep_rule()  # only max_backups: keep everything, then cap
    out: list[Decision] = []
    last_nr = len(items) - 1
    for nr, (bid, t, tags) in enumerate(items):
        reasons: list[str] = []
        if cap_only:
            reasons.append(f"no keep rule, within max_backups={policy.max_backups}")
        for taglist in policy.keep_tags:
            wanted = [x for x in taglist.split(",") if x]
            if (wanted and all(x in tags for x in wanted)) or (not wanted and not tags):
                reasons.append(f"has tags [{taglist}]")
        if within is not None and latest is not None and t > _minus(latest, within):
            reasons.append(f"within {within}")
        for b in buckets:
            if b.count > 0 or b.count == -1:
                val = b.bucker(t, nr)
                if val != b.last or nr == last_nr:
                    reasons.append(f"oldest {b.reason}" if val == b.last else b.reason)
                    b.last = val
                    if b.count > 0:
                        b.count -= 1
        if cutoff_days is not None and t >= cutoff_days:
            reasons.append(f"within retention_days={policy.retention_days:g}")
        if nr == 0:
            reasons.append("newest snapshot")
        out.append(Decision(bid, t, bool(reasons), reasons or ["matched no keep rule"]))
    if policy.max_backups is not None:
        kept = 0
        for d in out:
            if not d.keep:
                continue
            kept += 1
            if kept > max(policy.max_backups, 1):
                d.keep = False
                d.reasons = [f"over max_backups={policy.max_backups}"]
    return out


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


@dataclass
class ForgetResult:
    """What :func:`forget` / :func:`rotate` did (or would do).

    Attributes:
        dry_run: nothing was changed.
        policy: the policy applied (None when ids were given explicitly).
        kept, removed: decisions, newest first.
        prune: the garbage collection that followed, if any.
    """

    dry_run: bool
    policy: dict[str, Any] | None
    kept: list[Decision] = field(default_factory=list)
    removed: list[Decision] = field(default_factory=list)
    prune: PruneResult | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "dry_run": self.dry_run,
            "policy": self.policy,
            "kept": [d.to_dict() for d in self.kept],
            "removed": [d.to_dict() for d in self.removed],
            "prune": self.prune.to_dict() if self.prune else None,
        }


def forget(
    repo: Repository | str | os.PathLike[str],
    policy: RetentionPolicy | None = None,
    *,
    backup_ids: Iterable[str] = (),
    now: datetime | None = None,
    dry_run: bool = False,
    prune: bool = True,
    lock_wait: float = 0.0,
    orphan_grace: float = ORPHAN_GRACE,
) -> ForgetResult:
    """Remove snapshots by policy (or by id), then, by default, prune unreferenced data.

    Args:
        repo: the repository (or its path).
        policy: the rules (default: the seeds' ``retention_days=30, max_backups=100``). Ignored when
            ``backup_ids`` is given.
        backup_ids: forget exactly these aml snapshots instead (an explicit id is always honoured,
            even the newest or a damaged one).
        now: current time for ``retention_days`` (default now, UTC).
        dry_run: report only.
        prune: run :func:`prune_unreferenced` afterwards.
        lock_wait: seconds to wait for other locks before failing.
        orphan_grace: (prune) packs in no index, orphan bodies and temporary files younger than this many
            seconds are kept (default :data:`ORPHAN_GRACE`; see the module docstring).

    Returns:
        A :class:`ForgetResult`.

    Raises:
        SnapshotNotFound: an explicit id is not an aml snapshot.
        LockError: another process holds a lock.
        CorruptionError: (prune) see :func:`prune_unreferenced`.
    """
    repo = as_repository(repo).open()
    root = repo.path
    with repo.lock(exclusive=True, operation="forget", wait=lock_wait):
        headers = []
        for bid in repo.snapshot_ids():
            try:
                headers.append(read_header(root, bid))
            except (CorruptionError, SnapshotNotFound):
                continue  # damaged: never removed by policy; check reports it
        ids = list(backup_ids)
        if ids:
            known = {m.backup_id: m for m in headers}
            for bid in ids:
                if bid not in known and not (repo.snapshots_dir / f"{bid}.json").exists():
                    raise SnapshotNotFound(f"no aml snapshot {bid!r}")
            decisions = [
                Decision(
                    m.backup_id,
                    m.time,
                    m.backup_id not in ids,
                    ["not selected"] if m.backup_id not in ids else ["forgotten by id"],
                )
                for m in sorted(headers, key=lambda m: (m.time, m.backup_id), reverse=True)
            ]
            for bid in ids:
                if bid not in known:
                    decisions.append(Decision(bid, datetime.now(UTC), False, ["forgotten by id (damaged header)"]))
            res = ForgetResult(dry_run=dry_run, policy=None)
        else:
            policy = policy or RetentionPolicy.seeds_default()
            # like restic's default --group-by host,paths: each store's snapshots get the policy separately
            groups: dict[tuple[str, str], list[tuple[str, datetime, list[str]]]] = {}
            for m in headers:
                groups.setdefault((m.hostname, m.source_path), []).append((m.backup_id, m.time, m.tags))
            decisions = []
            for key in sorted(groups):
                decisions.extend(apply_policy(groups[key], policy, now=now))
            decisions.sort(key=lambda d: (d.time, d.backup_id), reverse=True)
            res = ForgetResult(dry_run=dry_run, policy=policy.to_dict())
        res.kept = [d for d in decisions if d.keep]
        res.removed = [d for d in decisions if not d.keep]
        if not dry_run and res.removed:
            for d in res.removed:
                (repo.snapshots_dir / f"{d.backup_id}.json").unlink(missing_ok=True)
            fsync_dir(repo.snapshots_dir)
            update_summary(root, remove=[d.backup_id for d in res.removed])
        if prune:
            res.prune = _prune_locked(
                repo,
                dry_run=dry_run,
                repack_threshold=0.0,
                progress=None,
                without={d.backup_id for d in res.removed},
                orphan_grace=orphan_grace,
            )
    return res


def rotate(
    repo: Repository | str | os.PathLike[str],
    policy: RetentionPolicy | None = None,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    lock_wait: float = 0.0,
    orphan_grace: float = ORPHAN_GRACE,
) -> ForgetResult:
    """Apply a retention policy and prune: the ``backup rotate`` operation (DESIGN.md).

    Same as ``forget(repo, policy, prune=True)``; see :func:`forget`. Orphan packs (in no index: left by
    killed backups) older than ``orphan_grace`` seconds are removed, younger ones kept.
    """
    return forget(repo, policy, now=now, dry_run=dry_run, prune=True, lock_wait=lock_wait,
                  orphan_grace=orphan_grace)


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
        return _prune_locked(
            repo, dry_run=dry_run, repack_threshold=repack_threshold, progress=progress, force=set(repack),
            orphan_grace=orphan_grace,
        )


def _prune_locked(
    repo: Repository,
    *,
    dry_run: bool,
    repack_threshold: float,
    progress: ProgressCallback | None,
    without: set[str] | None = None,
    force: set[str] | None = None,
    orphan_grace: float = ORPHAN_GRACE,
) -> PruneResult:
    t0 = time.monotonic()
    root = repo.path
    res = PruneResult(dry_run=dry_run, orphan_grace_seconds=orphan_grace)
    cutoff = time.time() - orphan_grace  # orphans with an mtime at or after this may belong to a running backup
    index = load_index(root, strict=False, include_damaged=False)
    if index.problems:
        raise CorruptionError(
            "prune refused: damaged index files "
            + ", ".join(p.index_id for p in index.problems)
            + " (rebuild the index first)",
            location="index/",
        )
    referenced: set[str] = set()
    bodies: set[str] = set()
    for bid in repo.snapshot_ids():
        if without and bid in without:  # forgotten (a dry run has not deleted them)
            continue
        try:
            m = load_body(root, read_header(root, bid))
        except (CorruptionError, SnapshotNotFound) as exc:
            raise CorruptionError(
                f"prune refused: snapshot {bid} is damaged ({exc}); forget it by id first", snapshots=[bid]
            ) from exc
        referenced |= m.referenced_objects()
        bodies.add(m.body_sha256)
    missing = [o for o in referenced if o not in index.objects]
    if missing:
        raise CorruptionError(
            f"prune refused: {len(missing)} referenced objects are in no index", objects=sorted(missing)
        )

    on_disk = list_pack_ids(root)
    res.packs_before = len(on_disk)
    sizes = {}
    mtimes = {}
    for p in on_disk:
        try:
            st = os.stat(pack_path(root, p))
            sizes[p], mtimes[p] = st.st_size, st.st_mtime
        except FileNotFoundError:
            sizes[p], mtimes[p] = 0, 0.0
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
    keep: list[str] = []
    delete: list[str] = []
    repack: list[str] = []
    for pack_id, size in index.packs.items():
        entries = index.pack_entries[pack_id]
        used = [e for e in entries if e[0] in referenced and index.objects[e[0]][0] == pack_id]
        if force and pack_id in force and used:
            res.objects_removed += len(entries) - len(used)
            repack.append(pack_id)
            continue
        if len(used) == len(entries):
            keep.append(pack_id)
            continue
        res.objects_removed += len(entries) - len(used)
        if not used:
            delete.append(pack_id)
            continue
        unused_bytes = sum(e[2] for e in entries) - sum(e[2] for e in used)
        if size and unused_bytes / size > repack_threshold:
            repack.append(pack_id)
        else:
            keep.append(pack_id)
            res.objects_removed -= len(entries) - len(used)
    res.packs_deleted = len(delete)
    res.packs_repacked = len(repack)
    res.unindexed_packs_deleted = len(unindexed)
    try:
        body_files = [
            n
            for n in os.listdir(repo.bodies_dir)
            if n.endswith(".zst") and n[:-4] not in bodies and not n.startswith(TMP_PREFIX)
            and _older(repo.bodies_dir / n, cutoff)
        ]
    except FileNotFoundError:
        body_files = []
    res.bodies_deleted = len(body_files)
    temps = [t for t in _temp_files(repo) if _older(t, cutoff)]
    res.temp_files_deleted = len(temps)
    changed = bool(delete or repack)
    if dry_run:
        kept_bytes = sum(index.packs[p] for p in keep)
        repack_bytes = sum(
            sum(e[2] for e in index.pack_entries[p] if e[0] in referenced and index.objects[e[0]][0] == p)
            for p in repack
        )
        res.bytes_after = kept_bytes + repack_bytes
        res.packs_after = len(keep) + (1 if repack else 0)
        res.index_files_replaced = len(index.files) if changed else 0
        res.duration_seconds = round(time.monotonic() - t0, 6)
        return res

    for t in temps:
        t.unlink(missing_ok=True)
    new_packs: list[PackInfo] = []
    if repack:
        cfg = repo.config
        rep = Reporter(progress, "prune")
        writers: dict[str | None, PackWriter] = {}
        hasher = crypto.id_hasher(root)  # keyed object ids in an encrypted repository
        try:
            for pack_id in sorted(repack):
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
                for oid, off, ln, sz in index.pack_entries[pack_id]:
                    if oid not in referenced or index.objects[oid][0] != pack_id:
                        continue
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
    res.packs_written = len(new_packs)
    old_ids = list_index_ids(root)
    if changed or len(old_ids) > 1:
        kept_infos = [PackInfo(p, index.packs[p], [PackEntry(*e) for e in index.pack_entries[p]]) for p in sorted(keep)]
        new_id = write_index(root, kept_infos + new_packs, supersedes=old_ids)
        for old in old_ids:
            if old != new_id:
                (root / "index" / f"{old}.json").unlink(missing_ok=True)
        fsync_dir(root / "index")
        res.index_files_replaced = len([o for o in old_ids if o != new_id])
    written = {p.id for p in new_packs}  # a repacked pack can come out byte-identical: keep it
    for p in delete + repack + unindexed:
        if p not in written:
            pack_path(root, p).unlink(missing_ok=True)
    for n in body_files:
        (repo.bodies_dir / n).unlink(missing_ok=True)
    after = list_pack_ids(root)
    res.packs_after = len(after)
    res.bytes_after = sum(os.stat(pack_path(root, p)).st_size for p in after)
    res.duration_seconds = round(time.monotonic() - t0, 6)
    return res


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
