"""Bad documents: each is reported once (path, offset, reason), the rest of the store is still
read, nothing is written, and quarantine copies without touching the original."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
import zstandard

from aml.store import DocumentError, FileStore, quarantine
from tests.realdata import snapshot_tree

GOOD_PATTERN = {
    "id": "p1",
    "agent": "alpha",
    "timestamp": "2026-03-24T03:18:32.025Z",
    "pattern": {"type": "t"},
    "metrics": {"successRate": 0.5, "executionCount": 1},
    "evolution": {
        "created": "2026-03-24T03:18:32.025Z",
        "lastUsed": "2026-03-24T03:18:32.025Z",
        "confidenceScore": 0.3,
    },
}
TRUNCATED = json.dumps([GOOD_PATTERN, GOOD_PATTERN]).encode()[:150]
NOT_UTF8 = b'[{"id": "d1", "agent": "alpha", "note": "caf\xe9"}]'


@pytest.fixture
def store_broken(tmp_path: Path) -> Path:
    """A small Loom store with one broken document of each kind, beside good ones."""
    root = tmp_path / "memory"
    for agent in ("alpha", "beta", "gamma"):
        (root / agent).mkdir(parents=True)
    (root / "config.json").write_text('{"version": "1.0.0"}')
    (root / "alpha" / "patterns.json").write_text(json.dumps([GOOD_PATTERN]))
    (root / "alpha" / "solutions.json").write_bytes(TRUNCATED)
    (root / "alpha" / "decisions.json").write_bytes(NOT_UTF8)
    (root / "beta" / "patterns.json").write_text(json.dumps({"patterns": [GOOD_PATTERN]}))
    (root / "beta" / "solutions.json").write_text('[{"id": "s1", "agent": "beta"}, "oops"]')
    (root / "beta" / "decisions.json").write_bytes(gzip.compress(json.dumps([]).encode()))
    (root / "gamma" / "patterns.json").write_bytes(gzip.compress(json.dumps([GOOD_PATTERN]).encode()))
    (root / "gamma" / "decisions.json").write_bytes(gzip.compress(json.dumps([GOOD_PATTERN]).encode())[:-8])
    (root / "gamma" / "solutions.json").symlink_to(root / "alpha" / "patterns.json")
    (root / "gamma" / "sessions").symlink_to(root / "alpha", target_is_directory=True)
    # aml's own files are skipped
    (root / "alpha" / ".aml-tmp-abc123").write_bytes(b"half-written")
    (root / ".aml-index").mkdir()
    (root / ".aml-index" / "x.json").write_bytes(b"{broken")
    return root


EXPECTED = {
    "alpha/solutions.json": "truncated_json",
    "alpha/decisions.json": "not_utf8",
    "beta/patterns.json": "wrong_type",
    "beta/solutions.json": "wrong_type",
    "gamma/decisions.json": "corrupt_gzip",
    "gamma/solutions.json": "symlink",
    "gamma/sessions": "symlink",
}


def test_each_bad_document_reported_once_and_others_read(store_broken: Path) -> None:
    before = snapshot_tree(store_broken)
    result = FileStore(store_broken).scan()

    assert {e.relpath: e.code for e in result.errors} == EXPECTED
    assert len(result.errors) == len(EXPECTED)
    by_rel = {e.relpath: e for e in result.errors}
    for rel, error in by_rel.items():
        assert rel is not None
        assert error.path == store_broken / rel
        assert rel.split("/")[-1] in str(error)
    assert by_rel["alpha/solutions.json"].offset == len(TRUNCATED)
    assert "truncated JSON" in by_rel["alpha/solutions.json"].reason
    assert by_rel["alpha/decisions.json"].offset == NOT_UTF8.index(b"\xe9")
    assert "0xe9" in by_rel["alpha/decisions.json"].reason
    assert "expected a JSON list of objects, got an object" in by_rel["beta/patterns.json"].reason
    assert "item 1 is a string" in by_rel["beta/solutions.json"].reason
    assert "not followed" in by_rel["gamma/solutions.json"].reason

    # the good documents are still read
    assert result.counts() == {"alpha": {"patterns": 1}, "gamma": {"patterns": 1}}
    infos = {d.relpath: d for d in result.documents}
    assert infos["beta/decisions.json"].encoding == "gzip" and infos["beta/decisions.json"].error is None
    assert infos["gamma/patterns.json"].encoding == "gzip"
    assert infos["alpha/solutions.json"].kind == "loom_collection"  # position known, content failed
    assert not any(".aml" in rel for rel in infos)
    # failed files still count towards their agent's bytes on disk
    assert result.agent_sizes()["alpha"] == sum(
        (store_broken / "alpha" / n).stat().st_size
        for n in ("patterns.json", "solutions.json", "decisions.json")
    )
    # nothing written, no mtime changed
    assert snapshot_tree(store_broken) == before


def test_read_document_raises_for_bad_and_refuses_escapes(store_broken: Path) -> None:
    store = FileStore(store_broken)
    with pytest.raises(DocumentError) as info:
        store.read_document("alpha/solutions.json")
    assert info.value.code == "truncated_json"
    assert store.read_document("alpha/patterns.json").data == [GOOD_PATTERN]
    with pytest.raises(ValueError):
        store.read_document("../outside.json")


def test_too_large_zstd_fifo_and_bad_sessions(tmp_path: Path) -> None:
    root = tmp_path / "s"
    (root / "alpha").mkdir(parents=True)
    (root / "alpha" / "patterns.json").write_text(json.dumps([GOOD_PATTERN] * 50))
    (root / "alpha" / "solutions.json").write_bytes(zstandard.ZstdCompressor().compress(b"[]" * 500)[:-4])
    (root / "sess.json").write_text(json.dumps({"session_id": "s", "conversation_history": {"role": "user"}}))
    os.mkfifo(root / "alpha" / "pipe")
    before = snapshot_tree(root)
    result = FileStore(root, max_bytes=2000).scan()  # completes: the FIFO is never opened for reading
    codes = {e.relpath: e.code for e in result.errors}
    assert codes == {
        "alpha/patterns.json": "too_large",
        "alpha/solutions.json": "corrupt_zstd",
        "alpha/pipe": "not_regular",
        "sess.json": "wrong_type",
    }
    too_large = next(e for e in result.errors if e.code == "too_large")
    assert "not read" in too_large.reason
    assert snapshot_tree(root) == before


def test_quarantine_copies_never_moves(store_broken: Path, tmp_path: Path) -> None:
    qdir = tmp_path / "quarantine"
    result = FileStore(store_broken).scan()
    error = next(e for e in result.errors if e.code == "truncated_json")
    before = snapshot_tree(store_broken)

    copy = quarantine(error, qdir)
    assert copy.read_bytes() == TRUNCATED
    assert copy.parent == qdir / "alpha" and copy.name.startswith("solutions.json.")
    assert copy.stat().st_mtime_ns == (store_broken / "alpha" / "solutions.json").stat().st_mtime_ns
    note = json.loads(copy.with_name(copy.name + ".error.json").read_text())
    assert (note["code"], note["offset"], note["relpath"]) == (
        "truncated_json",
        len(TRUNCATED),
        "alpha/solutions.json",
    )
    assert note["quarantined_at"].endswith("Z")
    assert quarantine(error, qdir) == copy  # idempotent: same content, same copy
    assert snapshot_tree(store_broken) == before  # original untouched
    assert not list(qdir.rglob(".aml-tmp-*"))

    symlink = next(e for e in result.errors if e.relpath == "gamma/solutions.json")
    with pytest.raises(ValueError):
        quarantine(symlink, qdir)


def test_error_is_picklable_and_comparable() -> None:
    import pickle

    err = DocumentError("/x/y.json", 7, "truncated JSON: boom", code="truncated_json", relpath="y.json")
    assert pickle.loads(pickle.dumps(err)) == err
    assert err.as_dict() == {
        "path": "/x/y.json",
        "relpath": "y.json",
        "offset": 7,
        "code": "truncated_json",
        "reason": "truncated JSON: boom",
    }


def test_document_limit_is_a_setting_named_in_the_error_and_nothing_destructive_touches_the_file(
        tmp_path: Path, aml_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """AML_MAX_DOCUMENT_MB (issue 12: a document too large for the machine is refused with a clear message and
    the setting that raises the limit): health reports it, prune and gc leave it byte-identical, and a gzip
    document that decodes past 4x the limit is too large, never "corrupt" (gc quarantines corrupt files)."""
    from typer.testing import CliRunner

    from cli.main import build_store_app
    from tests.realdata import extract_loom

    store = extract_loom("loom-plain-v1.0", tmp_path / "p")
    # code-reviewer/patterns.json is 24,605 bytes: over a 0.02 MiB (20,971-byte) limit
    bomb = store / "debugger" / "solutions.json"
    bomb.write_bytes(gzip.compress(json.dumps([{"id": f"s{i}", "pad": " " * 900} for i in range(100)]).encode()))
    monkeypatch.setenv("AML_MAX_DOCUMENT_MB", "0.02")
    before = snapshot_tree(store)

    errors = {e.relpath: e for e in FileStore(store).scan().errors}
    assert errors["code-reviewer/patterns.json"].code == "too_large"
    assert "AML_MAX_DOCUMENT_MB=0.02" in errors["code-reviewer/patterns.json"].reason
    assert errors["debugger/solutions.json"].code == "too_large"  # ~90 KB decoded > 4 x 20,971 bytes
    assert "AML_MAX_DOCUMENT_MB" in errors["debugger/solutions.json"].reason

    runner = CliRunner()
    health = runner.invoke(build_store_app(), ["monitor", "health", "--json"], obj={"store": str(store)})
    assert "AML_MAX_DOCUMENT_MB=0.02" in health.stdout and "too_large" in health.stdout
    for args in (["prune", "--json"], ["optimize", "gc", "--json"]):
        res = runner.invoke(build_store_app(), args, obj={"store": str(store)})
        assert res.exit_code in (0, 1, 2), res.output
        assert "Traceback" not in res.output
    after = snapshot_tree(store)
    assert after["code-reviewer/patterns.json"] == before["code-reviewer/patterns.json"]
    assert after["debugger/solutions.json"] == before["debugger/solutions.json"]
    from aml.optimize import QUARANTINE_DIR

    assert not (store / QUARANTINE_DIR).exists() or not list((store / QUARANTINE_DIR).rglob("*solutions.json*"))

    monkeypatch.setenv("AML_MAX_DOCUMENT_MB", "1")  # raised: both read again
    assert not {e.relpath for e in FileStore(store).scan().errors} & {"code-reviewer/patterns.json",
                                                                       "debugger/solutions.json"}
