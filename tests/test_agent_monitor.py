"""The TinyTroupe seed's MemoryMonitor / MemoryAlert / MemoryVisualizer (aml.agent.monitor, aml.agent.visualizer)
on real TinyTroupe specs, real Aitor exports, a real Aitor agent and simulated agents."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from aml.agent.monitor import MemoryAlert, MemoryMonitor
from aml.agent.shapes import measure
from aml.agent.visualizer import MemoryVisualizer
from tests.fixtures_runtime import REPO
from tests.realdata import AITOR_COUNTS, AITOR_DIR, TINYTROUPE_DIR, TINYTROUPE_EPISODIC

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


class Episodic:
    def __init__(self) -> None:
        self.memory: list[dict[str, Any]] = []
        self.episodic_buffer: list[dict[str, Any]] = []


class Semantic:
    def __init__(self) -> None:
        self.memories: list[dict[str, Any]] = []


class FakePerson:
    """TinyTroupe's memory shape (TinyPerson: episodic_memory.memory/episodic_buffer, semantic_memory)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.episodic_memory = Episodic()
        self.semantic_memory = Semantic()

    def grow(self, n: int) -> None:
        for i in range(n):
            self.episodic_memory.memory.append({"role": "user", "content": f"event {i}", "type": "stimulus"})

    def set_size(self, n: int) -> None:
        del self.episodic_memory.memory[n:]
        self.grow(n - len(self.episodic_memory.memory))


def _monitor(**kwargs: Any) -> MemoryMonitor:
    kwargs.setdefault("catalog_url", None)
    return MemoryMonitor(**kwargs)


@pytest.fixture(autouse=True)
def _no_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AML_CATALOG_URL", raising=False)


# --------------------------------------------------------------------------- real data


def test_real_tinytroupe_specs_are_measured_and_monitored() -> None:
    specs = sorted(TINYTROUPE_DIR.glob("*.agent.json"))
    if not specs:
        pytest.skip("shared TinyTroupe specs absent")
    monitor = _monitor()
    for path in specs:
        spec = json.loads(path.read_text())
        name = monitor.track_agent(spec)
        snap = monitor.record_snapshot(spec)
        committed, buffered = TINYTROUPE_EPISODIC[name]
        assert snap["counts"] == {"episodic_memory": committed, "episodic_buffer": buffered, "semantic_memory": 0}
        assert snap["memory_size"] == committed + buffered
        assert 0 < snap["bytes"] < path.stat().st_size  # the memory only, compact
        assert snap["consolidation"]["buffer_size"] == buffered
        stats = monitor.get_agent_stats(name)
        assert stats["memory_trend"] == "stable" and stats["total_alerts"] == 0
        assert f"{committed + buffered} items" in monitor.generate_report(name)
    assert sorted(monitor.agents) == sorted(TINYTROUPE_EPISODIC)


def test_real_aitor_exports_with_the_agents_limits_alert_once() -> None:
    files = sorted(AITOR_DIR.glob("*.json"))
    if not files:
        pytest.skip("shared Aitor sessions absent")
    monitor = _monitor()
    for path in files:
        data = json.loads(path.read_text())
        agent, messages, tools, steps, todos = AITOR_COUNTS[path.stem]
        m = measure(data, name=path.stem)
        assert (m.shape, m.counts) == ("aitor", {"messages": messages, "tool_executions": tools,
                                                 "reasoning_steps": steps, "todos": todos})
        assert m.usage_ratio is None  # exports carry no limits
        assert measure(data).name == agent
    # OpsAssistant ran at Aitor's default limits (DATA.md §2): full on every kind
    ops = json.loads((AITOR_DIR / "ops_team_session7.json").read_text())
    fired: list[MemoryAlert] = []
    monitor.register_alert_callback(fired.append)
    monitor.track_agent(ops, limit={"messages": 100, "tool_executions": 50, "reasoning_steps": 100})
    for i in range(3):
        monitor.record_snapshot(ops, timestamp=T0 + timedelta(minutes=i))
    assert [(a.alert_type, a.severity) for a in fired] == [("memory_threshold", "critical")]
    assert fired[0].memory_stats["usage_ratio"] == 1.0 and "messages 100/100" in fired[0].message
    assert monitor.get_agent_stats("OpsAssistant")["total_alerts"] == 1


