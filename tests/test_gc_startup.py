"""The ``aml`` process pauses Python's cyclic collector while it imports, and freezes what it imported
(:mod:`aml.gcpause`, issue 12: start-up); the work itself runs with the collector on, and a test's or a
worker's process is never touched."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aml.gcpause import end_startup, exiting, pause_for_startup
from cli.main import main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def collector() -> Iterator[None]:
    """Leave the collector as it was found: on, nothing frozen."""
    assert gc.isenabled()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.enable()


def test_paused_start_up_ends_with_the_collector_on_and_the_start_up_frozen(collector: None) -> None:
    gc.unfreeze()
    pause_for_startup()
    assert not gc.isenabled()
    made_at_start_up = [[] for _ in range(1000)]  # tracked containers
    end_startup()
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(made_at_start_up)
    frozen = gc.get_freeze_count()
    made_after = [[] for _ in range(1000)]
    end_startup()  # a second end freezes nothing (frozen objects other threads free meanwhile leave the count)
    assert gc.isenabled() and gc.get_freeze_count() < frozen + len(made_after)


def test_start_up_not_paused_when_the_collector_was_already_off(collector: None) -> None:
    gc.disable()
    pause_for_startup()
    end_startup()  # the caller turned it off: it stays off, nothing frozen
    assert not gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_end_without_pause_does_nothing(collector: None) -> None:
    end_startup()
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_exiting_freezes_what_is_alive(collector: None) -> None:
    alive = [{} for _ in range(100)]
    exiting()
    assert gc.get_freeze_count() >= len(alive)


def test_main_with_arguments_leaves_the_collector_alone(tmp_path: Path, collector: None,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # main(argv) is how tests and embedding code call the CLI: their process's collector is not theirs to pause
    monkeypatch.setenv("AML_HOME", str(tmp_path / "home"))
    (tmp_path / "store").mkdir()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "store"), "monitor", "health", "--json"])
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_the_aml_process_runs_its_work_with_the_collector_on(tmp_path: Path) -> None:
    # the console script's path (main() without arguments); the health task's body records the collector's
    # state when its scan starts: a cycle made during the work must be collectable
    store = tmp_path / "store"
    (store / "agent-a").mkdir(parents=True)
    (store / "agent-a" / "patterns.json").write_text("[]")
    code = (
        "import gc, importlib.abc, json, sys\n"
        "imported = []\n"
        "class Probe(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'sqlalchemy':\n"
        "            imported.append(gc.isenabled())\n"
        "        return None\n"
        "sys.meta_path.insert(0, Probe())\n"
        "import aml.store.filestore as fs\n"
        "seen = []\n"
        "original = fs.FileStore.scan_tallies\n"
        "def scan_tallies(self, *a, **k):\n"
        "    seen.append((gc.isenabled(), gc.get_freeze_count()))\n"
        "    return original(self, *a, **k)\n"
        "fs.FileStore.scan_tallies = scan_tallies\n"
        "from cli.main import main\n"
        f"sys.argv = ['aml', {str(store)!r}, 'monitor', 'health', '--json']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print(json.dumps({'imported': imported, 'during': seen, 'frozen': gc.get_freeze_count()}), file=sys.stderr)\n"
    )
    env = dict(os.environ, AML_HOME=str(tmp_path / "home"), AML_LOCK_URL="none", AML_REMEDIATE="off",
               AML_BROKER_URL="redis://127.0.0.1:1/0")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report["imported"] == [False], proc.stderr  # SQLAlchemy was imported with the collector paused
    [(enabled, frozen_then)] = report["during"]  # the scan ran once, with the collector on
    assert enabled and frozen_then > 10_000, proc.stderr  # and the start-up's modules were frozen by then
    assert json.loads(proc.stdout)["status"] in ("healthy", "warning", "critical")


def test_the_backup_engine_runs_with_the_collector_paused_and_leaves_it_on(tmp_path: Path, collector: None) -> None:
    # a snapshot's entries hold no cycles: the collector's passes over 100,000 of them were a seventh to a fifth
    # of an incremental backup and of a verify (benchmarks/backup.py); it is back on afterwards, error or not
    from aml.backup import SnapshotNotFound, check, create_snapshot, list_snapshots, restore

    store = tmp_path / "store"
    (store / "agent-a").mkdir(parents=True)
    (store / "agent-a" / "patterns.json").write_text('[{"id": "p1"}]')
    during: list[bool] = []

    def progress(_event: object) -> None:
        during.append(gc.isenabled())

    result = create_snapshot(store, tmp_path / "repo", incremental=False, progress=progress)
    assert gc.isenabled()
    assert check(tmp_path / "repo", read_data=True, progress=progress).ok
    assert gc.isenabled()
    backup_id = [s for s in list_snapshots(tmp_path / "repo") if not s.legacy][-1].backup_id
    assert backup_id == result.backup_id
    assert restore(tmp_path / "repo", backup_id, tmp_path / "out", progress=progress).ok
    assert gc.isenabled()
    assert (tmp_path / "out" / "agent-a" / "patterns.json").read_text() == '[{"id": "p1"}]'
    assert during and not any(during)
    with pytest.raises(SnapshotNotFound):
        restore(tmp_path / "repo", "no-such-snapshot", tmp_path / "out2")
    assert gc.isenabled()


def test_a_remote_repository_is_written_with_the_collector_on(tmp_path: Path, collector: None) -> None:
    # its client's objects (boto3, paramiko) may hold cycles: they are collected as the engine goes (the archiver's
    # own loop over the files, phase "backup", pauses it for itself, local or remote)
    from aml.backup import Repository, check, create_snapshot, restore
    from aml.backup.storage.local import LocalStorage

    store = tmp_path / "store"
    (store / "agent-a").mkdir(parents=True)
    (store / "agent-a" / "patterns.json").write_text('[{"id": "p1"}]')
    repo = Repository("far", storage=LocalStorage(tmp_path / "far"), cache_dir=tmp_path / "cache")
    assert repo.remote
    during: list[tuple[str, bool]] = []

    def progress(event: Any) -> None:
        during.append((event.phase, gc.isenabled()))

    result = create_snapshot(store, repo, incremental=False, progress=progress)
    assert check(repo, read_data=True, progress=progress).ok
    assert restore(repo, result.backup_id, tmp_path / "out", progress=progress).ok
    phases = {phase for phase, _ in during}
    assert {"scan", "check", "restore"} <= phases
    assert all(enabled for phase, enabled in during if phase != "backup"), during
