"""Excludes (issue 11, part 4): aml's own derived files are left out by default; ``--exclude`` and
``--exclude-file`` as restic has them; an exact restore never removes what the backup excluded.

Real stores, a real ``optimize index``, the real CLI in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aml.backup import DEFAULT_EXCLUDES, Excludes, create_snapshot, load_manifest, read_exclude_file, restore
from tests.backup_helpers import make_json_store, small_repo
from tests.fixtures_runtime import REPO, runtime_env
from tests.realdata import extract_loom


def apply(task, **kwargs):
    return task.apply(kwargs=kwargs, throw=True).get()


@pytest.mark.parametrize(("pattern", "path", "excluded"), [
    # restic: a pattern without "/" matches one component at any depth
    ("*.tmp", "a.tmp", True),
    ("*.tmp", "agent/sessions/a.tmp", True),
    ("*.tmp", "agent/a.tmpx", False),
    ("cache", "agent/cache", True),
    # components in sequence, anywhere; anchored with a leading "/"
    ("cache/tmp", "x/cache/tmp", True),
    ("cache/tmp", "x/cache/other", False),
    ("/cache", "cache", True),
    ("/cache", "agent/cache", False),
    ("/agent/*.json", "agent/a.json", True),
    ("/agent/*.json", "agent/sub/a.json", False),
    # "**": any number of components, none included
    ("a/**/b", "a/b", True),
    ("a/**/b", "a/x/y/b", True),
    ("a/**/b", "za/b", False),
    ("/global/**", "global/x/y", True),
    ("**", "anything/at/all", True),
    # filepath.Match: ?, classes, escapes; never across "/"
    ("?.json", "a.json", True),
    ("?.json", "ab.json", False),
    ("doc-[0-4]*", "agent/doc-3.json", True),
    ("doc-[!0-4]*", "agent/doc-3.json", False),
    ("doc-[^0-4]*", "agent/doc-7.json", True),
    ("a\\*", "a*", True),
    ("a\\*", "ab", False),
    ("a*b", "a/b", False),
    # any bytes in names (surrogateescape)
    ("*.json", os.fsdecode(b"d\xff/x.json"), True),
    (os.fsdecode(b"d\xff"), os.fsdecode(b"top/d\xff"), True),
])
def test_restic_pattern_semantics(pattern: str, path: str, excluded: bool) -> None:
    assert Excludes([pattern], defaults=False)(path) is excluded


def test_defaults_and_bad_patterns() -> None:
    ex = Excludes()
    assert ex.patterns == DEFAULT_EXCLUDES
    assert ex(".aml/index.sqlite") and ex(".aml/index.sqlite-wal") and ex(".aml/index.bloom") and ex(".aml/index.lock")
    assert not ex(".aml/quarantine/x.json") and not ex(".aml/migrate-journal.json")
    assert not ex("agent/.aml/index.sqlite") and not ex("index.sqlite")
    assert not Excludes(defaults=False)(".aml/index.sqlite")
    for bad in ("[abc", "trailing\\", "/", "/./"):
        with pytest.raises(ValueError, match="bad exclude pattern"):
            Excludes([bad], defaults=False)


def test_exclude_file_is_read_like_restic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AML_T_DIR", "scratch")
    monkeypatch.delenv("AML_T_UNSET", raising=False)
    f = tmp_path / "excludes.txt"
    f.write_text("# a comment\n\n  *.tmp  \n/$AML_T_DIR\n${AML_T_UNSET}keep.me\n\t# indented comment\n")
    assert read_exclude_file(f) == ["*.tmp", "/scratch", "keep.me"]


def test_derived_files_are_excluded_by_default(tmp_path: Path, aml_settings) -> None:
    """The issue's store: after ``optimize index``, a backup stored the index again (3 files, 16 MB more)."""
    from tasks import backup, compress

    store = extract_loom("loom-plain-v1.0", tmp_path)
    first = apply(backup.create, store=str(store))
    built = apply(compress.index, store=str(store))
    assert built["status"] == "success"
    made = sorted(str(p.relative_to(store)) for p in (store / ".aml").rglob("*") if p.is_file())
    assert ".aml/index.sqlite" in made and ".aml/index.bloom" in made
    (store / ".aml" / "quarantine").mkdir(exist_ok=True)
    (store / ".aml" / "quarantine" / "broken.json").write_text("{not json")  # evidence, not derived: kept
    second = apply(backup.create, store=str(store), incremental=True)
    assert second["file_count"] == first["file_count"] + 1
    assert second["stored_bytes"] < 4096, second  # the quarantined copy only, not the index
    assert second["excluded"] >= 2 and second["excludes"] == list(DEFAULT_EXCLUDES)
    m = load_manifest(store.parent / "memory-backup", second["backup_id"])
    assert m.files is not None
    assert [p for p in m.files.path if p.startswith(".aml/")] == [".aml/quarantine/broken.json"]
    assert m.excludes == list(DEFAULT_EXCLUDES)
    # restoring over the live store keeps the index (never the snapshot's to remove) and changes nothing
    dry = apply(backup.restore_, store=str(store), backup_id=second["backup_id"], dry_run=True)
    assert dry["removed"] == [] and dry["changed"] == [] and dry["added"] == []
    index_before = (store / ".aml" / "index.sqlite").read_bytes()
    done = apply(backup.restore_, store=str(store), backup_id=second["backup_id"])
    assert done["status"] == "success" and done["removed"] == []
    assert (store / ".aml" / "index.sqlite").read_bytes() == index_before