def _replay_llm() -> Any:
    """An aitor ``BaseLLM`` replaying a think step then the final result, over and over: no network."""
    from aitor.llm import BaseLLM
    from aitor.reasoning import ReactAgentResponse

    class Replay(BaseLLM):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__({"model": "replay"})
            self.turn = 0

        async def generate(self, messages: Any, **kwargs: Any) -> Any:  # pragma: no cover - unused
            raise NotImplementedError

        async def generate_json(self, messages: Any, schema: Any = None, **kwargs: Any) -> Any:  # pragma: no cover
            raise NotImplementedError

        async def generate_structured(self, messages: Any, model: Any, **kwargs: Any) -> Any:
            self.turn += 1
            if self.turn % 2:
                return ReactAgentResponse(action="think", content="Let me answer from what I know.")
            return ReactAgentResponse(action="result", content=f"Answer number {self.turn // 2}.")

    return Replay()


def test_a_real_aitor_agent_crosses_its_own_limits_once_each() -> None:
    pytest.importorskip("aitor")
    from aitor.react_agent import ReactAgent

    agent = ReactAgent(name="SupportBot", llm=_replay_llm(),
                       memory_config={"max_conversation_length": 20, "max_tool_executions": 10,
                                      "max_reasoning_steps": 60})
    monitor = _monitor()
    fired: list[MemoryAlert] = []
    monitor.register_alert_callback(fired.append)
    monitor.track_agent(agent)
    ratios = []
    for i in range(15):
        asyncio.run(agent.solve(f"Question {i}?"))
        snap = monitor.record_snapshot(agent)
        ratios.append(snap["usage_ratio"])
    assert snap["limits"] == {"messages": 20, "tool_executions": 10, "reasoning_steps": 60}
    assert snap["counts"]["messages"] == 20  # Aitor pruned at its cap: the ratio stays at 1.0
    assert ratios[-1] == 1.0 and ratios[0] < 0.8
    assert [(a.alert_type, a.severity) for a in fired] == [("memory_threshold", "warning"),
                                                           ("memory_threshold", "critical")]
    # the export of the same agent is measured the same way
    assert measure(agent.export_memory()).counts == snap["counts"]


# --------------------------------------------------------------------------- alert crossings


def test_simulated_growth_fires_one_growth_alert_per_episode() -> None:
    monitor = _monitor(growth_rate_threshold=0.5)
    fired: list[MemoryAlert] = []
    monitor.register_alert_callback(fired.append)
    alice = FakePerson("Alice")
    sizes = [20, 22, 24, 26, 60, 120, 240, 480, 490]  # normal, then four abnormal snapshots in a row
    for i, n in enumerate(sizes):
        alice.set_size(n)
        monitor.record_snapshot(alice, timestamp=T0 + timedelta(minutes=i))
    assert [a.alert_type for a in fired] == ["abnormal_growth"]
    assert fired[0].agent_name == "Alice" and fired[0].severity == "warning"
    assert fired[0].memory_stats["memory_size"] == 60 and "26 -> 60 items" in fired[0].message
    stats = monitor.get_agent_stats("Alice")
    assert stats["memory_trend"] == "increasing" and stats["total_alerts"] == 1
    # growth back to normal, then abnormal again: a second crossing
    alice.set_size(1200)
    monitor.record_snapshot(alice, timestamp=T0 + timedelta(minutes=20))
    assert [a.alert_type for a in fired] == ["abnormal_growth"] * 2
    # small absolute growth is never abnormal (growth_min_items)
    bob = FakePerson("Bob")
    for i, n in enumerate([2, 4, 8, 2, 4]):
        bob.set_size(n)
        monitor.record_snapshot(bob, timestamp=T0 + timedelta(minutes=i))
    assert monitor.get_alerts(agent_name="Bob") == []


