"""``aml.agent.analyze_memory_usage`` (the Aitor seed's statistics) on the real Aitor exports.

Expected values are computed here from the raw JSON, independently of the module, plus the
counts DATA.md §2 documents.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from aml.agent import analyze_memory_usage
from tests.realdata import AITOR_DIR

SESSIONS = sorted(AITOR_DIR.glob("*.json")) if AITOR_DIR.is_dir() else []
needs_data = pytest.mark.skipif(not SESSIONS, reason=f"no Aitor exports in {AITOR_DIR}")

DOCUMENTED = {  # DATA.md §2: messages, tool executions, reasoning steps, todos
    "user1042_session1": (363, 170, 649, None),
    "user1042_session2": (122, 60, 218, None),
    "ops_team_session7": (100, 50, 100, None),
    "user2203_session1": (8, 4, 16, None),
    "release_mgr_session3": (4, 0, 14, 5),
}


def _expected(raw: dict[str, Any]) -> dict[str, Any]:
    """The statistics, computed straight from the export (no aml code)."""
    msgs = raw["conversation_history"]
    by_role: dict[str, Any] = {}
    seed_roles = ["user", "assistant", "system"]
    for role in [*seed_roles, *sorted({m["role"] for m in msgs} - set(seed_roles))]:
        same = [m for m in msgs if m["role"] == role]
        by_role[role] = len(same)
        if same:
            by_role[f"{role}_avg_length"] = round(sum(len(m["content"]) for m in same) / len(same), 2)
    execs = raw["tool_executions"]
    ok = [e for e in execs if e["result"] and e["result"]["success"] is True]
    times = [e["result"]["execution_time"] for e in execs if e["result"]]
    usage: dict[str, int] = {}
    for e in execs:
        usage[e["tool_name"]] = usage.get(e["tool_name"], 0) + 1
    dist: dict[str, int] = {}
    for s in raw["reasoning_trace"]:
        dist[s["step_type"]] = dist.get(s["step_type"], 0) + 1
    return {
        "messages": {"total_messages": len(msgs), "by_role": by_role},
        "tools": {"total_executions": len(execs), "success_rate": len(ok) / len(execs) if execs else 0,
                  "avg_execution_time": sum(times) / len(times) if times else 0, "tool_usage": usage,
                  "successful": len(ok), "failed": len(execs) - len(ok)},
        "reasoning": {"total_steps": len(raw["reasoning_trace"]), "step_distribution": dist},
        "messages_kb": sum(len(m["content"].encode("utf-8")) for m in msgs) / 1024,
        "tools_kb": len(json.dumps(execs, separators=(",", ":")).encode()) / 1024 if execs else 0,
        "reasoning_kb": sum(len(s["content"].encode("utf-8")) for s in raw["reasoning_trace"]) / 1024,
    }


@needs_data
@pytest.mark.parametrize("path", SESSIONS, ids=lambda p: p.stem)
def test_real_exports_exact(path: Path) -> None:
    raw = json.loads(path.read_text())
    want = _expected(raw)
    got = analyze_memory_usage(raw)
    assert got["messages"] == want["messages"]
    tools = {k: got["tools"][k] for k in want["tools"]}
    assert tools == want["tools"]
    assert got["reasoning"] == want["reasoning"]
    size = got["memory_size"]
    for key in ("messages_kb", "tools_kb", "reasoning_kb"):
        assert size[key] == pytest.approx(want[key], rel=1e-12)
    assert size["total_kb"] == pytest.approx(want["messages_kb"] + want["tools_kb"] + want["reasoning_kb"])
    assert got["session"]["session_id"] == raw["session_id"] == path.stem
    assert got["analysis_timestamp"].endswith("Z")
    n_msgs, n_execs, n_steps, n_todos = DOCUMENTED[path.stem]
    assert (got["messages"]["total_messages"], got["tools"]["total_executions"],
            got["reasoning"]["total_steps"]) == (n_msgs, n_execs, n_steps)
    assert got.get("todos", {}).get("total") == n_todos
    # per-tool numbers add up to the totals
    by_tool = got["tools"]["by_tool"]
    assert sum(t["executions"] for t in by_tool.values()) == n_execs
    assert sum(t["successful"] for t in by_tool.values()) == got["tools"]["successful"]
    json.dumps(got)  # JSON-ready


@needs_data
def test_documented_role_split_and_a_failing_tool() -> None:
    got = analyze_memory_usage(AITOR_DIR / "user1042_session1.json")  # a path works too
    roles = got["messages"]["by_role"]
    assert (roles["user"], roles["assistant"], roles["system"]) == (170, 170, 23)
    assert got["tools"]["by_tool"]["translate"]["success_rate"] == 0.0  # the hallucinated tool always fails
    assert 0 < got["tools"]["success_rate"] < 1
    assert set(got["reasoning"]["step_distribution"]) == {"think", "act", "observe", "final_answer"}


@needs_data
def test_planning_todos_and_no_tools() -> None:
    got = analyze_memory_usage(str(AITOR_DIR / "release_mgr_session3.json"))
    assert got["tools"]["total_executions"] == 0
    assert got["tools"]["success_rate"] == 0 and got["tools"]["avg_execution_time"] == 0
    assert got["memory_size"]["tools_kb"] == 0
    assert got["todos"]["by_status"] == {"completed": 3, "pending": 1, "failed": 1}


@needs_data
def test_gzip_file_is_read(tmp_path: Path) -> None:
    src = AITOR_DIR / "user2203_session1.json"
    packed = tmp_path / src.name
    packed.write_bytes(gzip.compress(src.read_bytes()))  # what `aml optimize compress` leaves
    assert analyze_memory_usage(packed)["messages"] == analyze_memory_usage(src)["messages"]


def _small() -> dict[str, Any]:
    return {
        "conversation_history": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "héllo"},  # 5 chars, 6 UTF-8 bytes
            {"role": "assistant", "content": "hi"},
            {"role": "tool", "content": "x"},
        ],
        "tool_executions": [
            {"tool_name": "calc", "params": {}, "result": {"success": True, "execution_time": 0.5}},
            {"tool_name": "calc", "params": {}, "result": {"success": False, "execution_time": 1.5}},
            {"tool_name": "web", "params": {}, "result": None, "error": "Tool web failed: boom"},
        ],
        "reasoning_trace": [{"step_type": "think", "content": "ab"}, {"step_type": "act", "content": "c"}],
        "session_id": "s",
    }


def test_small_dict_by_hand() -> None:
    got = analyze_memory_usage(_small())
    assert got["messages"] == {"total_messages": 4, "by_role": {
        "user": 1, "user_avg_length": 5.0, "assistant": 1, "assistant_avg_length": 2.0,
        "system": 1, "system_avg_length": 8.0, "tool": 1, "tool_avg_length": 1.0}}
    tools = got["tools"]
    assert tools["total_executions"] == 3 and tools["successful"] == 1 and tools["failed"] == 2
    assert math.isclose(tools["success_rate"], 1 / 3)
    assert tools["avg_execution_time"] == 1.0  # the null result has no time: (0.5 + 1.5) / 2
    assert tools["tool_usage"] == {"calc": 2, "web": 1}
    assert tools["by_tool"]["web"] == {"executions": 1, "successful": 0, "success_rate": 0.0,
                                       "avg_execution_time": 0}
    assert got["reasoning"] == {"total_steps": 2, "step_distribution": {"think": 1, "act": 1}}
    assert got["memory_size"]["messages_kb"] == (8 + 6 + 2 + 1) / 1024
    assert got["memory_size"]["reasoning_kb"] == 3 / 1024


def test_empty_session_and_seed_roles_always_present() -> None:
    got = analyze_memory_usage({"conversation_history": [], "session_id": "e"})
    assert got["messages"] == {"total_messages": 0, "by_role": {"user": 0, "assistant": 0, "system": 0}}
    assert got["tools"]["total_executions"] == 0 and got["reasoning"]["total_steps"] == 0
    assert got["memory_size"]["total_kb"] == 0


class _Memory:
    """A ReactMemory-like object without to_dict: attributes only, enum-valued types."""

    def __init__(self) -> None:
        import enum

        class Step(enum.Enum):
            THINK = "think"

        self.conversation_history = [SimpleNamespace(role="user", content="abc")]
        self.tool_executions = [SimpleNamespace(tool_name="t", result=SimpleNamespace(success=True,
                                                                                       execution_time=0.25))]
        self.reasoning_trace = [SimpleNamespace(step_type=Step.THINK, content="hm")]


def test_objects_agent_and_memory() -> None:
    memory = _Memory()
    by_attrs = analyze_memory_usage(memory)
    assert by_attrs["messages"]["by_role"]["user"] == 1
    assert by_attrs["tools"]["avg_execution_time"] == 0.25
    assert by_attrs["reasoning"]["step_distribution"] == {"think": 1}
    agent = SimpleNamespace(get_memory=lambda: memory)
    assert analyze_memory_usage(agent)["reasoning"] == by_attrs["reasoning"]
    exporter = SimpleNamespace(export_memory=_small)
    assert analyze_memory_usage(exporter)["tools"]["total_executions"] == 3


def test_real_aitor_objects() -> None:
    pytest.importorskip("aitor")
    from tests.aitor_offline import add_exchange, offline_agent

    agent = offline_agent("StatsBot", "stats1")
    add_exchange(agent, "What is 6*7?", "42")
    mem = agent.get_memory()
    for source in (agent, mem, agent.export_memory()):
        got = analyze_memory_usage(source)
        assert got["messages"]["by_role"]["user"] == 1 and got["messages"]["by_role"]["assistant"] == 1
        assert got["tools"]["tool_usage"] == {"calculator": 1} and got["tools"]["avg_execution_time"] == 0.125
        assert got["reasoning"]["step_distribution"] == {"think": 1}
        assert got["session"]["agent_name"] == "StatsBot"


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="export_memory"):
        analyze_memory_usage(42)
    with pytest.raises(TypeError, match="conversation_history"):
        analyze_memory_usage(object())
    with pytest.raises(ValueError, match="'conversation_history' is missing"):
        analyze_memory_usage({"tool_executions": []})
    with pytest.raises(ValueError, match="'tool_executions' is str, expected a list"):
        analyze_memory_usage({"conversation_history": [], "tool_executions": "nope"})
    with pytest.raises(ValueError, match="no Aitor export file"):
        analyze_memory_usage(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"conversation_history": [')
    with pytest.raises(ValueError, match="truncated JSON"):
        analyze_memory_usage(broken)
    assert broken.read_text() == '{"conversation_history": ['  # never rewritten


@needs_data
def test_monitor_report_has_every_sessions_statistics(tmp_path: Path) -> None:
    """`aml <sessions dir> monitor report --json` carries analyze_memory_usage for every session."""
    import shutil
    import subprocess
    import sys

    from aml.health.monitor import run_health
    from tests.fixtures_runtime import REPO, runtime_env

    store = tmp_path / "sessions"
    store.mkdir()
    (store / "ops").mkdir()
    for path in SESSIONS:  # one below a sub-folder: found anywhere below the root
        shutil.copy(path, store / ("ops" if path.stem.startswith("ops") else "") / path.name)
    broken = store / "broken_session.json"
    broken.write_text('{"conversation_history": [')

    def strip(stats: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in stats.items() if k != "analysis_timestamp"}

    expected = {
        ("ops/" if p.stem.startswith("ops") else "") + p.name: {
            "agent": json.loads(p.read_text())["agent_name"], **strip(analyze_memory_usage(p))}
        for p in SESSIONS
    }
    assert run_health(store, lookup_sample=0).report()["sessions"] == expected

    env = runtime_env(tmp_path / "home", "redis://127.0.0.1:1/0")
    env["AML_LOCK_URL"] = "none://"
    proc = subprocess.run([sys.executable, "-m", "cli.main", str(store), "monitor", "report", "--json"],
                          cwd=REPO, env=env, capture_output=True, timeout=120)
    report = json.loads(proc.stdout)
    assert report["sessions"] == json.loads(json.dumps(expected))
    assert report["sessions"]["user1042_session1.json"]["messages"]["by_role"]["system"] == 23
    assert report["integrity_failures"][0]["path"] == "broken_session.json"  # reported, not analysed
    assert broken.read_text() == '{"conversation_history": ['
