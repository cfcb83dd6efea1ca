"""The catalog: Alembic migrations, engines, and the data-access functions of ``models.queries``.

Every test runs on a fresh SQLite file in ``tmp_path``; the tests taking ``db_url`` also run on
PostgreSQL (mark ``postgres``) when ``AML_TEST_POSTGRES_URL`` is set, each in a schema of its own
that is dropped afterwards.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.exc import IntegrityError

from models import Alert, Backup, Base, MetricSample, Remediation, TaskRun
from models import queries as q
from models.base import PARTIAL_WHERE, partial_index
from tests.catalog_helpers import empty_catalog
from workers import catalog

REPO = Path(__file__).resolve().parent.parent
CATALOG_TABLES = {"task_runs", "backups", "alerts", "metric_samples", "prune_actions", "prune_undo_logs",
                  "restore_drills", "remediations"}
T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty catalog database: a new SQLite file, or a new PostgreSQL schema."""
    with empty_catalog(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def migrated(db_url: str) -> str:
    """``db_url`` upgraded to the newest revision."""
    catalog.upgrade(db_url)
    return db_url


def _tables(url: str) -> set[str]:
    with catalog.get_engine(url).connect() as conn:
        return set(sa.inspect(conn).get_table_names())


# ------------------------------------------------------------------------------- migrations


def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    assert catalog.current_revision(db_url) is None
    catalog.upgrade(db_url)
    assert catalog.current_revision(db_url) == catalog.head_revision() == "0006"
    assert _tables(db_url) >= CATALOG_TABLES

    catalog.downgrade(db_url, "base")
    assert catalog.current_revision(db_url) is None
    assert _tables(db_url) <= {"alembic_version"}  # Alembic's own bookkeeping table, now empty

    catalog.upgrade(db_url)
    assert catalog.current_revision(db_url) == catalog.head_revision()
    assert _tables(db_url) >= CATALOG_TABLES


def test_migration_matches_models(migrated: str) -> None:
    engine = catalog.get_engine(migrated)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        assert compare_metadata(ctx, Base.metadata) == []

        # Alembic compares neither CHECK constraints nor index WHERE clauses: check them here.
        insp = sa.inspect(conn)
        for table in Base.metadata.sorted_tables:
            name = table.name
            want_checks = {c.name for c in table.constraints if isinstance(c, sa.CheckConstraint)}
            assert {c["name"] for c in insp.get_check_constraints(name)} == want_checks, name
            want_uniques = {c.name for c in table.constraints if isinstance(c, sa.UniqueConstraint)}
            assert {c["name"] for c in insp.get_unique_constraints(name)} == want_uniques, name
            want_fks = {
                (c.name, c.ondelete) for c in table.constraints if isinstance(c, sa.ForeignKeyConstraint)
            }
            got_fks = {
                (fk["name"], fk.get("options", {}).get("ondelete")) for fk in insp.get_foreign_keys(name)
            }
            assert got_fks == want_fks, name
            want_ix = {(i.name, tuple(c.name for c in i.columns), bool(i.unique)) for i in table.indexes}
            got_ix = {
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in insp.get_indexes(name)
                if "duplicates_constraint" not in i  # PostgreSQL: the index behind a UNIQUE constraint
            }
            assert got_ix == want_ix, name



def _partial_conditions(engine: sa.Engine) -> dict[tuple[str, str], str]:
    """``(table, index) -> condition`` of ``engine``'s unique partial indexes, as the database gives it back."""
    found = {}
    with engine.connect() as conn:
        insp = sa.inspect(conn)
        for table in insp.get_table_names():
            for index in insp.get_indexes(table):
                where = index.get("dialect_options", {}).get(f"{engine.dialect.name}_where")
                if where is not None:
                    assert index["unique"], index["name"]
                    found[table, str(index["name"])] = " ".join(str(where).split())
    return found


def test_create_all_makes_the_partial_indexes_of_the_migrations(migrated: str, tmp_path: Path) -> None:
    """``create_all`` (tests) makes the migrations' partial indexes with the same conditions, as each database
    gives them back (PostgreSQL in its own words: ``IN (...)`` as ``= ANY (ARRAY[...])``); on SQLite the text is the
    models' own. Each acts partially: a second open alert of a fingerprint, or a second remediation in flight for a
    store, is refused; any number of resolved alerts or finished remediations are not."""
    wanted = {(t.name, str(i.name)): str(i.info[PARTIAL_WHERE]) for t in Base.metadata.sorted_tables
              for i in t.indexes if PARTIAL_WHERE in i.info}
    assert set(wanted) == {("alerts", "ux_alerts_fingerprint_open"),
                           ("remediations", "ux_remediations_store_in_flight")}
    from_migrations = _partial_conditions(catalog.get_engine(migrated))
    kind = "sqlite" if migrated.startswith("sqlite") else "postgres"
    (tmp_path / "other").mkdir()
    with empty_catalog(kind, tmp_path / "other") as url:
        engine = catalog.get_engine(url)
        Base.metadata.create_all(engine)
        assert _partial_conditions(engine) == from_migrations
        if kind == "sqlite":
            assert from_migrations == wanted
        alert = {"fingerprint": "f", "store": "/s", "check": "c", "severity": "warning", "message": "m",
                 "details": {}, "first_seen": T0, "last_seen": T0, "count": 1, "resolved_at": T0}
        remediation = {"store": "/s", "rule": "r", "mode": "auto", "actions": [], "reason": "why", "status": "success"}
        with engine.begin() as conn:
            conn.execute(sa.insert(Alert), [alert, alert, {**alert, "resolved_at": None}])
            conn.execute(sa.insert(Remediation), [remediation, {**remediation, "status": "failure"},
                                                  {**remediation, "status": "queued"},
                                                  {**remediation, "store": "/t", "status": "running"}])
        second = ((Alert, {**alert, "resolved_at": None}), (Remediation, {**remediation, "status": "running"}))
        for table, row in second:
            with pytest.raises(IntegrityError), engine.begin() as conn:
                conn.execute(sa.insert(table), [row])


def test_partial_index_condition_is_compiled_for_the_driver() -> None:
    """A condition with ``%`` is escaped for a driver of the ``format`` parameter style (psycopg2), as
    ``postgresql_where=text(...)`` is."""
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.schema import CreateIndex

    index = partial_index("ix_t_s", "s", where="s LIKE 'a%'")
    sa.Table("t", sa.MetaData(), sa.Column("s", sa.Text), index)
    assert str(CreateIndex(index).compile(dialect=postgresql.psycopg2.dialect())).strip().endswith(
        "WHERE s LIKE 'a%%'")
    assert str(CreateIndex(index).compile(dialect=sqlite.dialect())).strip() == (
        "CREATE INDEX ix_t_s ON t (s) WHERE s LIKE 'a%'")


def test_models_do_not_import_the_postgresql_dialect() -> None:
    """The catalog's models, and a command's start on a SQLite catalog, leave SQLAlchemy's PostgreSQL dialect
    unimported (about 45 ms of CPU: ``models.base.partial_index``)."""
    probe = "import sys, models, tasks.prune; print('sqlalchemy.dialects.postgresql' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_ensure_catalog_creates_and_upgrades_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nested' / 'dir' / 'catalog.db'}"
    try:
        engine = catalog.ensure_catalog(url)
        assert catalog.ensure_catalog(url) is engine  # cached per URL
        assert catalog.current_revision(url) == catalog.head_revision()
        assert (tmp_path / "nested" / "dir" / "catalog.db").is_file()
        with catalog.session_scope(url) as session:
            q.start_task_run(session, task_id="t1", operation="health", store="/s", arguments={})
    finally:
        catalog.dispose_engines(url)


@pytest.mark.slow
def test_ensure_catalog_concurrent_processes(tmp_path: Path) -> None:
    """Several processes creating one embedded catalog at once: one migrates, the others wait."""
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    code = "import sys; from workers.catalog import ensure_catalog; ensure_catalog(sys.argv[1])"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    try:
        assert catalog.current_revision(url) == catalog.head_revision()
    finally:
        catalog.dispose_engines(url)


@pytest.mark.parametrize("db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_ensure_catalog_does_not_migrate_postgres(db_url: str) -> None:
    with pytest.raises(catalog.CatalogBehindError, match="aml db upgrade"):
        catalog.ensure_catalog(db_url)
    assert catalog.current_revision(db_url) is None
    catalog.upgrade(db_url)
    assert catalog.ensure_catalog(db_url) is catalog.get_engine(db_url)


def test_ensure_catalog_refuses_unknown_revision(migrated: str) -> None:
    with catalog.get_engine(migrated).begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00dcafe'"))
    catalog.dispose_engines(migrated)
    with pytest.raises(catalog.CatalogError, match="unknown to this aml") as info:
        catalog.ensure_catalog(migrated)
    assert not isinstance(info.value, catalog.CatalogBehindError)


def test_alembic_config_works_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = catalog.alembic_config("sqlite://")
    assert Path(str(cfg.get_main_option("script_location"))) == REPO / "models" / "migrations"
    assert catalog.head_revision() == "0006"


def test_top_level_alembic_is_the_shipped_migrations() -> None:
    """The design card's ``alembic.ini`` + ``alembic/`` work for the alembic command, and are the very
    migrations the package ships (``models/migrations``), not a second copy."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    assert (REPO / "alembic").resolve() == catalog.alembic_dir()
    script = ScriptDirectory.from_config(Config(str(REPO / "alembic.ini")))
    assert Path(script.dir).resolve() == catalog.alembic_dir()
    assert script.get_current_head() == catalog.head_revision()


def test_aml_db_upgrade_from_another_directory(tmp_path: Path) -> None:
    """The installed console script finds the migrations shipped in the package, whatever the cwd."""
    import shutil
    import subprocess

    aml = shutil.which("aml", path=str(Path(sys.executable).parent))
    assert aml is not None
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"AML_CATALOG_URL": url,
                                                                          "AML_HOME": str(tmp_path)}
    proc = subprocess.run([aml, "db", "upgrade"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert catalog.current_revision(url) == catalog.head_revision()


def test_default_url_from_aml_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AML_CATALOG_URL", raising=False)
    monkeypatch.setenv("AML_HOME", str(tmp_path / "home"))
    url = catalog.default_catalog_url()
    assert url == f"sqlite:///{tmp_path / 'home' / 'catalog.db'}"
    try:
        with catalog.session_scope() as session:  # first use creates and migrates the catalog
            q.start_task_run(session, task_id=None, operation="health", store="/s", arguments={})
        assert (tmp_path / "home" / "catalog.db").is_file()
        monkeypatch.setenv("AML_CATALOG_URL", "sqlite:///elsewhere.db")
        assert catalog.default_catalog_url() == "sqlite:///elsewhere.db"
    finally:
        catalog.dispose_engines(url)


# --------------------------------------------------------------------------------- engines


def test_sqlite_wal_busy_timeout_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    url = f"sqlite:///{path}"
    try:
        catalog.upgrade(url)
        with catalog.get_engine(url).connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        catalog.dispose_engines(url)
    raw = sqlite3.connect(path)  # WAL is a property of the file, seen by any client
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        raw.close()


def test_foreign_keys_enforced(migrated: str) -> None:
    with pytest.raises(IntegrityError), catalog.session_scope(migrated) as session:
        q.add_metric_samples(session, [q.Sample("/s", "size", 1.0, "bytes", task_run_id=424242)])
        session.flush()


# ----------------------------------------------------------------------------------- alerts


def _alerts(url: str) -> list[Alert]:
    with catalog.session_scope(url, write=False) as session:
        return list(session.scalars(sa.select(Alert).order_by(Alert.id)))


def test_alert_lifecycle(migrated: str) -> None:
    kw: dict[str, Any] = {"store": "/mem", "agent": "agent-a", "check": "memory_within_limits"}

    for i, sev in enumerate(["warning", "warning", "critical"]):
        with catalog.session_scope(migrated) as session:
            alert = q.observe_check(
                session,
                **kw,
                passed=False,
                severity=sev,
                message=f"too big #{i}",
                details={"size": i},
                now=T0 + timedelta(minutes=i),
            )
            assert alert is not None and alert.count == i + 1

    (row,) = _alerts(migrated)
    assert row.count == 3
    assert row.first_seen == T0
    assert row.last_seen == T0 + timedelta(minutes=2)
    assert (row.severity, row.message, row.details) == ("critical", "too big #2", {"size": 2})
    assert row.resolved_at is None and row.is_open
    assert row.fingerprint == q.alert_fingerprint("/mem", "agent-a", "memory_within_limits")

    with catalog.session_scope(migrated) as session:
        assert [a.id for a in q.open_alerts(session, "/mem")] == [row.id]
        assert q.open_alerts(session, "/elsewhere") == []
        resolved = q.observe_check(session, **kw, passed=True, now=T0 + timedelta(hours=1))
        assert resolved is not None and resolved.id == row.id
    with catalog.session_scope(migrated) as session:
        assert q.observe_check(session, **kw, passed=True, now=T0 + timedelta(hours=2)) is None
        assert q.open_alerts(session) == []

    (row,) = _alerts(migrated)
    assert row.resolved_at == T0 + timedelta(hours=1)
    assert row.count == 3

    with catalog.session_scope(migrated) as session:
        again = q.observe_check(
            session, **kw, passed=False, severity="error", message="again", now=T0 + timedelta(hours=3)
        )
        assert again is not None
    old, new = _alerts(migrated)
    assert old.id == row.id and old.resolved_at is not None
    assert new.resolved_at is None and new.count == 1 and new.first_seen == T0 + timedelta(hours=3)
    with catalog.session_scope(migrated, write=False) as session:
        assert [a.id for a in q.open_alerts(session)] == [new.id]
        assert [a.id for a in q.alert_history(session, store="/mem")] == [new.id, old.id]


def test_alert_fingerprint_separates_agents_and_checks(migrated: str) -> None:
    with catalog.session_scope(migrated) as session:
        for agent in (None, "", "a"):
            for check in ("c1", "c2"):
                q.observe_check(session, store="/s", agent=agent, check=check, passed=False, severity="info")
        q.observe_check(session, store="/t", agent="a", check="c1", passed=False, severity="info")
    assert len(_alerts(migrated)) == 7
    with catalog.session_scope(migrated) as session:
        worst = q.observe_check(session, store="/s", agent="a", check="c2", passed=False, severity="critical")
        assert worst is not None
        ranked = q.open_alerts(session, "/s")
        assert ranked[0].id == worst.id and len(ranked) == 6


def test_observe_check_accepts_enum_severity_and_rejects_unknown(migrated: str) -> None:
    import enum

    class AmlSeverity(enum.IntEnum):  # the shape of aml.health.checks.Severity
        INFO = 0
        CRITICAL = 3

    with catalog.session_scope(migrated) as session:
        alert = q.observe_check(
            session, store="/s", agent=None, check="c", passed=False, severity=AmlSeverity.CRITICAL
        )
        assert alert is not None and alert.severity == "critical"
        with pytest.raises(ValueError, match="severity"):
            q.observe_check(session, store="/s", agent=None, check="c", passed=False, severity="fatal")


def test_observations_refresh_the_alerts_loaded_in_the_session(migrated: str) -> None:
    """What a health run does in one transaction: the fingerprints of the open alerts say which checks have one to
    repeat or resolve, and the open alerts read after observing show the new values (the objects already loaded in
    the session are refreshed, not left stale)."""
    kw: dict[str, Any] = {"store": "/s", "check": "c"}
    with catalog.session_scope(migrated) as session:
        for agent in ("a", "b"):
            q.observe_check(session, **kw, agent=agent, passed=False, severity="warning")
    with catalog.session_scope(migrated) as session:
        before = {a.agent: a for a in q.open_alerts(session, "/s")}
        assert q.open_alert_fingerprints(session, "/s") == {q.alert_fingerprint("/s", a, "c") for a in ("a", "b")}
        assert q.open_alert_fingerprints(session, "/t") == set()
        q.observe_check(session, **kw, agent="a", passed=False, severity="critical", message="worse")
        assert q.observe_check(session, **kw, agent="b", passed=True) is before["b"]
        assert q.observe_check(session, **kw, agent="z", passed=True) is None  # nothing open: nothing to resolve
        after = {a.agent: a for a in q.open_alerts(session, "/s")}
        assert list(after) == ["a"] and after["a"] is before["a"]
        assert (after["a"].count, after["a"].severity, after["a"].message) == (2, "critical", "worse")
        assert before["b"].resolved_at is not None
        assert q.open_alert_fingerprints(session, "/s") == {q.alert_fingerprint("/s", "a", "c")}


def test_partial_unique_index_one_open_alert_per_fingerprint(migrated: str) -> None:
    def alert(resolved_at: datetime | None) -> Alert:
        return Alert(
            fingerprint="f" * 64,
            store="/s",
            agent=None,
            check="c",
            severity="warning",
            message="m",
            details={},
            first_seen=T0,
            last_seen=T0,
            count=1,
            resolved_at=resolved_at,
        )

    # Any number of resolved rows, plus one open row, is fine...
    with catalog.session_scope(migrated) as session:
        session.add_all([alert(T0), alert(T0 + timedelta(seconds=1)), alert(None)])
    # ...a second open row is not.
    with pytest.raises(IntegrityError), catalog.session_scope(migrated) as session:
        session.add(alert(None))
        session.flush()
    assert len(_alerts(migrated)) == 3


def test_concurrent_observers_keep_one_open_alert(migrated: str) -> None:
    threads, per_thread = 4, 10
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def observe() -> None:
        try:
            start.wait()
            for _ in range(per_thread):
                with catalog.session_scope(migrated) as session:
                    q.observe_check(session, store="/s", agent="a", check="c", passed=False, severity="error")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=observe) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    assert errors == []
    (row,) = _alerts(migrated)
    assert row.count == threads * per_thread and row.resolved_at is None


# ---------------------------------------------------------------------------- time and runs


def test_aware_utc_round_trip(migrated: str) -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    local = datetime(2026, 3, 4, 10, 0, 0, 123456, tzinfo=ist)
    with catalog.session_scope(migrated) as session:
        q.record_backup(
            session,
            backup_id="full_20260304_043000",
            store="/s",
            repository="/s/../memory-backup",
            backup_type="full",
            created_at=local,
            file_count=3,
            total_size_bytes=10,
            stored_size_bytes=7,
        )
        q.record_backup(
            session,
            backup_id="incr_20260304_050000",
            store="/s",
            repository="/r",
            backup_type="incremental",
            parent_backup_id="full_20260304_043000",
            created_at=datetime(2026, 3, 4, 5, 0, 0),  # naive: taken as UTC
            file_count=3,
            total_size_bytes=10,
            stored_size_bytes=0,
        )
    with catalog.session_scope(migrated, write=False) as session:
        full = q.get_backup(session, "full_20260304_043000")
        incr = q.get_backup(session, "incr_20260304_050000")
        assert full is not None and incr is not None
        assert full.created_at == local
        assert full.created_at.tzinfo is UTC
        assert full.created_at == datetime(2026, 3, 4, 4, 30, 0, 123456, tzinfo=UTC)
        assert incr.created_at == datetime(2026, 3, 4, 5, 0, 0, tzinfo=UTC) and incr.created_at.tzinfo is UTC
        # Comparisons bind through the same type: an aware bound in another zone works.
        later = session.scalars(
            sa.select(q.Backup.backup_id).where(
                q.Backup.created_at > datetime(2026, 3, 4, 10, 15, tzinfo=ist)
            )
        ).all()
        assert later == ["incr_20260304_050000"]


def test_task_run_start_finish(migrated: str) -> None:
    with catalog.session_scope(migrated) as session:
        queued = q.queue_task_run(
            session,
            task_id="celery-1",
            operation="backup",
            store="/s",
            arguments={"incremental": True},
            now=T0,
        )
        assert queued.status == "pending" and queued.attempts == 0
        run = q.start_task_run(
            session,
            task_id="celery-1",
            operation="backup",
            store="/s",
            arguments={"incremental": True},
            now=T0 + timedelta(seconds=5),
        )
        assert run.id == queued.id and run.status == "running" and run.attempts == 1
        assert run.queued_at == T0 and run.started_at == T0 + timedelta(seconds=5)

    with catalog.session_scope(migrated) as session:  # a different session: the row is merged in
        done = q.finish_task_run(
            session,
            run,
            status="warning",
            result={"backup_id": "incr_x", "files": 3},
            now=T0 + timedelta(seconds=7.5),
        )
        assert done.duration_s == pytest.approx(2.5)

    with catalog.session_scope(migrated, write=False) as session:
        row = q.get_task_run(session, "celery-1")
        assert row is not None
        assert (row.status, row.result, row.error) == ("warning", {"backup_id": "incr_x", "files": 3}, None)
        assert row.finished_at == T0 + timedelta(seconds=7.5) and row.finished_at.tzinfo is UTC
        assert row.arguments == {"incremental": True}

    with catalog.session_scope(migrated) as session:  # a retry of the same Celery task reuses the row
        retry = q.start_task_run(session, task_id="celery-1", operation="backup", store="/s", arguments={})
        assert (
            retry.id == run.id and retry.attempts == 2 and retry.result is None and retry.finished_at is None
        )
        q.finish_task_run(session, retry, status="failure", error="OSError: disk full")
        with pytest.raises(ValueError, match="not terminal"):
            q.finish_task_run(session, retry, status="running")
        anon = q.start_task_run(session, task_id=None, operation="health", store="/s", arguments={})
        q.finish_task_run(session, anon, status="success")

    with catalog.session_scope(migrated, write=False) as session:
        runs = q.recent_task_runs(session, store="/s")
        assert len(runs) == 2 and {r.status for r in runs} == {"failure", "success"}
        assert [r.operation for r in q.recent_task_runs(session, operation="backup")] == ["backup"]
        assert q.recent_task_runs(session, status="failure")[0].error == "OSError: disk full"
        assert session.scalar(sa.select(sa.func.count()).select_from(TaskRun)) == 2


# ------------------------------------------------------------------ metrics, backups, prune


def test_metric_samples(migrated: str) -> None:
    with catalog.session_scope(migrated) as session:
        run = q.start_task_run(session, task_id="t", operation="trace", store="/s", arguments={})
        n = q.add_metric_samples(
            session,
            [
                q.Sample("/s", "size", 100, "bytes"),
                q.Sample("/s", "size", 10, "bytes", subject="agent-a"),
                ("/s", "size", 200, "bytes", None, T0 + timedelta(hours=1)),
                q.Sample("/s", "cache_hit", 0.75, "ratio", time=T0 + timedelta(hours=2)),
            ],
            now=T0,
            task_run_id=run.id,
        )
        assert n == 4
        assert q.add_metric_samples(session, []) == 0
        with pytest.raises(ValueError, match="unit"):
            q.add_metric_samples(session, [q.Sample("/s", "size", 1, "megabytes")])
    with catalog.session_scope(migrated, write=False) as session:
        series = q.metric_series(session, store="/s", name="size")
        assert [(s.time, s.value) for s in series] == [(T0, 100.0), (T0 + timedelta(hours=1), 200.0)]
        assert all(s.task_run_id == run.id and s.unit == "bytes" for s in series)
        assert [s.value for s in q.metric_series(session, store="/s", name="size", subject="agent-a")] == [
            10.0
        ]
        assert len(q.metric_series(session, store="/s", name="size", any_subject=True)) == 3
        assert len(q.metric_series(session, store="/s", name="size", since=T0 + timedelta(minutes=1))) == 1
        assert session.scalar(sa.select(sa.func.count()).select_from(MetricSample)) == 4


def test_backups_latest_and_verification(migrated: str) -> None:
    def record(session: sa.orm.Session, backup_id: str, at: datetime, **kw: Any) -> None:
        q.record_backup(
            session,
            backup_id=backup_id,
            store="/s",
            repository="/r",
            backup_type=kw.pop("backup_type", "full"),
            created_at=at,
            file_count=1,
            total_size_bytes=2,
            stored_size_bytes=1,
            agents=["a", "b"],
            tags=["daily"],
            **kw,
        )

    with catalog.session_scope(migrated) as session:
        assert q.latest_backup(session, "/s") is None
        record(session, "full_1", T0)
        record(
            session, "incr_2", T0 + timedelta(days=1), backup_type="incremental", parent_backup_id="full_1"
        )
        assert q.set_backup_verification(session, backup_id="full_1", status="ok", detail={"read_data": True})
        assert q.set_backup_verification(session, backup_id="nope", status="ok") is None
        with pytest.raises(ValueError, match="backup_type"):
            record(session, "x", T0, backup_type="differential")
    with catalog.session_scope(migrated) as session:
        latest = q.latest_backup(session, "/s")
        assert latest is not None and latest.backup_id == "incr_2" and latest.verify_status == "unverified"
        ok = q.latest_backup(session, "/s", verified_ok_only=True)
        assert ok is not None and ok.backup_id == "full_1" and ok.verify_detail == {"read_data": True}
        assert ok.verified_at is not None and ok.verified_at.tzinfo is UTC
        assert ok.agents == ["a", "b"] and ok.tags == ["daily"]
        record(session, "full_1", T0, description="re-recorded")  # idempotent upsert keeps verification
    with catalog.session_scope(migrated) as session:
        again = q.get_backup(session, "full_1")
        assert again is not None and again.verify_status == "ok" and again.description == "re-recorded"
        assert [b.backup_id for b in q.list_backups(session, "/s")] == ["full_1", "incr_2"]
        assert q.delete_backups(session, ["full_1", "missing"]) == 1
        assert [b.backup_id for b in q.list_backups(session)] == ["incr_2"]


def test_two_repositories_may_share_a_backup_id(migrated: str) -> None:
    """Ids are unique per repository: two stores backed up by beat in the same second keep a row each,
    and verification and retention act on the right one."""

    def record(session: sa.orm.Session, store: str, repository: str) -> None:
        q.record_backup(session, backup_id="incr_20261202_020000", store=store, repository=repository,
                        backup_type="incremental", created_at=T0, file_count=1, total_size_bytes=2,
                        stored_size_bytes=1)

    with catalog.session_scope(migrated) as session:
        record(session, "/a", "/a-backup")
        record(session, "/b", "/b-backup")
        assert q.set_backup_verification(session, backup_id="incr_20261202_020000", status="failed",
                                         repository="/a-backup")
    with catalog.session_scope(migrated) as session:
        (a,), (b,) = q.list_backups(session, "/a"), q.list_backups(session, "/b")
        assert (a.repository, a.verify_status) == ("/a-backup", "failed")
        assert (b.repository, b.verify_status) == ("/b-backup", "unverified")
        assert q.delete_backups(session, ["incr_20261202_020000"], repository="/b-backup") == 1
    with catalog.session_scope(migrated) as session:
        assert [r.store for r in q.list_backups(session)] == ["/a"]
    with pytest.raises(sa.exc.IntegrityError), catalog.session_scope(migrated) as session:
        # one repository still cannot hold an id twice
        session.add(Backup(backup_id="incr_20261202_020000", store="/a", repository="/a-backup",
                           backup_type="full", created_at=T0, file_count=0, total_size_bytes=0,
                           stored_size_bytes=0, agents=[], tags=[], verify_status="unverified"))
        session.flush()


def test_revision_0002_keeps_rows_and_its_downgrade_refuses_shared_ids(db_url: str) -> None:
    catalog.upgrade(db_url, "0001")
    with catalog.get_engine(db_url).begin() as conn:  # a catalog that is behind: no session_scope
        conn.execute(sa.text(
            "INSERT INTO backups (backup_id, store, repository, backup_type, created_at, file_count, "
            "total_size_bytes, stored_size_bytes, agents, tags, verify_status) VALUES "
            "('full_1', '/a', '/a-backup', 'full', '2026-01-01 00:00:00', 3, 4, 5, '[]', '[]', 'ok')"))
    catalog.upgrade(db_url, "0002")
    assert catalog.current_revision(db_url) == "0002"
    engine = catalog.get_engine(db_url)  # a catalog behind head: raw SQL, no session_scope (which upgrades)
    with engine.begin() as conn:
        rows = conn.execute(sa.text("SELECT backup_id, file_count, verify_status FROM backups")).all()
        assert [tuple(r) for r in rows] == [("full_1", 3, "ok")]
        conn.execute(sa.text(
            "INSERT INTO backups (backup_id, store, repository, backup_type, created_at, file_count, "
            "total_size_bytes, stored_size_bytes, agents, tags, verify_status) VALUES "
            "('full_1', '/b', '/b-backup', 'full', '2026-01-01 00:00:00', 1, 1, 1, '[]', '[]', 'ok')"))
    with pytest.raises(sa.exc.IntegrityError):
        catalog.downgrade(db_url, "0001")
    assert catalog.current_revision(db_url) == "0002"
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM backups WHERE repository = '/b-backup'"))
    catalog.downgrade(db_url, "0001")
    assert catalog.current_revision(db_url) == "0001"


def test_prune_actions_record_and_undo(migrated: str) -> None:
    records = [
        q.PrunedRecord(
            agent="a",
            collection="patterns",
            record_id=f"p{i}",
            reason="unused > 90 days",
            action="removed" if i % 2 else "archived",
            document_path="a/patterns.json",
            record={"id": f"p{i}", "metrics": {"successRate": 0.1}},
            score=0.1 * i,
        )
        for i in range(3)
    ]
    with catalog.session_scope(migrated) as session:
        run = q.start_task_run(session, task_id="prune-1", operation="prune", store="/s", arguments={})
        assert (
            q.add_prune_actions(
                session, run_id="prune-1", store="/s", records=records, task_run_id=run.id, backup_id="full_1"
            )
            == 3
        )
        with pytest.raises(ValueError, match="action"):
            q.add_prune_actions(
                session,
                run_id="prune-2",
                store="/s",
                records=[q.PrunedRecord("a", "c", "r", "why", "deleted", "a/c.json", {})],
            )
    with catalog.session_scope(migrated) as session:
        from models import PruneUndoLog

        assert set(session.scalars(sa.select(PruneUndoLog.run_id))) == {"prune-1"}, "a refused action writes nothing"
        actions = q.prune_actions_for_run(session, "prune-1")
        assert [a.record_id for a in actions] == ["p0", "p1", "p2"]
        assert q.prune_action_payload(session, actions[1]) == {"id": "p1", "metrics": {"successRate": 0.1}}
        assert actions[1].record is None and actions[1].undo_index == 1  # the payload is in the run's undo log
        assert [a.action for a in actions] == ["archived", "removed", "archived"]
        assert actions[0].created_at.tzinfo is UTC and actions[0].backup_id == "full_1"
        assert q.mark_prune_actions_undone(session, "prune-1", ids=[actions[0].id]) == 1
        assert q.mark_prune_actions_undone(session, "prune-1") == 2
        assert q.mark_prune_actions_undone(session, "prune-1") == 0  # idempotent
    with catalog.session_scope(migrated, write=False) as session:
        assert q.prune_actions_for_run(session, "prune-1") == []
        assert len(q.prune_actions_for_run(session, "prune-1", include_undone=True)) == 3


def _pruned(document: str, n: int, text: str = "x") -> list[q.PrunedRecord]:
    return [q.PrunedRecord("a", "patterns", f"p{i}", "old", "removed", document,
                           {"v": 2, "item": {"id": f"p{i}"}, "text": f'{{"id": "p{i}", "t": "{text}"}}', "index": i})
            for i in range(n)]


def test_prune_undo_logs_hold_each_documents_payloads(migrated: str) -> None:
    """One undo log per call (one document), its rows pointing at their entries; a payload that MessagePack cannot
    hold (a lone surrogate) is kept by the JSON codec; every payload reads back equal."""
    from models import PruneUndoLog
    from models.undolog import JSON_ZSTD, MSGPACK_ZSTD

    first, odd = _pruned("a/patterns.json", 3), _pruned("b/patterns.json", 2, text="\udcff \udcff")
    odd[1] = q.PrunedRecord(**{**odd[1].__dict__, "record_id": "p\udcff", "record": {"item": {"id": "p\udcff"}}})
    with catalog.session_scope(migrated) as session:
        assert q.add_prune_actions(session, run_id="r", store="/s", records=first) == 3
        assert q.add_prune_actions(session, run_id="r", store="/s", records=odd) == 2
        assert q.add_prune_actions(session, run_id="r", store="/s", records=[]) == 0
    with catalog.session_scope(migrated, write=False) as session:
        logs = list(session.scalars(sa.select(PruneUndoLog).order_by(PruneUndoLog.id)))
        assert [(g.document_path, g.entries, g.codec) for g in logs] == [
            ("a/patterns.json", 3, MSGPACK_ZSTD), ("b/patterns.json", 2, JSON_ZSTD)]
        actions = q.prune_actions_for_run(session, "r")
        assert [(a.undo_log_id, a.undo_index) for a in actions] == [(logs[0].id, 0), (logs[0].id, 1), (logs[0].id, 2),
                                                                     (logs[1].id, 0), (logs[1].id, 1)]
        expected = [r.record for r in first + odd]
        assert [q.prune_action_payload(session, a) for a in actions] == expected
        ids = [a.id for a in actions]
        assert [p for _, _, p in q.prune_action_payloads(session, ids)] == expected
        assert [p for _, _, p in q.prune_action_payloads(session, ids[::-1])] == expected[::-1]
        assert list(q.prune_action_payloads(session, [*ids, 10**9])) == list(q.prune_action_payloads(session, ids))
        # the references undo reads first lead to the same payloads, without reading the rows again
        total, pending = q.prune_action_documents(session, "r", "/s")
        assert total == 5 and sorted(pending) == ["a/patterns.json", "b/patterns.json"]
        refs = pending["a/patterns.json"] + pending["b/patterns.json"]
        assert refs == [q.ActionRef(a.id, a.record_id, a.undo_log_id, a.undo_index) for a in actions]
        assert [(i, r, p) for i, r, p in q.prune_action_payloads(session, refs)] == [
            (a.id, a.record_id, p) for a, p in zip(actions, expected, strict=True)]
    with catalog.session_scope(migrated) as session:
        assert q.mark_prune_actions_undone(session, "r", ids=ids[:2]) == 2
    with catalog.session_scope(migrated, write=False) as session:
        total, pending = q.prune_action_documents(session, "r", "/s")
        assert total == 5 and [ref.id for ref in pending["a/patterns.json"]] == ids[2:3]


def test_a_documents_payloads_are_split_into_logs_of_bounded_size(migrated: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from models import PruneUndoLog

    monkeypatch.setattr(q, "UNDO_LOG_BYTES", 1200)
    records = _pruned("a/patterns.json", 7, text="x" * 300)  # ~ 330 bytes of text + 256 each: two a log
    records.insert(3, q.PrunedRecord("a", "patterns", "big", "old", "removed", "a/patterns.json",
                                     {"text": "y" * 5000}))  # larger than a log: a log of its own
    with catalog.session_scope(migrated) as session:
        assert q.add_prune_actions(session, run_id="r", store="/s", records=records) == 8
    with catalog.session_scope(migrated, write=False) as session:
        sizes = list(session.scalars(sa.select(PruneUndoLog.entries).order_by(PruneUndoLog.id)))
        actions = q.prune_actions_for_run(session, "r")
        assert sizes == [2, 1, 1, 2, 2] and sum(sizes) == len(actions)
        assert [p for _, _, p in q.prune_action_payloads(session, [a.id for a in actions])] == [
            r.record for r in records]


def test_deleting_prune_actions_drops_the_undo_logs_left_empty(migrated: str) -> None:
    from models import PruneUndoLog

    with catalog.session_scope(migrated) as session:
        q.add_prune_actions(session, run_id="r", store="/s", records=_pruned("a/patterns.json", 2))
        q.add_prune_actions(session, run_id="r", store="/s", records=_pruned("b/patterns.json", 2))
        q.add_prune_actions(session, run_id="other", store="/s", records=_pruned("a/patterns.json", 1))
    with catalog.session_scope(migrated) as session:
        a1, a2, b1, b2 = (a.id for a in q.prune_actions_for_run(session, "r"))
        assert q.delete_prune_actions(session, "r", [a1, b1]) == 2
        assert session.scalar(sa.select(sa.func.count()).select_from(PruneUndoLog)) == 3  # each still has a row
        assert q.delete_prune_actions(session, "r", [b2]) == 1
        assert sorted(session.scalars(sa.select(PruneUndoLog.document_path))) == ["a/patterns.json"] * 2
        (left,) = q.prune_actions_for_run(session, "r")
        assert left.id == a2 and q.prune_action_payload(session, left)["item"] == {"id": "p1"}


def test_a_damaged_undo_log_is_named(migrated: str) -> None:
    from models import PruneUndoLog
    from models.undolog import UndoLogError

    with catalog.session_scope(migrated) as session:
        q.add_prune_actions(session, run_id="r", store="/s", records=_pruned("a/patterns.json", 2))
        log_id = session.scalar(sa.select(PruneUndoLog.id))
        value = bytearray(session.scalar(sa.select(PruneUndoLog.payloads)))
        value[len(value) // 2] ^= 0xFF
        session.execute(sa.update(PruneUndoLog).values(payloads=bytes(value)))
    with catalog.session_scope(migrated, write=False) as session:
        actions = q.prune_actions_for_run(session, "r")
        with pytest.raises(UndoLogError, match=f"prune undo log {log_id}"):
            q.prune_action_payload(session, actions[0])
        with pytest.raises(UndoLogError, match=f"prune undo log {log_id}"):
            list(q.prune_action_payloads(session, [a.id for a in actions]))


def test_downgrade_puts_undo_log_payloads_back_in_their_rows(db_url: str) -> None:
    """Down to 0005, each row holds its own payload again (as that aml reads it); up again, those rows read the same."""
    catalog.upgrade(db_url)
    records = _pruned("a/patterns.json", 3) + _pruned("b/patterns.json", 2, text="\udcff")
    with catalog.session_scope(db_url) as session:
        q.add_prune_actions(session, run_id="r", store="/s", records=records[:3])
        q.add_prune_actions(session, run_id="r", store="/s", records=records[3:])
    catalog.dispose_engines(db_url)
    catalog.downgrade(db_url, "0005")
    assert "prune_undo_logs" not in _tables(db_url)
    with catalog.get_engine(db_url).connect() as conn:
        stored = conn.execute(sa.text("SELECT record FROM prune_actions ORDER BY id")).scalars().all()
    assert [json.loads(v) if isinstance(v, str) else v for v in stored] == [r.record for r in records]
    catalog.dispose_engines(db_url)
    catalog.upgrade(db_url)
    with catalog.session_scope(db_url, write=False) as session:
        actions = q.prune_actions_for_run(session, "r")
        assert [(a.undo_log_id, q.prune_action_payload(session, a)) for a in actions] == [
            (None, r.record) for r in records]


def test_schema_revision_is_alembics_head() -> None:
    from models.base import SCHEMA_REVISION

    assert catalog.head_revision() == SCHEMA_REVISION


def test_a_current_catalog_is_used_without_importing_alembic(tmp_path: Path) -> None:
    """Start-up cost: a catalog stamped with the newest revision is checked with one query; Alembic is imported
    only for an empty, older or unknown schema."""
    from tests.fixtures_runtime import REPO

    url = f"sqlite:///{tmp_path / 'c.db'}"
    code = ("import sys\nfrom workers.catalog import ensure_catalog, current_revision\n"
            f"ensure_catalog({url!r})\nprint('alembic' in sys.modules)\n")
    first = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert first.stdout.strip() == "True"  # created and upgraded: Alembic ran
    again = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert again.stdout.strip() == "False"
    assert catalog.current_revision(url) == catalog.head_revision()
    catalog.downgrade(url, "0004")
    behind = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert behind.stdout.strip() == "True" and catalog.current_revision(url) == catalog.head_revision()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?uri=true",
                                 "sqlite:///file:shared?mode=memory&cache=shared&uri=true",
                                 "sqlite:///ignored.db?mode=memory&uri=true", "sqlite:///file:/x?vfs=memdb&uri=true"])
def test_an_in_memory_catalog_is_refused(url: str) -> None:
    """A catalog gone when the process ends would lose what prune undo puts back (and SQLAlchemy gives each thread
    its own in-memory database): refused with the setting to change, before any engine is made."""
    with pytest.raises(catalog.CatalogError, match=r"in-memory SQLite database.*AML_CATALOG_URL"):
        catalog.get_engine(url)
    with pytest.raises(catalog.CatalogError, match="in-memory"), catalog.session_scope(url):
        pass


# SQLAlchemy's own warnings for mode=memory without uri=true (it opens the file, ignoring the mode)
@pytest.mark.filterwarnings("ignore:Query string argument", "ignore:Selection of the SingletonThreadPool")
@pytest.mark.parametrize("name", ["catalog.db", "file:catalog.db?uri=true", "memory.db", "catalog.db?mode=memory"])
def test_catalog_files_are_accepted(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file catalog is accepted, a relative URI filename too, and ``mode=memory`` without ``uri=true`` (SQLAlchemy
    then opens the file, ignoring it): each is a file that outlives the process."""
    monkeypatch.chdir(tmp_path)  # a relative URI filename lands here
    url = f"sqlite:///{name}" if name.startswith("file:") else f"sqlite:///{tmp_path / name}"
    assert catalog.check_catalog_url(url).get_backend_name() == "sqlite"
    try:
        with catalog.session_scope(url) as session:
            assert session.execute(sa.text("SELECT count(*) FROM task_runs")).scalar() == 0
    finally:
        catalog.dispose_engines()
    assert (tmp_path / name.removeprefix("file:").split("?")[0]).is_file()


def test_the_cli_names_an_in_memory_catalog_and_changes_nothing(tmp_path: Path) -> None:
    store = tmp_path / "memory"
    (store / "coder").mkdir(parents=True)
    patterns = store / "coder" / "patterns.json"
    patterns.write_text(json.dumps([{"id": "p1", "type": "x", "timestamp": "2020-01-01T00:00:00Z",
                                     "metrics": {"successRate": 0.1}}], indent=2))
    before = patterns.read_bytes()
    env = dict(os.environ, AML_CATALOG_URL="sqlite://", AML_HOME=str(tmp_path / "home"), AML_LOCK_URL="none",
               AML_BROKER_URL="redis://127.0.0.1:1/0", AML_REMEDIATE="off")
    for argv in (["db", "upgrade"], [str(store), "prune", "--json"]):
        proc = subprocess.run([sys.executable, "-m", "cli.main", *argv], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2, (argv, proc.stdout, proc.stderr)
        said = " ".join((proc.stdout + proc.stderr).split())
        assert "in-memory SQLite database" in said and "AML_CATALOG_URL" in said, said
        assert "Traceback" not in said
    assert patterns.read_bytes() == before
    assert not (tmp_path / "home" / "catalog.db").exists()
