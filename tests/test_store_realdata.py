"""FileStore over every real data set in shared/data: counts must equal DATA.md's tables."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from aml.store import FileStore, detect_item_version
from aml.store import accessors as acc
from aml.store.documents import load_json
from tests.realdata import (
    AITOR_COUNTS,
    AITOR_DIR,
    AITOR_SESSION1_ROLES,
    LOOM_ARCHIVED,
    LOOM_COUNTS,
    LOOM_SCHEMA,
    SHARED_DATA,
    TINYTROUPE_CACHE_ENTRIES,
    TINYTROUPE_DIR,
    TINYTROUPE_EPISODIC,
    snapshot_tree,
)

LoomStore = Callable[[str], Path]


@pytest.mark.parametrize("name", sorted(LOOM_COUNTS))
def test_loom_counts_match_data_md(name: str, loom_store: LoomStore) -> None:
    root = loom_store(name)
    before = snapshot_tree(root.parent)
    store = FileStore(root)
    result = store.scan()

    assert result.errors == []
    assert store.agents() == sorted(LOOM_COUNTS[name])
    counts = result.counts()
    got = {
        agent: (c.get("patterns", 0), c.get("solutions", 0), c.get("decisions", 0))
        for agent, c in counts.items()
    }
    assert got == LOOM_COUNTS[name]
    # archived decisions are backend-architect's, in their own collection
    assert counts["backend-architect"]["archived_decisions"] == LOOM_ARCHIVED[name]
    # every live item of the agent collections is at the tarball's schema version
    live = [r for r in result.records if r.collection in acc.LOOM_COLLECTIONS]
    assert {r.version for r in live} == {LOOM_SCHEMA[name]}
    assert all(r.store == store.store_id for r in result.records)
    # bytes on disk per agent: every file below the agent directory
    for agent, size in result.agent_sizes().items():
        assert size == sum(p.stat().st_size for p in (root / agent).rglob("*") if p.is_file())
    assert result.total_bytes == sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert snapshot_tree(root.parent) == before, "scan wrote into the store"


def test_pyops_adds_three_patterns_to_two_agents(loom_store: LoomStore) -> None:
    base = FileStore(loom_store("loom-plain-v1.0")).scan().counts()
    pyops = FileStore(loom_store("loom-plain-v1.0-pyops")).scan()
    for agent in ("frontend-developer", "debugger"):
        assert pyops.counts()[agent]["patterns"] == base[agent]["patterns"] + 3
    kinds = {d.relpath: d.kind for d in pyops.documents}
    assert kinds["monitoring/health.json"] == "loom_monitoring"
    assert kinds["backup/code-reviewer-2026-07-06T17-59-34-421Z/patterns.json"] == "loom_item_copy"
    assert kinds["README.md"] == "opaque"
    assert kinds["config.json"] == "loom_config"


def test_gzip_store_decodes_and_reports_gzip(loom_store: LoomStore) -> None:
    root = loom_store("loom-gzip-v1.0")
    assert (root / "debugger" / "patterns.json").read_bytes()[:2] == b"\x1f\x8b"
    result = FileStore(root).scan()
    docs = {d.relpath: d for d in result.documents}
    for agent in LOOM_COUNTS["loom-gzip-v1.0"]:
        for collection in acc.LOOM_COLLECTIONS:
            info = docs[f"{agent}/{collection}.json"]
            assert (info.kind, info.collection, info.encoding, info.agent) == (
                "loom_collection",
                collection,
                "gzip",
                agent,
            )
    assert docs["global/archived-decisions.json"].encoding == "gzip"
    # DATA.md says every .json is gzip; the root config.json is in fact plain
    assert docs["config.json"].encoding == "plain"
    # sizes on disk are the compressed sizes
    assert docs["debugger/patterns.json"].size_bytes == (root / "debugger" / "patterns.json").stat().st_size


def test_whole_project_tree_reads_backups_without_errors(loom_store: LoomStore) -> None:
    for name in ("loom-plain-v1.0-pyops", "loom-gzip-v1.0"):
        project = loom_store(name).parent  # .loom/ with memory/ and memory-backup/
        result = FileStore(project).scan()
        assert result.errors == []
        kinds = Counter(d.kind for d in result.documents)
        if name == "loom-gzip-v1.0":
            assert kinds["loom_ts_backup_meta"] == 1
            tarball = [d for d in result.documents if d.relpath.endswith(".tar.gz")]
            assert [(d.kind, d.encoding) for d in tarball] == [("opaque", "gzip")]
        else:
            assert kinds["loom_backup_metadata"] == 1
            gz = [d for d in result.documents if d.relpath.endswith(".json.gz")]
            assert len(gz) == 15 and {(d.kind, d.encoding) for d in gz} == {("loom_item_copy", "gzip")}


def test_same_items_read_alike_in_every_schema_version(loom_store: LoomStore) -> None:
    """v1.0 (camelCase, Z), v1.1 (+00:00 micros) and v2.0 (snake_case) describe the same items."""
    views = {}
    for name in ("loom-plain-v1.0", "loom-plain-v1.1.0", "loom-plain-v1.2.0", "loom-plain-v2.0.0"):
        result = FileStore(loom_store(name)).scan()
        views[name] = {
            (r.collection, r.id): (
                r.agent,
                r.kind,
                r.created_at,
                r.last_used_at,
                r.success_rate,
                r.confidence,
                r.execution_count,
                r.active,
            )
            for r in result.records
        }
    reference = views.pop("loom-plain-v1.0")
    assert len(reference) == 649
    patterns = [v for (c, _), v in reference.items() if c == "patterns"]
    assert all(v[2] is not None and v[3] is not None and v[4] is not None for v in patterns)
    assert sum(1 for v in patterns if v[7] is False) > 0  # some patterns deactivated
    for name, view in views.items():
        assert view == reference, name


def test_record_locations_point_at_their_items(loom_store: LoomStore) -> None:
    root = loom_store("loom-plain-v2.0.0")
    result = FileStore(root).scan()
    loaded: dict[str, object] = {}
    for record in result.records[::37]:
        doc = loaded.setdefault(
            record.location.document,
            load_json((root / record.location.document).read_bytes(), root / record.location.document),
        )
        assert isinstance(doc, list)
        item = doc[record.location.index]
        assert record.location.pointer == f"/{record.location.index}"
        assert item["id"] == record.id
        assert detect_item_version(item) == record.version
        assert record.size_bytes == len(
            __import__("json").dumps(item, ensure_ascii=False, separators=(",", ":")).encode()
        )


def test_aitor_sessions_match_data_md() -> None:
    result = FileStore(AITOR_DIR).scan()
    assert result.errors == []
    per_doc: Counter[tuple[str, str]] = Counter((r.location.document, r.collection) for r in result.records)
    for session, (agent, messages, tools, steps, todos) in AITOR_COUNTS.items():
        doc = f"{session}.json"
        assert (
            per_doc[(doc, "sessions.messages")],
            per_doc[(doc, "sessions.tool_executions")],
            per_doc[(doc, "sessions.reasoning_steps")],
            per_doc[(doc, "sessions.todos")],
        ) == (messages, tools, steps, todos), session
        [info] = [d for d in result.documents if d.relpath == doc]
        assert (info.kind, info.agent) == ("aitor_session", agent)
    roles = Counter(
        r.role for r in result.records if r.location.document == "user1042_session1.json" and r.role
    )
    assert roles == AITOR_SESSION1_ROLES
    # naive timestamps are read as UTC, inside DATA.md's spans
    s1 = [r.created_at for r in result.records if r.location.document == "user1042_session1.json"]
    assert all(t is not None and t.utcoffset() is not None for t in s1)
    assert min(t for t in s1 if t).date().isoformat() == "2026-10-12"
    assert max(t for t in s1 if t).date().isoformat() == "2026-10-25"
    failed = [
        r for r in result.records if r.collection == "sessions.tool_executions" and r.success_rate == 0.0
    ]
    assert any(r.kind == "translate" for r in failed)  # the hallucinated tool


def test_tinytroupe_specs_and_cache() -> None:
    result = FileStore(TINYTROUPE_DIR).scan()
    assert result.errors == []
    counts = result.counts()
    for agent, (committed, buffered) in TINYTROUPE_EPISODIC.items():
        assert counts[agent]["episodic_memory"] == committed
        assert counts[agent]["episodic_buffer"] == buffered
        assert "semantic_memory" not in counts[agent]  # empty offline
    kinds = {d.relpath: (d.kind, d.agent, d.record_count) for d in result.documents}
    assert kinds["tinytroupe-cache-default.json"] == ("tinytroupe_cache", "Oscar", TINYTROUPE_CACHE_ENTRIES)
    assert kinds["Lisa_Carter.agent.json"][:2] == ("tinytroupe_spec", "Lisa Carter")
    cache = [r for r in result.records if r.collection == "cache_entries"]
    assert [r.kind for r in cache] == ["define", "define", "listen_and_act", "define"]
    lisa = [r for r in result.records if r.agent == "Lisa Carter" and r.collection == "episodic_memory"]
    assert {(r.kind, r.role) for r in lisa} == {("stimulus", "user")}
    assert lisa[0].created_at is not None and lisa[0].created_at.isoformat() == "2025-03-10T09:00:00+00:00"


def test_every_shared_file_is_read() -> None:
    result = FileStore(SHARED_DATA).scan()
    assert result.errors == []
    on_disk = sorted(p.relative_to(SHARED_DATA).as_posix() for p in SHARED_DATA.rglob("*") if p.is_file())
    assert sorted(d.relpath for d in result.documents) == on_disk
    kinds = {d.relpath: d.kind for d in result.documents}
    assert kinds["amaos/amaos-dump.rdb"] == "opaque"
    assert kinds["DATA.md"] == "opaque"
    assert all(kinds[p] == "aitor_session" for p in on_disk if p.startswith("aitor/"))
    assert FileStore(SHARED_DATA).agents() == []  # no Loom agent directories at this root
