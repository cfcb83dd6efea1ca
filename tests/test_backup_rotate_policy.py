"""``backup rotate``'s options -> retention policy: ``max_backups`` caps the keep rules, never replaces them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from aml.backup import RetentionPolicy, create_snapshot, list_snapshots

# what the CLI sends when no option is given: every key, all None
CLI_NONE: dict[str, Any] = {k: None for k in ("keep_last", "keep_hourly", "keep_daily", "keep_weekly",
                                              "keep_monthly", "keep_yearly", "keep_within", "retention_days",
                                              "max_backups")}


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        (None, RetentionPolicy(retention_days=30, max_backups=100)),
        ({}, RetentionPolicy(retention_days=30, max_backups=100)),
        (CLI_NONE, RetentionPolicy(retention_days=30, max_backups=100)),
        # only the cap: the seeds' retention rule stays
        (CLI_NONE | {"max_backups": 5}, RetentionPolicy(retention_days=30, max_backups=5)),
        # only the retention rule: the seeds' cap stays
        (CLI_NONE | {"retention_days": 3}, RetentionPolicy(retention_days=3, max_backups=100)),
        ({"retention_days": 3, "max_backups": 7}, RetentionPolicy(retention_days=3, max_backups=7)),
        # restic rules decide (no implicit retention_days), the cap still applies
        (CLI_NONE | {"keep_daily": 7}, RetentionPolicy(keep_daily=7)),  # restic: no cap unless given
        ({"keep_within": "2d", "max_backups": 3}, RetentionPolicy(keep_within="2d", max_backups=3)),
        ({"keep_tags": ["pin"]}, RetentionPolicy(keep_tags=["pin"])),
        ({"keep_last": 2, "retention_days": 1, "max_backups": 4},
         RetentionPolicy(keep_last=2, retention_days=1, max_backups=4)),
        # a zero count disables a restic rule (restic's meaning): the seeds' rule applies
        ({"keep_daily": 0, "max_backups": 5}, RetentionPolicy(retention_days=30, max_backups=5)),
    ],
)
def test_policy_translation(keep: dict[str, Any] | None, expected: RetentionPolicy, aml_settings) -> None:
    from tasks.backup import _policy

    assert _policy(keep, aml_settings.replace(retention_days=30, max_backups=100)) == expected


def test_policy_defaults_come_from_settings(aml_settings) -> None:
    from tasks.backup import _policy

    settings = aml_settings.replace(retention_days=7, max_backups=9)
    assert _policy({"max_backups": 2}, settings) == RetentionPolicy(retention_days=7, max_backups=2)
    assert _policy({"retention_days": 2}, settings) == RetentionPolicy(retention_days=2, max_backups=9)
    assert _policy({"keep_last": 1}, settings) == RetentionPolicy(keep_last=1)
    with pytest.raises(ValueError, match="unknown retention options: bogus"):
        _policy({"bogus": 1}, settings)


def _ten_daily_snapshots(tmp_path: Path, settings: Any) -> tuple[Path, list[str]]:
    """A store with 10 snapshots, one a day, the newest 12 h ago; their ids newest first."""
    from tasks.snapshots import repository_for
    from tests.backup_helpers import make_json_store

    store = make_json_store(tmp_path / "p" / "memory", agents=1, docs=3)
    repo = repository_for(store, settings)
    now = datetime.now(UTC)
    ids = [create_snapshot(store, repo, incremental=False, snapshot_time=now - timedelta(days=i, hours=12)).backup_id
           for i in range(10)]
    return store, ids


def test_cli_rotate_max_backups_alone_keeps_the_newest_n(tmp_path: Path, aml_settings) -> None:
    from cli.main import store_app
    from tasks.snapshots import repository_for

    store, ids = _ten_daily_snapshots(tmp_path, aml_settings)
    res = CliRunner().invoke(store_app, ["backup", "rotate", "--max-backups", "5"], obj={"store": str(store)})
    assert res.exit_code == 0, res.output
    assert "kept 5 snapshots, removed 5" in res.output
    listed = [s.backup_id for s in list_snapshots(repository_for(store, aml_settings)) if not s.legacy]
    assert listed == ids[:5][::-1]  # listed oldest first


def test_rotate_retention_days_alone_keeps_those_within(tmp_path: Path, aml_settings) -> None:
    from tasks import backup

    store, ids = _ten_daily_snapshots(tmp_path, aml_settings)
    result = backup.rotate_.apply(kwargs={"store": str(store), "keep": {"retention_days": 3}},
                                  throw=True).get()
    assert result["status"] == "success"
    assert result["policy"]["retention_days"] == 3 and result["policy"]["max_backups"] == 100
    assert [d["backup_id"] for d in result["kept"]] == ids[:3]  # 12 h, 1 d 12 h, 2 d 12 h old
    assert all("matched no keep rule" in d["reasons"] for d in result["removed"])


def test_rotate_restic_rule_is_capped_by_max_backups(tmp_path: Path, aml_settings) -> None:
    from tasks import backup

    store, ids = _ten_daily_snapshots(tmp_path, aml_settings)
    result = backup.rotate_.apply(kwargs={"store": str(store), "keep": {"keep_daily": 8, "max_backups": 6},
                                          "dry_run": True}, throw=True).get()
    assert [d["backup_id"] for d in result["kept"]] == ids[:6]
    assert {tuple(d["reasons"]) for d in result["removed"]} == {("over max_backups=6",), ("matched no keep rule",)}
