"""Catalog retention: hourly roll-ups of metric samples, their expiry, expiry of finished task runs.

Real databases only: a fresh SQLite file per test, and PostgreSQL (mark ``postgres``) when
``AML_TEST_POSTGRES_URL`` is set, in a schema of its own dropped afterwards (as ``test_catalog``).
The PostgreSQL sessions run in the ``Asia/Kolkata`` time zone (UTC+05:30), so an hour bucket
computed in the session's zone instead of UTC would start at :30 and fail the tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.exc import IntegrityError

from models import Base, MetricSample, PruneAction, TaskRun
from models import queries as q
from models.retention import RetentionResult, apply_retention, hour_start
from tests.catalog_helpers import empty_catalog
from workers import catalog

NOW = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
RAW_CUTOFF = datetime(2026, 2, 22, 12, 0, tzinfo=UTC)  # hour_start(NOW - 7 days)
HOURLY_CUTOFF = datetime(2025, 12, 1, 12, 0, tzinfo=UTC)  # hour_start(NOW - 90 days)
OLD_HOUR = datetime(2026, 2, 10, 5, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A catalog at the newest revision: a new SQLite file, or a new PostgreSQL schema (dropped after)."""
    with empty_catalog(request.param, tmp_path, "-ctimezone=Asia/Kolkata") as url:
        catalog.upgrade(url)
        yield url


def _add(url: str, *samples: tuple[Any, ...], task_run_id: int | None = None) -> None:
    with catalog.session_scope(url) as session:
        q.add_metric_samples(session, samples, task_run_id=task_run_id)


def _retain(url: str, **kwargs: Any) -> RetentionResult:
    kwargs.setdefault("now", NOW)
    with catalog.session_scope(url) as session:
        return apply_retention(session, **kwargs)


def _rows(url: str) -> list[tuple[Any, ...]]:
    """Every sample as ``(store, subject, name, unit, time, value, resolution, task_run_id)``, sorted."""
    with catalog.session_scope(url, write=False) as session:
        rows = session.scalars(sa.select(MetricSample)).all()
        out = [(r.store, r.subject, r.name, r.unit, r.time, r.value, r.resolution, r.task_run_id) for r in rows]
    return sorted(out, key=lambda r: (r[0], r[1] or "", r[2], r[3], r[4], r[5]))


def _run(session: Any, status: str, finished: datetime | None, task_id: str | None = None,
         operation: str = "health") -> int:
    end = finished or NOW
    run = TaskRun(task_id=task_id, operation=operation, store="/s", arguments={}, status=status, attempts=1,
                  queued_at=end - timedelta(minutes=5), started_at=end - timedelta(minutes=4), finished_at=finished)
    session.add(run)
    session.flush()
    return run.id


def _counts(result: RetentionResult) -> tuple[int, int, int, int]:
    return (result.samples_rolled_up, result.hourly_rows_written, result.samples_deleted, result.task_runs_deleted)


# ------------------------------------------------------------------------------------ metrics


def test_cutoffs_are_hour_starts() -> None:
    assert hour_start(NOW - timedelta(days=7)) == RAW_CUTOFF
    assert hour_start(NOW - timedelta(days=90)) == HOURLY_CUTOFF
    assert hour_start(datetime(2026, 1, 1, 10, 59, 59, 999999)) == datetime(2026, 1, 1, 10, tzinfo=UTC)


