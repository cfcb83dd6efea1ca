"""Shared pytest fixtures. Store fixtures are prefixed ``store_`` (plus the ``loom_store`` factory)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.realdata import extract_loom

pytest_plugins = ["tests.fixtures_runtime", "tests.s3_server", "tests.sftp_server"]


@pytest.fixture(autouse=True)
def no_change_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests write a store and index it within milliseconds, where the record index's racily-clean margin
    (:data:`aml.optimize.files.CHANGE_TICK_NS`, 2 s) would have every document read again: in this process it is 0
    (a document changed before the read is taken as read). tests/test_prune_indexed.py sets it back to test it."""
    import aml.optimize.index as index_mod
    import aml.prune.indexed as indexed_mod

    monkeypatch.setattr(index_mod, "CHANGE_TICK_NS", 0)
    monkeypatch.setattr(indexed_mod, "CHANGE_TICK_NS", 0)


@pytest.fixture(scope="session")
def loom_store(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Factory: ``loom_store("loom-plain-v1.0")`` extracts that tarball once per session and
    returns its ``.loom/memory`` root. The extraction is shared: treat it as READ-ONLY (use
    ``tests.realdata.extract_loom(name, tmp_path)`` for a private copy you may modify)."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        name = name.removesuffix(".tar.gz")
        if name not in cache:
            cache[name] = extract_loom(name, tmp_path_factory.mktemp(name))
        return cache[name]

    return get
