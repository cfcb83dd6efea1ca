"""Session-length rules for Aitor ``export_memory()`` documents (strategy ``session_based``).

Two modes (:data:`SessionMode`), chosen with ``aml <store> prune [--fifo]`` and shown in the JSON plan
(``plan.session_mode``, and per session in ``plan.sessions``):

``managed`` (the default): the Aitor seed's ``ManagedReactAgent.prune_memory`` rule (system messages
kept, the last N others, duplicates removed), working on **exchanges** rather than lone messages. An
exchange is a user message with the non-system replies that follow it up to the next user message
(replies before the first user message form an exchange of their own). System messages belong to no
exchange, are never removed and do not count towards the limit.

1. **Duplicate exchanges** (``session_dedupe``, reason ``session_duplicate``): an exchange whose exact
   sequence of ``(role, content)`` occurs again later is removed whole; the newest copy stays. A user
   question asked twice but answered differently is two different exchanges, both kept. (The seed keeps
   the first copy of each *message*, which leaves a question without its answer or an answer without its
   question; aml removes whole exchanges only, and keeps the newest, the context an agent continues from.)
   Applied whether or not the session is over its limit.
2. **Message limit** (reason ``session_message_limit``): whole exchanges are removed, oldest first, until
   at most ``max_messages`` non-system messages are left; an exchange is never cut, so a session may keep
   fewer than ``max_messages``, and it never starts with a reply unless it already did.

``fifo``: Aitor 1.1.2's own built-in rule (``aitor.memory.ReactMemory._prune_conversation_history``:
``while len(conversation_history) > max_conversation_length: pop(0)``): the oldest messages go first,
whatever their role, system messages included, nothing else. Reason ``session_message_limit``.

In both modes (Aitor's ``_prune_tool_executions`` / ``_prune_reasoning_trace``, and the seed's rule):

3. **Tool executions**: all but the last ``max_tool_executions`` are removed (``session_tool_limit``).
4. **Reasoning steps**: all but the last ``max_reasoning_steps`` are removed (``session_reasoning_limit``).

"Last" means last in the list, which is Aitor's append order (chronological). Planning todos,
``metadata``, ``created_at``/``last_updated`` and every other field are left as they are, so the document
keeps the shape Aitor's ``import_memory``/``ReactMemory.from_dict`` loads.

**Limits** (:class:`SessionLimits`; an export carries none: ``ReactMemory.to_dict`` drops them). Each of
the three values is taken from the first of these that sets it (most specific first):

1. the session's **sidecar** file ``<session_id>.limits.json`` next to the session file (a JSON object,
   e.g. ``{"max_messages": 150, "max_tool_executions": 40, "max_reasoning_steps": 120}``; Aitor's own
   name ``max_conversation_length`` is accepted for ``max_messages``): the agent's own configuration;
2. a per-agent entry (``AGENT:150/40/120``, matched against the session's ``agent_name``) of
   ``aml ... prune --limits``, then of the ``AML_SESSION_LIMITS`` setting;
3. a general entry (``150/40/120`` or ``max_messages=150,...``) of ``--limits``, then of
   ``AML_SESSION_LIMITS`` (these set ``PruneConfig.session_max_*``);
4. Aitor 1.1.2's ``ReactMemory`` defaults: 100 messages, 50 tool executions, 100 reasoning steps.

So a session whose sidecar says 150/40/120 is never cut to 100, whatever a run's general ``--limits``
say. A sidecar that cannot be read leaves its session untouched (reported in the plan's ``errors``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, get_args

from aml.store import accessors as acc

SESSION_LISTS: Final = ("conversation_history", "tool_executions", "reasoning_trace")
"""The Aitor lists prune edits, as JSON pointer tokens below the document root."""

SessionMode = Literal["managed", "fifo"]
"""``managed``: the seed's ``ManagedReactAgent.prune_memory`` rule by exchanges (default); ``fifo``: Aitor
1.1.2's built-in oldest-first rule."""

SESSION_MODES: Final[tuple[SessionMode, ...]] = get_args(SessionMode)