def test_old_raw_samples_become_hourly_means(db_url: str) -> None:
    h = OLD_HOUR
    _add(db_url,
         # one hour, store-wide: 1, 2, 6 -> 3.0 (first and last microsecond of the hour included)
         ("/s", "size", 1, "bytes", None, h),
         ("/s", "size", 2, "bytes", None, h + timedelta(minutes=20)),
         ("/s", "size", 6, "bytes", None, h + timedelta(minutes=59, seconds=59, microseconds=999999)),
         # the next hour is its own bucket
         ("/s", "size", 4, "bytes", None, h + timedelta(hours=1)),
         ("/s", "size", 8, "bytes", None, h + timedelta(hours=1, minutes=1)),
         # other subject / other store / other name / other unit: separate rows
         ("/s", "size", 10, "bytes", "agent-a", h + timedelta(minutes=5)),
         ("/t", "size", 100, "bytes", None, h + timedelta(minutes=5)),
         ("/s", "query_time", 0.5, "seconds", None, h + timedelta(minutes=5)),
         ("/s", "size", 7, "count", None, h + timedelta(minutes=5)),
         # the last hour before the raw cutoff is rolled up; the hour holding NOW - 7 days is not
         ("/s", "late", 5, "count", None, RAW_CUTOFF - timedelta(microseconds=1)),
         ("/s", "late", 9, "count", None, RAW_CUTOFF),
         ("/s", "late", 11, "count", None, NOW - timedelta(days=7, minutes=1)),  # older than 7 days, same hour
         ("/s", "fresh", 1, "ratio", None, NOW - timedelta(hours=1)))

    result = _retain(db_url)
    assert _counts(result) == (10, 7, 0, 0)
    assert (result.raw_cutoff, result.hourly_cutoff) == (RAW_CUTOFF, HOURLY_CUTOFF)

    hourly, raw = "1h", "raw"
    assert _rows(db_url) == [
        ("/s", None, "fresh", "ratio", NOW - timedelta(hours=1), 1.0, raw, None),
        ("/s", None, "late", "count", RAW_CUTOFF - timedelta(hours=1), 5.0, hourly, None),
        ("/s", None, "late", "count", RAW_CUTOFF, 9.0, raw, None),
        ("/s", None, "late", "count", NOW - timedelta(days=7, minutes=1), 11.0, raw, None),
        ("/s", None, "query_time", "seconds", h, 0.5, hourly, None),
        ("/s", None, "size", "bytes", h, 3.0, hourly, None),
        ("/s", None, "size", "bytes", h + timedelta(hours=1), 6.0, hourly, None),
        ("/s", None, "size", "count", h, 7.0, hourly, None),
        ("/s", "agent-a", "size", "bytes", h, 10.0, hourly, None),
        ("/t", None, "size", "bytes", h, 100.0, hourly, None),
    ]


def test_rollups_read_as_ordinary_samples(db_url: str) -> None:
    h = OLD_HOUR
    _add(db_url, *[("/s", "size", v, "bytes", None, h + timedelta(minutes=10 * i)) for i, v in enumerate((1, 2, 6))],
         ("/s", "size", 20, "bytes", None, NOW - timedelta(days=1)))
    _retain(db_url)
    with catalog.session_scope(db_url, write=False) as session:
        series = q.metric_series(session, store="/s", name="size")
        assert [(s.time, s.value) for s in series] == [(h, 3.0), (NOW - timedelta(days=1), 20.0)]
        # an inclusive bound exactly on the hour finds the roll-up (same stored form as any instant)
        (point,) = q.metric_series(session, store="/s", name="size", since=h, until=h)
        assert point.value == 3.0 and point.time == h
        assert q.metric_series(session, store="/s", name="size", since=h + timedelta(microseconds=1),
                               until=h + timedelta(hours=1)) == []
        assert [q.sample_to_dict(s)["time"] for s in q.store_samples(session, store="/s")] == [
            "2026-02-10T05:00:00Z", (NOW - timedelta(days=1)).isoformat().replace("+00:00", "Z")]


def test_rollup_keeps_the_run_of_a_single_run_hour(db_url: str) -> None:
    with catalog.session_scope(db_url) as session:
        run_a = _run(session, "success", NOW)
        run_b = _run(session, "success", NOW)
    h = OLD_HOUR
    _add(db_url, ("/s", "a", 1, "count", None, h), ("/s", "a", 3, "count", None, h + timedelta(minutes=1)),
         task_run_id=run_a)
    _add(db_url, ("/s", "b", 1, "count", None, h), task_run_id=run_a)
    _add(db_url, ("/s", "b", 2, "count", None, h + timedelta(minutes=1)), task_run_id=run_b)
    _add(db_url, ("/s", "c", 1, "count", None, h), task_run_id=run_a)
    _add(db_url, ("/s", "c", 2, "count", None, h + timedelta(minutes=1)))  # no run
    assert _counts(_retain(db_url)) == (6, 3, 0, 0)
    assert [(r[2], r[5], r[7]) for r in _rows(db_url)] == [("a", 2.0, run_a), ("b", 1.5, None), ("c", 1.5, None)]


