"""What agent processes import (DESIGN.md, Layout): the enqueue client today; the tracer, monitor,
profiler and sessions as they land. Modules here import Celery or the catalog only when asked to."""

from typing import Any

_LAZY = {
    "analyze_memory_usage": "aml.agent.stats",
    "MemoryProfiler": "aml.agent.profiler",
    "SessionManager": "aml.agent.sessions",
    "MemoryAlert": "aml.agent.monitor",
    "MemoryMonitor": "aml.agent.monitor",
    "MemoryVisualizer": "aml.agent.visualizer",
}
"""Names re-exported lazily (PEP 562): ``import aml.agent`` imports none of their modules."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aml.agent' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
