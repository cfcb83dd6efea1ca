"""Runtime: settings, Celery configuration, beat schedule, per-store locks (real Redis and flock)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.fixtures_runtime import RedisServer


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


def test_celery_configuration_matches_design() -> None:
    from workers.app import TIME_LIMITS, app, create_app
    from workers.settings import load_settings

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
    from workers.app import app

    schedule = beat_schedule(("/srv/a/.loom/memory",))
    assert schedule
    for entry in schedule.values():
        assert entry["task"] in app.tasks, entry["task"]
        assert app.amqp.router.route({}, entry["task"])["queue"].name == entry["options"]["queue"]


@pytest.mark.parametrize("backend", ["redis", "file"])
def test_store_lock_excludes_second_holder(backend: str, tmp_path: Path, redis_server: RedisServer) -> None:
    from workers.locks import StoreLocked, store_lock

    url = redis_server.url(5) if backend == "redis" else None
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with store_lock("/store/x", redis_url=url, lock_dir=tmp_path, wait_s=1) as info:
            assert info.backend == backend
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(10)
    start = time.monotonic()
    with pytest.raises(StoreLocked) as err, store_lock("/store/x", redis_url=url, lock_dir=tmp_path, wait_s=0.5):
        pass
    assert time.monotonic() - start >= 0.4
    assert "/store/x" in str(err.value)
    # another store is independent
    with store_lock("/store/y", redis_url=url, lock_dir=tmp_path, wait_s=0.5):
        pass
    release.set()
    t.join()
    with store_lock("/store/x", redis_url=url, lock_dir=tmp_path, wait_s=1):
        pass


def test_redis_lock_renews_past_its_ttl(redis_server: RedisServer, tmp_path: Path) -> None:
    import redis

    from workers.locks import lock_key, store_lock

    client = redis.Redis.from_url(redis_server.url(5))
    with store_lock("/store/ttl", redis_url=redis_server.url(5), lock_dir=tmp_path, ttl_s=0.6):
        time.sleep(1.5)
        assert client.exists(lock_key("/store/ttl"))
    assert not client.exists(lock_key("/store/ttl"))


def test_locked_store_gives_skipped_status(tmp_path: Path, aml_settings, monkeypatch) -> None:
    from tasks import backup
    from tests.realdata import extract_loom
    from workers.app import app
    from workers.locks import store_lock

    monkeypatch.setitem(app.conf, "aml_settings", aml_settings.replace(lock_timeout=0.3))
    store = extract_loom("loom-plain-v1.0", tmp_path)
    import os

    with store_lock(os.path.realpath(store), redis_url=None, lock_dir=aml_settings.home / "locks", wait_s=1):
        result = backup.create.apply(kwargs={"store": str(store)}, throw=True).get()
    assert result["status"] == "skipped" and "locked" in result["reason"]
    assert not (store.parent / "memory-backup" / "snapshots").exists() or not any(
        (store.parent / "memory-backup" / "snapshots").glob("*.json"))
