"""Measure an agent's memory, whatever system wrote it: TinyTroupe or Aitor, a live object or a plain dict.

Shapes recognised (the seeds' and the real data's, ``../shared/data/DATA.md`` §2-3):

* **TinyTroupe** (``TinyPerson``): an ``episodic_memory`` with ``memory`` (committed items) and
  ``episodic_buffer`` (the current episode, not yet committed), and a ``semantic_memory`` (``memories``
  in a spec file). As a dict: ``TinyPerson.save_specification(path, include_memory=True)``'s JSON.
* **Aitor** (``ReactAgent``): ``get_memory()`` returning a ``ReactMemory`` (``to_dict()``,
  ``conversation_history`` / ``tool_executions`` / ``reasoning_trace``), or ``export_memory()``
  returning that dict. As a dict: the ``export_memory()`` JSON (Aitor's SessionManager files).

:func:`measure` gives item counts per memory kind, the memory's size as compact JSON (UTF-8 bytes) and the
agent's limits where it exposes them. Pure Python: no Celery, SQLAlchemy or agent framework is imported.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aml.store import accessors as acc

__all__ = ["AgentShapeError", "MemoryMeasure", "Shape", "measure", "with_limit"]

Shape = Literal["tinytroupe", "aitor"]

TINYTROUPE_KINDS = ("episodic_memory", "episodic_buffer", "semantic_memory")
"""Memory kinds counted for a TinyTroupe agent (spec keys ``episodic_memory.memory``,
``episodic_memory.episodic_buffer``, ``semantic_memory.memories``)."""

AITOR_KINDS = ("messages", "tool_executions", "reasoning_steps", "todos")
"""Memory kinds counted for an Aitor agent (``conversation_history``, ``tool_executions``,
``reasoning_trace``, ``planning.todos``)."""

AITOR_LIMIT_ATTRS = {
    "messages": "max_conversation_length",
    "tool_executions": "max_tool_executions",
    "reasoning_steps": "max_reasoning_steps",
}
"""``ReactMemory`` attributes holding Aitor's per-kind caps (Aitor 1.1.2 defaults 100 / 50 / 100; at the cap
Aitor drops the oldest entry). An ``export_memory()`` dict carries none of them."""

_SHAPES_HELP = (
    "TinyTroupe's memory shape (an `episodic_memory` with `memory` and `episodic_buffer`, and a "
    "`semantic_memory`) or Aitor's (`get_memory()` returning a ReactMemory with `to_dict()`, or "
    "`export_memory()` returning its dict)"
)


class AgentShapeError(TypeError):
    """The object is not an agent aml can measure; the message names what is missing."""


@dataclass(frozen=True)
class MemoryMeasure:
    """One measurement of an agent's memory.

    Attributes:
        name: the agent's name (``TinyPerson.name`` / ``persona.name``; Aitor's ``name`` / ``agent_name``).
        shape: ``"tinytroupe"`` or ``"aitor"``.
        counts: items per memory kind (:data:`TINYTROUPE_KINDS` or :data:`AITOR_KINDS`).
        bytes: size of the memory as compact JSON (``separators=(",", ":")``, UTF-8, ``default=str``), bytes.
        limits: the agent's own cap per kind, in items, where it exposes one (may be empty).
        limit: the agent's total cap in items, if it exposes one (sum of ``limits`` when every counted kind has
            one; a TinyTroupe ``get_memory_stats()["max_size"]`` otherwise).
        usage_ratio: memory used / the agent's limit (0..1+): the fullest kind's ``count / limit`` when per-kind
            caps exist (Aitor prunes a kind when it reaches its own cap), else ``items / limit``, else the
            agent's own ``get_memory_stats()["usage_ratio"]``; ``None`` without any limit.
        consolidation: TinyTroupe only: ``{"buffer_size", "committed", "episode_event_count"}`` (items), plus
            ``"metrics"``: the agent's ``get_consolidation_metrics()`` when it has one.
    """

    name: str
    shape: Shape
    counts: dict[str, int]
    bytes: int
    limits: dict[str, int] = field(default_factory=dict)
    limit: int | None = None
    usage_ratio: float | None = None
    consolidation: dict[str, Any] | None = None

    @property
    def items(self) -> int:
        """All items of every kind."""
        return sum(self.counts.values())


def compact_size(value: Any) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON (non-JSON values through ``str``, as Aitor's exports)."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8"))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _ratio(counts: Mapping[str, int], limits: Mapping[str, int], limit: int | None) -> float | None:
    per_kind = [counts.get(k, 0) / v for k, v in limits.items() if v > 0]
    if per_kind:
        return max(per_kind)
    if limit:
        return sum(counts.values()) / limit
    return None


def _seq(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, Mapping):
        return list(value.values())
    try:
        return list(value)
    except TypeError:
        return []


def _agent_stats(agent: Any, method: str) -> dict[str, Any]:
    fn = getattr(agent, method, None)
    if not callable(fn):
        return {}
    value = fn()
    return dict(value) if isinstance(value, Mapping) else {}


# --------------------------------------------------------------------------- TinyTroupe


def _tinytroupe_from_dict(data: Mapping[str, Any], name: str | None) -> MemoryMeasure:
    committed = acc.episodic_memory(data)
    buffer = acc.episodic_buffer(data)
    semantic = acc.semantic_memories(data)
    counts = {"episodic_memory": len(committed), "episodic_buffer": len(buffer), "semantic_memory": len(semantic)}
    memory = {"episodic_memory": {"memory": committed, "episodic_buffer": buffer}, "semantic_memory": semantic}
    event_count = data.get("current_episode_event_count")
    return MemoryMeasure(
        name=name or acc.persona_name(data) or "unnamed",
        shape="tinytroupe",
        counts=counts,
        bytes=compact_size(memory),
        consolidation={"buffer_size": len(buffer), "committed": len(committed),
                       "episode_event_count": event_count if isinstance(event_count, int) else None},
    )


def _tinytroupe_from_object(agent: Any, name: str | None) -> MemoryMeasure:
    episodic = agent.episodic_memory
    missing = [a for a in ("memory", "episodic_buffer") if not hasattr(episodic, a)]
    if not hasattr(agent, "semantic_memory"):
        missing.append("semantic_memory (on the agent)")
    if missing:
        raise AgentShapeError(
            f"{type(agent).__name__} has an `episodic_memory` but not TinyTroupe's memory shape: missing "
            + ", ".join(f"`{m}`" for m in missing)
        )
    committed, buffer = _seq(episodic.memory), _seq(episodic.episodic_buffer)
    semantic_obj = agent.semantic_memory
    semantic = _seq(getattr(semantic_obj, "memories", None)) if semantic_obj is not None else []
    counts = {"episodic_memory": len(committed), "episodic_buffer": len(buffer), "semantic_memory": len(semantic)}
    memory = {"episodic_memory": {"memory": committed, "episodic_buffer": buffer}, "semantic_memory": semantic}
    stats = _agent_stats(agent, "get_memory_stats")  # the seed's Task 1.1 API, where the agent has it
    limit = _int(stats.get("max_size")) or _int(getattr(episodic, "max_size", None)) or _int(
        getattr(agent, "max_memory_size", None))
    ratio = _ratio(counts, {}, limit)
    if ratio is None and isinstance(stats.get("usage_ratio"), int | float):
        ratio = float(stats["usage_ratio"])
    consolidation: dict[str, Any] = {"buffer_size": len(buffer), "committed": len(committed),
                                     "episode_event_count": getattr(agent, "current_episode_event_count", None)}
    metrics = _agent_stats(agent, "get_consolidation_metrics")  # the seed's Task 1.2 API
    if metrics:
        consolidation["metrics"] = json.loads(json.dumps(metrics, default=str))
    return MemoryMeasure(
        name=name or str(getattr(agent, "name", "") or "") or type(agent).__name__,
        shape="tinytroupe",
        counts=counts,
        bytes=compact_size(memory),
        limit=limit,
        usage_ratio=ratio,
        consolidation=consolidation,
    )


# --------------------------------------------------------------------------- Aitor


def _aitor_from_dict(data: Mapping[str, Any], name: str | None, limits: Mapping[str, int] | None = None,
                     ) -> MemoryMeasure:
    counts = {
        "messages": len(acc.session_messages(data)),
        "tool_executions": len(acc.session_tool_executions(data)),
        "reasoning_steps": len(acc.session_reasoning_steps(data)),
        "todos": len(acc.session_todos(data)),
    }
    caps = dict(limits or {})
    limit = sum(caps.values()) if caps else None
    return MemoryMeasure(
        name=name or acc.session_agent_name(data) or acc.session_id(data) or "unnamed",
        shape="aitor",
        counts=counts,
        bytes=compact_size(data),
        limits=caps,
        limit=limit,
        usage_ratio=_ratio(counts, caps, limit),
    )


def _aitor_from_object(agent: Any, name: str | None) -> MemoryMeasure:
    get_memory = getattr(agent, "get_memory", None)
    memory = get_memory() if callable(get_memory) else None
    own_name = name or str(getattr(agent, "name", "") or "") or None
    if memory is not None and callable(getattr(memory, "to_dict", None)):
        data = memory.to_dict()
        if not isinstance(data, Mapping) or not acc.is_aitor_session(data):
            raise AgentShapeError(f"{type(agent).__name__}.get_memory().to_dict() is not an Aitor ReactMemory dict "
                                  "(needs `conversation_history` and `tool_executions`/`reasoning_trace`)")
        caps = {k: v for k, attr in AITOR_LIMIT_ATTRS.items() if (v := _int(getattr(memory, attr, None)))}
        return _aitor_from_dict(data, own_name, caps)
    if isinstance(memory, Mapping) and acc.is_aitor_session(memory):
        return _aitor_from_dict(memory, own_name)
    export = getattr(agent, "export_memory", None)
    if callable(export):
        data = export()
        if not isinstance(data, Mapping) or not acc.is_aitor_session(data):
            raise AgentShapeError(f"{type(agent).__name__}.export_memory() did not return an Aitor memory dict "
                                  "(needs `conversation_history` and `tool_executions`/`reasoning_trace`)")
        return _aitor_from_dict(data, own_name)
    raise AgentShapeError(
        f"{type(agent).__name__}.get_memory() returned {type(memory).__name__}, not an Aitor ReactMemory "
        "(an object with `to_dict()`), and the agent has no `export_memory()`"
    )


# --------------------------------------------------------------------------- entry point


def measure(agent: Any, *, name: str | None = None, limit: int | Mapping[str, int] | None = None) -> MemoryMeasure:
    """Measure ``agent``'s memory now.

    Args:
        agent: a TinyTroupe ``TinyPerson``-like object, an Aitor agent, or a dict in either format (a
            TinyTroupe spec, an Aitor ``export_memory()`` dict).
        name: use this name instead of the agent's own.
        limit: the agent's cap when it exposes none (or to override it): total items, or items per kind
            (e.g. ``{"messages": 150, "tool_executions": 40, "reasoning_steps": 120}``).

    Raises:
        AgentShapeError: (a ``TypeError``) ``agent`` has neither shape; the message names what is missing.
    """
    if isinstance(agent, Mapping):
        if acc.is_aitor_session(agent):
            m = _aitor_from_dict(agent, name)
        elif acc.is_tinytroupe_spec(agent) or isinstance(agent.get("episodic_memory"), Mapping):
            m = _tinytroupe_from_dict(agent, name)
        else:
            keys = ", ".join(sorted(map(str, agent))[:8]) or "none"
            raise AgentShapeError(
                "dict is neither a TinyTroupe spec (missing `episodic_memory` with `memory`/`episodic_buffer`) "
                "nor an Aitor export (missing `conversation_history` with `tool_executions`/`reasoning_trace`); "
                f"its keys: {keys}"
            )
    elif hasattr(agent, "episodic_memory"):
        m = _tinytroupe_from_object(agent, name)
    elif hasattr(agent, "get_memory") or hasattr(agent, "export_memory"):
        m = _aitor_from_object(agent, name)
    else:
        raise AgentShapeError(f"{type(agent).__name__} has neither {_SHAPES_HELP}")
    return with_limit(m, limit) if limit is not None else m


def with_limit(m: MemoryMeasure, limit: int | Mapping[str, int]) -> MemoryMeasure:
    """``m`` with the cap ``limit`` (total items, or items per kind) instead of the agent's own.

    Raises:
        ValueError: a non-positive limit, or a kind the agent does not have.
    """
    if isinstance(limit, Mapping):
        unknown = set(limit) - set(m.counts)
        if unknown:
            raise ValueError(f"limit names kinds {sorted(unknown)} that a {m.shape} agent does not have "
                             f"(its kinds: {sorted(m.counts)})")
        caps = {k: int(v) for k, v in limit.items() if int(v) > 0}
        total = sum(caps.values()) or None
        return MemoryMeasure(m.name, m.shape, m.counts, m.bytes, caps, total, _ratio(m.counts, caps, total),
                             m.consolidation)
    if int(limit) <= 0:
        raise ValueError(f"limit must be a positive number of items, not {limit}")
    return MemoryMeasure(m.name, m.shape, m.counts, m.bytes, {}, int(limit), m.items / int(limit), m.consolidation)
