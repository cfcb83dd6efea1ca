"""Every kind of file (issue 11, part 3): symlinks stored and restored as links, names with any bytes kept
byte-exact and escaped wherever they become text, modes and empty directories.

Real file systems throughout: ``os.symlink``, names made of raw bytes (``b"\\xff"``) through ``os.fsencode``,
the real SQLite catalog, the real CLI in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aml.backup import (
    LinkTable,
    Manifest,
    Repository,
    UnsafePathError,
    check,
    create_snapshot,
    load_manifest,
    restore,
)
from aml.backup._common import canonical_json
from aml.backup.manifest import decode_body, encode_body
from aml.store.names import text_name
from tests.backup_helpers import make_json_store, small_repo
from tests.fixtures_runtime import REPO, runtime_env
from tests.realdata import extract_loom

BAD_DIR = b"ag\xffent"  # not UTF-8
BAD_FILE = b"n\xfeote.json"


def tree(root: Path) -> dict[bytes, tuple[str, bytes | None, int, int]]:
    """Every entry below ``root`` by its exact name bytes: (kind, content or link target, mode, mtime_ns).
    Links keep their own mtime; nothing is followed."""
    out: dict[bytes, tuple[str, bytes | None, int, int]] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            s = os.lstat(full)
            if stat.S_ISLNK(s.st_mode):
                out[rel] = ("l", os.readlink(full), 0, s.st_mtime_ns)
            elif stat.S_ISDIR(s.st_mode):
                out[rel] = ("d", None, s.st_mode & 0o7777, s.st_mtime_ns)
            else:
                with open(full, "rb") as fh:
                    out[rel] = ("f", fh.read(), s.st_mode & 0o7777, s.st_mtime_ns)
    return out


def apply(task, **kwargs):
    return task.apply(kwargs=kwargs, throw=True).get()


@pytest.fixture
def kinds(tmp_path: Path) -> Path:
    """A store with every kind of entry: file and directory links (relative, absolute, dangling, one pointing
    outside), names that are not UTF-8 (a folder, a file, a link and its target), unusual modes, empty dirs."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("never read, never written")
    store = make_json_store(tmp_path / "store", agents=2, docs=3)
    (store / "agent-0" / "latest.json").symlink_to("doc-000.json")  # relative, inside
    (store / "agent-0" / "same-dir").symlink_to("../agent-1", target_is_directory=True)  # a directory link
    (store / "agent-1" / "gone.json").symlink_to("/nonexistent/never.json")  # dangling, absolute
    (store / "escape").symlink_to("../../etc")  # points outside the store
    (store / "secret").symlink_to(outside / "secret.txt")
    raw = os.fsencode(store)
    os.mkdir(raw + b"/" + BAD_DIR)
    with open(raw + b"/" + BAD_DIR + b"/patterns.json", "wb") as fh:
        fh.write(b"[]")
    with open(raw + b"/agent-1/" + BAD_FILE, "wb") as fh:
        fh.write(b'{"id": "x"}')
    os.symlink(b"t\xfdrget", raw + b"/agent-1/l\xfcnk")
    (store / "empty" / "nested-empty").mkdir(parents=True)
    os.chmod(store / "agent-0" / "doc-001.json", 0o600)
    os.chmod(store / "agent-0" / "doc-002.json", 0o755)
    os.chmod(store / "empty" / "nested-empty", 0o700)
    for p in (store / "agent-0" / "latest.json", store / "escape"):  # the links' own mtimes
        os.utime(p, ns=(1_700_000_000_000_000_001, 1_700_000_000_000_000_001), follow_symlinks=False)
    return store


def test_every_kind_round_trips_byte_exact(kinds: Path, tmp_path: Path) -> None:
    repo = small_repo(tmp_path / "repo")
    before = tree(kinds)
    res = create_snapshot(kinds, repo, incremental=False)
    assert res.errors == [] and res.link_count == 6
    m = load_manifest(repo.path, res.backup_id)
    assert m.links is not None and m.link_count == 6
    links = dict(zip(m.links.path, m.links.target, strict=True))
    assert links["escape"] == "../../etc" and links[os.fsdecode(b"agent-1/l\xfcnk")] == os.fsdecode(b"t\xfdrget")
    out = tmp_path / "out"
    done = restore(repo, res.backup_id, out)
    assert done.ok, done.errors
    assert tree(out) == before
    # never followed: nothing outside the target was read into the repository or written by the restore
    assert (tmp_path / "outside" / "secret.txt").read_text() == "never read, never written"
    assert not (tmp_path / "etc").exists()
    assert check(repo, read_data=True).ok
    # the result is text: escaped names, valid JSON
    text = json.dumps(done.to_dict(), ensure_ascii=False).encode("utf-8")
    assert b"ag\\\\xffent/" in text and b"agent-1/n\\\\xfeote.json" in text


