"""Apply and undo on real stores: atomic rewrites keep everything aml does not touch; undo puts back
exactly the removed records, byte-identical when nothing else changed, keeping later changes otherwise."""

from __future__ import annotations

import gzip
import json
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aml.prune.undo as undo_mod
from aml.prune import PruneConfig, UndoEntry, apply_plan, archive_file, build_plan, read_archive, undo_entries
from aml.store.rewrite import Layout, find_list, key_only, rebuilt_pieces
from tests.realdata import extract_loom, snapshot_tree

NOW = datetime(2026, 11, 23, tzinfo=UTC)
ALL = ["time_based", "performance_based", "space_based"]


def files(root: Path) -> dict[str, bytes]:
    return {k: v[0] for k, v in snapshot_tree(root).items() if (root / k).is_file()}


def load(path: Path):
    raw = path.read_bytes()
    return json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)


def write_like_loom(path: Path, items, gz: bool) -> None:
    """What Loom's runtime does after recordPatternUsage: JSON.stringify(items, null, 2), pako gzip."""
    data = json.dumps(items, indent=2, ensure_ascii=False).encode()
    path.write_bytes(zlib.compress(data, 6, wbits=31) if gz else data)


def as_version_1(payload: dict) -> dict:
    """A payload as rows written before version 2 hold it: the whole record parsed as ``item``."""
    return {**payload, "v": 1, "item": json.loads(payload["text"])}


def prune(root: Path, tmp: Path, *, payload_version: int = 2, **cfg):
    plan = build_plan(root, PruneConfig(now=NOW, agent_limit_mib=0.05, **cfg), ALL)
    result = apply_plan(plan, run_id="run-1", archive_root=tmp / "archives")
    payloads = [a.payload if payload_version == 2 else as_version_1(a.payload) for a in result.applied]
    entries = [UndoEntry(n, a.action.document, a.action.record_id, json.loads(json.dumps(p)))
               for n, (a, p) in enumerate(zip(result.applied, payloads, strict=True))]
    return plan, result, entries


@pytest.mark.parametrize("payload_version", [2, 1])
@pytest.mark.parametrize("name", ["loom-gzip-v1.0", "loom-plain-v1.0", "loom-plain-v2.0.0"])
def test_apply_then_undo_is_byte_identical(name: str, payload_version: int, tmp_path: Path) -> None:
    root = extract_loom(name, tmp_path / "s")
    before = files(root)
    plan, result, entries = prune(root, tmp_path, payload_version=payload_version)
    assert all(e.payload["v"] == payload_version for e in entries)
    assert not result.conflicts and result.error is None
    assert len(result.applied) == len(plan.actions) > 0
    after = files(root)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == set(result.documents)
    for rel in changed:
        items = load(root / rel)
        gone = {a.record_id for a in plan.actions if a.document == rel}
        assert [i["id"] for i in items] == [i["id"] for i in load_bytes(before[rel]) if i["id"] not in gone]
        assert (before[rel][:2] == b"\x1f\x8b") == (after[rel][:2] == b"\x1f\x8b"), "encoding kept"
        # everything that stays is byte-for-byte the writer's: re-serialising the kept items gives the file
        original = load_bytes(before[rel])
        kept = [i for i in original if i["id"] not in gone]
        assert after[rel] == encode_like(before[rel], kept)
    # archived decisions went to the repository's archives/<agent>/, not away
    for agent in {a.agent for a in plan.actions if a.action == "archived"}:
        archived = read_archive(archive_file(tmp_path / "archives", agent, "run-1"))
        assert {d["id"] for d in archived} == {a.record_id for a in plan.actions
                                               if a.action == "archived" and a.agent == agent}
    undone = undo_entries(root, entries, archive_root=tmp_path / "archives")
    assert len(undone.restored) == len(entries) and not undone.failed
    assert files(root) == before, "undo gives back the identical bytes"
    assert not list((tmp_path / "archives").rglob("*.json.gz")), "restored decisions leave the archive"
    again = undo_entries(root, entries, archive_root=tmp_path / "archives")
    assert again.restored == [] and len(again.already_present) == len(entries)
    assert files(root) == before, "undo is idempotent"


def load_bytes(raw: bytes):
    return json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)


def encode_like(original: bytes, items) -> bytes:
    data = json.dumps(items, indent=2, ensure_ascii=False).encode()
    return zlib.compress(data, 6, wbits=31) if original[:2] == b"\x1f\x8b" else data