def test_threshold_crossing_fires_once_and_again_after_going_below() -> None:
    monitor = _monitor(alert_threshold=0.8)
    fired: list[MemoryAlert] = []
    monitor.register_alert_callback(fired.append)
    agent = FakePerson("Carol")
    monitor.track_agent(agent, limit=100)
    for i, n in enumerate([50, 85, 90, 92, 97, 99, 85, 96, 50, 81, 82]):
        agent.set_size(n)
        monitor.record_snapshot(agent, timestamp=T0 + timedelta(minutes=i))
    assert [(a.memory_stats["memory_size"], a.severity) for a in fired if a.alert_type == "memory_threshold"] == [
        (85, "warning"), (97, "critical"), (96, "critical"), (81, "warning")]
    assert [a.memory_stats["memory_size"] for a in monitor.get_alerts("Carol", severity="critical")] == [97, 96]
    assert monitor.get_agent_stats("Carol")["memory_trend"] in {"increasing", "decreasing", "stable"}
    assert str(fired[0]).startswith("[2026-11-01T12:01:00+00:00] WARNING Carol memory_threshold")
    assert json.loads(json.dumps(fired[0].to_dict()))["memory_stats"]["usage_ratio"] == 0.85


def test_a_failing_callback_is_logged_and_the_monitor_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    monitor = _monitor()
    seen: list[str] = []

    def broken(alert: MemoryAlert) -> None:
        raise RuntimeError("handler bug")

    monitor.register_alert_callback(broken)
    monitor.register_alert_callback(lambda a: seen.append(a.alert_type))
    agent = FakePerson("Dan")
    monitor.track_agent(agent, limit=10)
    agent.set_size(9)
    with caplog.at_level(logging.ERROR, logger="aml.agent.monitor"):
        snap = monitor.record_snapshot(agent)
    assert snap["alerts"] == ["memory_threshold"] and seen == ["memory_threshold"]
    assert "handler bug" in caplog.text
    assert monitor.get_agent_stats("Dan")["snapshots"] == 1


def test_trend_and_consolidation_tracking() -> None:
    monitor = _monitor(consolidation_frequency_threshold=3)
    fired: list[MemoryAlert] = []
    monitor.register_alert_callback(fired.append)
    eve = FakePerson("Eve")
    eve.grow(30)
    tick = iter(range(100))
    for _ in range(4):  # the buffer grows, no episode committed
        eve.episodic_memory.episodic_buffer.append({"type": "stimulus"})
        monitor.record_snapshot(eve, timestamp=T0 + timedelta(minutes=next(tick)))
    eve.episodic_memory.episodic_buffer.append({"type": "stimulus"})
    monitor.record_snapshot(eve, timestamp=T0 + timedelta(minutes=next(tick)))  # stays stalled: no second alert
    assert [a.alert_type for a in fired] == ["consolidation_stalled"]
    # commit the episode: buffer into memory
    eve.episodic_memory.memory.extend(eve.episodic_memory.episodic_buffer)
    eve.episodic_memory.episodic_buffer.clear()
    eve.get_consolidation_metrics = lambda: {"consolidations": 1, "last": T0}  # type: ignore[attr-defined]
    monitor.record_snapshot(eve, timestamp=T0 + timedelta(minutes=next(tick)))
    data = MemoryVisualizer(monitor).prepare_consolidation_data("Eve")
    assert data["supported"] and data["total_consolidations"] == 1
    assert data["events"][0]["committed_delta"] == 5 and data["buffer_size"][-1] == 0
    assert monitor.get_agent_stats("Eve")["consolidations"] == 1
    assert data["metrics"] == [{"timestamp": data["timestamps"][-1], "consolidations": 1, "last": str(T0)}]
    for _ in range(5):  # shrinking memory
        del eve.episodic_memory.memory[-5:]
        monitor.record_snapshot(eve, timestamp=T0 + timedelta(minutes=next(tick)))
    assert monitor.get_agent_stats("Eve")["memory_trend"] == "decreasing"


def test_bad_shapes_raise_a_type_error_naming_what_is_missing() -> None:
    monitor = _monitor()
    with pytest.raises(TypeError, match=r"episodic_memory.*get_memory.*export_memory"):
        monitor.track_agent(object())
    with pytest.raises(TypeError, match="conversation_history"):
        monitor.record_snapshot({"name": "x"})

    class HalfPerson:
        name = "half"
        episodic_memory = Episodic()

    del HalfPerson.episodic_memory.episodic_buffer
    with pytest.raises(TypeError, match=r"`episodic_buffer`.*`semantic_memory"):
        monitor.track_agent(HalfPerson())

    class ListMemory:
        def get_memory(self) -> list[str]:
            return []

    with pytest.raises(TypeError, match=r"not an Aitor ReactMemory.*export_memory"):
        monitor.track_agent(ListMemory())
    assert monitor.agents == []
    with pytest.raises(KeyError, match="not tracked"):
        monitor.get_agent_stats("nobody")


