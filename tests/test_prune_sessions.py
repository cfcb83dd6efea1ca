"""Session-length pruning on the real Aitor exports and TinyTroupe agents."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from aml.prune import PruneConfig, UndoEntry, apply_plan, build_plan, undo_entries
from tests.realdata import AITOR_COUNTS, AITOR_DIR, TINYTROUPE_DIR, TINYTROUPE_EPISODIC, snapshot_tree

ROLES = {"user", "assistant", "system"}
STEP_TYPES = {"think", "act", "observe", "final_answer"}


def store_with(tmp_path: Path, *sources: Path) -> Path:
    root = tmp_path / "store"
    (root / "support").mkdir(parents=True)
    for src in sources:
        shutil.copy2(src, root / "support" / src.name)
    return root


def expected_removals(doc: dict, n_messages: int, n_tools: int, n_steps: int) -> dict[str, set[int]]:
    """The documented session rules, computed here independently."""
    msgs = doc["conversation_history"]
    newest: dict[tuple[str, str], int] = {}
    for i, m in enumerate(msgs):
        if m["role"] != "system":
            newest[(m["role"], json.dumps(m["content"], sort_keys=True))] = i
    dupes = {i for i, m in enumerate(msgs)
             if m["role"] != "system" and newest[(m["role"], json.dumps(m["content"], sort_keys=True))] != i}
    left = [i for i, m in enumerate(msgs) if m["role"] != "system" and i not in dupes]
    capped = set(left[: max(len(left) - n_messages, 0)])
    tools, steps = len(doc["tool_executions"]), len(doc["reasoning_trace"])
    return {
        "/conversation_history": dupes | capped,
        "/tool_executions": set(range(max(tools - n_tools, 0))),
        "/reasoning_trace": set(range(max(steps - n_steps, 0))),
    }


def loadable_by_aitor(doc: dict) -> None:
    """What aitor's ReactMemory.from_dict (import_memory) needs of an export."""
    datetime.fromisoformat(doc["created_at"])
    datetime.fromisoformat(doc["last_updated"])
    assert isinstance(doc.get("agent_name", ""), str) and isinstance(doc.get("metadata", {}), dict)
    for m in doc.get("conversation_history", []):
        assert m["role"] in ROLES and "content" in m
        datetime.fromisoformat(m["timestamp"])
    for t in doc.get("tool_executions", []):
        assert {"success", "result"} <= set(t["result"]) and "tool_name" in t and "params" in t
        datetime.fromisoformat(t["timestamp"])
    for s in doc.get("reasoning_trace", []):
        assert s["step_type"] in STEP_TYPES and "content" in s
        datetime.fromisoformat(s["timestamp"])
        if "tool_result" in s:
            assert {"success", "result"} <= set(s["tool_result"])


@pytest.mark.parametrize("limits", [(100, 50, 100), (10, 5, 7)])
def test_aitor_session_rules(tmp_path: Path, limits: tuple[int, int, int]) -> None:
    n_messages, n_tools, n_steps = limits
    sources = sorted(AITOR_DIR.glob("*.json"))
    assert {s.stem for s in sources} == set(AITOR_COUNTS)
    root = store_with(tmp_path, *sources)
    config = PruneConfig(session_max_messages=n_messages, session_max_tool_executions=n_tools,
                         session_max_reasoning_steps=n_steps)
    plan = build_plan(root, config, ["session_based"])
    originals = {s.name: json.loads(s.read_bytes()) for s in sources}
    for name, doc in originals.items():
        want = expected_removals(doc, n_messages, n_tools, n_steps)
        got: dict[str, set[int]] = {k: set() for k in want}
        for a in plan.actions:
            if a.document == f"support/{name}":
                got[a.list_pointer].add(a.index)
        assert got == want, name
    result = apply_plan(plan, run_id="s")
    assert not result.conflicts
    for name, doc in originals.items():
        after = json.loads((root / "support" / name).read_bytes())
        loadable_by_aitor(after)
        assert {k: v for k, v in after.items() if k not in ("conversation_history", "tool_executions",
                                                             "reasoning_trace")} == \
            {k: v for k, v in doc.items() if k not in ("conversation_history", "tool_executions",
                                                        "reasoning_trace")}, "other fields untouched"
        msgs = after["conversation_history"]
        assert [m for m in msgs if m["role"] == "system"] == [m for m in doc["conversation_history"]
                                                              if m["role"] == "system"]
        others = [m for m in msgs if m["role"] != "system"]
        assert len(others) <= n_messages
        assert len({(m["role"], json.dumps(m["content"])) for m in others}) == len(others), "no duplicates left"
        assert msgs[-1] == doc["conversation_history"][-1], "the newest message stays"
        for key, limit in (("tool_executions", n_tools), ("reasoning_trace", n_steps)):
            assert after[key] == doc[key][-limit:] if len(doc[key]) > limit else after[key] == doc[key]


