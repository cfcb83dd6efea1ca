"""Session-length pruning on the real Aitor exports and TinyTroupe agents."""

from __future__ import annotations

import itertools
import json
import shutil
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


def exchanges_of(msgs: list[dict]) -> list[list[int]]:
    """Exchanges computed here independently: a user message and the non-system replies after it."""
    groups: list[list[int]] = []
    for i, m in enumerate(msgs):
        if m["role"] == "system":
            continue
        if m["role"] == "user" or not groups:
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


def expected_removals(doc: dict, n_messages: int, n_tools: int, n_steps: int) -> dict[str, set[int]]:
    """The documented managed-mode rules, computed here independently."""
    msgs = doc["conversation_history"]
    groups = exchanges_of(msgs)
    keys = [tuple((msgs[i]["role"], json.dumps(msgs[i]["content"], sort_keys=True)) for i in g) for g in groups]
    newest = {k: n for n, k in enumerate(keys)}
    dupes = {i for n, g in enumerate(groups) if newest[keys[n]] != n for i in g}
    left = [g for n, g in enumerate(groups) if newest[keys[n]] == n]
    capped: set[int] = set()
    total = sum(len(g) for g in left)
    for g in left:
        if total <= n_messages:
            break
        capped |= set(g)
        total -= len(g)
    tools, steps = len(doc["tool_executions"]), len(doc["reasoning_trace"])
    return {
        "/conversation_history": dupes | capped,
        "/tool_executions": set(range(max(tools - n_tools, 0))),
        "/reasoning_trace": set(range(max(steps - n_steps, 0))),
    }


def loadable_by_aitor(doc: dict) -> None:
    """Aitor 1.1.2's own loader (what ``import_memory`` calls) reads the export, and writes it back equal."""
    from aitor.memory import ReactMemory

    memory = ReactMemory.from_dict(doc)
    assert len(memory.conversation_history) == len(doc["conversation_history"])
    assert len(memory.tool_executions) == len(doc["tool_executions"])
    assert len(memory.reasoning_trace) == len(doc["reasoning_trace"])


def assert_conversation_kept(before: dict, after: dict) -> None:
    """No exchange is cut, no session starts with a reply it did not start with, system messages stay."""
    old = before["conversation_history"]
    new = after["conversation_history"]
    # map kept messages back to their original indices (new is a subsequence of old)
    indices: list[int] = []
    j = 0
    for i, m in enumerate(old):
        if j < len(new) and m == new[j]:
            indices.append(i)
            j += 1
    assert j == len(new), "the result is a subsequence of the original"
    kept_set = set(indices)
    for group in exchanges_of(old):
        inside = [i in kept_set for i in group]
        assert all(inside) or not any(inside), f"exchange {group} cut"
    assert [m for m in new if m["role"] == "system"] == [m for m in old if m["role"] == "system"]
    first_old = next((m["role"] for m in old if m["role"] != "system"), None)
    first_new = next((m["role"] for m in new if m["role"] != "system"), None)
    assert first_new in (None, "user", first_old), "a session never starts with a reply it did not start with"
    roles = [m["role"] for m in new if m["role"] != "system"]
    old_roles = [m["role"] for m in old if m["role"] != "system"]
    old_same = sum(a == b for a, b in itertools.pairwise(old_roles))
    assert sum(a == b for a, b in itertools.pairwise(roles)) <= old_same, "no new same-role neighbours"


def aitor_fifo(doc: dict, n_messages: int, n_tools: int, n_steps: int) -> dict:
    """What Aitor 1.1.2's own pruning keeps: its ReactMemory with these limits, its own _prune_* methods."""
    from aitor.memory import ReactMemory

    memory = ReactMemory.from_dict(doc)
    memory.max_conversation_length, memory.max_tool_executions, memory.max_reasoning_steps = \
        n_messages, n_tools, n_steps
    memory._prune_conversation_history()
    memory._prune_tool_executions()
    memory._prune_reasoning_trace()
    return memory.to_dict()


LIMITS = [(100, 50, 100), (10, 5, 7), (150, 40, 120), (0, 0, 0)]


