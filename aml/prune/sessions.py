"""Session-length rules for Aitor ``export_memory()`` documents (strategy ``session_based``).

Aitor's ``ReactMemory`` trims its own lists FIFO when an item is added (``max_conversation_length``
100, ``max_tool_executions`` 50, ``max_reasoning_steps`` 100), but only for agents that keep the
defaults, and it never removes repeated messages: exports of agents with raised limits grow without
bound (``user1042_session1.json``: 363 messages, 649 reasoning steps). The rules, applied to the
export as stored:

1. **Duplicates** (``session_dedupe``): a non-system message whose exact ``(role, content)`` occurs
   again later in ``conversation_history`` is removed; the newest copy stays. Reason
   ``session_duplicate``.
2. **Message limit**: of the non-system messages left, all but the last ``session_max_messages``
   are removed (oldest first). Reason ``session_message_limit``. System messages (``role ==
   "system"``) are never removed and do not count towards the limit.
3. **Tool executions**: all but the last ``session_max_tool_executions`` are removed. Reason
   ``session_tool_limit``.
4. **Reasoning steps**: all but the last ``session_max_reasoning_steps`` are removed. Reason
   ``session_reasoning_limit``.

"Last" means last in the list, which is Aitor's append order (chronological). Planning todos,
``metadata``, ``created_at``/``last_updated`` and every other field are left as they are, so the
document keeps the shape Aitor's ``import_memory``/``ReactMemory.from_dict`` loads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from aml.prune.config import PruneConfig
from aml.store import accessors as acc

SESSION_LISTS: Final = ("conversation_history", "tool_executions", "reasoning_trace")
"""The Aitor lists prune edits, as JSON pointer tokens below the document root."""


def _content_key(content: Any) -> str:
    """Hashable form of a message's content (text, or a structured value compared canonically)."""
    if isinstance(content, str):
        return "s:" + content
    return "j:" + json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)


def session_removals(doc: Mapping[str, Any], config: PruneConfig) -> list[tuple[str, int, str]]:
    """What the session rules remove from one Aitor export.

    Args:
        doc: the parsed export (``conversation_history``, ``tool_executions``, ``reasoning_trace``...).
        config: the limits (``session_*`` fields of :class:`~aml.prune.config.PruneConfig`).

    Returns:
        ``(list key, index, reason)`` for every entry removed, by list then index.
    """
    out: list[tuple[str, int, str]] = []
    messages = acc.session_messages(doc)
    removed: set[int] = set()
    if config.session_dedupe:
        seen: set[tuple[str | None, str]] = set()
        for index in range(len(messages) - 1, -1, -1):
            message = messages[index]
            role = acc.message_role(message)
            if role == "system":
                continue
            key = (role, _content_key(message.get("content") if isinstance(message, Mapping) else None))
            if key in seen:
                removed.add(index)
                out.append(("conversation_history", index, "session_duplicate"))
            else:
                seen.add(key)
    left = [i for i, m in enumerate(messages) if i not in removed and acc.message_role(m) != "system"]
    excess = len(left) - config.session_max_messages
    for index in left[: max(excess, 0)]:
        out.append(("conversation_history", index, "session_message_limit"))
    for name, entries, limit, reason in (
        ("tool_executions", acc.session_tool_executions(doc), config.session_max_tool_executions,
         "session_tool_limit"),
        ("reasoning_trace", acc.session_reasoning_steps(doc), config.session_max_reasoning_steps,
         "session_reasoning_limit"),
    ):
        for index in range(max(len(entries) - limit, 0)):
            out.append((name, index, reason))
    order = {name: n for n, name in enumerate(SESSION_LISTS)}
    out.sort(key=lambda r: (order[r[0]], r[1]))
    return out