def test_second_run_changes_nothing(db_url: str) -> None:
    h = OLD_HOUR
    _add(db_url, *[("/s", "size", float(i), "bytes", None, h + timedelta(minutes=7 * i)) for i in range(20)],
         ("/s", "size", 1.0, "bytes", None, HOURLY_CUTOFF - timedelta(minutes=1)),
         ("/s", "size", 2.0, "bytes", None, NOW))
    first = _retain(db_url)
    assert _counts(first) == (20, 3, 1, 0)  # 7-minute steps over 133 minutes: hours 05, 06, 07
    with catalog.session_scope(db_url, write=False) as session:
        before = sorted((r.id, r.time, r.value, r.resolution) for r in session.scalars(sa.select(MetricSample)))
    second = _retain(db_url)
    assert _counts(second) == (0, 0, 0, 0)
    with catalog.session_scope(db_url, write=False) as session:
        after = sorted((r.id, r.time, r.value, r.resolution) for r in session.scalars(sa.select(MetricSample)))
    assert after == before
    # an hour later the same: hourly rows are never rolled up again
    assert _counts(_retain(db_url, now=NOW + timedelta(minutes=59))) == (0, 0, 0, 0)


def test_hourly_rows_expire_after_hourly_days(db_url: str) -> None:
    h = OLD_HOUR
    _add(db_url, ("/s", "size", 1, "bytes", None, h), ("/s", "size", 5, "bytes", None, h + timedelta(minutes=30)))
    assert _counts(_retain(db_url)) == (2, 1, 0, 0)
    # 90 days after the hour's start: kept (the hourly cutoff is that very hour start)
    later = h + timedelta(days=90)
    assert _counts(_retain(db_url, now=later)) == (0, 0, 0, 0)
    assert [(r[4], r[5], r[6]) for r in _rows(db_url)] == [(h, 3.0, "1h")]
    # an hour later the whole hour is older than 90 days: deleted
    assert _counts(_retain(db_url, now=later + timedelta(hours=1))) == (0, 0, 1, 0)
    assert _rows(db_url) == []


def test_raw_rows_past_the_hourly_horizon_are_deleted_not_rolled_up(db_url: str) -> None:
    """A catalog that never ran retention: samples older than hourly_days go at once."""
    _add(db_url, ("/s", "size", 1, "bytes", None, HOURLY_CUTOFF - timedelta(days=30)),
         ("/s", "size", 2, "bytes", None, HOURLY_CUTOFF - timedelta(microseconds=1)),
         ("/s", "size", 4, "bytes", None, HOURLY_CUTOFF))
    assert _counts(_retain(db_url)) == (1, 1, 2, 0)
    assert [(r[4], r[5], r[6]) for r in _rows(db_url)] == [(HOURLY_CUTOFF, 4.0, "1h")]


def test_bad_arguments_are_refused(db_url: str) -> None:
    with catalog.session_scope(db_url) as session:
        with pytest.raises(ValueError, match="raw_days"):
            apply_retention(session, now=NOW, raw_days=-1)
        with pytest.raises(ValueError, match="task_runs_days"):
            apply_retention(session, now=NOW, task_runs_days=float("nan"))
        with pytest.raises(ValueError, match="shorter than raw_days"):
            apply_retention(session, now=NOW, raw_days=30, hourly_days=7)


def test_resolution_is_checked_by_the_database(db_url: str) -> None:
    with pytest.raises(IntegrityError), catalog.session_scope(db_url) as session:
        session.add(MetricSample(time=NOW, store="/s", name="x", value=1.0, unit="count", resolution="1d"))
        session.flush()


