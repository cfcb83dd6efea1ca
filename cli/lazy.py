"""Modules the CLI imports on first use, so that its start-up stays small.

``aml --help`` and ``aml <store> --help`` must not pay for Celery, SQLAlchemy, Alembic and the engines
(issue 12: start-up at most 0.3 s); a command imports what it runs when it runs. The mechanism is the
standard library's :class:`importlib.util.LazyLoader` (the recipe of its documentation): the module object
exists at once, and its code runs on the first attribute access.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_module(name: str) -> ModuleType:
    """The module ``name``, loaded on its first attribute access (at once when it is already imported).

    Raises:
        ModuleNotFoundError: no module of that name.
    """
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"no module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
