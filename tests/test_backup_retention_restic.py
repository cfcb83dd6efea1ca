"""Rotation against the reference itself: the same snapshot times and policies through ``restic forget``.

restic's documented semantics (``--keep-last/hourly/daily/weekly/monthly/yearly/within``) are the
oracle: restic is run on a repository whose snapshots carry the table's times (``backup --time``),
and ``forget --dry-run --json`` says which it keeps; :func:`aml.backup.apply_policy` must keep
exactly those. Both run with ``TZ=UTC`` (aml buckets in UTC, restic in the snapshot's local time: the
same thing on a UTC host). Skipped only when no ``restic`` binary is installed (``.ci/run`` installs
Debian's).

restic 0.16 (PR #4366, issue #3624) started keeping the oldest snapshot when a ``--keep-*`` count is
not used up; aml follows the current rule. Debian bookworm ships restic 0.14, so against a restic older
than 0.16 the oldest snapshot may be kept by aml alone, and only with an ``oldest ...`` reason.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aml.backup import RetentionPolicy, apply_policy

RESTIC = shutil.which("restic")
pytestmark = pytest.mark.skipif(RESTIC is None, reason="restic is not installed (apt-get install restic)")

POLICIES: list[dict[str, Any]] = [
    {"keep_last": 3},
    {"keep_hourly": 5},
    {"keep_daily": 7},
    {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6},
    {"keep_hourly": 4, "keep_daily": 3, "keep_yearly": 2},
    {"keep_weekly": 3, "keep_monthly": 2},
    {"keep_within": "30d"},
    {"keep_within": "2m", "keep_last": 2},
    {"keep_within": "1y2m3d", "keep_monthly": 1},
]


def _times(seed: int = 11) -> list[datetime]:
    """45 snapshot instants over ~14 months: daily runs, a few bursts within one hour or one day,
    gaps of weeks, and year and month boundaries, all distinct to the second."""
    rng = random.Random(seed)
    end = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
    out = {end - timedelta(days=d, minutes=rng.randint(0, 50)) for d in range(0, 20)}  # the last 20 days
    out |= {end - timedelta(hours=h, minutes=rng.randint(0, 9)) for h in (1, 3, 5)}  # a burst today
    out |= {end - timedelta(days=rng.randint(21, 420), hours=rng.randint(0, 23), seconds=rng.randint(0, 59))
            for _ in range(34)}
    out |= {datetime(2025, 12, 31, 23, 59, 30, tzinfo=UTC), datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)}
    return sorted({t.replace(microsecond=0) for t in out})[-45:]


def _restic(repo: Path, *args: str) -> str:
    assert RESTIC is not None
    env = {**os.environ, "RESTIC_PASSWORD": "aml-test", "TZ": "UTC", "RESTIC_CACHE_DIR": str(repo.parent / "cache")}
    done = subprocess.run([RESTIC, "-r", str(repo), *args], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _restic_version() -> tuple[int, ...]:
    assert RESTIC is not None
    out = subprocess.run([RESTIC, "version"], capture_output=True, text=True, check=True, timeout=30).stdout
    return tuple(int(x) for x in out.split()[1].split(".")[:3])


def _flags(policy: dict[str, Any]) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in policy.items()]


@pytest.fixture(scope="module")
def restic_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[datetime]]:
    base = tmp_path_factory.mktemp("restic")
    data = base / "data"
    data.mkdir()
    (data / "f").write_text("x")
    repo = base / "repo"
    _restic(repo, "init", "-q")
    times = _times()
    for t in times:
        _restic(repo, "backup", "-q", "--host", "h", "--time", t.strftime("%Y-%m-%d %H:%M:%S"), str(data))
    return repo, times


@pytest.mark.slow
@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_rotation_keeps_what_restic_forget_keeps(restic_repo: tuple[Path, list[datetime]],
                                                 policy: dict[str, Any]) -> None:
    repo, times = restic_repo
    groups = json.loads(_restic(repo, "forget", "--dry-run", "--json", *_flags(policy)))
    assert len(groups) == 1
    restic_kept = {datetime.fromisoformat(s["time"].replace("Z", "+00:00")) for s in groups[0]["keep"]}
    assert len(restic_kept) + len(groups[0]["remove"] or []) == len(times)

    now = times[-1] + timedelta(hours=1)
    decisions = apply_policy([(f"s{i:03d}", t) for i, t in enumerate(times)], RetentionPolicy(**policy), now=now)
    aml_kept = {d.time for d in decisions if d.keep}
    oldest = decisions[-1]
    if _restic_version() < (0, 16) and oldest.keep and oldest.time not in restic_kept:
        assert all(r.startswith("oldest ") for r in oldest.reasons), oldest.reasons  # the 0.16 rule only
        restic_kept.add(oldest.time)
    assert aml_kept == restic_kept, (sorted(aml_kept - restic_kept), sorted(restic_kept - aml_kept))
