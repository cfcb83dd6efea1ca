"""A migration killed with SIGKILL at random moments, then run again (or rolled back).

Each iteration copies a generated store (gzip and plain agents), starts the engine in a subprocess,
kills it after a random delay spread over the measured length of a whole run, and then either runs
the migration again in this process (sometimes after a second kill) or rolls it back. The store must
end at the target version holding every record exactly as an uninterrupted run writes it, or, after
a rollback, byte for byte (and mtime for mtime) as it was.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from aml.migrate import JOURNAL_FILE, detect, differences, migrate, rollback
from aml.migrate.files import collection_files
from aml.sample import SampleSpec, generate_loom_store
from aml.store import TMP_PREFIX, FileStore
from aml.store.codec import decode
from tests.fixtures_runtime import REPO

ITERATIONS = 15
TARGET = "2.0.0"
DOWN = "1.0.0"
ENGINE = """
import sys
from aml.migrate import apply_plan, build_plan
print("ready", flush=True)
root, target = sys.stdin.readline().split()
plan = build_plan(root, target)
print("applying", flush=True)
apply_plan(plan)
print("done", flush=True)
"""


def records(root: Path) -> dict[str, list[Any]]:
    return {rel: json.loads(decode((root / rel).read_bytes())[0]) for rel, _, _ in collection_files(FileStore(root))}


def files(root: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every file (aml's own ``.aml`` entries excluded)."""
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and ".aml" not in p.relative_to(root).parts}


class Engine:
    """The migration in a subprocess, imported and waiting for the store to work on (started ahead
    of time, so that the test pays no interpreter start-up inside its loop)."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-c", ENGINE], cwd=REPO, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def go(self, root: Path, target: str = TARGET) -> float:
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{root} {target}\n")
        self.proc.stdin.flush()
        return time.perf_counter()

    def applying(self) -> float:
        """Wait until the engine starts writing (planning done); the time it did."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line == "applying", line
        return time.perf_counter()

    def kill_after(self, root: Path, target: str, delay: float, *, from_writes: bool) -> bool:
        """Start on ``root``, SIGKILL ``delay`` seconds after the start (or after writing began);
        ``True`` if it was still running."""
        self.go(root, target)
        if from_writes:
            self.applying()
        time.sleep(delay)
        running = self.proc.poll() is None
        self.proc.kill()
        self.proc.wait()
        return running


class Engines:
    """Hands out started engines, keeping one spare warming up."""

    def __init__(self) -> None:
        self.spare = Engine()

    def next(self) -> Engine:
        engine, self.spare = self.spare, Engine()
        return engine

    def close(self) -> None:
        self.spare.proc.kill()
        self.spare.proc.wait()


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_or_roll_back(tmp_path: Path) -> None:
    pristine = tmp_path / "pristine" / ".loom" / "memory"
    generate_loom_store(pristine, SampleSpec(agents=8, patterns=150, solutions=80, decisions=50, seed=11))
    before_files = files(pristine)
    reference = tmp_path / "reference"
    shutil.copytree(pristine, reference)
    migrate(reference, TARGET)
    expected = records(reference)

    engines = Engines()
    timings = []  # the fastest of three runs: one slow timing run (a loaded machine) would make kills overshoot
    for n in range(3):
        timing = tmp_path / f"timing{n}"
        shutil.copytree(pristine, timing)
        engine = engines.next()
        started = engine.go(timing)
        writing = engine.applying()
        assert engine.proc.wait(timeout=60) == 0
        timings.append((time.perf_counter() - started, time.perf_counter() - writing))
    length, writes = min(t[0] for t in timings), min(t[1] for t in timings)

    # every fourth iteration goes the other way: the migrated reference back down to 1.0.0
    sides = {TARGET: (pristine, before_files, expected), DOWN: (reference, files(reference), records(pristine))}
    rng = random.Random(20261123)
    interrupted = rolled_back = 0
    scale = 1.1  # of the timed run; shrunk after a kill that came too late (a run faster than timed), regrown after
    i = 0
    # at least ITERATIONS runs, and more (up to 4x) until 5 kills landed inside a migration: on a loaded machine
    # the timed run can be slower than the killed ones, and kills timed from it overshoot
    while i < ITERATIONS or (interrupted < 5 and i < 4 * ITERATIONS):
        i += 1
        target = DOWN if i % 4 == 3 else TARGET
        source, source_files, want = sides[target]
        root = tmp_path / f"run{i}"
        shutil.copytree(source, root)
        # two kills in three land while files are being written; the others anywhere in the run
        from_writes = i % 3 != 0
        delay = rng.uniform(0, scale * (writes if from_writes else length))
        if engines.next().kill_after(root, target, delay, from_writes=from_writes) and (root / JOURNAL_FILE).exists():
            interrupted += 1
            scale = min(1.1, scale * 1.25)
        else:
            scale *= 0.7
        if i % 5 == 1:  # killed twice: the resumed run is killed too
            engines.next().kill_after(root, target, rng.uniform(0, writes), from_writes=True)
        if i % 3 == 2:
            undone = rollback(root)
            if undone.outcome == "rolled_back":
                rolled_back += 1
                assert files(root) == source_files, f"iteration {i}: rollback is not exact"
                assert not (root / ".aml").exists()
                continue
            assert undone.outcome == "nothing"  # killed before the journal existed, or after the end
            if files(root) == source_files:
                continue
        result = migrate(root, target)
        assert result.status == "success", result.to_dict()
        found = detect(root)
        assert found.consistent and found.version == target and found.claimed == target, f"iteration {i}"
        got = records(root)
        assert got.keys() == want.keys()
        for rel in got:
            assert [r["id"] for r in got[rel]] == [r["id"] for r in want[rel]], rel
            assert differences(got[rel], want[rel]) == [], rel
        assert not (root / ".aml").exists()
        assert not [p for p in root.rglob("*") if p.name.startswith(TMP_PREFIX)]
        assert migrate(root, target).outcome == "unchanged"
    engines.close()
    print(f"{interrupted} of {i} kills landed inside a migration, {rolled_back} rolled back")
    assert interrupted >= 5, f"only {interrupted} of {i} kills landed inside a migration"
    assert rolled_back >= 1
