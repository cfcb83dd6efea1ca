"""Runtime: settings, Celery configuration, beat schedule, per-store locks (real Redis and flock)."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_settings_defaults_and_errors(tmp_path: Path) -> None:
    from workers.settings import load_settings

    s = load_settings({"AML_HOME": str(tmp_path)})
    assert s.broker_url == "redis://127.0.0.1:6379/0"
    assert s.catalog_url == f"sqlite:///{tmp_path / 'catalog.db'}"
    assert s.thresholds.agent_critical_mb == 80 and s.thresholds.store_warning_mb == 600
    assert s.retention_days == 30 and s.max_backups == 100
    assert load_settings({"AML_STORES": " /a, /b ,,"}).stores == ("/a", "/b")
    with pytest.raises(ValueError, match="AML_AGENT_WARNING_MB"):
        load_settings({"AML_AGENT_WARNING_MB": "sixty"})
    with pytest.raises(ValueError, match="AML_LOCK_URL"):  # a typo must not drop the cross-host lock
        load_settings({"AML_LOCK_URL": "reddis://h:6379/0"})
    with pytest.raises(ValueError, match="AML_LOCK_LEASE"):
        load_settings({"AML_LOCK_LEASE": "0"})
    assert load_settings({"AML_LOCK_URL": "none"}).redis_lock_url is None


def test_settings_from_a_mapping_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.settings import load_settings

    monkeypatch.setenv("AML_HOME", "/elsewhere")
    monkeypatch.setenv("AML_LOCK_URL", "redis://127.0.0.1:1/0")
    s = load_settings({})
    assert s.home == Path("~/.aml").expanduser() and s.lock_url == "none"
    assert load_settings().home == Path("/elsewhere")


def test_celery_configuration_matches_design() -> None:
    from workers.app import TIME_LIMITS, create_app, current_aml_app
    from workers.settings import load_settings

    app = current_aml_app()
    conf = app.conf
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    router = app.amqp.router
    assert router.route({}, "aml.backup.create")["queue"].name == "heavy"
    assert router.route({}, "aml.health.check")["queue"].name == "fast"
    assert router.route({}, "aml.verify.check")["queue"].name == "fast"
    small = create_app(load_settings({"AML_VISIBILITY_TIMEOUT": "3600"}), set_as_current=False)
    small.loader.import_default_modules()  # what a worker does with ``include``
    task = small.tasks["aml.backup.create"]
    assert task.time_limit < 3600 and task.soft_time_limit < task.time_limit
    assert app.tasks["aml.health.check"].time_limit == TIME_LIMITS["health"][1]


def test_beat_schedule_names_registered_tasks_on_their_queues() -> None:
    from beat_schedule import beat_schedule
    from workers.app import current_aml_app
    app = current_aml_app()

    schedule = beat_schedule(("/srv/a/.loom/memory", "redis://10.0.0.5:6379/2"), trace_interval_s=120)
    assert schedule
    redis_entries = {name: e for name, e in schedule.items() if "redis://" in name}
    assert list(redis_entries) == ["trace redis://10.0.0.5:6379/2"]  # a keyspace has no file operations
    assert redis_entries["trace redis://10.0.0.5:6379/2"]["schedule"].run_every.total_seconds() == 120
    assert schedule["trace /srv/a/.loom/memory"]["schedule"].run_every.total_seconds() == 3600  # at most hourly
    for entry in schedule.values():
        assert entry["task"] in app.tasks, entry["task"]
        assert app.amqp.router.route({}, entry["task"])["queue"].name == entry["options"]["queue"]


def test_locked_store_gives_skipped_status(tmp_path: Path, aml_settings, monkeypatch) -> None:
    from tasks import backup
    from tests.realdata import extract_loom
    from workers.app import current_aml_app
    from workers.locks import store_lock
    app = current_aml_app()

    monkeypatch.setitem(app.conf, "aml_settings", aml_settings.replace(lock_timeout=0.3))
    store = extract_loom("loom-plain-v1.0", tmp_path)
    import os

    with store_lock(os.path.realpath(store), redis_url=None, store_dir=Path(os.path.realpath(store)), wait_s=1):
        result = backup.create.apply(kwargs={"store": str(store)}, throw=True).get()
    assert result["status"] == "skipped" and "locked" in result["reason"]
    assert not (store.parent / "memory-backup" / "snapshots").exists() or not any(
        (store.parent / "memory-backup" / "snapshots").glob("*.json"))


def test_readme_configuration_table_matches_the_settings() -> None:
    """Every setting is in the README's table with its default, and the table names nothing else."""
    import re

    from tests.fixtures_runtime import REPO
    from workers.settings import configuration_table

    readme = (REPO / "README.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(AML_[A-Z_]+)` \| `([^`]*)` \|", readme, re.M)}
    expected = {name: default for name, default, _ in configuration_table()}
    assert rows == expected


def test_no_celery_app_is_created_or_made_current_on_import() -> None:
    """Importing the tasks (as an agent's own Celery app would) leaves that app current."""
    import subprocess
    import sys

    from tests.fixtures_runtime import REPO

    code = ("from celery import Celery, current_app\n"
            "mine = Celery('mine', set_as_current=True)\n"
            "import tasks.backup, tasks.health, tasks.migrate, tasks.prune, tasks.compress, tasks.verify, cli.main\n"
            "assert current_app._get_current_object() is mine, current_app\n"
            "assert 'aml.backup.create' in mine.tasks\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_transient_error_after_a_destructive_body_began_is_not_retried(tmp_path: Path, aml_settings,
                                                                        monkeypatch) -> None:
    """On a worker, a catalog error in the middle of a destructive body fails the task (NotRetried) instead
    of being auto-retried over a half-done store; before the body, the same error stays retryable.
    (The worker context and the catalog fault are simulated: neither can be caused at that instant for real.)"""
    import sqlalchemy.exc

    from tasks import base
    from tasks.retry import AmlTask

    monkeypatch.setattr(base, "_is_eager", lambda: False)
    store = tmp_path / "s"
    store.mkdir()
    fault = sqlalchemy.exc.OperationalError("INSERT", {}, Exception("database is locked"))

    def body(catalog):
        raise fault

    with pytest.raises(base.NotRetried, match="not retried automatically") as info:
        base.run_operation(task_id="t", operation="prune", store=str(store), arguments={}, body=body,
                           destructive=True, settings=aml_settings)
    assert info.value.__cause__ is fault
    assert not isinstance(info.value, AmlTask.autoretry_for)
    with pytest.raises(sqlalchemy.exc.OperationalError):  # read-only: retrying is harmless
        base.run_operation(task_id="t2", operation="health", store=str(store), arguments={}, body=body,
                           settings=aml_settings)


def test_restore_over_a_lost_store_recreates_it(tmp_path: Path, aml_settings) -> None:
    import shutil

    from tasks import backup
    from tests.realdata import extract_loom

    store = extract_loom("loom-plain-v1.0", tmp_path)
    before = {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()}
    snap = backup.create.apply(kwargs={"store": str(store)}, throw=True).get()
    shutil.rmtree(store)
    result = backup.restore_.apply(kwargs={"store": str(store), "backup_id": snap["backup_id"]}, throw=True).get()
    assert result["status"] == "success" and result["safety_backup_id"] is None
    assert {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()} == before