def test_default_limits_leave_already_trimmed_sessions_alone(tmp_path: Path) -> None:
    """ops_team_session7 was FIFO-pruned by Aitor itself (100 messages, 50 tools, 100 steps): only its
    exact duplicates go; the small sessions are not touched at all."""
    root = store_with(tmp_path, *sorted(AITOR_DIR.glob("*.json")))
    plan = build_plan(root, PruneConfig(), ["session_based"])
    reasons: dict[str, set[str]] = {}
    for a in plan.actions:
        reasons.setdefault(Path(a.document).stem, set()).add(a.reason)
    assert reasons["ops_team_session7"] == {"session_duplicate"}
    assert "user2203_session1" not in reasons and "release_mgr_session3" not in reasons
    assert reasons["user1042_session1"] >= {"session_duplicate", "session_tool_limit", "session_reasoning_limit"}


def test_session_prune_undo_round_trip(tmp_path: Path) -> None:
    root = store_with(tmp_path, *sorted(AITOR_DIR.glob("*.json")))
    before = snapshot_tree(root)
    plan = build_plan(root, PruneConfig(session_max_messages=20), ["session_based"])
    result = apply_plan(plan, run_id="s")
    assert result.documents
    entries = [UndoEntry(n, r.action.document, r.action.record_id, r.payload) for n, r in enumerate(result.applied)]
    undone = undo_entries(root, entries)
    assert len(undone.restored) == len(entries)
    assert {k: v[0] for k, v in snapshot_tree(root).items()} == {k: v[0] for k, v in before.items()}


def test_aitor_import_memory_loads_pruned_export(tmp_path: Path) -> None:
    aitor_memory = pytest.importorskip("aitor.memory")
    root = store_with(tmp_path, AITOR_DIR / "user1042_session1.json")
    apply_plan(build_plan(root, PruneConfig(), ["session_based"]), run_id="s")
    memory = aitor_memory.ReactMemory.from_dict(json.loads((root / "support" / "user1042_session1.json").read_text()))
    assert len(memory.conversation_history) <= 100 + 23


def test_tinytroupe_keeps_prefix_and_last_items(tmp_path: Path) -> None:
    sources = [TINYTROUPE_DIR / "Lisa_Carter.agent.json", TINYTROUPE_DIR / "Oscar.agent.json",
               TINYTROUPE_DIR / "tinytroupe-cache-default.json"]
    root = store_with(tmp_path, *sources)
    cache_before = (root / "support" / "tinytroupe-cache-default.json").read_bytes()
    untouched = build_plan(root, PruneConfig(), ["session_based"])
    assert untouched.actions == [], "45 items fit in prefix 20 + last 100"
    plan = build_plan(root, PruneConfig(episodic_keep_last=10), ["session_based"])
    assert {a.agent for a in plan.actions} == set(TINYTROUPE_EPISODIC)
    assert all(a.document.endswith(".agent.json") for a in plan.actions), "caches are never edited"
    originals = {s.name: json.loads(s.read_bytes()) for s in sources[:2]}
    apply_plan(plan, run_id="t")
    for name, spec in originals.items():
        after = json.loads((root / "support" / name).read_bytes())
        memory = spec["episodic_memory"]["memory"]
        prefix = max(20, spec["episodic_memory"]["fixed_prefix_length"])
        assert len(memory) == TINYTROUPE_EPISODIC[spec["persona"]["name"]][0]
        assert after["episodic_memory"]["memory"] == memory[:prefix] + memory[-10:]
        assert after["episodic_memory"]["episodic_buffer"] == spec["episodic_memory"]["episodic_buffer"]
        assert {k: v for k, v in after.items() if k != "episodic_memory"} == \
            {k: v for k, v in spec.items() if k != "episodic_memory"}
    assert (root / "support" / "tinytroupe-cache-default.json").read_bytes() == cache_before