def test_user_excludes_and_exact_restore_around_them(tmp_path: Path) -> None:
    store = make_json_store(tmp_path / "store", agents=2, docs=3)
    (store / "agent-0" / "scratch").mkdir()
    (store / "agent-0" / "scratch" / "a.tmp").write_text("temporary")
    (store / "agent-0" / "scratch" / "keep.json").write_text("{}")
    (store / "cache" / "deep").mkdir(parents=True)
    (store / "cache" / "deep" / "blob").write_bytes(b"x" * 1000)
    repo = small_repo(tmp_path / "repo")
    snap = create_snapshot(store, repo, incremental=False, excludes=["*.tmp", "/cache"])
    m = load_manifest(repo.path, snap.backup_id)
    assert m.files is not None and m.dirs is not None
    assert "agent-0/scratch/keep.json" in m.files.path
    assert not any(p.endswith(".tmp") or p.startswith("cache") for p in m.files.path + m.dirs.path)
    assert snap.excluded == 2 and m.excludes == [*DEFAULT_EXCLUDES, "*.tmp", "/cache"]
    # later: more excluded content, and a file the snapshot does not have (removed by an exact restore)
    (store / "cache" / "new").write_text("n")
    (store / "agent-1" / "later.tmp").write_text("t")
    (store / "agent-0" / "scratch" / "later.json").write_text("{}")
    (store / "only-tmp").mkdir()
    (store / "only-tmp" / "x.tmp").write_text("x")  # a directory holding nothing but excluded files
    dry = restore(repo, snap.backup_id, store, dry_run=True)
    assert dry.removed == ["agent-0/scratch/later.json"], dry.removed
    done = restore(repo, snap.backup_id, store)
    assert done.ok and done.removed == ["agent-0/scratch/later.json"]
    for kept in ("cache/deep/blob", "cache/new", "agent-1/later.tmp", "agent-0/scratch/a.tmp", "only-tmp/x.tmp"):
        assert (store / kept).exists(), kept
    assert not (store / "agent-0" / "scratch" / "later.json").exists()
    # into a new directory the excluded paths are simply absent
    out = tmp_path / "out"
    assert restore(repo, snap.backup_id, out).ok
    assert not (out / "cache").exists() and not (out / "agent-0" / "scratch" / "a.tmp").exists()


def test_tasks_take_excludes_and_exclude_files(tmp_path: Path, aml_settings) -> None:
    from tasks import backup

    store = make_json_store(tmp_path / "store", agents=2, docs=2)
    (store / "agent-0" / "x.tmp").write_text("t")
    (store / "global" / "big.bin").write_bytes(b"b" * 100)
    listing = tmp_path / "ex.txt"
    listing.write_text("# big files\n/global/big.bin\n")
    made = apply(backup.create, store=str(store), excludes=["*.tmp"], exclude_files=[str(listing)])
    assert made["excludes"] == [*DEFAULT_EXCLUDES, "*.tmp", "/global/big.bin"] and made["excluded"] == 2
    auto = apply(backup.auto, store=str(store), excludes=["*.tmp"])
    assert auto["backup"]["excludes"][-1] == "*.tmp" and auto["backup"]["excluded"] == 1
    with pytest.raises(ValueError, match=r"\[bad"):
        apply(backup.create, store=str(store), excludes=["[bad"])
    with pytest.raises(ValueError, match="exclude file"):
        apply(backup.create, store=str(store), exclude_files=[str(tmp_path / "missing.txt")])
    with pytest.raises(ValueError, match="keyspace"):
        apply(backup.create, store="redis://127.0.0.1:1/0", excludes=["*"])


@pytest.mark.slow
def test_cli_exclude_and_exclude_file(tmp_path: Path) -> None:
    store = make_json_store(tmp_path / "store", agents=2, docs=2)
    (store / "agent-0" / "x.tmp").write_text("t")
    (store / "agent-1" / "cache").mkdir()
    (store / "agent-1" / "cache" / "c.json").write_text("{}")
    listing = tmp_path / "ex.txt"
    listing.write_text("cache\n")
    env = runtime_env(tmp_path / "home", "redis://127.0.0.1:1/0")
    env["AML_LOCK_URL"] = "none://"

    def aml(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli.main", str(store), "backup", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)

    made = aml("create", "--exclude", "*.tmp", "--exclude-file", str(listing), "--json")
    assert made.returncode == 0, made.stderr
    result = json.loads(made.stdout)
    assert result["excluded"] == 2 and result["excludes"][-2:] == ["*.tmp", "cache"]
    m = load_manifest(store.parent / "memory-backup", result["backup_id"])
    assert m.files is not None and not any(p.endswith(".tmp") or "/cache" in p for p in m.files.path)
    missing = aml("create", "--exclude-file", str(tmp_path / "nope.txt"))
    assert missing.returncode == 2 and "nope.txt" in missing.stderr