@pytest.mark.parametrize("limits", LIMITS)
def test_aitor_session_rules(tmp_path: Path, limits: tuple[int, int, int]) -> None:
    n_messages, n_tools, n_steps = limits
    sources = sorted(AITOR_DIR.glob("*.json"))
    assert {s.stem for s in sources} == set(AITOR_COUNTS)
    root = store_with(tmp_path, *sources)
    config = PruneConfig(session_max_messages=n_messages, session_max_tool_executions=n_tools,
                         session_max_reasoning_steps=n_steps)
    plan = build_plan(root, config, ["session_based"])
    assert plan.to_dict()["session_mode"] == "managed"
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
        assert_conversation_kept(doc, after)
        assert {k: v for k, v in after.items() if k not in ("conversation_history", "tool_executions",
                                                             "reasoning_trace")} == \
            {k: v for k, v in doc.items() if k not in ("conversation_history", "tool_executions",
                                                        "reasoning_trace")}, "other fields untouched"
        msgs = after["conversation_history"]
        others = [m for m in msgs if m["role"] != "system"]
        assert len(others) <= n_messages
        if n_messages >= 2 and doc["conversation_history"][-1]["role"] != "system":
            assert msgs[-1] == doc["conversation_history"][-1], "the newest message stays"
        for key, limit in (("tool_executions", n_tools), ("reasoning_trace", n_steps)):
            assert after[key] == (doc[key][len(doc[key]) - limit:] if len(doc[key]) > limit else doc[key])


@pytest.mark.parametrize("limits", LIMITS)
def test_fifo_equals_aitors_own_pruning(tmp_path: Path, limits: tuple[int, int, int]) -> None:
    """--fifo keeps exactly what Aitor 1.1.2's ReactMemory pruning keeps with the same limits, on every
    shared session; the pruned file loads with ReactMemory.from_dict and round-trips to the same dict."""
    pytest.importorskip("aitor.memory")
    n_messages, n_tools, n_steps = limits
    sources = sorted(AITOR_DIR.glob("*.json"))
    root = store_with(tmp_path, *sources)
    config = PruneConfig(session_mode="fifo", session_max_messages=n_messages,
                         session_max_tool_executions=n_tools, session_max_reasoning_steps=n_steps)
    plan = build_plan(root, config, ["session_based"])
    assert plan.to_dict()["session_mode"] == "fifo"
    apply_plan(plan, run_id="f")
    for src in sources:
        doc = json.loads(src.read_bytes())
        after = json.loads((root / "support" / src.name).read_bytes())
        expected = aitor_fifo(doc, n_messages, n_tools, n_steps)
        from aitor.memory import ReactMemory

        assert ReactMemory.from_dict(after).to_dict() == expected, src.name
        for key in ("conversation_history", "tool_executions", "reasoning_trace"):
            assert len(after[key]) == len(expected[key])


def test_default_limits_leave_already_trimmed_sessions_alone(tmp_path: Path) -> None:
    """ops_team_session7 was FIFO-pruned by Aitor itself (100 messages, 50 tools, 100 steps): only its
    exact duplicates go; the small sessions are not touched at all."""
    root = store_with(tmp_path, *sorted(AITOR_DIR.glob("*.json")))
    plan = build_plan(root, PruneConfig(), ["session_based"])
    reasons: dict[str, set[str]] = {}
    for a in plan.actions:
        reasons.setdefault(Path(a.document).stem, set()).add(a.reason)
    assert reasons["ops_team_session7"] == {"session_duplicate"}, "duplicate exchanges only"
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
    pytest.importorskip("aitor")
    from tests.aitor_offline import offline_agent

    root = store_with(tmp_path, AITOR_DIR / "user1042_session1.json")
    apply_plan(build_plan(root, PruneConfig(), ["session_based"]), run_id="s")
    agent = offline_agent("SupportBot", "user1042_session1")
    agent.import_memory(json.loads((root / "support" / "user1042_session1.json").read_text()))
    memory = agent.get_memory()
    assert 0 < len([m for m in memory.conversation_history if m.role.value != "system"]) <= 100
    assert len([m for m in memory.conversation_history if m.role.value == "system"]) == 23


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


