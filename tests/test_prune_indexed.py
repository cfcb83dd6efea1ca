"""A prune plan takes the live Loom collections the record index holds unchanged from it, unread: the plan is
the one made by reading every document, on real stores, on odd fields, for every strategy set; and a
changed document, a damaged or foreign index are read instead."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aml.optimize.index import build_index, index_path
from aml.optimize.value import record_value
from aml.prune import PruneConfig, apply_plan, build_plan
from aml.prune.fields import (
    LOOM_LIVE,
    IndexedItem,
    ItemPacker,
    RuleFields,
    decode_document,
    digest,
    encode_document,
    indexed_item,
    rule_fields,
    value_inputs,
)
from aml.prune.plan import PrunePlan
from aml.prune.value import base_score
from aml.store.extract import records_from_document
from aml.store.filestore import FileStore
from tests.realdata import extract_loom
from tests.test_prune_stream import NOW, RULES
from tests.test_prune_task import files, run_cli
from tests.test_store_wrong_types import AGENT, JSON_VALUES, inject

STRATEGY_SETS = (RULES, [*RULES, "space_based"], ["performance_based"], ["space_based"],
                 [*RULES, "space_based", "session_based"])
CONFIGS = {
    "default": PruneConfig(now=NOW),
    "aggressive": PruneConfig(now=NOW).aggressive(),
    "keep-all": PruneConfig(now=NOW, high_value_threshold=0.0),
    "space": PruneConfig(now=NOW, agent_limit_mib=0.05, store_limit_mib=0.2),
    "no-preserve": PruneConfig(now=NOW, preserve_high_value=False, negative_metric_average=0.9),
}


def age(root: Path, seconds: int = 3600) -> None:
    """Put every file's mtime ``seconds`` back (its ctime becomes now)."""
    for path in root.rglob("*"):
        if path.is_file() and ".aml" not in path.parts:
            st = path.stat()
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 10**9))


def live_plain_documents(root: Path) -> int:
    conn = sqlite3.connect(index_path(root))
    try:
        return int(conn.execute(
            "SELECT count(*) FROM documents WHERE kind = 'loom_collection' AND encoding = 'plain' AND error IS NULL "
            "AND agent IS NOT NULL AND collection IN ('patterns', 'solutions', 'decisions')").fetchone()[0])
    finally:
        conn.close()


def same_plan(indexed: PrunePlan, read: PrunePlan) -> None:
    a, b = indexed.to_dict(), read.to_dict()
    assert b.pop("documents_from_index") == 0
    a.pop("documents_from_index")
    assert a == b
    assert indexed.actions == read.actions
    assert indexed.documents == read.documents


def both_plans(root: Path, config: PruneConfig, strategies: list[str],
               agents: list[str] | None = None) -> tuple[PrunePlan, PrunePlan]:
    indexed = build_plan(root, config, strategies, agents=agents)
    read = build_plan(root, config, strategies, agents=agents, use_index=False)
    same_plan(indexed, read)
    return indexed, read