# --------------------------------------------------------------------------- visualizer


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def _populated() -> MemoryMonitor:
    monitor = _monitor()
    alice = FakePerson("Alice")
    monitor.track_agent(alice, limit=400)
    for i, n in enumerate([20, 24, 28, 60, 120, 330, 340]):
        alice.set_size(n)
        alice.episodic_memory.episodic_buffer = [{"type": "stimulus"}] * (i % 4)
        monitor.record_snapshot(alice, timestamp=T0 + timedelta(minutes=i))
    spec = TINYTROUPE_DIR / "Oscar.agent.json"
    if spec.exists():
        monitor.record_snapshot(json.loads(spec.read_text()), timestamp=T0)
    return monitor


def test_html_report_is_self_contained_with_svg_charts(tmp_path: Path) -> None:
    viz = MemoryVisualizer(_populated())
    out = tmp_path / "report.html"
    page = viz.generate_html_report(path=out)
    assert out.read_text(encoding="utf-8") == page
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert parser.tags.count("svg") >= 5 and "polyline" in parser.tags
    assert "http" not in page and parser.urls == [] and "script" not in parser.tags
    assert "abnormal_growth" in page and "memory_threshold" in page
    one = viz.generate_html_report("Alice")
    assert "<h2>Alice</h2>" in one and "<h2>Oscar</h2>" not in one
    assert viz.generate_html_report(tmp_path / "alice.html") == (tmp_path / "alice.html").read_text()


def test_export_json_round_trips_and_ascii_chart(tmp_path: Path) -> None:
    monitor = _populated()
    viz = MemoryVisualizer(monitor)
    out = tmp_path / "data.json"
    text = viz.export_data_json(path=out)
    loaded = json.loads(out.read_text(encoding="utf-8"))
    assert loaded == json.loads(text)
    alice = loaded["agents"]["Alice"]
    assert alice["timeline"] == json.loads(json.dumps(viz.prepare_memory_timeline_data("Alice")))
    assert alice["timeline"]["memory_size"] == [20, 25, 30, 63, 120, 331, 342]
    assert alice["stats"]["total_alerts"] == len(monitor.get_alerts("Alice")) > 0
    assert [a["alert_type"] for a in alice["timeline"]["alerts"]] == ["abnormal_growth", "memory_threshold"]
    assert json.loads(viz.export_data_json("Alice"))["agents"].keys() == {"Alice"}
    chart = viz.print_ascii_chart("Alice", metric="memory_size", width=40, height=6)
    lines = chart.splitlines()
    assert lines[0] == "Alice: memory_size (items), 7 snapshots" and len(lines) == 1 + 6 + 2
    assert lines[1].startswith("342 |") and "█" in chart
    assert "usage_ratio" in viz.print_ascii_chart("Alice", metric="usage_ratio")
    assert "episodic_buffer" in viz.print_ascii_chart("Alice", metric="episodic_buffer")
    with pytest.raises(ValueError, match=r"unknown metric 'nope'.*memory_size"):
        viz.print_ascii_chart("Alice", metric="nope")


# --------------------------------------------------------------------------- catalog