def test_incremental_keeps_links_and_notices_a_retargeted_one(kinds: Path, tmp_path: Path) -> None:
    repo = small_repo(tmp_path / "repo")
    create_snapshot(kinds, repo, incremental=False)
    (kinds / "agent-0" / "latest.json").unlink()
    (kinds / "agent-0" / "latest.json").symlink_to("doc-002.json")
    incr = create_snapshot(kinds, repo, incremental=True)
    assert incr.backup_type == "incremental" and incr.files_read == 0 and incr.link_count == 6
    out = tmp_path / "out"
    assert restore(repo, incr.backup_id, out).ok
    assert os.readlink(out / "agent-0" / "latest.json") == "doc-002.json"


def test_exact_restore_over_the_live_store_keeps_links(kinds: Path, tmp_path: Path, aml_settings) -> None:
    from tasks import backup

    snap = apply(backup.create, store=str(kinds))
    assert snap["status"] == "success" and snap["link_count"] == 6
    before = tree(kinds)
    dry = apply(backup.restore_, store=str(kinds), backup_id=snap["backup_id"], dry_run=True)
    assert dry["removed"] == [] and dry["changed"] == [] and dry["added"] == []
    # a link retargeted, a link replaced by a file, a file replaced by a link: the restore puts links back
    (kinds / "escape").unlink()
    (kinds / "escape").symlink_to("/tmp")
    (kinds / "secret").unlink()
    (kinds / "secret").write_text("a file now")
    (kinds / "agent-1" / "doc-000.json").unlink()
    (kinds / "agent-1" / "doc-000.json").symlink_to("doc-001.json")
    done = apply(backup.restore_, store=str(kinds), backup_id=snap["backup_id"])
    assert done["status"] == "success" and done["safety_backup_id"]
    assert sorted(done["changed"]) == ["agent-1/doc-000.json", "escape", "secret"] and done["removed"] == []
    after = tree(kinds)
    assert {k: v[:3] for k, v in after.items()} == {k: v[:3] for k, v in before.items()}
    assert after[b"escape"] == before[b"escape"]  # the link's own mtime too


def test_a_directory_in_the_way_of_a_link_needs_exact_mode(kinds: Path, tmp_path: Path) -> None:
    repo = small_repo(tmp_path / "repo")
    snap = create_snapshot(kinds, repo, incremental=False)
    target = tmp_path / "target"
    assert restore(repo, snap.backup_id, target).ok
    (target / "escape").unlink()
    (target / "escape").mkdir()
    (target / "escape" / "x").write_text("in the way")
    res = restore(repo, snap.backup_id, target, exact=False)
    assert [e["path"] for e in res.errors] == ["escape"] and (target / "escape").is_dir()
    res = restore(repo, snap.backup_id, target)
    assert res.ok and os.readlink(target / "escape") == "../../etc"


def _craft(repo: Repository, backup_id: str, new_id: str, edit) -> str:
    """Write a copy of snapshot ``backup_id`` whose body ``edit(body_doc)`` changed, under ``new_id``."""
    m = load_manifest(repo.path, backup_id)
    body = json.loads(zstandard.ZstdDecompressor().decompress((repo.bodies_dir / f"{m.body_sha256}.zst").read_bytes()))
    edit(body)
    raw = zstandard.ZstdCompressor().compress(json.dumps(body).encode())
    sha = hashlib.sha256(raw).hexdigest()
    (repo.bodies_dir / f"{sha}.zst").write_bytes(raw)
    crafted = Manifest.from_header({**m.header(), "backup_id": new_id})
    crafted.body_sha256, crafted.body_size = sha, len(raw)
    doc = crafted.header()
    doc["sha256"] = hashlib.sha256(canonical_json(doc)).hexdigest()
    (repo.snapshots_dir / f"{new_id}.json").write_text(json.dumps(doc))
    return new_id