# ---------------------------------------------------------------------------------- task runs


def test_old_finished_task_runs_are_deleted(db_url: str) -> None:
    old = NOW - timedelta(days=90, seconds=1)
    with catalog.session_scope(db_url) as session:
        doomed = {status: _run(session, status, old) for status in ("success", "warning", "failure", "skipped")}
        kept = {
            "recent": _run(session, "success", NOW - timedelta(days=89)),
            "running": _run(session, "running", None),
            "pending": _run(session, "pending", None),
            "old-running": _run(session, "running", None),
            "pruned-by-id": _run(session, "success", old, task_id="prune-1", operation="prune"),
            "pruned-by-run-id": _run(session, "success", old, task_id="prune-2", operation="prune"),
        }
        for key in ("old-running", "pending"):  # started long ago, never finished
            row = session.get(TaskRun, kept[key])
            assert row is not None
            row.queued_at = row.started_at = NOW - timedelta(days=400)
        record = q.PrunedRecord(agent="a", collection="c", record_id="r1", reason="old", action="removed",
                                document_path="a/c.json", record={"id": "r1"})
        q.add_prune_actions(session, run_id="prune-1", store="/s", records=[record], task_run_id=kept["pruned-by-id"])
        q.add_prune_actions(session, run_id="prune-2", store="/s", records=[record], task_run_id=None)
        q.add_metric_samples(session, [("/s", "size", 42, "bytes", None, NOW - timedelta(days=1))],
                             task_run_id=doomed["success"])

    assert _counts(_retain(db_url)) == (0, 0, 0, 4)
    with catalog.session_scope(db_url, write=False) as session:
        assert set(session.scalars(sa.select(TaskRun.id))) == set(kept.values())
        # samples of a deleted run stay, detached from it (ON DELETE SET NULL)
        (sample,) = session.scalars(sa.select(MetricSample)).all()
        assert (sample.value, sample.task_run_id) == (42.0, None)
        # prune undo still finds everything it needs
        for run_id, task_run_key in (("prune-1", "pruned-by-id"), ("prune-2", None)):
            (action,) = q.prune_actions_for_run(session, run_id)
            assert q.prune_action_payload(session, action) == {"id": "r1"} and action.document_path == "a/c.json"
            assert action.task_run_id == (kept[task_run_key] if task_run_key else None)
        assert q.get_task_run(session, "prune-1") is not None
        assert q.get_task_run(session, "prune-2") is not None
    assert _counts(_retain(db_url)) == (0, 0, 0, 0)
    # once its prune actions are gone (nothing does that today), the run may go too
    with catalog.session_scope(db_url) as session:
        session.execute(sa.delete(PruneAction))
    assert _counts(_retain(db_url)) == (0, 0, 0, 2)


# ---------------------------------------------------------------------------------- migration


