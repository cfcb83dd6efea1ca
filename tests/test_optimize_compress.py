"""optimize compress: real Loom stores and generated trees round-trip; gzip output is plain gzip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aml.optimize import compress_store
from aml.optimize.compress import LOOM_RUNTIME_KINDS
from aml.store import FileStore
from aml.store.codec import decode, encode, sniff
from tests.realdata import LOOM_COUNTS, extract_loom, snapshot_tree

BUILD_TIME = datetime(2026, 11, 22, 12, 0, tzinfo=UTC).timestamp()
"""DATA.md: the real stores were written on 2026-11-22; tests pin "now" just after it."""
NOW = BUILD_TIME + 86400
GZIP = shutil.which("gzip")


def files(root: Path) -> dict[str, tuple[bytes, int]]:
    """``{relpath: (raw bytes, mtime_ns)}`` of every regular file, aml's own excluded."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not p.is_symlink() and not rel.startswith(".aml"):
            out[rel] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


def decoded(raw: bytes) -> bytes:
    return decode(raw)[0]


def scan_view(root: Path):
    """Everything a reader sees through FileStore.scan: records, parsed data per document, kinds."""
    store = FileStore(root)
    docs = {d.relpath: (d.kind, d.agent, d.collection, d.data, d.error) for d in store.iter_documents()}
    return store.scan().records, docs


def gunzip_cli(path: Path) -> bytes:
    assert GZIP is not None
    proc = subprocess.run([GZIP, "-dc", str(path)], capture_output=True, check=True)
    return proc.stdout


@pytest.mark.skipif(GZIP is None, reason="no gzip command")
@pytest.mark.parametrize("name", sorted(LOOM_COUNTS))
def test_real_store_round_trip(name: str, tmp_path: Path) -> None:
    root = extract_loom(name, tmp_path)
    before = files(root)
    records_before, docs_before = scan_view(root)

    result = compress_store(root, age_days=0, now=NOW)

    after = files(root)
    assert set(after) == set(before)
    changed = {c.relpath for c in result.changed}
    for rel, (raw, mtime) in before.items():
        new_raw, new_mtime = after[rel]
        assert new_mtime == mtime, rel  # mtime kept for every file
        assert decoded(new_raw) == decoded(raw), rel  # identical content once decoded
        if rel in changed:
            assert new_raw[:2] == b"\x1f\x8b", rel
            assert gunzip_cli(root / rel) == decoded(raw), rel  # the gzip command reads it
        else:
            assert new_raw == raw, rel  # untouched byte for byte
    # only documents Loom's runtime reads were compressed; backup copies and config never
    kinds = {rel: docs_before[rel][0] for rel in before}
    assert all(kinds[rel] in LOOM_RUNTIME_KINDS for rel in changed)
    assert not any(rel.startswith("backup/") for rel in changed)
    assert "config.json" not in changed and "README.md" not in changed
    expected = {rel for rel in before if kinds[rel] in LOOM_RUNTIME_KINDS and not rel.startswith("backup/")
                and sniff(before[rel][0]) != "gzip"}
    assert changed == expected
    # readers see exactly the same store
    records_after, docs_after = scan_view(root)
    assert records_after == records_before
    assert {k: v[:4] for k, v in docs_after.items()} == {k: v[:4] for k, v in docs_before.items()}
    # idempotent: a second run changes nothing
    again = compress_store(root, age_days=0, now=NOW)
    assert again.changed == [] and files(root) == after
    # --decompress gives back the original bytes of every plain file
    undo = compress_store(root, decompress=True)
    restored = files(root)
    for rel, (raw, mtime) in before.items():
        if sniff(raw) == "plain":
            assert restored[rel] == (raw, mtime), rel
        else:  # Loom's own gzip files come back as their plain JSON
            assert restored[rel][0] == decoded(raw) and restored[rel][1] == mtime, rel
    assert {c.relpath for c in undo.changed} >= changed


def test_gzip_store_is_already_compressed_and_zstd_round_trips(tmp_path: Path) -> None:
    root = extract_loom("loom-gzip-v1.0", tmp_path)
    before = files(root)
    result = compress_store(root, age_days=0, now=NOW)
    assert result.changed == [] and result.skipped["already_gzip"] == 13
    assert files(root) == before
    records_before, _ = scan_view(root)
    z = compress_store(root, age_days=0, now=NOW, codec="zstd")
    assert len(z.changed) == 13 and all(c.encoding_before == "gzip" for c in z.changed)
    for c in z.changed:
        raw = (root / c.relpath).read_bytes()
        assert sniff(raw) == "zstd" and decoded(raw) == decoded(before[c.relpath][0])
        assert (root / c.relpath).stat().st_mtime_ns == before[c.relpath][1]
    assert scan_view(root)[0] == records_before
    back = compress_store(root, age_days=0, now=NOW, codec="gzip")
    assert len(back.changed) == 13
    assert scan_view(root)[0] == records_before


