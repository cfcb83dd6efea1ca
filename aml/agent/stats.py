"""The Aitor seed's ``analyze_memory_usage``: statistics of one Aitor session's memory.

::

    from aml.agent import analyze_memory_usage

    stats = analyze_memory_usage(agent)                       # a ReactAgent (export_memory / get_memory)
    stats = analyze_memory_usage(agent.get_memory())          # a ReactMemory (to_dict, or its attributes)
    stats = analyze_memory_usage(json.load(open("s.json")))   # an export_memory() dict
    stats = analyze_memory_usage("sessions/user1042_session1.json")   # an export file (plain, gzip or zstd)
    print(f"Tool Success Rate: {stats['tools']['success_rate']:.2%}")
    print(f"Memory Size: {stats['memory_size']['total_kb']:.1f} KB")

The result has the seed's keys and meanings (Aitor docs/memory.md, "Memory Statistics"):

- ``messages``: ``total_messages`` and ``by_role``: ``{"user": n, "user_avg_length": chars, "assistant": ...,
  "system": ...}``. ``user``, ``assistant`` and ``system`` are always counted (0 when absent), like the seed;
  any other role found (e.g. ``tool``) is added the same way. Average lengths are in characters
  (``len(content)``), rounded to 2 decimals, present only for roles that have messages.
- ``tools``: ``total_executions``, ``success_rate`` (ratio 0-1), ``avg_execution_time`` (seconds, Aitor's
  ``ToolResult.execution_time``), ``tool_usage`` (``{tool_name: executions}``); aml adds ``successful``,
  ``failed`` and ``by_tool`` (``{tool_name: {executions, successful, success_rate, avg_execution_time}}``).
  A failed execution is ``result.success == false``, or ``result: null`` (what Aitor writes when a tool
  raised; DATA.md §2). Executions without a numeric ``execution_time`` are left out of the time average.
- ``reasoning``: ``total_steps`` and ``step_distribution`` (``{step_type: steps}``). Step types are kept as
  the session spells them: Aitor 1.1.2 exports lowercase ``think/act/observe/final_answer`` (the seed's
  example compares with ``"THINK"``, which matches none of them).
- ``memory_size``, in KiB (1024 bytes): ``messages_kb`` (UTF-8 bytes of the message contents),
  ``tools_kb`` (compact JSON of the tool executions, ``default=str``; the seed measured ``str()`` of the
  Python objects, which a dict export does not have), ``reasoning_kb`` (UTF-8 bytes of the step contents),
  ``total_kb`` (their sum).
- ``analysis_timestamp``: ISO 8601 UTC with ``Z`` (aml's rule for what it writes; the seed used naive
  local time).

aml adds ``session`` (``session_id``, ``agent_name``, ``created_at``, ``last_updated`` as exported) and, for
planning agents, ``todos`` (``{"total": n, "by_status": {...}}``). Pure Python: importing this module
needs neither Celery nor the catalog.
"""

from __future__ import annotations

import enum
import json
import os
from collections import Counter, defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aml.store.accessors import finite_number
from aml.store.timestamps import utc_iso_z

__all__ = ["KIB", "SEED_ROLES", "analyze_memory_usage", "memory_export"]

KIB = 1024
"""Bytes in a KiB: ``memory_size`` values are bytes / 1024 (the seed's ``/ 1024``)."""

SEED_ROLES = ("user", "assistant", "system")
"""Roles the seed always reports, in its order (count 0 when absent)."""

_SECTIONS = ("conversation_history", "tool_executions", "reasoning_trace")


def _field(item: Any, name: str) -> Any:
    """``item[name]`` for a mapping, ``item.name`` for an object (Aitor's dataclasses); ``None`` if absent."""
    if isinstance(item, Mapping):
        return item.get(name)
    return getattr(item, name, None)


def _text(value: Any) -> str:
    """A content field as text: strings as is, ``None`` as empty, enums by value, anything else via ``str``."""
    if value is None:
        return ""
    if isinstance(value, enum.Enum):
        value = value.value
    return value if isinstance(value, str) else str(value)


def _load_file(path: Path) -> Any:
    from aml.store.documents import read_document

    doc = read_document(path.resolve(), path.name)
    if doc.error is not None:
        raise ValueError(f"cannot read Aitor export {path}: {doc.error.reason}"
                         + (f" (byte offset {doc.error.offset})" if doc.error.offset is not None else ""))
    return doc.data


def memory_export(memory: Any) -> Mapping[str, Any] | Any:
    """The session data behind any accepted input, before validation.

    Args:
        memory: an export dict; a path (``str`` or ``os.PathLike``) to an export file; an object with
            ``export_memory()`` (an Aitor agent), ``to_dict()`` (a ``ReactMemory``) or ``get_memory()``
            (an agent whose memory is one of these); or an object with a ``conversation_history``
            attribute (a ``ReactMemory``-like object, read attribute by attribute).

    Returns:
        A mapping, or the ``ReactMemory``-like object itself.

    Raises:
        TypeError: the input is none of these (the message names what was looked for).
        ValueError: a path that does not exist or does not parse.
    """
    if isinstance(memory, Mapping):
        return memory
    if isinstance(memory, str | os.PathLike):
        path = Path(memory)
        if not path.is_file():
            raise ValueError(f"no Aitor export file at {path}")
        return _load_file(path)
    for method in ("export_memory", "to_dict"):
        fn = getattr(memory, method, None)
        if callable(fn):
            return fn()
    get_memory = getattr(memory, "get_memory", None)
    if callable(get_memory):
        inner = get_memory()
        if inner is memory:
            raise TypeError("get_memory() returned the agent itself")
        return memory_export(inner)
    if hasattr(memory, "conversation_history"):
        return memory
    raise TypeError(
        f"analyze_memory_usage: expected an Aitor export dict, a path to an export file, a ReactMemory "
        f"(to_dict() or a conversation_history attribute) or an agent (export_memory() or get_memory()); "
        f"got {type(memory).__name__}, which has none of export_memory, to_dict, get_memory, "
        f"conversation_history"
    )


