"""The forget policy: which snapshots to keep, and why (restic's ``snapshot_policy``).

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

"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aml.store.timestamps import utc_iso_z

__all__ = ["Decision", "Duration", "RetentionPolicy", "apply_policy", "parse_duration"]

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