def test_age_filter_uses_file_mtimes(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path)
    before = files(root)
    cutoff_ns = int((NOW - 90 * 86400) * 1e9)
    _, docs = scan_view(root)
    expected = {rel for rel, (_raw, mtime) in before.items() if mtime <= cutoff_ns
                and docs[rel][0] in LOOM_RUNTIME_KINDS and not rel.startswith("backup/")}
    result = compress_store(root, age_days=90, now=NOW)
    assert {c.relpath for c in result.changed} == expected
    assert result.skipped["recent"] == sum(1 for rel, (_r, m) in before.items()
                                           if m > cutoff_ns and not rel.startswith("backup/"))


@pytest.mark.parametrize("command", ["compress", "decompress", "zstd"])
def test_dry_run_writes_nothing(tmp_path: Path, command: str) -> None:
    root = extract_loom("loom-plain-v1.0-pyops", tmp_path)
    if command == "decompress":
        compress_store(root, age_days=0, now=NOW)
    before = snapshot_tree(root.parent)
    result = compress_store(root, age_days=0, now=NOW, dry_run=True, decompress=command == "decompress",
                            codec="zstd" if command == "zstd" else "gzip")
    assert result.changed  # it found work...
    assert snapshot_tree(root.parent) == before  # ...and wrote nothing: bytes, mtimes, modes


def test_unparseable_documents_are_never_touched(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path)
    bad = root / "debugger" / "patterns.json"
    bad.write_bytes(bad.read_bytes()[:5000])  # truncated
    os.utime(bad, ns=(1, 10**18))
    also_bad = root / "frontend-developer" / "decisions.json"
    also_bad.write_bytes(encode(b'[{"id": "x", "agent": ', "gzip"))
    os.utime(also_bad, ns=(1, 10**18))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (bad, also_bad)}
    result = compress_store(root, age_days=0, now=2e9)
    assert result.skipped["unparseable"] == 1 and result.skipped["already_gzip"] == 1  # the magic bytes say gzip
    assert {e["relpath"] for e in result.errors} == {"debugger/patterns.json"}
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before} == before
    undo = compress_store(root, decompress=True)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before} == before
    assert "frontend-developer/decisions.json" in {e["relpath"] for e in undo.errors}


def test_scope_all_compresses_sessions_and_loom_lock_is_respected(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path)
    sessions = root / "debugger" / "sessions"
    sessions.mkdir()
    session = {"session_id": "s1", "agent_name": "SupportBot", "conversation_history": [
        {"role": "user", "content": "hello " * 50, "timestamp": "2026-10-12T07:55:56.000250"}]}
    (sessions / "s1.json").write_text(json.dumps(session, indent=2))
    os.utime(sessions / "s1.json", ns=(1, 10**18))
    loom = compress_store(root, age_days=0, now=2e9)
    assert "debugger/sessions/s1.json" not in {c.relpath for c in loom.changed}  # Aitor reads it with json.load
    assert loom.skipped["scope"] >= 2  # config.json and the session
    # Loom's runtime holds its proper-lockfile lock on a file: left alone
    target = root / "code-reviewer" / "patterns.json"
    compress_store(root, decompress=True)
    (root / "code-reviewer" / "patterns.json.lock").mkdir()
    everything = compress_store(root, age_days=0, now=2e9, scope="all")
    changed = {c.relpath for c in everything.changed}
    assert "debugger/sessions/s1.json" in changed and "config.json" in changed
    assert "code-reviewer/patterns.json" not in changed and everything.skipped["locked"] == 1
    assert sniff(target.read_bytes()) == "plain"


# ----------------------------------------------------------------------------- hypothesis trees

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
item = st.fixed_dictionaries({"id": st.uuids().map(str), "agent": st.just("a"),
                              "timestamp": st.just("2026-01-01T00:00:00.000Z")}, optional={"note": json_values})
documents = st.dictionaries(
    st.sampled_from(["a/patterns.json", "a/solutions.json", "b/decisions.json", "global/archived-decisions.json",
                     "b/sessions/x.json", "notes/misc.json", "backup/a-1/patterns.json"]),
    st.tuples(st.lists(item, max_size=6), st.sampled_from(["plain", "gzip", "zstd"]), st.integers(0, 400),
              st.sampled_from([2, None]), st.booleans()),
    min_size=1,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=documents, age=st.sampled_from([0, 30, 200]), codec=st.sampled_from(["gzip", "zstd"]),
       scope=st.sampled_from(["loom", "all"]))