LIMIT_KEYS: Final = ("max_messages", "max_tool_executions", "max_reasoning_steps")
"""The three limits, in the order ``M/T/S`` gives them."""

AITOR_DEFAULTS: Final = {"max_messages": 100, "max_tool_executions": 50, "max_reasoning_steps": 100}
"""Aitor 1.1.2 ``ReactMemory``: ``max_conversation_length = 100``, ``max_tool_executions = 50``,
``max_reasoning_steps = 100`` (``aitor/memory.py``)."""

ALIASES: Final = {
    "max_messages": "max_messages", "messages": "max_messages", "max_conversation_length": "max_messages",
    "max_tool_executions": "max_tool_executions", "tool_executions": "max_tool_executions",
    "tools": "max_tool_executions",
    "max_reasoning_steps": "max_reasoning_steps", "reasoning_steps": "max_reasoning_steps",
    "steps": "max_reasoning_steps",
}
"""Accepted spellings of the limit names (``--limits``, ``AML_SESSION_LIMITS``, sidecar files)."""

SIDECAR_SUFFIX: Final = ".limits.json"
"""A session ``<id>.json`` (or ``.json.gz``/``.json.zst``) has its limits in ``<id>.limits.json``."""

PartialLimits = dict[str, int]
"""Some of :data:`LIMIT_KEYS` with their values (a source may set only some)."""


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """The limits one session is pruned to (counts of list entries).

    Attributes:
        max_messages: ``conversation_history`` entries kept; in ``managed`` mode non-system messages only.
        max_tool_executions: ``tool_executions`` entries kept.
        max_reasoning_steps: ``reasoning_trace`` entries kept.
    """

    max_messages: int = AITOR_DEFAULTS["max_messages"]
    max_tool_executions: int = AITOR_DEFAULTS["max_tool_executions"]
    max_reasoning_steps: int = AITOR_DEFAULTS["max_reasoning_steps"]

    def to_dict(self) -> dict[str, int]:
        """``{"max_messages", "max_tool_executions", "max_reasoning_steps"}``."""
        return {k: getattr(self, k) for k in LIMIT_KEYS}


