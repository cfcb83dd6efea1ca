"""Retention: restic's ``forget`` (by policy or by id) followed by its ``prune``; the ``backup rotate``
operation.

:func:`forget` reads the snapshots' headers, decides with the forget policy (:mod:`~aml.backup.policy`:
:class:`RetentionPolicy`, :func:`apply_policy`; each store's snapshots, grouped by host and source path,
get the policy separately), removes the snapshots it does not keep, then runs the repository prune
(:mod:`~aml.backup.repoprune`: :func:`prune_unreferenced`) under the same exclusive lock. Damaged
snapshots are never removed by policy; legacy Loom backups are never removed by aml.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aml.store.atomic import fsync_dir

from . import remote
from .errors import CorruptionError, SnapshotNotFound
from .manifest import Manifest, read_header
from .policy import Decision, Duration, RetentionPolicy, apply_policy, parse_duration
from .repoprune import ORPHAN_GRACE, PruneResult, prune_locked, prune_unreferenced
from .repository import Repository, as_repository
from .summary import update_summary

__all__ = [
    "ORPHAN_GRACE",
    "Decision",
    "Duration",
    "ForgetResult",
    "PruneResult",
    "RetentionPolicy",
    "apply_policy",
    "forget",
    "parse_duration",
    "prune_unreferenced",
    "rotate",
]


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
    with repo.lock(exclusive=True, operation="forget", wait=lock_wait):
        headers = _read_headers(repo)
        ids = list(backup_ids)
        if ids:
            decisions = _decide_by_ids(repo, headers, ids)
            res = ForgetResult(dry_run=dry_run, policy=None)
        else:
            policy = policy or RetentionPolicy.seeds_default()
            decisions = _decide_by_policy(headers, policy, now)
            res = ForgetResult(dry_run=dry_run, policy=policy.to_dict())
        res.kept = [d for d in decisions if d.keep]
        res.removed = [d for d in decisions if not d.keep]
        if not dry_run and res.removed:
            _remove_snapshots(repo, [d.backup_id for d in res.removed])
        if prune:
            res.prune = prune_locked(
                repo,
                dry_run=dry_run,
                repack_threshold=0.0,
                progress=None,
                without={d.backup_id for d in res.removed},
                orphan_grace=orphan_grace,
            )
    return res


def _read_headers(repo: Repository) -> list[Manifest]:
    """The headers of the aml snapshots that can be read (a damaged one is never removed by policy;
    ``check`` reports it)."""
    headers = []
    for bid in repo.snapshot_ids():
        try:
            headers.append(read_header(repo.path, bid))
        except (CorruptionError, SnapshotNotFound):
            continue
    return headers


def _decide_by_ids(repo: Repository, headers: list[Manifest], ids: list[str]) -> list[Decision]:
    """Forget exactly ``ids`` (even the newest or a damaged snapshot); newest first, damaged ones last.

    Raises:
        SnapshotNotFound: an id is not an aml snapshot.
    """
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
    return decisions


def _decide_by_policy(headers: list[Manifest], policy: RetentionPolicy, now: datetime | None) -> list[Decision]:
    """Apply ``policy`` to each group of snapshots, like restic's default ``--group-by host,paths`` (each
    store's snapshots get the policy separately); newest first."""
    groups: dict[tuple[str, str], list[tuple[str, datetime, list[str]]]] = {}
    for m in headers:
        groups.setdefault((m.hostname, m.source_path), []).append((m.backup_id, m.time, m.tags))
    decisions = []
    for key in sorted(groups):
        decisions.extend(apply_policy(groups[key], policy, now=now))
    decisions.sort(key=lambda d: (d.time, d.backup_id), reverse=True)
    return decisions


def _remove_snapshots(repo: Repository, backup_ids: list[str]) -> None:
    """Delete the snapshots' manifests (one directory fsync) and drop them from the seeds' summary."""
    for bid in backup_ids:
        remote.removed(repo.path, repo.snapshots_dir / f"{bid}.json")
    fsync_dir(repo.snapshots_dir)
    update_summary(repo.path, remove=backup_ids)


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