def test_nothing_is_written_through_a_link_of_the_snapshot(tmp_path: Path) -> None:
    """A snapshot whose link ``evil -> <outside>`` has a file ``evil/passwd`` below it is refused whole; a
    link to ``../../etc`` alone is recreated as a link, its target never touched."""
    outside = tmp_path / "outside"
    outside.mkdir()
    store = make_json_store(tmp_path / "store", agents=1, docs=2)
    (store / "evil").symlink_to("../../etc")
    repo = small_repo(tmp_path / "repo")
    snap = create_snapshot(store, repo, incremental=False)

    def below_link(body: dict) -> None:
        body["links"]["target"] = [str(outside)]
        body["files"]["path"][0] = "evil/passwd"

    bad = _craft(repo, snap.backup_id, "full_20000101_000003", below_link)
    target = tmp_path / "target"
    with pytest.raises(UnsafePathError, match="below the symlink"):
        restore(repo, bad, target)
    assert not target.exists() and list(outside.iterdir()) == []
    assert {p.kind for p in check(repo).errors} == {"manifest_unsafe"}

    def nul_target(body: dict) -> None:
        body["links"]["target"] = ["a\x00b"]

    with pytest.raises(UnsafePathError, match="NUL"):
        restore(repo, _craft(repo, snap.backup_id, "full_20000101_000004", nul_target), target)
    # the genuine snapshot: the link comes back as a link, nothing is created through it
    assert restore(repo, snap.backup_id, target).ok
    assert os.readlink(target / "evil") == "../../etc" and not (tmp_path / "etc").exists()


def test_bodies_without_links_are_unchanged_and_unknown_kinds_are_refused() -> None:
    from aml.backup import DirTable, FileTable

    files = FileTable()
    files.append("a", "0" * 64, 1, 2, 0o644, 3)
    dirs = DirTable(["d"], [0o755], [4])
    plain = json.loads(zstandard.ZstdDecompressor().decompress(encode_body(files, dirs, LinkTable())))
    assert set(plain) == {"format", "version", "files", "dirs"}  # what every earlier aml wrote and reads
    with_links = encode_body(files, dirs, LinkTable(["l"], ["a"], [5]))
    assert decode_body(with_links)[2] == LinkTable(["l"], ["a"], [5])
    doc = json.loads(zstandard.ZstdDecompressor().decompress(with_links))
    doc["devices"] = {"path": ["dev"]}
    with pytest.raises(UnsafePathError, match="devices"):
        decode_body(zstandard.ZstdCompressor().compress(json.dumps(doc).encode()))


_NAMES = st.lists(st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b)
                  .map(os.fsdecode), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=_NAMES, chunked=st.booleans())
def test_a_body_round_trips_any_names_and_earlier_readers_read_it_alike(names: list[str], chunked: bool) -> None:
    from aml.backup import DirTable, FileTable

    files = FileTable()
    for i, name in enumerate(names):
        oid = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()
        files.append(name, oid, i, 10**18 + i, 0o644, 2**40 + i, chunks=[oid, oid] if chunked and i == 0 else None)
    dirs = DirTable(names[:2], [0o755] * len(names[:2]), [7] * len(names[:2]))
    links = LinkTable(names[:1], ["../" + names[-1]], [9])
    body = encode_body(files, dirs, links)
    assert decode_body(body) == (files, dirs, links)
    # what aml wrote before msgspec (json.dumps, ASCII) and read with json.loads: the same document
    doc = json.loads(zstandard.ZstdDecompressor().decompress(body))
    assert doc["files"]["path"] == names and doc["links"]["target"] == ["../" + names[-1]]


@settings(max_examples=40, deadline=None)
@given(entries=st.lists(st.tuples(st.binary(min_size=32, max_size=32).map(bytes.hex), st.integers(0, 2**40),
                                  st.integers(1, 2**31), st.integers(0, 2**40)), min_size=0, max_size=20))
def test_an_index_file_round_trips(entries: list[tuple[str, int, int, int]]) -> None:
    from aml.backup.index import _parse, serialize_index
    from aml.backup.pack import PackEntry, PackInfo

    info = PackInfo("ab" * 32, 12345, [PackEntry(*e) for e in entries])
    supersedes, packs = _parse(serialize_index([info], ["cd" * 32]), "x")
    assert supersedes == ["cd" * 32]
    assert packs == [("ab" * 32, 12345, entries)]