def _count(key: str, value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{where}: {key} must be a whole number >= 0, got {value!r}")
    if isinstance(value, str):
        value = value.strip()
        if not value.isdigit():
            raise ValueError(f"{where}: {key} must be a whole number >= 0, got {value!r}")
        return int(value)
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    raise ValueError(f"{where}: {key} must be a whole number >= 0, got {value!r}")


def limits_from_mapping(values: Mapping[str, Any], where: str = "limits") -> PartialLimits:
    """Normalise ``{name: count}`` (names of :data:`ALIASES`; other keys are an error).

    Raises:
        ValueError: an unknown name, or a count that is not a whole number >= 0.
    """
    out: PartialLimits = {}
    for name, value in values.items():
        key = ALIASES.get(str(name).strip().lower())
        if key is None:
            raise ValueError(f"{where}: unknown limit {name!r}; use {', '.join(LIMIT_KEYS)}")
        out[key] = _count(key, value, where)
    return out


def _parse_spec(spec: str, where: str) -> PartialLimits:
    """``150/40/120`` (a part may be empty or ``-``: not set) or ``max_messages=150,tools=40``."""
    spec = spec.strip()
    if "=" in spec:
        pairs: dict[str, str] = {}
        for part in spec.split(","):
            name, eq, value = part.partition("=")
            if not eq:
                raise ValueError(f"{where}: expected NAME=COUNT, got {part.strip()!r}")
            pairs[name.strip()] = value
        return limits_from_mapping(pairs, where)
    parts = spec.split("/")
    if len(parts) > 3 or not spec:
        raise ValueError(f"{where}: expected MESSAGES/TOOLS/STEPS (e.g. 150/40/120) or NAME=COUNT,..., got {spec!r}")
    out: PartialLimits = {}
    for key, part in zip(LIMIT_KEYS, parts, strict=False):
        if part.strip() not in ("", "-"):
            out[key] = _count(key, part, where)
    return out


def parse_limits(texts: str | Iterable[str] | None, where: str = "--limits") -> dict[str | None, PartialLimits]:
    """Parse ``--limits`` values or ``AML_SESSION_LIMITS``.

    Each text holds entries separated by ``;``; an entry is ``[AGENT:]SPEC`` where ``SPEC`` is
    ``MESSAGES/TOOLS/STEPS`` (``150/40/120``; ``150//120`` or ``150/-/120`` leaves the tool limit to the
    next source) or ``NAME=COUNT[,NAME=COUNT...]`` (``max_messages=150,max_reasoning_steps=120``). Without
    ``AGENT:`` the entry applies to every session; with it, to sessions whose ``agent_name`` is ``AGENT``.
    A later entry for the same target overrides an earlier one key by key.

    Args:
        texts: one string, several (a repeated option), or ``None``.
        where: what to name in error messages.

    Returns:
        ``{agent or None: {limit: count}}`` (``None`` = every session).

    Raises:
        ValueError: a malformed entry.
    """
    if texts is None:
        return {}
    if isinstance(texts, str):
        texts = [texts]
    out: dict[str | None, PartialLimits] = {}
    for text in texts:
        for entry in text.split(";"):
            entry = entry.strip()
            if not entry:
                continue
            agent: str | None = None
            head, colon, rest = entry.partition(":")
            if colon:
                agent, entry = head.strip(), rest
                if not agent:
                    raise ValueError(f"{where}: empty agent name in {text!r}")
            out.setdefault(agent, {}).update(_parse_spec(entry, where))
    return out


def sidecar_path(session_path: str | os.PathLike[str]) -> Path:
    """``<dir>/<id>.limits.json`` for ``<dir>/<id>.json`` (also ``.json.gz``, ``.json.zst``)."""
    path = Path(session_path)
    name = path.name
    for suffix in (".gz", ".zst"):
        name = name.removesuffix(suffix)
    return path.with_name(name.removesuffix(".json") + SIDECAR_SUFFIX)


def is_sidecar(name: str) -> bool:
    """True for a limits sidecar file name (``*.limits.json``)."""
    return name.endswith(SIDECAR_SUFFIX)


def read_sidecar(session_path: str | os.PathLike[str]) -> PartialLimits | None:
    """The limits in a session's sidecar, or ``None`` when it has none.

    Raises:
        ValueError: the sidecar exists but is not a JSON object of known limits (the caller leaves the
            session alone rather than prune it to limits that are not the agent's).
    """
    path = sidecar_path(session_path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"{path.name}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path.name}: not JSON: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ValueError(f"{path.name}: expected a JSON object of limits")
    return limits_from_mapping(data, path.name)


def write_sidecar(session_path: str | os.PathLike[str], limits: Mapping[str, Any]) -> Path:
    """Write a session's limits sidecar atomically (what :class:`aml.agent.SessionManager` saves).

    Returns:
        The sidecar's path.
    """
    from aml.store.atomic import atomic_write

    path = sidecar_path(session_path)
    body = json.dumps(limits_from_mapping(limits, path.name), indent=2, sort_keys=True) + "\n"
    atomic_write(path, body.encode())
    return path


def resolve_limits(
    agent: str | None,
    layers: Sequence[tuple[str, Mapping[str, Mapping[str, int]]]],
    general: Mapping[str, int],
    sidecar: PartialLimits | None = None,
) -> tuple[SessionLimits, dict[str, str]]:
    """The limits of one session, and where each came from (see the module docstring for the order).

    Args:
        agent: the session's ``agent_name``.
        layers: per-agent limit tables, highest precedence first, e.g. ``[("--limits", ...),
            ("AML_SESSION_LIMITS", ...)]`` (only their agent entries are used here).
        general: the general limits (``PruneConfig.session_max_*``: ``--limits``/``AML_SESSION_LIMITS``
            general entries already applied over Aitor's defaults).
        sidecar: the session's sidecar limits, if any.

    Returns:
        ``(limits, {limit: source})``; a source is ``sidecar``, ``--limits AGENT``, ``AML_SESSION_LIMITS
        AGENT`` or ``general``.
    """
    values: dict[str, int] = {}
    sources: dict[str, str] = {}
    candidates: list[tuple[str, Mapping[str, int]]] = []
    if sidecar:
        candidates.append(("sidecar", sidecar))
    if agent is not None:
        candidates.extend((f"{name} {agent}", table[agent]) for name, table in layers if agent in table)
    candidates.append(("general", general))
    for source, partial in candidates:
        for key in LIMIT_KEYS:
            if key not in values and key in partial:
                values[key] = partial[key]
                sources[key] = source
    return SessionLimits(**values), sources


def _content_key(content: Any) -> str:
    """Hashable form of a message's content (text, or a structured value compared canonically)."""
    if isinstance(content, str):
        return "s:" + content
    return "j:" + json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)


def exchanges(messages: Sequence[Any]) -> list[list[int]]:
    """Group the non-system messages into exchanges (indices into ``messages``, in order).

    An exchange starts at each ``user`` message and holds the non-system messages after it up to the next
    ``user`` message; non-system messages before the first ``user`` message form one exchange of their own.
    """
    groups: list[list[int]] = []
    for index, message in enumerate(messages):
        role = acc.message_role(message)
        if role == "system":
            continue
        if role == "user" or not groups:
            groups.append([index])
        else:
            groups[-1].append(index)
    return groups


def _message_key(message: Any) -> tuple[str | None, str]:
    return acc.message_role(message), _content_key(message.get("content") if isinstance(message, Mapping) else None)


def session_removals(
    doc: Mapping[str, Any],
    limits: SessionLimits,
    mode: SessionMode = "managed",
    *,
    dedupe: bool = True,
) -> list[tuple[str, int, str]]:
    """What the session rules remove from one Aitor export.

    Args:
        doc: the parsed export (``conversation_history``, ``tool_executions``, ``reasoning_trace``...).
        limits: the session's limits (:func:`resolve_limits`).
        mode: ``managed`` (default) or ``fifo`` (see the module docstring).
        dedupe: ``managed`` only: remove duplicate exchanges (``PruneConfig.session_dedupe``).

    Returns:
        ``(list key, index, reason)`` for every entry removed, by list then index.

    Raises:
        ValueError: an unknown mode.
    """
    if mode not in SESSION_MODES:
        raise ValueError(f"unknown session mode {mode!r}; choose from {', '.join(SESSION_MODES)}")
    out: list[tuple[str, int, str]] = []
    messages = acc.session_messages(doc)
    if mode == "fifo":
        for index in range(max(len(messages) - limits.max_messages, 0)):
            out.append(("conversation_history", index, "session_message_limit"))
    else:
        groups = exchanges(messages)
        kept: list[list[int]] = []
        if dedupe:
            seen: set[tuple[tuple[str | None, str], ...]] = set()
            for group in reversed(groups):
                key = tuple(_message_key(messages[i]) for i in group)
                if key in seen:
                    out.extend(("conversation_history", i, "session_duplicate") for i in group)
                else:
                    seen.add(key)
                    kept.append(group)
            kept.reverse()
        else:
            kept = groups
        left = sum(len(g) for g in kept)
        for group in kept:
            if left <= limits.max_messages:
                break
            out.extend(("conversation_history", i, "session_message_limit") for i in group)
            left -= len(group)
    for name, entries, limit, reason in (
        ("tool_executions", acc.session_tool_executions(doc), limits.max_tool_executions, "session_tool_limit"),
        ("reasoning_trace", acc.session_reasoning_steps(doc), limits.max_reasoning_steps, "session_reasoning_limit"),
    ):
        for index in range(max(len(entries) - limit, 0)):
            out.append((name, index, reason))
    order = {name: n for n, name in enumerate(SESSION_LISTS)}
    out.sort(key=lambda r: (order[r[0]], r[1]))
    return out