def test_generated_trees_round_trip(tmp_path: Path, tree, age: int, codec: str, scope: str) -> None:
    root = tmp_path / uuid.uuid4().hex
    for rel, (items, encoding, days_old, indent, broken) in tree.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(items, indent=indent).encode()
        if broken:
            text = text[: max(1, len(text) // 2)]  # unparseable: must never be touched
        path.write_bytes(encode(text, encoding))  # type: ignore[arg-type]
        mtime = int((NOW - days_old * 86400) * 1e9)
        os.utime(path, ns=(mtime, mtime))
    before = files(root)
    result = compress_store(root, age_days=age, codec=codec, scope=scope, now=NOW)  # type: ignore[arg-type]
    after = files(root)
    changed = {c.relpath for c in result.changed}
    for rel, (raw, mtime) in before.items():
        items, encoding, days_old, indent, broken = tree[rel]
        assert after[rel][1] == mtime
        assert decoded(after[rel][0]) == decoded(raw)
        if rel in changed:
            assert not broken and days_old >= age and encoding != codec and not rel.startswith("backup/")
            assert sniff(after[rel][0]) == codec
        else:
            assert after[rel][0] == raw
    for rel in changed:
        if codec == "gzip" and GZIP is not None:
            assert gunzip_cli(root / rel) == decoded(before[rel][0])
    compress_store(root, decompress=True, scope=scope)
    final = files(root)
    for rel, (raw, mtime) in before.items():
        assert final[rel][1] == mtime and decoded(final[rel][0]) == decoded(raw)
        if rel in changed or (tree[rel][1] == "plain"):
            assert sniff(final[rel][0]) == "plain" or tree[rel][4]
    shutil.rmtree(root)


def test_current_index_vouches_for_unchanged_documents(tmp_path: Path) -> None:
    from aml.optimize import build_index

    root = extract_loom("loom-plain-v1.0", tmp_path)
    changed_later = root / "debugger" / "solutions.json"
    broken = root / "code-reviewer" / "patterns.json"
    broken.write_bytes(broken.read_bytes()[:100])
    os.utime(broken, ns=(1, 10**18))
    build_index(root)
    data = json.loads(changed_later.read_bytes())
    changed_later.write_bytes(json.dumps(data[:-1], indent=2).encode())  # a new version after the index
    os.utime(changed_later, ns=(1, 10**18))
    before_records = FileStore(root).scan().records
    result = compress_store(root, age_days=0, now=2e9)
    changed = {c.relpath for c in result.changed}
    # vouched for: config.json and 11 of the 12 compressed collections (not the one changed after indexing)
    assert len(changed) == 12 and result.parsed_by_index == 1 + 11
    assert "debugger/solutions.json" in changed
    assert [e["relpath"] for e in result.errors] == ["code-reviewer/patterns.json"]  # parsed: still refused
    assert FileStore(root).scan().records == before_records
    assert compress_store(root, decompress=True, use_index=False).parsed_by_index == 0


def test_writes_in_flight_a_failed_write_and_a_file_changed_before_its_write(tmp_path: Path, monkeypatch) -> None:
    """Writes run on threads while the next files are encoded: a file that changed after it was read is
    left alone (``changed``); a write that fails stops the run with that error, after the writes in flight
    finished; every file is then either its old bytes or its compressed self, never torn."""
    import aml.optimize.compress as compress_module

    root = extract_loom("loom-plain-v1.0", tmp_path)
    before = files(root)
    real_unchanged, real_write = compress_module.unchanged, compress_module.atomic_write
    monkeypatch.setattr(compress_module, "unchanged",
                        lambda path, st: path.name != "solutions.json" and real_unchanged(path, st))
    result = compress_store(root, age_days=0, now=2e9)
    assert result.skipped["changed"] == 4  # the 4 agents' solutions.json, left alone
    assert len(result.changed) == 9 and not any(c.relpath.endswith("solutions.json") for c in result.changed)
    assert [c.relpath for c in result.changed] == sorted(c.relpath for c in result.changed)  # in walk order
    after = files(root)
    for rel, (raw, mtime) in before.items():
        assert after[rel][1] == mtime and decoded(after[rel][0]) == decoded(raw)
        assert (sniff(after[rel][0]) == "gzip") == (rel in {c.relpath for c in result.changed})

    compress_store(root, decompress=True)
    calls = []

    def failing_write(path, data, **kw):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_write(path, data, **kw)

    monkeypatch.setattr(compress_module, "unchanged", real_unchanged)
    monkeypatch.setattr(compress_module, "atomic_write", failing_write)
    with pytest.raises(OSError, match="No space left"):
        compress_store(root, age_days=0, now=2e9)
    after = files(root)
    assert sum(sniff(raw) == "gzip" for raw, _ in after.values()) in range(2, 2 + compress_module.MAX_IN_FLIGHT)
    assert sniff(after[Path(calls[2]).relative_to(root).as_posix()][0]) == "plain"  # the failed one: unchanged
    for rel, (raw, mtime) in before.items():
        assert after[rel][1] == mtime and decoded(after[rel][0]) == decoded(raw)
    assert not list(root.rglob(".aml-tmp-*"))
