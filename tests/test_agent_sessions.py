"""``aml.agent.SessionManager``: the Aitor seed's session persistence, written as an aml store."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from aml.agent import SessionManager
from aml.agent.sessions import QUARANTINE_DIR
from aml.store.filestore import FileStore
from tests.realdata import AITOR_DIR

SESSIONS = sorted(AITOR_DIR.glob("*.json")) if AITOR_DIR.is_dir() else []
needs_data = pytest.mark.skipif(not SESSIONS, reason=f"no Aitor exports in {AITOR_DIR}")


class DictAgent:
    """An agent shaped like Aitor's: export_memory() / import_memory(dict)."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data = data
        self.imported: list[dict[str, Any]] = []

    def export_memory(self) -> dict[str, Any]:
        assert self.data is not None
        return self.data

    def import_memory(self, data: dict[str, Any]) -> None:
        self.imported.append(data)
        self.data = data


def _counts(raw: dict[str, Any]) -> dict[str, int]:
    out = {
        "sessions.messages": len(raw["conversation_history"]),
        "sessions.tool_executions": len(raw["tool_executions"]),
        "sessions.reasoning_steps": len(raw["reasoning_trace"]),
        "sessions.todos": len((raw.get("planning") or {}).get("todos", [])),
    }
    return {k: v for k, v in out.items() if v}


@needs_data
def test_real_exports_round_trip_and_store_reader(tmp_path: Path) -> None:
    manager = SessionManager(tmp_path / "sessions")
    expected: dict[str, dict[str, int]] = {}
    for path in SESSIONS:
        raw = json.loads(path.read_text())
        written = manager.save_session(DictAgent(raw), path.stem)
        assert written == tmp_path / "sessions" / f"{path.stem}.json"
        assert written.read_bytes() == json.dumps(raw, indent=2, default=str).encode()  # the seed's bytes
        assert written.read_bytes() == path.read_bytes()  # ... which is how the shared files were written
        counts = expected.setdefault(raw["agent_name"], {})
        for k, v in _counts(raw).items():
            counts[k] = counts.get(k, 0) + v
        agent = DictAgent()
        assert manager.load_session(agent, path.stem) is True
        assert agent.imported == [raw]
    assert manager.list_sessions() == sorted(p.stem for p in SESSIONS)
    scan = FileStore(tmp_path / "sessions").scan()
    assert scan.errors == []
    assert {d.kind for d in scan.documents} == {"aitor_session"}
    assert scan.counts() == expected
    assert scan.counts()["SupportBot"]["sessions.messages"] == 363 + 122 + 8  # DATA.md §2
    assert not [p for p in (tmp_path / "sessions").iterdir() if p.name.startswith(".aml-tmp-")]


@needs_data
def test_seed_written_directory_loads(tmp_path: Path) -> None:
    """A directory written by the seed's own class (the shared data) is read as it is."""
    manager = SessionManager(AITOR_DIR)
    assert manager.list_sessions() == sorted(p.stem for p in SESSIONS)
    agent = DictAgent()
    assert manager.load_session(agent, "user2203_session1")
    assert agent.imported[0]["session_id"] == "user2203_session1"


def test_real_aitor_agent_save_and_load(tmp_path: Path) -> None:
    pytest.importorskip("aitor")
    from tests.aitor_offline import add_exchange, offline_agent

    agent = offline_agent("SupportBot", "u1_s1")
    add_exchange(agent, "What is 6*7?", "42")
    add_exchange(agent, "Translate hi", "?", tool="translate", ok=False)
    agent.get_memory().add_message("system", "be brief")
    manager = SessionManager(tmp_path)
    manager.save_session(agent, "u1_s1")

    restored = offline_agent("SupportBot", "other")
    assert manager.load_session(restored, "u1_s1") is True
    assert restored.export_memory() == agent.export_memory()
    mem = restored.get_memory()
    assert [m.content for m in mem.conversation_history] == ["What is 6*7?", "42", "Translate hi", "?", "be brief"]
    assert [e.result.success for e in mem.tool_executions] == [True, False]
    assert FileStore(tmp_path).scan().counts() == {"SupportBot": {
        "sessions.messages": 5, "sessions.reasoning_steps": 2, "sessions.tool_executions": 2}}
    assert manager.load_session(offline_agent("X", "y"), "absent") is False
    assert manager.last_error is None


@needs_data
def test_real_aitor_agent_loads_shared_exports(tmp_path: Path) -> None:
    pytest.importorskip("aitor")
    from tests.aitor_offline import offline_agent

    manager = SessionManager(tmp_path)
    for path in SESSIONS:
        shutil.copy(path, tmp_path / path.name)
        agent = offline_agent("A", "x")
        assert manager.load_session(agent, path.stem), manager.last_error
        raw = json.loads(path.read_text())
        assert len(agent.get_memory().conversation_history) == len(raw["conversation_history"])


