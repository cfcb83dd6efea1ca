"""One store-id normaliser: the file store, the query engine, the tasks and the agent-side monitor agree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aml.store import FileStore, normalise_store_id


def test_paths_are_absolute_with_symlinks_resolved_and_urls_kept(tmp_path: Path, monkeypatch) -> None:
    real = tmp_path / "real" / ".loom" / "memory"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    expected = os.path.realpath(real)
    for spelling in (str(real), f"{real}/", f"  {real}\n", "link/.loom/memory", "~/link/.loom/memory/",
                     tmp_path / "link" / ".loom" / "memory"):
        assert normalise_store_id(spelling) == expected, spelling
    assert normalise_store_id(" redis://localhost:6379/0?prefix=amaos: ") == "redis://localhost:6379/0?prefix=amaos:"
    for empty in ("", "  "):
        with pytest.raises(ValueError, match="empty"):
            normalise_store_id(empty)
    with pytest.raises(ValueError, match="URL"):
        FileStore("redis://localhost:6379/0")


def test_every_layer_uses_it(tmp_path: Path) -> None:
    from aml.agent.monitor import MemoryMonitor
    from tasks.base import normalize_store

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    spelling = f"{tmp_path}/link/"
    assert normalize_store is normalise_store_id
    assert FileStore(spelling).store_id == normalize_store(spelling) == os.path.realpath(tmp_path / "real")
    assert MemoryMonitor(store=spelling).store == FileStore(spelling).store_id
