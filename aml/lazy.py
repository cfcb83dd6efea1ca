"""Packages that import a submodule only when one of its names is first used (PEP 562).

A package's ``__init__`` that re-exports its submodules' public names would import every submodule
whenever any one of them is imported (``from aml.backup.storage import ...`` runs
``aml/backup/__init__.py`` first). The health check of a small store must start in well under a second
(issue 12), so :mod:`aml.backup` and :mod:`aml.optimize` resolve their re-exported names on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, sources: Mapping[str, str],
                 namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of a package that re-exports names lazily.

    Args:
        package: the package's ``__name__``.
        sources: public name -> the submodule that defines it: relative (``"index"``) or, for a name
            re-exported from elsewhere, absolute (``"aml.store.rewrite"``).
        namespace: the package's ``globals()``; a resolved name is cached there, so each is looked up once.

    Returns:
        ``(__getattr__, __dir__)`` to assign in the package.

    Raises:
        AttributeError: (from ``__getattr__``) a name the package does not export.
    """

    def __getattr__(name: str) -> Any:
        module = sources.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module if "." in module else f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *sources})

    return __getattr__, __dir__
