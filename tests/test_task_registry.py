"""aml's tasks without Celery in an inline run of the ``aml`` command (tasks.registry, issue 12's start-up).

The registry's state is per process, and this test process imported Celery long ago: each case runs in a
process of its own, as the ``aml`` command does."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.fixtures_runtime import REPO, runtime_env
from tests.realdata import extract_loom

CELERY_FAMILY = ("celery", "kombu", "redis", "billiard", "amqp")


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)


def _as_aml(args: list[str], watched: tuple[str, ...] = CELERY_FAMILY) -> str:
    """Code running ``aml <args>`` as the console script does (``main()`` with no argv), then printing the
    ``watched`` modules it imported (a name, or a top-level package: the Celery family by default), as JSON on the
    last line of stderr."""
    return ("import json, sys\n"
            f"sys.argv = ['aml', *{args!r}]\n"
            "from cli.main import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\nelse:\n    code = 0\n"
            f"loaded = sorted({{m for m in sys.modules if m in {watched!r} or m.split('.')[0] in {watched!r}}})\n"
            "print(json.dumps({'code': code, 'loaded': loaded}), file=sys.stderr)\n")


def _outcome(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    return json.loads(proc.stderr.strip().splitlines()[-1])


@pytest.fixture
def sample_store(tmp_path: Path) -> Path:
    """A private copy of a real Loom store (prune changes it)."""
    return extract_loom("loom-plain-v1.0", tmp_path / "store")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environ = runtime_env(tmp_path / "home", "redis://127.0.0.1:1/0")
    environ.update(AML_LOCK_URL="none", AML_REMEDIATE="off")
    return environ


def test_inline_health_and_prune_never_import_celery(sample_store: Path, env: dict[str, str]) -> None:
    """Inline health (read-only) and prune (destructive: file lock, backup first, undo rows) run to the end
    without importing Celery, kombu, billiard or redis-py; each run is recorded under a UUID task id."""
    health = _python(_as_aml([str(sample_store), "monitor", "health", "--json"]), env)
    outcome = _outcome(health)
    assert outcome["loaded"] == [], outcome
    assert outcome["code"] in (0, 1, 2) and json.loads(health.stdout)["results"], health.stderr
    prune = _python(_as_aml([str(sample_store), "prune", "--strategies", "time_based", "--json"]), env)
    outcome = _outcome(prune)
    assert outcome["loaded"] == [] and outcome["code"] == 0, prune.stderr
    result = json.loads(prune.stdout)
    assert result["status"] == "success" and result["task_run_id"]
    runs = _python("import json\nfrom workers.app import get_settings\nfrom workers.catalog import session_scope\n"
                   "from models import queries\n"
                   "with session_scope(get_settings().catalog_url) as s:\n"
                   "    print(json.dumps([[r.operation, r.task_id, r.status] for r in queries.recent_task_runs(s)]))\n",
                   env)
    assert runs.returncode == 0, runs.stderr
    recorded = json.loads(runs.stdout)
    assert sorted(op for op, _, _ in recorded) == ["health", "prune"]
    for _, task_id, status in recorded:
        assert uuid.UUID(task_id).version == 4 and status in ("success", "warning")


def test_a_dry_run_imports_neither_the_safety_snapshot_nor_rich_tables(sample_store: Path,
                                                                      env: dict[str, str]) -> None:
    """What only a run that changes the store needs (the safety snapshot's backup engine) or only a table prints
    (``rich.table``) is imported by those alone: a dry run's ``--json`` output has neither, its table the table."""
    watched = ("tasks.snapshots", "aml.backup.repository", "rich.table")
    for args in (["prune", "--dry-run", "--json"], ["migrate", "migrate", "--version", "2.0.0", "--dry-run", "--json"],
                 ["optimize", "gc", "--dry-run", "--json"]):
        outcome = _outcome(_python(_as_aml([str(sample_store), *args], watched), env))
        assert outcome["loaded"] == [] and outcome["code"] == 0, (args, outcome)
    outcome = _outcome(_python(_as_aml([str(sample_store), "prune", "--dry-run"], watched), env))
    assert outcome["loaded"] == ["rich.table"], outcome
    outcome = _outcome(_python(_as_aml([str(sample_store), "prune", "--json"], watched), env))
    assert {"tasks.snapshots", "aml.backup.repository"} <= set(outcome["loaded"]), outcome


def test_a_store_command_that_enqueues_imports_celery(sample_store: Path, env: dict[str, str]) -> None:
    """The same command with ``--enqueue`` makes its task a Celery task and sends it (to a broker nobody
    listens on here: the refusal is Celery's own connection error, exit 2), so deferring changes nothing there."""
    env["AML_BROKER_URL"] = "redis://127.0.0.1:1/0"  # port 1: nothing listens
    proc = _python(_as_aml([str(sample_store), "monitor", "health", "--enqueue"]), env)
    outcome = _outcome(proc)
    assert "celery" in outcome["loaded"] and "kombu" in outcome["loaded"]
    assert outcome["code"] == 2 and "aml.health.check failed" in proc.stderr


def test_deferred_tasks_become_celery_tasks_together(env: dict[str, str]) -> None:
    """Deferred, a task module imports no Celery; the first Celery use of any task makes every task declared so
    far a Celery task of the current aml app, and a module imported after that is registered at once."""
    code = """
import sys
from tasks.registry import defer_celery
defer_celery()
import tasks.health
assert "celery" not in sys.modules, "deferred: no Celery at import"
assert tasks.health.check.name == "aml.health.check" and "celery" not in sys.modules, "the name needs no Celery"
assert "not yet a Celery task" in repr(tasks.health.check)
signature = tasks.health.alerts.s(store="/x")
assert "celery" in sys.modules and signature.task == "aml.health.alerts"
from workers.app import current_aml_app
app = current_aml_app()
names = set(app.tasks)
assert {"aml.health.check", "aml.health.alerts", "aml.health.metrics", "aml.notify.send"} <= names, names
assert "aml.prune.run" not in names
import tasks.prune
assert {"aml.prune.run", "aml.prune.undo"} <= set(app.tasks), "a module imported after: registered at once"
assert app.tasks["aml.health.check"].max_retries == 10, "the retry policy (AmlTask) is the base"
assert app.tasks["aml.notify.send"].acks_late is True and app.tasks["aml.notify.send"].max_retries == 3
print("ok")
"""
    proc = _python(code, env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_without_deferring_a_task_module_registers_its_tasks_at_import(env: dict[str, str]) -> None:
    """A worker, a user's Celery app or a test never defers: importing a task module registers its Celery
    tasks at once, as ``shared_task`` did (a user's app created before or after the import finds them)."""
    code = """
import sys
from celery import Celery
import tasks.health
assert "celery" in sys.modules
mine = Celery("users-own-app", broker="memory://", set_as_current=False)
assert "aml.health.check" in mine.tasks
assert mine.tasks["aml.health.check"].max_retries == 10
import tasks.backup
assert {"aml.backup.create", "aml.backup.export", "aml.backup.import"} <= set(mine.tasks), "keyspace tasks too"
print("ok")
"""
    proc = _python(code, env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_run_inline_gives_the_task_what_eager_apply_gives(sample_store: Path, aml_settings) -> None:
    """``run_inline`` gives the task ``self.request.id`` (a UUID4, recorded with its run) and ``is_eager``, and
    raises its error as it is, as ``apply(throw=True)`` does; ``execute`` uses it only for a task not yet made a
    Celery task (the aml command's), Celery's ``apply()`` in a process like this one."""
    from models import queries
    from tasks import health
    from tasks.registry import InlineTask, OperationTask
    from workers.catalog import session_scope
    from workers.dispatch import execute

    assert isinstance(health.check, OperationTask) and not health.check.deferred
    result, task_id = health.check.run_inline({"store": str(sample_store)})
    assert uuid.UUID(task_id).version == 4 and result["operation"] == "health"
    with session_scope(aml_settings.catalog_url) as session:
        run = queries.get_task_run(session, task_id)
        assert run is not None and run.id == result["task_run_id"] and run.operation == "health"
    inline = InlineTask(health.check, "t-1")
    assert inline.request.id == "t-1" and inline.request.is_eager and inline.name == "aml.health.check"
    with pytest.raises(ValueError):
        health.check.run_inline({"store": ""})
    outcome = execute(health.check, {"store": str(sample_store)})  # through Celery's eager apply here
    assert outcome.result is not None and outcome.result["operation"] == "health" and not outcome.queued


def test_a_task_pickles_as_the_one_its_module_declares() -> None:
    import pickle

    from tasks import backup, health

    assert pickle.loads(pickle.dumps(health.check)) is health.check
    assert pickle.loads(pickle.dumps(backup.list_)) is backup.list_


def test_use_settings_outside_the_aml_command_sets_the_current_apps_settings(aml_settings) -> None:
    """In a process that is not the one-shot command (a test, an embedding app) the override goes to the current
    aml app, whose settings the test restores, and nothing stays in the process."""
    import workers.app as app_mod

    changed = aml_settings.replace(backup_password_file="/nonexistent/pw")
    app_mod.use_settings(changed)
    assert app_mod.get_settings() is changed and app_mod._process_settings is None


def test_a_failed_step_is_read_from_the_aml_apps_result_backend_in_a_deferred_process(env: dict[str, str]) -> None:
    """Inline remediation reconciles a chain by its steps' states in the result backend: in the aml command too
    (where no Celery app was made before) the aml app's backend is asked, not Celery's default app."""
    db = 13
    task_id = f"aml-test-{uuid.uuid4()}"
    env.update(AML_BROKER_URL=f"redis://127.0.0.1:6379/{db}", AML_RESULT_BACKEND=f"redis://127.0.0.1:6379/{db}")
    code = f"""
from tasks.registry import defer_celery
defer_celery()
from workers.app import get_settings
from celery import Celery
writer = Celery("w", backend=get_settings().result_backend, set_as_current=False)
writer.backend.mark_as_failure({task_id!r}, RuntimeError("boom"))
from tasks.remediate import _step_failed_for_good
try:
    print(_step_failed_for_good({task_id!r}))
finally:
    writer.backend.forget({task_id!r})
"""
    proc = _python(code, env)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr
