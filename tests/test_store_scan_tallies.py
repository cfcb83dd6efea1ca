"""FileStore.scan_tallies: the store read by worker processes, each document's tally sent back, the documents a
probe needs read here (health's scan, issue 12)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from aml.health.monitor import session_stats
from aml.store import Document, FileStore, ScanResult
from tests.realdata import AITOR_DIR, extract_loom


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A real Loom store plus Aitor sessions, a truncated document, a wrong-typed field, a symlink and a
    non-UTF-8 document: every kind of part a tally carries."""
    root = extract_loom("loom-plain-v1.0", tmp_path / "s")
    sessions = root / "sessions-aitor"
    sessions.mkdir()
    for path in sorted(AITOR_DIR.glob("*.json"))[:3]:
        shutil.copy(path, sessions / path.name)
    agent = next(p for p in sorted(root.iterdir()) if (p / "patterns.json").is_file())
    patterns = json.loads((agent / "patterns.json").read_text())
    patterns[0]["evolution"]["lastUsed"] = 12345  # a number where Loom writes a timestamp string
    patterns[1]["metrics"]["successRate"] = "high"
    (agent / "patterns.json").write_text(json.dumps(patterns, indent=2))
    (agent / "solutions.json").write_bytes(b'[{"id": "s1", "problem": "cut')  # truncated
    (root / "global" / "broken.json").write_bytes(b'{"name": "\xff"}')
    os.symlink("/etc/hostname", root / "global" / "link.json")
    return root


def _sequential(root: Path) -> tuple[ScanResult, dict[str, object]]:
    sessions: dict[str, object] = {}

    def visit(doc: Document) -> None:
        stats = session_stats(doc)
        if stats is not None:
            sessions[doc.relpath] = stats

    return FileStore(root).scan(visit=visit, views=False), sessions


def _parallel(root: Path, **options: object) -> tuple[ScanResult, dict[str, object]]:
    result = ScanResult(FileStore(root).store_id)
    sessions: dict[str, object] = {}
    for part in FileStore(root).scan_tallies(session_stats, **options):  # type: ignore[arg-type]
        result.add(part)
        if part.extra is not None:
            sessions[part.info.relpath] = part.extra
    return result, sessions


@pytest.mark.parametrize("processes", [True, False], ids=["processes", "threads"])
def test_tallies_add_up_to_the_sequential_scan(store: Path, processes: bool) -> None:
    """Documents, errors, counts, bytes, wrong types (in document order) and the per-document extra (session
    statistics, computed where the document was read) are those of one sequential scan."""
    expected, expected_sessions = _sequential(store)
    got, sessions = _parallel(store, min_bytes_for_processes=0 if processes else 1 << 60)
    assert got.documents == expected.documents
    assert [(e.relpath, e.code, e.offset) for e in got.errors] == [(e.relpath, e.code, e.offset)
                                                                    for e in expected.errors]
    assert {e.code for e in got.errors} >= {"truncated_json", "not_utf8", "symlink"}
    assert got.tally == expected.tally and got.record_count > 0
    assert [w["field"] for w in got.wrong_type_findings] == ["evolution.lastUsed", "metrics.successRate"]
    assert sessions == expected_sessions and len(sessions) == 3


def test_documents_asked_here_are_read_and_visited_here(store: Path) -> None:
    """``here`` documents (and entries that are not regular files) are read in this process and shown to
    ``visit``; the others are read by the workers and never seen here."""
    seen: list[str] = []
    here = {"global/archived-decisions.json"}
    here |= {p.relative_to(store).as_posix() for p in sorted(store.glob("*/decisions.json"))[:2]}
    parts = list(FileStore(store).scan_tallies(here=here, visit=lambda doc: seen.append(doc.relpath),
                                               min_bytes_for_processes=0))
    assert set(seen) == here | {"global/link.json"}
    assert [p.info.relpath for p in parts] == sorted(p.info.relpath for p in parts)  # path order kept


def test_a_document_gone_since_the_listing_is_reported_not_raised(tmp_path: Path) -> None:
    """The scan lists the store before its workers read it: a file deleted in between is one unreadable entry
    (as a file that cannot be opened), never an error that stops the whole health run."""
    from aml.store.documents import read_document

    doc = read_document(tmp_path / "gone" / "patterns.json", "gone/patterns.json", loom_agents=frozenset({"gone"}))
    assert doc.error is not None and doc.error.code == "unreadable" and "cannot open" in doc.error.reason
    assert doc.relpath == "gone/patterns.json"
