"""Retention per restic's documented ``forget`` semantics, the seeds' rules, and prune."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from aml.backup import (
    RetentionPolicy,
    apply_policy,
    check,
    create_snapshot,
    forget,
    list_snapshots,
    load_index,
    parse_duration,
    prune_unreferenced,
    restore,
    rotate,
)
from aml.backup.index import list_pack_ids
from tests.backup_helpers import diff_states, make_json_store, mutate, small_repo, tree_state


def T(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


SUNDAYS = [T(f"2019-{d} 11:00") for d in (
    "09-01", "09-08", "09-15", "09-22", "09-29", "10-06", "10-13", "10-20", "10-27", "11-03", "11-10", "11-17"
)]  # fmt: skip

CASES = [
    # restic's documented example (doc/060_forget.rst): a backup every Sunday for 12 weeks, --keep-daily 4
    ("docs: 12 Sundays, keep-daily 4", SUNDAYS, RetentionPolicy(keep_daily=4), SUNDAYS[-4:], None),
    ("keep-last 3", SUNDAYS[:5], RetentionPolicy(keep_last=3), SUNDAYS[2:5], None),
    (
        "keep-hourly 2: newest of each of the last two hours",
        [
            T("2024-05-01 10:05"),
            T("2024-05-01 10:40"),
            T("2024-05-01 11:10"),
            T("2024-05-01 11:50"),
            T("2024-05-01 12:01"),
        ],
        RetentionPolicy(keep_hourly=2),
        [T("2024-05-01 11:50"), T("2024-05-01 12:01")],
        None,
    ),
    (
        "keep-daily 5 with 3 days: counts left, so the oldest snapshot is kept too",
        [
            T("2024-05-01 09:00"),
            T("2024-05-01 18:00"),
            T("2024-05-02 12:00"),
            T("2024-05-03 08:00"),
            T("2024-05-03 20:00"),
        ],
        RetentionPolicy(keep_daily=5),
        [T("2024-05-01 09:00"), T("2024-05-01 18:00"), T("2024-05-02 12:00"), T("2024-05-03 20:00")],
        None,
    ),
    (
        "keep-weekly 2 across the ISO year boundary (Mon 2024-12-30 is 2025-W01)",
        [T("2024-12-22 10:00"), T("2024-12-23 10:00"), T("2024-12-29 10:00"), T("2024-12-30 10:00")],
        RetentionPolicy(keep_weekly=2),
        [T("2024-12-29 10:00"), T("2024-12-30 10:00")],
        None,
    ),
    (
        "keep-monthly 2 + keep-yearly 2 (rules are ORed, each counts its own buckets)",
        [
            T("2023-06-15 00:00"),
            T("2023-12-31 00:00"),
            T("2024-01-31 00:00"),
            T("2024-02-10 00:00"),
            T("2024-02-20 00:00"),
        ],
        RetentionPolicy(keep_monthly=2, keep_yearly=2),
        [T("2023-12-31 00:00"), T("2024-01-31 00:00"), T("2024-02-20 00:00")],
        None,
    ),
    (
        "keep-within 2d of the newest snapshot (strictly newer than newest - 2d)",
        [
            T("2024-03-01 00:00"),
            T("2024-03-08 11:59"),
            T("2024-03-08 12:00"),
            T("2024-03-09 00:00"),
            T("2024-03-10 12:00"),
        ],
        RetentionPolicy(keep_within="2d"),
        [T("2024-03-09 00:00"), T("2024-03-10 12:00")],
        None,
    ),
    (
        "keep-within 1m uses calendar months like Go's AddDate (Mar 31 - 1 month = Mar 2)",
        [T("2024-03-01 10:00"), T("2024-03-02 10:00"), T("2024-03-02 10:01"), T("2024-03-31 10:00")],
        RetentionPolicy(keep_within="1m"),
        [T("2024-03-02 10:01"), T("2024-03-31 10:00")],
        None,
    ),
    (
        "keep-within ignores a snapshot in the future as reference (and keeps it)",
        [T("2024-01-01 00:00"), T("2024-01-09 00:00"), T("2024-02-01 00:00")],
        RetentionPolicy(keep_within="5d"),
        [T("2024-01-09 00:00"), T("2024-02-01 00:00")],
        T("2024-01-10 00:00"),
    ),
    (
        "seeds: retention_days=30 then max_backups=3",
        [T("2024-05-01 02:00") + timedelta(days=i) for i in range(61)],
        RetentionPolicy(retention_days=30, max_backups=3),
        [T("2024-06-28 02:00"), T("2024-06-29 02:00"), T("2024-06-30 02:00")],
        T("2024-06-30 12:00"),
    ),
    (
        "seeds: retention_days=30 alone",
        [T("2024-05-01 02:00"), T("2024-05-31 12:00"), T("2024-06-15 02:00")],
        RetentionPolicy(retention_days=30),
        [T("2024-05-31 12:00"), T("2024-06-15 02:00")],
        T("2024-06-30 12:00"),
    ),
    (
        "the newest snapshot is always kept, even when no rule matches it",
        [T("2024-01-01 00:00"), T("2024-02-01 00:00")],
        RetentionPolicy(retention_days=1),
        [T("2024-02-01 00:00")],
        T("2024-06-30 00:00"),
    ),
    ("an empty policy keeps everything (restic refuses to act)", SUNDAYS[:3], RetentionPolicy(), SUNDAYS[:3], None),
    (
        "max_backups alone is a cap, not a rule: 10 daily snapshots, max_backups=5 keeps the newest 5",
        [T("2024-05-01 02:00") + timedelta(days=i) for i in range(10)],
        RetentionPolicy(max_backups=5),
        [T("2024-05-01 02:00") + timedelta(days=i) for i in range(5, 10)],
        T("2024-05-11 00:00"),
    ),
    (
        "seeds: retention_days=3 (with the default cap) keeps those within 3 days",
        [T("2024-05-01 02:00") + timedelta(days=i) for i in range(10)],
        RetentionPolicy(retention_days=3, max_backups=100),
        [T("2024-05-08 02:00"), T("2024-05-09 02:00"), T("2024-05-10 02:00")],
        T("2024-05-11 00:00"),
    ),
    ("keep-daily unlimited (-1)", SUNDAYS[:4], RetentionPolicy(keep_daily=-1), SUNDAYS[:4], None),
]


@pytest.mark.parametrize(("name", "times", "policy", "kept", "now"), CASES, ids=[c[0] for c in CASES])
def test_policy_table(
    name: str, times: list[datetime], policy: RetentionPolicy, kept: list[datetime], now: datetime | None
) -> None:
    snaps = [(f"s{i:02d}", t) for i, t in enumerate(times)]
    decisions = apply_policy(snaps, policy, now=now or T("2030-01-01 00:00"))
    assert [d.time for d in decisions] == sorted(times, reverse=True)  # newest first
    assert sorted(d.time for d in decisions if d.keep) == sorted(kept), name
    for d in decisions:
        assert d.reasons, d


def test_reasons_follow_restic() -> None:
    times = [T("2024-05-01 09:00"), T("2024-05-01 18:00"), T("2024-05-02 12:00")]
    decisions = {
        d.time: d for d in apply_policy([(str(i), t) for i, t in enumerate(times)], RetentionPolicy(keep_daily=5))
    }
    assert decisions[times[2]].reasons == ["daily snapshot", "newest snapshot"]
    assert decisions[times[1]].reasons == ["daily snapshot"]
    assert decisions[times[0]].reasons == ["oldest daily snapshot"]
    tagged = apply_policy(
        [("a", times[0], ["keep", "x"]), ("b", times[1], ["x"]), ("c", times[2], [])],
        RetentionPolicy(keep_tags=["keep,x"]),
    )
    assert {d.backup_id for d in tagged if d.keep} == {"a", "c"}


def test_buckets_are_utc_days_not_the_snapshots_local_days() -> None:
    # deliberate difference from restic (module docstring): 2024-05-02 00:30+02:00 is 2024-05-01 in UTC
    plus2 = timezone(timedelta(hours=2))
    a = datetime(2024, 5, 1, 12, 0, tzinfo=plus2)  # 10:00Z, May 1
    b = datetime(2024, 5, 2, 0, 30, tzinfo=plus2)  # 22:30Z, May 1 (restic: local May 2)
    c = datetime(2024, 5, 2, 14, 0, tzinfo=plus2)  # 12:00Z, May 2
    kept = {d.backup_id for d in apply_policy([("a", a), ("b", b), ("c", c)], RetentionPolicy(keep_daily=2)) if d.keep}
    assert kept == {"b", "c"}  # restic, bucketing by local day, would keep {"a", "c"}


def test_max_backups_alone_reasons() -> None:
    times = [T("2024-05-01 02:00") + timedelta(days=i) for i in range(4)]
    decisions = apply_policy([(f"s{i}", t) for i, t in enumerate(times)], RetentionPolicy(max_backups=2))
    assert [d.reasons for d in decisions] == [
        ["no keep rule, within max_backups=2", "newest snapshot"],
        ["no keep rule, within max_backups=2"],
        ["over max_backups=2"],
        ["over max_backups=2"],
    ]


def test_durations() -> None:
    d = parse_duration("1y5m7d2h")
    assert (d.years, d.months, d.days, d.hours) == (1, 5, 7, 2)
    with pytest.raises(ValueError):
        parse_duration("1w")


def test_forget_and_prune_keep_exactly_what_the_kept_snapshots_need(tmp_path: Path) -> None:
    store = make_json_store(tmp_path / "store", agents=3, docs=20)
    repo = small_repo(tmp_path / "repo", pack_size=16 * 1024)
    states = {}
    for day in range(5):
        if day:
            mutate(store, 0.3, seed=day)
        when = T("2024-01-01 03:00") + timedelta(days=day)
        sid = create_snapshot(store, repo, incremental=day % 2 == 1, snapshot_time=when).backup_id
        states[sid] = tree_state(store)
    ids = list(states)  # in time order
    packs_before = set(list_pack_ids(repo.path))

    dry = forget(repo, RetentionPolicy(keep_last=2), dry_run=True)
    assert [d.backup_id for d in dry.removed] == ids[:3][::-1]
    assert dry.prune is not None and dry.prune.dry_run and dry.prune.objects_removed > 0
    assert set(list_pack_ids(repo.path)) == packs_before and len(list_snapshots(repo)) == 5

    res = rotate(repo, RetentionPolicy(keep_last=2))
    assert [d.backup_id for d in res.kept] == ids[3:][::-1]
    assert res.prune is not None and res.prune.objects_removed > 0
    assert res.prune.bytes_after < res.prune.bytes_before
    assert [s.backup_id for s in list_snapshots(repo)] == ids[3:]  # listed oldest first

    # nothing unreferenced is left, everything referenced is there, and the kept snapshots restore exactly
    from aml.backup import load_manifest

    referenced = set()
    for sid in ids[3:]:
        referenced |= load_manifest(repo.path, sid).referenced_objects()
    assert set(load_index(repo.path).objects) == referenced
    assert check(repo, read_data=True).ok
    for sid in ids[3:]:
        out = tmp_path / f"out-{sid}"
        assert restore(repo, sid, out).ok
        assert diff_states(states[sid], tree_state(out)) == []

    again = prune_unreferenced(repo)  # idempotent
    assert again.objects_removed == 0 and again.packs_deleted == 0 and again.packs_repacked == 0


def test_stores_sharing_a_repository_are_rotated_separately(tmp_path: Path) -> None:
    # two stores in one parent directory share the default repository (<store>/../memory-backup)
    a = make_json_store(tmp_path / "project" / "memory", agents=1, docs=3)
    b = make_json_store(tmp_path / "project" / "other", agents=1, docs=3, seed=2)
    repo = small_repo(tmp_path / "project" / "memory-backup")
    ids = {}
    for day, store in enumerate([a, a, b, a, b]):
        when = T("2024-01-01 03:00") + timedelta(days=day)
        ids[day] = create_snapshot(store, repo, incremental=False, snapshot_time=when).backup_id
    res = rotate(repo, RetentionPolicy(keep_last=1))
    assert sorted(d.backup_id for d in res.kept) == sorted([ids[3], ids[4]])  # the newest of each store
    assert check(repo, read_data=True).ok