def _section(data: Any, key: str, *, required: bool) -> list[Any]:
    value = _field(data, key)
    if value is None:
        if required:
            has = ", ".join(sorted(map(str, data))) if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"not an Aitor session memory: {key!r} is missing or null (has: {has})")
        return []
    if isinstance(value, str | bytes | Mapping) or not hasattr(value, "__iter__"):
        raise ValueError(f"not an Aitor session memory: {key!r} is {type(value).__name__}, expected a list")
    return list(value)


def _message_stats(messages: list[Any]) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    lengths: Counter[str] = Counter()
    for msg in messages:
        role = _text(_field(msg, "role"))
        counts[role] += 1
        lengths[role] += len(_text(_field(msg, "content")))
    by_role: dict[str, Any] = {}
    for role in (*SEED_ROLES, *sorted(r for r in counts if r not in SEED_ROLES)):
        by_role[role] = counts[role]
        if counts[role]:
            by_role[f"{role}_avg_length"] = round(lengths[role] / counts[role], 2)
    return {"total_messages": len(messages), "by_role": by_role}


def _succeeded(execution: Any) -> bool:
    result = _field(execution, "result")
    return result is not None and _field(result, "success") is True


def _execution_time(execution: Any) -> float | None:
    """``result.execution_time`` in seconds, ``None`` when absent or not a finite number (an integer no double
    holds included)."""
    value = _field(_field(execution, "result"), "execution_time")
    return float(value) if finite_number(value) else None


def _tool_stats(executions: list[Any]) -> dict[str, Any]:
    usage: Counter[str] = Counter()
    ok: Counter[str] = Counter()
    time_sum: defaultdict[str, float] = defaultdict(float)
    time_n: Counter[str] = Counter()
    for ex in executions:
        name = _text(_field(ex, "tool_name"))
        usage[name] += 1
        ok[name] += _succeeded(ex)
        seconds = _execution_time(ex)
        if seconds is not None:
            time_sum[name] += seconds
            time_n[name] += 1
    total = len(executions)
    successful = sum(ok.values())
    timed = sum(time_n.values())
    return {
        "total_executions": total,
        "success_rate": successful / total if total else 0,
        "avg_execution_time": sum(time_sum.values()) / timed if timed else 0,
        "tool_usage": dict(usage),
        "successful": successful,
        "failed": total - successful,
        "by_tool": {
            name: {
                "executions": n,
                "successful": ok[name],
                "success_rate": ok[name] / n,
                "avg_execution_time": time_sum[name] / time_n[name] if time_n[name] else 0,
            }
            for name, n in usage.items()
        },
    }


def _to_jsonable(value: Any) -> Any:
    """Aitor objects (dataclasses with ``to_dict``) and containers as JSON-ready values."""
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_jsonable(v) for v in value]
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return {k: _to_jsonable(v) for k, v in vars(value).items()}
    return value


def analyze_memory_usage(memory: Any) -> dict[str, Any]:
    """Analyze an Aitor session's memory: messages, tool executions, reasoning steps, sizes.

    Args:
        memory: an Aitor ``export_memory()`` dict (as in ``/work/shared/data/aitor``), a path to such a
            file, a ``ReactMemory`` (or any object with ``to_dict()`` or the ``conversation_history`` /
            ``tool_executions`` / ``reasoning_trace`` attributes) or an agent (``export_memory()`` or
            ``get_memory()``).

    Returns:
        The seed's dict (see the module docstring for every key and unit).

    Raises:
        TypeError: ``memory`` is none of the accepted kinds; the message names what was looked for.
        ValueError: a file that is missing or does not parse, or data without ``conversation_history``
            (or with a section that is not a list); the message names the key.
    """
    data = memory_export(memory)
    if not isinstance(data, Mapping) and not hasattr(data, "conversation_history"):
        raise ValueError(f"not an Aitor session memory: {type(data).__name__} has no conversation_history")
    messages = _section(data, "conversation_history", required=True)
    executions = _section(data, "tool_executions", required=False)
    steps = _section(data, "reasoning_trace", required=False)

    distribution: Counter[str] = Counter(_text(_field(s, "step_type")) for s in steps)
    messages_b = sum(len(_text(_field(m, "content")).encode()) for m in messages)
    tools_b = len(json.dumps(_to_jsonable(executions), separators=(",", ":"), default=str).encode()) \
        if executions else 0
    reasoning_b = sum(len(_text(_field(s, "content")).encode()) for s in steps)
    memory_size = {"messages_kb": messages_b / KIB, "tools_kb": tools_b / KIB, "reasoning_kb": reasoning_b / KIB}
    memory_size["total_kb"] = sum(memory_size.values())

    out: dict[str, Any] = {
        "messages": _message_stats(messages),
        "tools": _tool_stats(executions),
        "reasoning": {"total_steps": len(steps), "step_distribution": dict(distribution)},
        "memory_size": memory_size,
        "analysis_timestamp": utc_iso_z(datetime.now(UTC)),
        "session": {k: _text(_field(data, k)) or None
                    for k in ("session_id", "agent_name", "created_at", "last_updated")},
    }
    planning = _field(data, "planning")
    todos = _field(planning, "todos") if planning is not None else None
    if isinstance(todos, list):
        out["todos"] = {"total": len(todos),
                        "by_status": dict(Counter(_text(_field(t, "status")) for t in todos))}
    return out