def test_migration_0003_matches_the_model_and_downgrades(db_url: str) -> None:
    assert catalog.current_revision(db_url) == catalog.head_revision()
    engine = catalog.get_engine(db_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        diff = [d for d in compare_metadata(ctx, Base.metadata) if "metric_samples" in repr(d)]
        assert diff == []
        checks = {c["name"] for c in sa.inspect(conn).get_check_constraints("metric_samples")}
        assert checks == {"ck_metric_samples_unit", "ck_metric_samples_resolution"}

    h = OLD_HOUR
    _add(db_url, ("/s", "size", 1, "bytes", None, h), ("/s", "size", 5, "bytes", None, h + timedelta(minutes=1)),
         ("/s", "size", 7, "bytes", None, NOW))
    assert _counts(_retain(db_url)) == (2, 1, 0, 0)

    catalog.downgrade(db_url, "0002")
    assert catalog.current_revision(db_url) == "0002"
    with engine.connect() as conn:
        insp = sa.inspect(conn)
        assert "resolution" not in {c["name"] for c in insp.get_columns("metric_samples")}
        assert {c["name"] for c in insp.get_check_constraints("metric_samples")} == {"ck_metric_samples_unit"}
        # the roll-up stays, as a plain sample at the start of its hour
        values = conn.execute(sa.text("SELECT value FROM metric_samples ORDER BY value")).scalars().all()
        assert values == [3.0, 7.0]

    catalog.upgrade(db_url)
    assert catalog.current_revision(db_url) == catalog.head_revision()
    assert [(r[4], r[5], r[6]) for r in _rows(db_url)] == [(h, 3.0, "raw"), (NOW, 7.0, "raw")]
    # rolling up a one-sample hour gives the same point back
    assert _counts(_retain(db_url)) == (1, 1, 0, 0)
    assert [(r[4], r[5], r[6]) for r in _rows(db_url)] == [(h, 3.0, "1h"), (NOW, 7.0, "raw")]


# --------------------------------------------------------------------------------------- task


def test_retention_task_inline(aml_settings: Any) -> None:
    from tasks import catalog as catalog_tasks

    url = aml_settings.catalog_url
    now = datetime.now(UTC)
    old = hour_start(now - timedelta(days=aml_settings.metrics_raw_days + 2))
    try:
        with catalog.session_scope(url) as session:
            q.add_metric_samples(session, [("/s", "size", v, "bytes", None, old + timedelta(minutes=m))
                                           for v, m in ((1, 0), (2, 15), (6, 45))])
            q.add_metric_samples(session, [("/s", "size", 9, "bytes", None, now - timedelta(hours=1))])
            _run(session, "success", now - timedelta(days=aml_settings.task_runs_days + 1))

        result = catalog_tasks.retention.apply(kwargs={}).get()
        json.dumps(result)  # JSON-serialisable as it is
        assert result["status"] == "success"
        assert (result["samples_rolled_up"], result["hourly_rows_written"], result["samples_deleted"],
                result["task_runs_deleted"]) == (3, 1, 0, 1)
        assert result["operation"] == "catalog"
        assert result["store"] == url  # no password in a SQLite URL; masked otherwise
        with catalog.session_scope(url, write=False) as session:
            assert [(s.time, s.value, s.resolution) for s in q.metric_series(session, store="/s", name="size")] == [
                (old, 3.0, "1h"), (now - timedelta(hours=1), 9.0, "raw")]
            (run,) = q.recent_task_runs(session, operation="catalog")
            assert run.status == "success" and run.store == url
            assert run.arguments == {"raw_days": 7.0, "hourly_days": 90.0, "task_runs_days": 90.0, "now": None}
            assert run.result is not None and run.result["samples_rolled_up"] == 3

        again = catalog_tasks.retention.apply(kwargs={"now": now.isoformat()}).get()
        assert (again["samples_rolled_up"], again["hourly_rows_written"], again["samples_deleted"],
                again["task_runs_deleted"]) == (0, 0, 0, 0)

        # overrides: everything older than a day is rolled up; the first run's record is finished and kept
        third = catalog_tasks.retention.apply(kwargs={"raw_days": 0, "hourly_days": 1}).get()
        assert (third["samples_rolled_up"], third["samples_deleted"]) == (1, 1)
        with pytest.raises(ValueError, match="shorter than raw_days"):
            catalog_tasks.retention.apply(kwargs={"raw_days": 2, "hourly_days": 1}).get()
        with catalog.session_scope(url, write=False) as session:
            runs = q.recent_task_runs(session, operation="catalog")
            assert [r.status for r in runs] == ["failure", "success", "success", "success"]
    finally:
        catalog.dispose_engines(url)


def test_catalog_store_id_masks_the_password() -> None:
    from tasks.catalog import catalog_store_id

    assert catalog_store_id("postgresql+psycopg2://aml:s3cret@db:5432/aml") == "postgresql+psycopg2://aml:***@db:5432/aml"
    assert catalog_store_id("sqlite:////var/lib/aml/catalog.db") == "sqlite:////var/lib/aml/catalog.db"