def test_modes_and_empty_directories_round_trip(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "a" / "b" / "c").mkdir(parents=True)  # nested empty directories
    (store / "x").mkdir()
    for name, mode in (("ro", 0o444), ("exec", 0o750), ("private", 0o600), ("setgid", 0o2755), ("sticky", 0o1644)):
        p = store / "x" / name
        p.write_text(name)
        os.chmod(p, mode)
    os.chmod(store / "a" / "b", 0o711)
    os.chmod(store / "a" / "b" / "c", 0o700)
    os.utime(store / "a" / "b" / "c", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    repo = small_repo(tmp_path / "repo")
    before = tree(store)
    snap = create_snapshot(store, repo, incremental=False)
    out = tmp_path / "out"
    assert restore(repo, snap.backup_id, out).ok
    assert tree(out) == before


# ------------------------------------------------------------------------------------------- non-UTF-8 names


def _bad_store(tmp_path: Path) -> Path:
    store = extract_loom("loom-plain-v1.0", tmp_path)
    raw = os.fsencode(store)
    os.mkdir(raw + b"/" + BAD_DIR)
    with open(raw + b"/" + BAD_DIR + b"/patterns.json", "wb") as fh:
        fh.write(b"[]")
    agent = sorted(p for p in store.iterdir() if (p / "patterns.json").is_file())[0]
    with open(os.fsencode(agent) + b"/" + BAD_FILE, "wb") as fh:
        fh.write(b'{"id": "n"}')
    os.symlink(b"t\xfdrget", raw + b"/l\xfcnk")
    return store


def test_non_utf8_names_back_up_restore_exactly_and_read_as_text(tmp_path: Path, aml_settings) -> None:
    from models import queries
    from tasks import backup
    from workers.catalog import session_scope

    store = _bad_store(tmp_path)
    before = tree(store)
    snap = apply(backup.create, store=str(store))
    assert snap["status"] == "success" and snap["errors"] == []
    assert "ag\\xffent" in snap["agents"]  # the result is text
    json.dumps(snap, ensure_ascii=False).encode("utf-8")
    # backup_metadata.json: written, valid UTF-8, the names escaped
    repo_path = store.parent / "memory-backup"
    summary = json.loads((repo_path / "backup_metadata.json").read_bytes().decode("utf-8"))
    [entry] = [b for b in summary["backups"] if b["backup_id"] == snap["backup_id"]]
    assert "ag\\xffent" in entry["agents"]
    assert "ag\\xffent/patterns.json" in entry["checksums"]
    # the catalog row
    with session_scope(aml_settings.catalog_url) as session:
        [row] = [b for b in queries.list_backups(session, os.path.realpath(store)) if b.backup_id == snap["backup_id"]]
        assert "ag\\xffent" in row.agents
    # the manifest keeps the exact bytes; the restore puts them back
    m = load_manifest(repo_path, snap["backup_id"])
    assert m.files is not None and os.fsdecode(BAD_DIR + b"/patterns.json") in m.files.path
    assert os.fsdecode(BAD_DIR) in m.agents
    out = tmp_path / "out"
    done = apply(backup.restore_, store=str(store), backup_id=snap["backup_id"], target=str(out))
    assert done["status"] == "success"
    assert tree(out) == before
    # verify and list are text as well
    from tasks import verify

    ok = apply(verify.verify, store=str(store), read_data=True)
    assert ok["status"] == "success"
    listed = apply(backup.list_, store=str(store))
    json.dumps(listed, ensure_ascii=False).encode("utf-8")


def test_non_utf8_names_in_health_alerts_and_metrics(tmp_path: Path, aml_settings, monkeypatch) -> None:
    from sqlalchemy import select

    from aml.health.thresholds import Thresholds
    from models import queries
    from models.tables import MetricSample
    from tasks import health
    from workers.app import current_aml_app
    from workers.catalog import session_scope

    store = _bad_store(tmp_path)
    raw = os.fsencode(store) + b"/" + BAD_DIR + b"/patterns.json"
    with open(raw, "wb") as fh:  # large enough for a per-agent size alert
        fh.write(json.dumps([{"id": f"p{i}", "agent": "x", "timestamp": "2026-01-01T00:00:00Z",
                              "pattern": {"d": "y" * 900}} for i in range(200)]).encode())
    tiny = aml_settings.replace(thresholds=Thresholds(agent_warning_mb=0.1, agent_critical_mb=100))
    monkeypatch.setitem(current_aml_app().conf, "aml_settings", tiny)
    first = apply(health.check, store=str(store))
    second = apply(health.check, store=str(store))
    json.dumps(second, ensure_ascii=False).encode("utf-8")
    alerts = [a for a in second["report"]["alerts"]["open"] if a["agent"] == "ag\\xffent"]
    assert [a["check"] for a in alerts] == ["memory_within_limits"] and alerts[0]["count"] == 2, first["report"]
    assert alerts[0]["fingerprint"] == queries.alert_fingerprint(str(os.path.realpath(store)), "ag\\xffent",
                                                                 "memory_within_limits")
    # the same fingerprint from the exact name: one alert, resolved once the folder is small again
    assert alerts[0]["fingerprint"] == queries.alert_fingerprint(str(os.path.realpath(store)),
                                                                 os.fsdecode(BAD_DIR), "memory_within_limits")
    with open(raw, "wb") as fh:
        fh.write(b"[]")
    apply(health.check, store=str(store))
    with session_scope(aml_settings.catalog_url) as session:
        rows = [a for a in queries.list_alerts(session, store=str(os.path.realpath(store)), include_resolved=True)
                if a.agent == "ag\\xffent"]
        assert len(rows) == 1 and rows[0].resolved_at is not None
        subjects = set(session.scalars(select(MetricSample.subject)))
    assert any(s and s.startswith("ag\\xffent") for s in subjects)


def test_prune_and_undo_with_a_non_utf8_agent(tmp_path: Path, aml_settings) -> None:
    import shutil

    from tasks import prune

    store = extract_loom("loom-plain-v1.0", tmp_path)
    agent = sorted(p for p in store.iterdir() if (p / "decisions.json").is_file())[0]
    bad = os.fsdecode(os.fsencode(store) + b"/" + BAD_DIR)
    shutil.copytree(agent, bad)
    before = tree(store)
    run = apply(prune.run, store=str(store), aggressive=True)
    assert run["status"] == "success" and run["backup_id"]
    assert any(d.startswith("ag\\xffent/") for d in run["applied"]["documents"])
    assert tree(store) != before
    undone = apply(prune.undo, store=str(store), run_id=run["run_id"])
    assert undone["failed"] == [] and undone["restored"] == undone["records"]
    after = tree(store)
    assert {k: after[k][:2] for k in after if k.startswith(BAD_DIR)} == {
        k: before[k][:2] for k in before if k.startswith(BAD_DIR)}


@pytest.mark.slow
def test_cli_backup_create_exits_0_and_prints_escaped_names(tmp_path: Path) -> None:
    store = _bad_store(tmp_path)
    env = runtime_env(tmp_path / "home", "redis://127.0.0.1:1/0")
    env["AML_LOCK_URL"] = "none://"

    def aml(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "cli.main", str(store), "backup", *args], cwd=REPO, env=env,
                              capture_output=True, timeout=300)

    made = aml("create", "--json")
    assert made.returncode == 0, made.stderr.decode(errors="replace")
    result = json.loads(made.stdout.decode("utf-8"))
    assert "ag\\xffent" in result["agents"] and result["link_count"] == 1
    human = aml("create", "--incremental")
    assert human.returncode == 0, human.stderr.decode(errors="replace")
    human.stdout.decode("utf-8")
    dry = aml("restore", "--backup-id", result["backup_id"], "--dry-run")
    assert dry.returncode == 0 and b"0 removed" in dry.stdout, dry.stdout + dry.stderr


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\x00" not in b
                                                                  and b not in (b".", b"..")
                                                                  and not b.startswith(b".aml-tmp-")),
                      min_size=1, max_size=6, unique=True))
@pytest.mark.slow
def test_any_name_bytes_round_trip(tmp_path_factory: pytest.TempPathFactory, names: list[bytes]) -> None:
    base = tmp_path_factory.mktemp("names")
    store = os.fsencode(base / "store")
    for sub in (b"", b"/f", b"/l", b"/e"):
        os.mkdir(store + sub)
    for name in names:
        with open(store + b"/f/" + name, "wb") as fh:
            fh.write(name)
        os.symlink(b"../f/" + name, store + b"/l/" + name)  # a link named and pointing by the same bytes
        os.mkdir(store + b"/e/" + name)  # an empty directory
    repo = Repository(base / "repo").init()
    snap = create_snapshot(os.fsdecode(store), repo, incremental=False)
    assert snap.errors == []
    out = base / "out"
    assert restore(repo, snap.backup_id, out).ok
    assert tree(out) == tree(Path(os.fsdecode(store)))
    json.dumps(snap.to_dict(), ensure_ascii=False).encode("utf-8")  # text, whatever the names
    assert all(text_name(p).encode("utf-8") for p in load_manifest(repo.path, snap.backup_id).files.path)  # type: ignore[union-attr]
