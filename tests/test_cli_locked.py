"""Every destructive CLI command on a store locked by another operation: exit 2, say so, change nothing.

The lock is held for real (:func:`workers.locks.store_lock`, the lock file in the store,
as :func:`tasks.base.run_operation` takes it), not mocked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.realdata import extract_loom, snapshot_tree

NOW = "2026-11-23T00:00:00Z"

COMMANDS = {
    "prune": ["prune", "--strategies", "time_based", "--now", NOW],
    "migrate migrate": ["migrate", "migrate", "--version", "2.0.0"],
    "migrate migrate-latest": ["migrate", "migrate-latest"],
    "migrate migrate --rollback": ["migrate", "migrate", "--rollback"],
    "optimize compress": ["optimize", "compress", "--age-days", "0"],
    "optimize gc": ["optimize", "gc"],
    "optimize all": ["optimize", "all", "--age-days", "0"],
}
"""Command name (as the skip message names it) -> arguments; each would write to the store unlocked."""


@pytest.fixture
def locked_env(tmp_path: Path, aml_settings, monkeypatch: pytest.MonkeyPatch):
    """A private loom-plain-v1.0 store, a short lock wait, and ``hold()`` to take its lock for real."""
    from workers.app import current_aml_app
    from workers.locks import store_lock
    app = current_aml_app()

    settings = aml_settings.replace(lock_timeout=0.3)
    monkeypatch.setitem(app.conf, "aml_settings", settings)
    store = extract_loom("loom-plain-v1.0", tmp_path)

    @contextmanager
    def hold() -> Iterator[None]:
        with store_lock(os.path.realpath(store), redis_url=None, store_dir=Path(os.path.realpath(store)), wait_s=1):
            yield

    return store, hold


def invoke(store: Path, args: list[str]):
    from cli.main import store_app

    return CliRunner().invoke(store_app, args, obj={"store": str(store)})


def assert_skipped(res, command: str) -> None:
    assert res.exit_code == 2, (command, res.output, res.exception)
    assert isinstance(res.exception, SystemExit), repr(res.exception)  # a clean exit, not a KeyError
    assert f"{command} skipped" in res.output, res.output
    assert "is locked by another operation" in res.output and "nothing was changed" in res.output, res.output


@pytest.mark.parametrize("command", list(COMMANDS))
def test_locked_store_skips_the_command_and_changes_nothing(locked_env, command: str) -> None:
    store, hold = locked_env
    before = snapshot_tree(store.parent)
    with hold():
        assert_skipped(invoke(store, COMMANDS[command]), command)
        res = invoke(store, [*COMMANDS[command], "--json"])
        assert res.exit_code == 2, (res.output, res.exception)
        out = json.loads(res.stdout)
        assert out["status"] == "skipped" and "locked" in out["reason"]
    assert snapshot_tree(store.parent) == before


def test_locked_store_skips_prune_undo_and_changes_nothing(locked_env) -> None:
    store, hold = locked_env
    pruned = invoke(store, [*COMMANDS["prune"], "--json"])  # a real run, so that undo has work to do
    assert pruned.exit_code == 0, pruned.output
    run_id = json.loads(pruned.stdout)["run_id"]
    before = snapshot_tree(store.parent)
    with hold():
        assert_skipped(invoke(store, ["prune", "undo", run_id]), "prune undo")
        res = invoke(store, ["prune", "undo", run_id, "--json"])
        assert res.exit_code == 2 and json.loads(res.stdout)["status"] == "skipped"
    assert snapshot_tree(store.parent) == before
    undone = invoke(store, ["prune", "undo", run_id, "--json"])  # lock free: it runs
    assert undone.exit_code == 0, undone.output
    assert json.loads(undone.stdout)["restored"] > 0