def test_snapshots_and_alerts_go_to_the_catalog_and_the_cli(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    url = f"sqlite:///{home / 'catalog.db'}"
    store = "agent://test-host/monitor-test"
    monitor = MemoryMonitor(catalog_url=url, store=store)
    fired: list[MemoryAlert] = []
    monitor.register_alert_callback(fired.append)
    alice = FakePerson("Alice")
    for i, n in enumerate([20, 22, 80, 82]):
        alice.set_size(n)
        monitor.record_snapshot(alice, timestamp=T0 + timedelta(minutes=i))
    assert [a.alert_type for a in fired] == ["abnormal_growth"] and not monitor.catalog_errors

    from models import queries
    from workers.catalog import dispose_engines, session_scope

    with session_scope(url, write=False) as session:
        open_alerts = [(a.agent, a.check, a.severity, a.resolved_at is None)
                       for a in queries.list_alerts(session, store=store, include_resolved=True)]
        samples = queries.store_samples(session, store=store, name="agent_bytes")
        records = queries.store_samples(session, store=store, name="records")
        fingerprint = queries.alert_fingerprint(store, "Alice", "monitor.abnormal_growth")
        stored = {a.fingerprint for a in queries.list_alerts(session, store=store, include_resolved=True)}
    dispose_engines(url)
    # raised at 80, resolved at 82 (normal growth again)
    assert open_alerts == [("Alice", "monitor.abnormal_growth", "warning", False)]
    assert fingerprint in stored
    assert [s.subject for s in samples] == ["Alice"] * 4 and samples[-1].value == measure(alice).bytes
    assert {s.subject for s in records} == {"Alice/episodic_memory", "Alice/episodic_buffer", "Alice/semantic_memory"}

    alice.set_size(400)  # raise it again: open now
    monitor.record_snapshot(alice, timestamp=T0 + timedelta(minutes=9))
    env = {**os.environ, "AML_HOME": str(home), "AML_CATALOG_URL": url, "PYTHONPATH": str(REPO),
           "AML_BROKER_URL": "redis://127.0.0.1:1/0", "AML_LOCK_URL": "none://"}
    done = subprocess.run([sys.executable, "-m", "cli.main", store, "monitor", "alerts", "--json"], cwd=REPO,
                          env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    listed = json.loads(done.stdout)["alerts"]
    assert [(a["agent"], a["check"], a["severity"]) for a in listed] == [("Alice", "monitor.abnormal_growth",
                                                                         "warning")]
    assert "400 items" in listed[0]["message"]


_AGENT_PROCESS = """\
import copy, json, sys
from pathlib import Path

from aml.agent import MemoryAlert, MemoryMonitor
from tests.aitor_offline import add_exchange, offline_agent

store, spec_path = sys.argv[1], Path(sys.argv[2])
monitor = MemoryMonitor(store=store)  # the catalog comes from AML_CATALOG_URL
assert monitor.catalog_url, "AML_CATALOG_URL not seen"
fired: list[MemoryAlert] = []
monitor.register_alert_callback(fired.append)
bot = offline_agent("SupportBot", "e2e-session")  # a real Aitor ReactAgent
spec = json.loads(spec_path.read_text())  # a TinyTroupe spec's memory
episodes = spec["episodic_memory"]["memory"]
for i in range(3):
    add_exchange(bot, f"Question {i}?", f"Answer {i}.")
names = [monitor.track_agent(bot), monitor.track_agent(spec)]
monitor.record_snapshot(bot)
monitor.record_snapshot(spec)
add_exchange(bot, "One more?", "One more answer.")  # normal growth: no alert
episodes.extend(copy.deepcopy(episodes[:5]))
monitor.record_snapshot(bot)
monitor.record_snapshot(spec)
assert not fired, fired
for i in range(8):  # abnormal growth
    add_exchange(bot, f"Burst {i}?", f"Burst answer {i}.")
episodes.extend(copy.deepcopy(episodes[:40]))
monitor.record_snapshot(bot)
monitor.record_snapshot(spec)
assert [(a.agent_name, a.alert_type) for a in fired] == [(n, "abnormal_growth") for n in names], fired
assert not monitor.catalog_errors, list(monitor.catalog_errors)
for a in fired:
    print("ALERT", json.dumps({"store": monitor.store, "agent": a.agent_name, "check": f"monitor.{a.alert_type}",
                            "severity": a.severity, "message": a.message}))
"""


@pytest.mark.slow
def test_done_when_an_agent_process_alert_shows_in_the_cli(tmp_path: Path) -> None:
    """Issue 10's first "Done when": an agent process tracks a real Aitor agent and a TinyTroupe spec's memory,
    gets growth alerts through its callback, and ``aml <store> monitor alerts`` lists the same alerts."""
    pytest.importorskip("aitor")
    spec = TINYTROUPE_DIR / "Oscar.agent.json"
    if not spec.is_file():
        pytest.skip("shared TinyTroupe specs absent")
    from models import queries

    home, store = tmp_path / "home", tmp_path / "store"
    home.mkdir()
    store.mkdir()
    script = tmp_path / "agent_process.py"
    script.write_text(_AGENT_PROCESS)
    env = {**os.environ, "AML_HOME": str(home), "AML_CATALOG_URL": f"sqlite:///{home / 'catalog.db'}",
           "PYTHONPATH": str(REPO), "AML_BROKER_URL": "redis://127.0.0.1:1/0", "AML_LOCK_URL": "none://"}
    agent = subprocess.run([sys.executable, str(script), str(store), str(spec)], cwd=REPO, env=env,
                           capture_output=True, timeout=180)
    assert agent.returncode == 0, agent.stderr.decode()
    fired = [json.loads(line.removeprefix("ALERT ")) for line in agent.stdout.decode().splitlines()
             if line.startswith("ALERT ")]  # Aitor logs to stdout too
    assert [(a["agent"], a["check"]) for a in fired] == [("SupportBot", "monitor.abnormal_growth"),
                                                         ("Oscar", "monitor.abnormal_growth")]
    assert {a["store"] for a in fired} == {os.path.realpath(store)}
    done = subprocess.run([sys.executable, "-m", "cli.main", str(store), "monitor", "alerts", "--json"], cwd=REPO,
                          env=env, capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr.decode()
    listed = {a["fingerprint"]: a for a in json.loads(done.stdout)["alerts"]}
    assert len(listed) == len(fired)
    for a in fired:
        row = listed[queries.alert_fingerprint(a["store"], a["agent"], a["check"])]
        assert (row["store"], row["agent"], row["check"], row["severity"], row["message"], row["resolved_at"]) == (
            a["store"], a["agent"], a["check"], a["severity"], a["message"], None)


@pytest.mark.parametrize(("url", "reason"), [("nosuchdialect://aml:s3cret@nowhere/x", "NoSuchModuleError"),
                                           ("sqlite://", "in-memory SQLite database"),
                                           ("not a url", "ArgumentError")])
def test_a_catalog_url_that_can_never_work_is_reported_once(url: str, reason: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A URL that can never work turns recording off at the first snapshot, with one warning (no password in it);
    the monitor goes on."""
    monitor = MemoryMonitor(catalog_url=url, store="agent://x")
    agent = FakePerson("Fay")
    with caplog.at_level(logging.WARNING, logger="aml.agent.monitor"):
        for size in (5, 6, 7):
            agent.set_size(size)
            assert monitor.record_snapshot(agent)["memory_size"] == size
    assert monitor.catalog_off is not None and reason in monitor.catalog_off
    assert len(monitor.catalog_errors) == 1 and reason in monitor.catalog_errors[0]
    assert not [r for r in caplog.records if "s3cret" in r.getMessage()]  # a URL's password is never logged
    assert [r.getMessage() for r in caplog.records if "catalog" in r.getMessage()] == [
        f"memory snapshots are not recorded in the catalog (the monitor goes on in memory): {monitor.catalog_off}"]


def test_a_catalog_failure_that_may_pass_is_met_at_every_snapshot(tmp_path: Path) -> None:
    """A catalog that cannot be opened now (its directory is a file) is tried again at each snapshot."""
    (tmp_path / "file").write_text("x")
    monitor = MemoryMonitor(catalog_url=f"sqlite:///{tmp_path / 'file' / 'catalog.db'}", store="agent://x")
    agent = FakePerson("Fay")
    for size in (5, 6):
        agent.set_size(size)
        assert monitor.record_snapshot(agent)["memory_size"] == size
    assert monitor.catalog_off is None and len(monitor.catalog_errors) == 2


def test_the_monitor_modules_need_no_celery_or_catalog() -> None:
    code = ("import sys\nimport aml.agent, aml.agent.monitor, aml.agent.visualizer, aml.agent.shapes\n"
            "from aml.agent import MemoryMonitor, MemoryVisualizer, MemoryAlert\n"
            "bad = [m for m in ('celery', 'sqlalchemy', 'kombu', 'workers', 'tasks', 'models', 'aitor') "
            "if m in sys.modules]\n"
            "assert not bad, bad\n")
    env = {k: v for k, v in os.environ.items() if k != "AML_CATALOG_URL"}
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60, env=env)
