"""Packages that re-export their submodules' names load a submodule only when one of its names is used
(:mod:`aml.lazy`), so that a command imports what it runs (issue 12: start-up)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import aml.backup
import aml.optimize
import aml.prune

REPO = Path(__file__).resolve().parent.parent


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("package", [aml.backup, aml.optimize, aml.prune])
def test_every_exported_name_resolves_and_is_listed(package: object) -> None:
    names = package.__all__  # type: ignore[attr-defined]
    for name in names:
        assert getattr(package, name) is not None, name
    assert set(names) <= set(dir(package))


@pytest.mark.parametrize("package", [aml.backup, aml.optimize, aml.prune])
def test_unknown_name_is_an_attribute_error(package: object) -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        package.no_such_name  # type: ignore[attr-defined]  # noqa: B018


def test_re_exported_names_are_the_submodules_own() -> None:
    from aml.backup.repository import Repository
    from aml.backup.retention import rotate
    from aml.store.rewrite import SpliceError

    assert aml.backup.Repository is Repository
    assert aml.backup.rotate is rotate
    assert aml.prune.SpliceError is SpliceError  # a name re-exported from outside the package


def test_health_task_does_not_import_the_backup_engine() -> None:
    loaded = _modules_after("import tasks.health")
    assert "aml.backup.storage" in loaded  # what health needs: where the repository is
    heavy = {"aml.backup.archiver", "aml.backup.restorer", "aml.backup.crypto", "aml.backup.checker",
             "aml.backup.drill", "aml.optimize.compress", "aml.optimize.gc", "aml.prune.apply", "aml.prune.plan",
             "aml.prune.undo", "aml.store.rewrite"}
    assert not heavy & loaded, sorted(heavy & loaded)


def test_one_backup_name_loads_its_module_only() -> None:
    loaded = _modules_after("from aml.backup import parse_duration")
    assert "aml.backup.retention" in loaded
    assert "aml.backup.restorer" not in loaded