def test_limits_sidecar_beats_agent_and_general_limits(tmp_path: Path) -> None:
    """A session configured at 150/40/120 (its sidecar) is never cut to 100, whatever --limits say;
    per-agent entries beat general ones; --limits beats AML_SESSION_LIMITS (tasks.prune.make_config)."""
    from aml.prune.sessions import write_sidecar
    from tasks.prune import make_config

    root = store_with(tmp_path, *sorted(AITOR_DIR.glob("*.json")))
    write_sidecar(root / "support" / "user1042_session1.json",
                  {"max_messages": 150, "max_tool_executions": 40, "max_reasoning_steps": 120})
    config = make_config(limits=["100/50/100", "OpsAssistant:max_messages=60"],
                         setting_limits="SupportBot:300/-/-; OpsAssistant:70/20/30; 90/45/95")
    plan = build_plan(root, config, ["session_based"]).to_dict()
    s1 = plan["sessions"]["support/user1042_session1.json"]
    assert s1["limits"] == {"max_messages": 150, "max_tool_executions": 40, "max_reasoning_steps": 120}
    assert set(s1["limit_sources"].values()) == {"sidecar"}
    assert s1["before"]["conversation_history"] - s1["removed"]["conversation_history"] > 100
    assert s1["before"]["tool_executions"] - s1["removed"]["tool_executions"] == 40
    assert s1["before"]["reasoning_trace"] - s1["removed"]["reasoning_trace"] == 120
    s2 = plan["sessions"]["support/user1042_session2.json"]
    assert s2["limits"] == {"max_messages": 300, "max_tool_executions": 50, "max_reasoning_steps": 100}
    assert s2["limit_sources"]["max_messages"] == "AML_SESSION_LIMITS SupportBot"
    ops = plan["sessions"]["support/ops_team_session7.json"]
    assert ops["limits"] == {"max_messages": 60, "max_tool_executions": 20, "max_reasoning_steps": 30}
    assert ops["limit_sources"] == {"max_messages": "--limits OpsAssistant",
                                    "max_tool_executions": "AML_SESSION_LIMITS OpsAssistant",
                                    "max_reasoning_steps": "AML_SESSION_LIMITS OpsAssistant"}
    assert plan["config"]["session_agent_limits"]["--limits"] == {"OpsAssistant": {"max_messages": 60}}


def test_limits_parsing_and_bad_sidecar(tmp_path: Path) -> None:
    from aml.prune.sessions import parse_limits, sidecar_path

    assert parse_limits("150/40/120") == {None: {"max_messages": 150, "max_tool_executions": 40,
                                                 "max_reasoning_steps": 120}}
    assert parse_limits(["max_conversation_length=7,tools=3", "Bot:150//120"]) == {
        None: {"max_messages": 7, "max_tool_executions": 3}, "Bot": {"max_messages": 150, "max_reasoning_steps": 120}}
    for bad in ("150/40/120/1", "max_memory=3", "-1/2/3", "a/b/c", ":1/2/3"):
        with pytest.raises(ValueError):
            parse_limits(bad)
    assert sidecar_path("/x/s.json.gz") == Path("/x/s.limits.json")
    root = store_with(tmp_path, AITOR_DIR / "user1042_session1.json")
    (root / "support" / "user1042_session1.limits.json").write_text('{"max_messages": "many"}')
    plan = build_plan(root, PruneConfig(), ["session_based"])
    assert plan.actions == [], "a session whose limits are unknown is left alone"
    assert plan.errors[0]["code"] == "bad_sidecar"