@pytest.mark.parametrize("name", ["loom-plain-v1.0", "loom-plain-v2.0.0", "loom-plain-v1.0-pyops", "odd"])
def test_the_plan_from_the_index_is_the_plan_from_the_documents(name: str, tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0" if name == "odd" else name, tmp_path / "s")
    if name == "odd":  # wrong types (integer lastUsed, null timestamps, string numbers), integers beyond 64 bits
        inject(root)
        for collection, edit in (("patterns", lambda item: item["metrics"].update(executionCount=2**70)),
                                 ("solutions", lambda item: item.update(verifiedCount=2**70))):
            rel = root / AGENT / f"{collection}.json"
            items = json.loads(rel.read_text(encoding="utf-8"))
            edit(items[30])
            rel.write_text(json.dumps(items, indent=2), encoding="utf-8")
        age(root)  # modified an hour ago: documents modified just before the index reads them are read by plans
    build_index(root)
    expected = live_plain_documents(root)
    assert expected >= 3
    for config in CONFIGS.values():
        for strategies in STRATEGY_SETS:
            indexed, _ = both_plans(root, config, strategies)
            # the patterns holding an execution count beyond 64 bits have no packed fields: they are read
            assert indexed.documents_from_index == expected - (name == "odd")
    indexed, read = both_plans(root, CONFIGS["aggressive"], RULES, agents=[AGENT])
    assert read.actions and {a.agent for a in read.actions} == {AGENT}
    if name == "odd":
        assert read.wrong_type and read.preserved


@pytest.mark.parametrize("name", ["loom-plain-v1.0", "loom-plain-v2.0.0", "odd"])
def test_the_indexed_base_is_the_records_value(name: str, tmp_path: Path) -> None:
    """The index writes a live Loom item's value from its packed B: the value record_value computes."""
    root = extract_loom("loom-plain-v1.0" if name == "odd" else name, tmp_path / "s")
    if name == "odd":
        inject(root)
    store = FileStore(root)
    seen = 0
    for doc in store.iter_documents(check_types=True):
        if doc.kind != "loom_collection" or doc.collection not in LOOM_LIVE or doc.agent is None:
            continue
        for record in records_from_document(store.store_id, doc):
            item = doc.data[record.location.index]
            fields = indexed_item(record.collection, item, clean=doc.types_clean, size_bytes=record.size_bytes,
                                  wrong_types=())
            assert round(fields.base, 6) == record_value(record, item), record.id
            seen += 1
    assert seen > 500


def test_a_changed_document_is_read_and_the_rest_taken_from_the_index(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path / "s")
    build_index(root)
    expected = live_plain_documents(root)
    config = PruneConfig(now=NOW).aggressive()
    kept = {a.record_id for a in build_plan(root, config, RULES).actions}
    path = root / AGENT / "patterns.json"
    items = json.loads(path.read_text(encoding="utf-8"))
    del items[0]
    failing = [item for item in items if item["id"] not in kept][:10]
    assert len(failing) == 10
    for item in failing:
        item["metrics"].update(successRate=0.01, executionCount=100)
    path.write_text(json.dumps(items, indent=2), encoding="utf-8")
    indexed, _ = both_plans(root, config, RULES)
    assert indexed.documents_from_index == expected - 1
    assert {item["id"] for item in failing} <= {a.record_id for a in indexed.actions}, "the document as it is now"
    # applied, the plan taken partly from the index removes what a plan from the documents would
    result = apply_plan(indexed, run_id="from-index", archive_root=tmp_path / "archives")
    assert len(result.applied) == len(indexed.actions)
    rebuilt = build_plan(root, config, RULES, use_index=False)
    assert not rebuilt.actions, "everything planned was pruned"


def test_an_edit_that_keeps_the_size_and_the_mtime_is_seen_by_the_ctime(tmp_path: Path) -> None:
    """A same-size rewrite whose mtime is put back (``cp -p``, ``touch -r``, ``rsync -a --inplace``)."""
    root = extract_loom("loom-plain-v1.0", tmp_path / "s")
    build_index(root)
    config = PruneConfig(now=NOW)
    kept = {a.record_id for a in build_plan(root, config, RULES).actions}
    path = root / AGENT / "patterns.json"
    before = path.stat()
    text = path.read_text(encoding="utf-8")
    item = next(i for i in json.loads(text) if i["id"] not in kept and i["metrics"]["executionCount"] >= 10
                and str(i["metrics"]["successRate"]).startswith("0.") and str(i["metrics"]["successRate"])[2] > "3")
    at = text.index('"successRate": 0.', text.index(f'"id": "{item["id"]}"')) + len('"successRate": 0.')
    time.sleep(0.05)  # a ctime step (a jiffy) after the extraction's
    path.write_text(text[:at] + "0" + text[at + 1:], encoding="utf-8")  # 0.6392 -> 0.0392: same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    indexed, _ = both_plans(root, config, RULES)
    assert indexed.documents_from_index == live_plain_documents(root) - 1
    assert item["id"] in {a.record_id for a in indexed.actions}


def test_a_document_changed_just_before_the_index_read_it_is_read(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Racily clean: changed (mtime or ctime) within a timestamp step of the index's read, a document may be
    written again in that step without changing its size, mtime or ctime; plans read it, and builds read it
    again until they read it a step after its change."""
    import aml.optimize.index as index_mod
    import aml.prune.indexed as indexed_mod

    for module in (index_mod, indexed_mod):  # a 0.3 s step (2 s outside the tests)
        monkeypatch.setattr(module, "CHANGE_TICK_NS", 300_000_000)
    root = extract_loom("loom-plain-v1.0", tmp_path / "s")
    time.sleep(0.35)  # the extraction a step before the reads
    path = root / AGENT / "solutions.json"
    path.write_bytes(path.read_bytes())  # changed now
    build_index(root)
    expected = live_plain_documents(root)
    indexed, _ = both_plans(root, CONFIGS["aggressive"], RULES)
    assert indexed.documents_from_index == expected - 1
    time.sleep(0.35)
    assert build_index(root).documents_read == 1, "read again, now a step after its change"
    assert build_index(root).documents_read == 0
    assert build_plan(root, CONFIGS["aggressive"], RULES).documents_from_index == expected
    # a same-size rewrite with its old mtime put back: the mtime is old, the ctime is now
    before = path.stat()
    path.write_bytes(path.read_bytes())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert build_index(root).documents_read == 1, "its ctime changed"
    indexed, _ = both_plans(root, CONFIGS["aggressive"], RULES)
    assert indexed.documents_from_index == expected - 1, "its ctime is within a step of the read"


def test_a_damaged_or_foreign_index_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path / "s")
    build_index(root)
    expected = live_plain_documents(root)
    config = CONFIGS["aggressive"]
    conn = sqlite3.connect(index_path(root))
    def fields(relpath: str) -> tuple[bytes, str]:
        return conn.execute("SELECT prune_fields, prune_fields_digest FROM documents WHERE relpath = ?",
                            (relpath,)).fetchone()

    def put(relpath: str, blob: bytes, checksum: str) -> None:
        conn.execute("UPDATE documents SET prune_fields = ?, prune_fields_digest = ? WHERE relpath = ?",
                     (blob, checksum, relpath))
        conn.commit()

    blob, checksum = fields(f"{AGENT}/patterns.json")
    items = decode_document(blob, checksum)
    items[3].rule.success = 0.0 if items[3].rule.success != 0.0 else 0.5
    put(f"{AGENT}/patterns.json", encode_document(items) or b"", checksum)
    indexed, _ = both_plans(root, config, RULES)
    assert indexed.documents_from_index == expected - 1, "fields that do not match their checksum: read"
    blob, _ = fields(f"{AGENT}/solutions.json")
    put(f"{AGENT}/solutions.json", blob[:-7], digest(blob[:-7]))
    indexed, _ = both_plans(root, config, RULES)
    assert indexed.documents_from_index == expected - 2, "prune fields that do not read: the document is read"
    items = decode_document(*fields(f"{AGENT}/decisions.json"))
    blob = encode_document(items[1:]) or b""
    put(f"{AGENT}/decisions.json", blob, digest(blob))
    indexed, _ = both_plans(root, config, RULES)
    assert indexed.documents_from_index == expected - 3, "an item missing: the document is read"
    conn.close()
    build_index(root, full=True)  # a fresh index, then damaged places and versions
    conn = sqlite3.connect(index_path(root))
    conn.execute("UPDATE documents SET agent = 'debugger' WHERE relpath = ?", (f"{AGENT}/patterns.json",))
    conn.execute("UPDATE documents SET collection = 'decisions' WHERE relpath = ?", (f"{AGENT}/solutions.json",))
    conn.commit()
    indexed, _ = both_plans(root, config, RULES)
    assert indexed.documents_from_index == expected - 2, "a place the path does not give: read"
    for key, value in (("prune_fields", "0"), ("aml_version", "0.0.1")):
        conn.close()
        build_index(root, full=True)
        conn = sqlite3.connect(index_path(root))
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
        conn.commit()
        indexed, _ = both_plans(root, config, RULES)
        assert indexed.documents_from_index == 0, f"an index of another {key}"
    conn.close()
    build_index(root, full=True)
    conn = sqlite3.connect(index_path(root))
    # a limit on documents' size below a document's: it is refused as when read, not taken from the index
    monkeypatch.setenv("AML_MAX_DOCUMENT_MB", str((root / AGENT / "patterns.json").stat().st_size / 2**20 / 2))
    indexed, read = both_plans(root, config, RULES)
    assert any(e["relpath"] == f"{AGENT}/patterns.json" for e in read.errors)
    monkeypatch.delenv("AML_MAX_DOCUMENT_MB")
    conn.execute("UPDATE meta SET value = 'aml-index/1' WHERE key = 'format'")
    conn.commit()
    conn.close()
    indexed, _ = both_plans(root, config, RULES)
    assert indexed.documents_from_index == 0, "an index of another format"
    build_index(root)
    assert build_plan(root, config, RULES).documents_from_index == expected
    (root / "new-agent").mkdir()
    (root / "new-agent" / "patterns.json").write_text("[]", encoding="utf-8")
    indexed, _ = both_plans(root, config, RULES)
    assert indexed.documents_from_index == 0, "an index built for other agent directories"


ITEMS = st.dictionaries(
    st.sampled_from(["id", "timestamp", "type", "metrics", "evolution", "lifecycle", "performance", "effectiveness",
                     "outcome", "decision", "reviewedAt", "verifiedCount", "avgTimeSavedMs", "problem"]),
    JSON_VALUES, max_size=8)


@settings(max_examples=300, deadline=None)
@given(collection=st.sampled_from(["patterns", "solutions", "decisions"]), items=st.lists(ITEMS, max_size=3),
       clean=st.booleans())
def test_packed_fields_read_back_as_read_from_the_items(collection: str, items: list[dict[str, Any]],
                                                        clean: bool) -> None:
    packed = encode_document([indexed_item(collection, item, clean=clean, wrong_types=("a.b",), size_bytes=n)
                              for n, item in enumerate(items)])
    expected = [rule_fields(collection, item, clean=clean) for item in items]
    if packed is None:  # only an execution count no 64 bits hold
        assert any(f.executions is not None and not -(2**63) <= f.executions < 2**64 for f in expected)
        return
    back = decode_document(packed, digest(packed))
    assert [b.rule for b in back] == expected
    for n, (b, f, item) in enumerate(zip(back, expected, items, strict=True)):
        inputs = value_inputs(collection, item, f.success, f.confidence, f.executions, f.last_used)
        assert b.base == base_score(inputs)
        assert b.value_last_used == inputs.last_used
        assert b.wrong_types == ("a.b",) and b.size_bytes == n


def test_cli_prune_takes_unchanged_documents_from_the_index(tmp_path: Path, aml_settings, capsys,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    store = extract_loom("loom-plain-v1.0", tmp_path)
    before = files(store)
    args = [str(store), "prune", "--aggressive", "--now", NOW.isoformat()]
    code, out = run_cli(capsys, *args, "--dry-run", "--json")
    assert code == 0 and json.loads(out)["plan"]["documents_from_index"] == 0, "no index yet"
    assert run_cli(capsys, str(store), "optimize", "index")[0] == 0
    code, out = run_cli(capsys, *args, "--dry-run", "--json")
    from_index = json.loads(out)["plan"]
    code, out = run_cli(capsys, *args, "--dry-run", "--json", "--no-index")
    read = json.loads(out)["plan"]
    assert from_index.pop("documents_from_index") == live_plain_documents(store)
    assert read.pop("documents_from_index") == 0
    assert from_index == read and read["counts"]["total"] > 0
    code, out = run_cli(capsys, *args, "--dry-run")
    assert code == 0 and f"{live_plain_documents(store)} unchanged documents taken from the record index" in out
    code, out = run_cli(capsys, *args, "--dry-run", "--no-index")
    assert code == 0 and "record index" not in out
    # a real run planned from the index prunes, and its undo puts every byte back
    code, out = run_cli(capsys, *args)
    assert code == 0 and f"removed {read['counts']['removed']}, archived {read['counts']['archived']}" in out, out
    run_id = out.split("prune undo")[-1].split()[0]
    assert run_cli(capsys, str(store), "prune", "undo", run_id)[0] == 0
    assert {k: v for k, v in files(store).items() if not k.startswith(".aml/")} == before


@pytest.mark.parametrize("count", [0, 1, 15, 16, 65_535, 65_536])
def test_items_packed_one_by_one_are_the_document_encoded_whole(count: int) -> None:
    """The index encodes a collection's items as they come (only their bytes held): the same bytes as one
    encode of them all, on each side of MessagePack's array-header sizes."""
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    items = [IndexedItem(RuleFields(f"id-{n}", None, when, None, 0.5, None, n, None, False, None), 0.25, when, (), n)
             for n in range(count)]
    packer = ItemPacker()
    for item in items:
        packer.add(item)
    packed = packer.encode()
    assert packed == encode_document(items)
    assert packed is not None and decode_document(packed, digest(packed)) == items
    packer.add(IndexedItem(RuleFields("big", None, None, None, None, None, 2**70, None, False, None), 0.0, None, (), 1))
    packer.add(items[0] if items else IndexedItem(RuleFields(None, None, None, None, None, None, None, None, False,
                                                             None), 0.0, None, (), 0))
    assert packer.encode() is None, "an integer beyond 64 bits: no fields for the document"