@pytest.mark.parametrize("name", ["loom-gzip-v1.0", "loom-plain-v1.0"])
def test_undo_keeps_later_changes_to_other_records(name: str, tmp_path: Path) -> None:
    root = extract_loom(name, tmp_path / "s")
    gz = name.startswith("loom-gzip")
    original = {rel: load(root / rel) for rel in (f"{a}/patterns.json" for a in ("debugger", "frontend-developer"))}
    plan, _, entries = prune(root, tmp_path)
    rel = "debugger/patterns.json"
    gone = {a.record_id for a in plan.actions if a.document == rel}
    assert gone
    # the agent keeps working after the prune: it uses a kept pattern, and records a new one
    current = load(root / rel)
    used = current[len(current) // 2]
    used["metrics"]["executionCount"] += 1
    used["evolution"]["lastUsed"] = "2026-11-23T09:00:00.000Z"
    new = json.loads(json.dumps(current[0]))
    new["id"] = "00000000-0000-4000-8000-000000000001"
    new["timestamp"] = new["evolution"]["created"] = "2026-11-23T09:30:00.000Z"
    current.append(new)
    write_like_loom(root / rel, current, gz)
    # ... and it even re-created one of the pruned patterns itself (undo must not duplicate it)
    other = "frontend-developer/patterns.json"
    gone_other = [a for a in plan.actions if a.document == other]
    recreated = next(i for i in original[other] if i["id"] == gone_other[0].record_id)
    items = load(root / other)
    items.append(recreated)
    write_like_loom(root / other, items, gz)

    undone = undo_entries(root, entries, archive_root=tmp_path / "archives")
    assert not undone.failed
    assert len(undone.already_present) == 1
    expected = [dict(i) for i in original[rel]]
    for i in expected:
        if i["id"] == used["id"]:
            i.update(used)
    expected.append(new)
    assert load(root / rel) == expected, "pruned records back in place, later changes kept"
    assert (root / rel).read_bytes() == encode_like((root / rel).read_bytes(), expected)
    restored_other = load(root / other)
    assert [i["id"] for i in restored_other].count(recreated["id"]) == 1
    assert {i["id"] for i in restored_other} == {i["id"] for i in original[other]}


def test_undo_reports_missing_and_broken_documents(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path / "s")
    _, _, entries = prune(root, tmp_path)
    (root / "debugger" / "patterns.json").unlink()
    broken = root / "frontend-developer" / "solutions.json"
    broken.write_bytes(broken.read_bytes()[:-40])
    before_broken = broken.read_bytes()
    undone = undo_entries(root, entries, archive_root=tmp_path / "archives")
    failed_docs = {f["document"] for f in undone.failed}
    assert failed_docs == {"debugger/patterns.json", "frontend-developer/solutions.json"}
    assert broken.read_bytes() == before_broken, "a document that does not parse is never written"
    assert not (root / "debugger" / "patterns.json").exists()
    assert len(undone.restored) == len(entries) - len(undone.failed)


def test_apply_leaves_a_document_changed_since_the_plan(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path / "s")
    plan = build_plan(root, PruneConfig(now=NOW), ["time_based"])
    target = root / "debugger" / "patterns.json"
    items = load(target)
    write_like_loom(target, items[1:], gz=False)  # an agent rewrote it in between
    changed = target.read_bytes()
    result = apply_plan(plan, run_id="r", archive_root=tmp_path / "archives")
    assert [c["document"] for c in result.conflicts] == ["debugger/patterns.json"]
    assert target.read_bytes() == changed
    assert "debugger/patterns.json" not in result.documents
    assert result.documents, "the other documents were pruned"


def test_document_locked_by_loom_is_left_alone(tmp_path: Path) -> None:
    """Loom's runtime writes under ``<file>.lock`` (proper-lockfile): a prune racing it would lose one
    of the two writes, so the document is reported as a conflict and not touched."""
    root = extract_loom("loom-gzip-v1.0", tmp_path)
    plan = build_plan(root, PruneConfig(now=NOW, agent_limit_mib=0.05), ALL)
    locked = sorted({a.document for a in plan.actions})[0]
    (root / f"{locked}.lock").mkdir()  # fresh: Loom holds it
    before = (root / locked).read_bytes(), (root / locked).stat().st_mtime_ns
    result = apply_plan(plan, run_id="run-lock", archive_root=tmp_path / "archives")
    assert {"document": locked, "reason": "locked by Loom's runtime (<file>.lock)"} in result.conflicts
    assert locked not in result.documents and result.documents
    assert ((root / locked).read_bytes(), (root / locked).stat().st_mtime_ns) == before
    assert all(r.action.document != locked for r in result.applied)


def test_undo_clears_the_archive_of_records_holding_nan(tmp_path: Path) -> None:
    """A decision holding NaN (Python's json writes it) is archived with its NaN; a version 1 row kept the
    payload's parsed item with NaN as null (valid JSON): undo finds the archive entry from the record's text, so
    the restored decision leaves the archive, with rows of either version."""
    from models.engine import json_deserializer, json_serializer

    root = extract_loom("loom-plain-v1.0", tmp_path / "s")
    for path in root.glob("*/decisions.json"):
        items = load(path)
        for item in items:
            item["score"] = float("nan")
        path.write_text(json.dumps(items, indent=2), encoding="utf-8")
    before = files(root)
    plan = build_plan(root, PruneConfig(now=NOW, agent_limit_mib=0.05), ALL)
    result = apply_plan(plan, run_id="run-1", archive_root=tmp_path / "archives")
    assert result.archived > 0
    old = [UndoEntry(n, a.action.document, a.action.record_id,
                     json_deserializer(json_serializer(as_version_1(a.payload)))) for n, a in enumerate(result.applied)]
    assert any(e.payload["item"].get("score", 0) is None for e in old)  # the catalog's copy: null
    new = [UndoEntry(n, a.action.document, a.action.record_id, json_deserializer(json_serializer(a.payload)))
           for n, a in enumerate(result.applied)]
    assert all("NaN" in e.payload["text"] for e in new if e.payload["archive"])
    for entries in (old, new):
        undone = undo_entries(root, entries, archive_root=tmp_path / "archives")
        assert len(undone.restored) == len(entries) and not undone.failed
        assert files(root) == before
        assert not list((tmp_path / "archives").rglob("*.json.gz")), "restored decisions leave the archive"
        plan = build_plan(root, PruneConfig(now=NOW, agent_limit_mib=0.05), ALL)  # again, for the next round
        assert apply_plan(plan, run_id="run-1", archive_root=tmp_path / "archives").archived > 0


# ------------------------------------------------------------------ the pieces of a rebuilt list


def _element_wise(text: str, span: Any, inserts: dict[int, list[str]]) -> list[tuple[str, str | None]]:
    """The reference: every original element with its own separator, inserted texts in their gaps."""
    out: list[tuple[str, str | None]] = []
    for i in range(len(span) + 1):
        out.extend((t, None) for t in inserts.get(i, ()))
        if i < len(span):
            out.append((span.element_text(text, i), span.sep_after(text, i)))
    return out


@settings(max_examples=200, deadline=None)
@given(piece_chars=st.sampled_from([1, 4, 9, 10**9]), elements=st.lists(st.integers(0, 99), max_size=8),
       seps=st.lists(st.sampled_from([",", ", ", ",\n  ", " ,\t"]), min_size=8, max_size=8),
       inserts=st.dictionaries(st.integers(0, 8), st.lists(st.sampled_from(['"a"', "{}", "[1]"]), min_size=1,
                                                            max_size=3), max_size=4),
       lead=st.sampled_from(["", "\n  ", " "]), trail=st.sampled_from(["", "\n", " "]))
def test_stretches_of_untouched_elements_rebuild_the_same_text(piece_chars: int, elements: list[int], seps: list[str],
                                                               inserts: dict[int, list[str]], lead: str,
                                                               trail: str) -> None:
    """undo hands each stretch of original elements to the rebuild in runs of about PIECE_CHARS characters: the
    text is the one an element-by-element rebuild gives (each element with its writer's separator), and no run
    is longer than PIECE_CHARS plus one element."""
    body = "".join(f"{e}{seps[i] if i + 1 < len(elements) else ''}" for i, e in enumerate(elements))
    text = f'{{"k": [{lead if elements else ""}{body}{trail if elements else ""}]}}'
    span = find_list(text, "/k", keep=key_only)
    inserts = {g: texts for g, texts in inserts.items() if g <= len(span)}
    layout = Layout(lead or "\n", ", ", trail)
    with mock.patch.object(undo_mod, "PIECE_CHARS", piece_chars):
        stretches = list(undo_mod._with_inserts(text, span, inserts))
    reference = _element_wise(text, span, inserts)
    longest = max((len(span.element_text(text, i)) for i in range(len(span))), default=0)
    runs = [piece for piece, _ in stretches if piece[:1].isdigit()]  # the inserted texts start otherwise
    assert all(len(run) < piece_chars + longest + max(map(len, seps)) for run in runs)
    assert "".join(rebuilt_pieces(text, span, stretches, layout=layout)) == "".join(
        rebuilt_pieces(text, span, reference, layout=layout))
    assert len(stretches) <= len(reference)
    if len(span) and not inserts and piece_chars > len(text):
        assert len(stretches) == 1, "an untouched list is one piece"