def test_gzip_session_loads(tmp_path: Path) -> None:
    """A session `aml optimize compress` gzipped under its own name still loads."""
    data = {"conversation_history": [{"role": "user", "content": "hi"}], "session_id": "z"}
    (tmp_path / "z.json").write_bytes(gzip.compress(json.dumps(data).encode()))
    agent = DictAgent()
    assert SessionManager(tmp_path).load_session(agent, "z")
    assert agent.imported == [data]


@pytest.mark.parametrize("bad", ["", "a/b", "../x", "..", "a\\b", "nul\0id", ".hidden", ".aml-x", "x" * 300,
                                 "config"])
def test_invalid_session_ids(tmp_path: Path, bad: str) -> None:
    manager = SessionManager(tmp_path)
    agent = DictAgent({"conversation_history": [], "session_id": "s"})
    with pytest.raises(ValueError, match="invalid session_id"):
        manager.save_session(agent, bad)
    with pytest.raises(ValueError, match="invalid session_id"):
        manager.load_session(agent, bad)
    assert list(tmp_path.iterdir()) == []


def test_session_id_type(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="session_id must be a str"):
        SessionManager(tmp_path).save_session(DictAgent({}), 7)  # type: ignore[arg-type]


@pytest.mark.parametrize(("content", "reason"), [
    (b'{"conversation_history": [', "truncated JSON"),
    (b'{"conversation_history": [1], "session_id": "s"}', "item 0 is a number"),
    (b'{"hello": "world"}', "not an Aitor session export"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_unparsable_file_reported_never_overwritten(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                    content: bytes, reason: str) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    manager = SessionManager(tmp_path)
    agent = DictAgent()
    with caplog.at_level(logging.WARNING, logger="aml.agent.sessions"):
        assert manager.load_session(agent, "broken") is False
    assert agent.imported == []
    assert manager.last_error is not None and reason in manager.last_error.reason
    assert reason in caplog.text and "broken" in caplog.text
    assert path.read_bytes() == content  # left as it is
    assert manager.list_sessions() == ["broken"]


def test_import_memory_rejection_is_reported(tmp_path: Path) -> None:
    pytest.importorskip("aitor")
    from tests.aitor_offline import offline_agent

    # a valid session for aml, but Aitor's from_dict needs created_at
    data = {"conversation_history": [{"role": "user", "content": "hi", "timestamp": "2026-01-01T00:00:00"}],
            "session_id": "s"}
    (tmp_path / "s.json").write_text(json.dumps(data))
    manager = SessionManager(tmp_path)
    agent = offline_agent("A", "x")
    assert manager.load_session(agent, "s") is False
    assert manager.last_error is not None and "import_memory rejected it: KeyError" in manager.last_error.reason
    assert json.loads((tmp_path / "s.json").read_text()) == data


def test_save_over_damaged_file_keeps_a_copy(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_bytes(b'{"conversation_history": [')
    manager = SessionManager(tmp_path)
    data = {"conversation_history": [], "session_id": "s"}
    manager.save_session(DictAgent(data), "s")
    assert json.loads((tmp_path / "s.json").read_text()) == data
    copies = [p for p in (tmp_path / QUARANTINE_DIR).iterdir() if not p.name.endswith(".error.json")]
    assert [p.read_bytes() for p in copies] == [b'{"conversation_history": [']
    assert FileStore(tmp_path).scan().errors == []  # the quarantine is not part of the store


def test_bad_agents_and_exports(tmp_path: Path) -> None:
    manager = SessionManager(tmp_path)
    with pytest.raises(TypeError, match="no export_memory"):
        manager.save_session(object(), "s")
    with pytest.raises(ValueError, match="needs 'conversation_history'"):
        manager.save_session(DictAgent({"messages": []}), "s")
    with pytest.raises(ValueError, match="'tool_executions'"):
        manager.save_session(DictAgent({"conversation_history": [], "tool_executions": "x"}), "s")
    with pytest.raises(TypeError, match="no import_memory"):
        manager.load_session(object(), "s")
    assert list(tmp_path.iterdir()) == []


def test_list_sessions_skips_what_is_not_a_session_file(tmp_path: Path) -> None:
    manager = SessionManager(tmp_path / "new" / "dir")  # created with parents
    assert manager.list_sessions() == []
    root = manager.storage_path
    manager.save_session({"conversation_history": [], "session_id": "b"}, "b")
    manager.save_session({"conversation_history": [], "session_id": "a"}, "a")
    (root / ".aml-tmp-123").write_text("{}")
    (root / "notes.txt").write_text("x")
    (root / "config.json").write_text("{}")
    (root / "sub.json").mkdir()
    assert manager.list_sessions() == ["a", "b"]