def test_cli_fifo_dry_run_removes_what_aitor_would(tmp_path: Path, aml_settings, capsys) -> None:
    """Done-when: `aml <sessions dir> prune --fifo --dry-run --json` on a copy of the shared sessions plans
    exactly the entries Aitor 1.1.2's own pruning drops with the same limits; the default mode is named too."""
    pytest.importorskip("aitor.memory")
    from cli.main import main

    root = tmp_path / "sessions"
    root.mkdir()
    for src in sorted(AITOR_DIR.glob("*.json")):
        shutil.copy2(src, root / src.name)
    for mode_args, mode in ((["--fifo"], "fifo"), ([], "managed")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main([str(root), "prune", *mode_args, "--limits", "20/10/30", "--dry-run", "--json"])
        assert exit_info.value.code in (0, None)
        plan = json.loads(capsys.readouterr().out)["plan"]
        assert plan["session_mode"] == mode
        if mode != "fifo":
            continue
        for src in sorted(AITOR_DIR.glob("*.json")):
            doc = json.loads(src.read_bytes())
            kept = aitor_fifo(doc, 20, 10, 30)
            for key in ("conversation_history", "tool_executions", "reasoning_trace"):
                planned = {a["index"] for a in plan["actions"] if a["document"] == src.name
                           and a["pointer"].startswith(f"/{key}/")}
                assert planned == set(range(len(doc[key]) - len(kept[key]))), (src.name, key)


@pytest.mark.parametrize("fifo", [True, False])
def test_session_prune_task_and_undo_are_exact(tmp_path: Path, aml_settings, fifo: bool) -> None:
    """The prune task on a sessions directory: pre-prune snapshot, one row per record, undo byte-exact."""
    from tasks import prune

    root = tmp_path / "sessions"
    root.mkdir()
    for src in sorted(AITOR_DIR.glob("*.json")):
        shutil.copy2(src, root / src.name)
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    result = prune.run.apply(kwargs={"store": str(root), "limits": ["30/10/40"], "fifo": fifo},
                             throw=True).get()
    assert result["status"] == "success" and result["backup_id"]
    assert result["plan"]["session_mode"] == ("fifo" if fifo else "managed")
    assert result["applied"]["removed"] == result["plan"]["counts"]["total"] > 0
    for p in root.iterdir():
        loadable_by_aitor(json.loads(p.read_bytes()))
    undone = prune.undo.apply(kwargs={"store": str(root), "run_id": result["run_id"]}, throw=True).get()
    assert undone["restored"] == result["plan"]["counts"]["total"]
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before


def test_session_manager_saves_the_agents_limits_for_prune(tmp_path: Path) -> None:
    """A real Aitor agent configured at 150/40/120, saved by SessionManager: prune keeps its limits."""
    pytest.importorskip("aitor")
    from aml.agent import SessionManager
    from tests.aitor_offline import add_exchange, offline_agent

    agent = offline_agent("SupportBot", "cfg1")
    memory = agent.get_memory()
    memory.max_conversation_length, memory.max_tool_executions, memory.max_reasoning_steps = 150, 40, 120
    for n in range(80):
        add_exchange(agent, f"question {n}", f"answer {n}")
    sessions = SessionManager(tmp_path / "s")
    sessions.save_session(agent, "cfg1")
    assert sessions.list_sessions() == ["cfg1"], "the sidecar is not a session"
    plan = build_plan(tmp_path / "s", PruneConfig(session_max_messages=100), ["session_based"]).to_dict()
    entry = plan["sessions"]["cfg1.json"]
    assert entry["limits"] == {"max_messages": 150, "max_tool_executions": 40, "max_reasoning_steps": 120}
    assert entry["before"] == {"conversation_history": 150, "tool_executions": 40, "reasoning_trace": 80}
    assert entry["removed"] == {"conversation_history": 0, "tool_executions": 0, "reasoning_trace": 0}


def test_sessions_and_specs_in_global_and_monitoring_are_recognised(tmp_path: Path) -> None:
    """Part 5: 'anywhere below a store root' includes global/ and monitoring/; a sessions-only store
    needs none of Loom's directories."""
    from aml.health.checks import check_directory_structure
    from aml.store import FileStore

    root = tmp_path / "store"
    (root / "global").mkdir(parents=True)
    (root / "monitoring").mkdir()
    shutil.copy2(AITOR_DIR / "user2203_session1.json", root / "global" / "user2203_session1.json")
    shutil.copy2(TINYTROUPE_DIR / "Oscar.agent.json", root / "monitoring" / "Oscar.agent.json")
    kinds = {d.relpath: d.kind for d in FileStore(root).iter_documents()}
    assert kinds == {"global/user2203_session1.json": "aitor_session", "monitoring/Oscar.agent.json": "tinytroupe_spec"}
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy2(AITOR_DIR / "user2203_session1.json", only / "user2203_session1.json")
    assert check_directory_structure(only).passed
