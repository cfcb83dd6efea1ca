"""Encryption at rest (issue 11): key slots, sealed packs/index/manifests, keyed object ids."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aml.backup import Repository, check, create_snapshot, crypto, list_snapshots, restore
from aml.backup.errors import BackupError, PasswordRequired, WrongPassword
from aml.backup.index import list_index_ids, list_pack_ids
from aml.backup.pack import pack_path
from tests.backup_helpers import diff_states, flip_byte, make_json_store, tree_state
from tests.realdata import LOOM_DIR, extract_loom

CHEAP_KDF = {"n": 2**10, "r": 8, "p": 1}
PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _cheap_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crypto, "DEFAULT_KDF", CHEAP_KDF)


def _forget(repo: Repository) -> None:
    """Simulate a new process: drop the key this process unlocked."""
    crypto.forget(repo.path)


def _encrypted_repo(path: Path, password: str = PASSWORD) -> Repository:
    return Repository(path, password=password).init(pack_size=64 * 1024, encrypt=True)


def _repo_bytes(root: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]


def test_loom_round_trip_encrypted(tmp_path: Path) -> None:
    name = sorted(p.name.removesuffix(".tar.gz") for p in LOOM_DIR.glob("*.tar.gz"))[0]
    store = extract_loom(name, tmp_path / "project")
    before = tree_state(store)
    repo = _encrypted_repo(tmp_path / "repo")
    full = create_snapshot(store, repo, incremental=False)
    assert full.errors == [] and full.file_count > 0
    incr = create_snapshot(store, repo, incremental=True)
    assert incr.objects_added == 0

    _forget(repo)
    reopened = Repository(tmp_path / "repo", password=PASSWORD)
    res = restore(reopened, full.backup_id, tmp_path / "out")
    assert res.errors == []
    assert diff_states(before, tree_state(tmp_path / "out")) == []
    assert check(reopened, read_data=True).ok

    # nothing of the store is readable in the repository: no content hash, no string, no path
    files = [p for p in store.rglob("*") if p.is_file() and p.stat().st_size >= 16]
    hashes = {hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    stored = _repo_bytes(tmp_path / "repo")
    blob = b"\n".join(b for _, b in stored)
    names = " ".join(p.name for p, _ in stored)
    assert not any(h.encode() in blob or h in names for h in hashes)
    strings: set[bytes] = set()

    def walk(v: object) -> None:
        if isinstance(v, str) and len(v) >= 12:
            strings.add(v.encode())
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for p in files:
        try:
            walk(json.loads(p.read_bytes()))
        except ValueError:
            continue
    assert strings, "expected JSON strings in the Loom store"
    assert not any(s in blob for s in strings)
    assert str(store).encode() not in blob
    # the index holds keyed ids, not content hashes: the plain-text index format is gone
    assert all(b"aml-index" not in b for _, b in stored)


def test_ids_are_keyed_and_repositories_differ(tmp_path: Path) -> None:
    store = make_json_store(tmp_path / "store", agents=2, docs=5)
    a, b = _encrypted_repo(tmp_path / "a"), _encrypted_repo(tmp_path / "b")
    create_snapshot(store, a, incremental=False)
    create_snapshot(store, b, incremental=False)
    plain = Repository(tmp_path / "p").init()
    create_snapshot(store, plain, incremental=False)
    ids_a = set(crypto.key_for(a.path).hasher()(p.read_bytes()).hexdigest()  # type: ignore[union-attr]
                for p in store.rglob("*.json"))
    ids_b = set(crypto.key_for(b.path).hasher()(p.read_bytes()).hexdigest()  # type: ignore[union-attr]
                for p in store.rglob("*.json"))
    assert ids_a.isdisjoint(ids_b)
    assert crypto.key_for(plain.path) is None
    assert list_snapshots(a)[0].file_count == list_snapshots(plain)[0].file_count


def test_wrong_password_and_missing_password(tmp_path: Path) -> None:
    store = make_json_store(tmp_path / "store", agents=1, docs=3)
    repo = _encrypted_repo(tmp_path / "repo")
    create_snapshot(store, repo, incremental=False)
    _forget(repo)
    with pytest.raises(WrongPassword, match=r"^wrong password or no key slot for it: .*repo$"):
        Repository(tmp_path / "repo", password="nope").open()
    with pytest.raises(PasswordRequired, match="password is required"):
        Repository(tmp_path / "repo").open()
    with pytest.raises(PasswordRequired):
        list_snapshots(Repository(tmp_path / "repo"))
    assert Repository(tmp_path / "repo", password=PASSWORD).open().encrypted


def test_plain_repository_unchanged(tmp_path: Path) -> None:
    store = make_json_store(tmp_path / "store", agents=1, docs=3)
    repo = Repository(tmp_path / "repo").init()
    r = create_snapshot(store, repo, incremental=False)
    doc = json.loads((repo.path / "config.json").read_bytes())
    assert "encryption" not in doc and not repo.encrypted and not (repo.path / "keys").exists()
    f = next(store.rglob("doc-000.json"))
    assert hashlib.sha256(f.read_bytes()).hexdigest().encode() in b"".join(
        p.read_bytes() for p in (repo.path / "index").iterdir())
    assert repo.info()["encrypted"] is False
    assert r.file_count > 0


@pytest.mark.parametrize("kind", ["pack", "index", "header", "body", "key"])
def test_flipped_byte_is_caught_and_named(tmp_path: Path, kind: str) -> None:
    store = make_json_store(tmp_path / "store", agents=2, docs=10)
    repo = _encrypted_repo(tmp_path / "repo")
    if kind == "key":
        repo.add_key("second", kdf=CHEAP_KDF)  # the damaged slot must not be the only one
    snap = create_snapshot(store, repo, incremental=False)
    root = repo.path
    if kind == "pack":
        target = pack_path(root, list_pack_ids(root)[0])
    elif kind == "index":
        target = root / "index" / f"{list_index_ids(root)[0]}.json"
    elif kind == "header":
        target = root / "snapshots" / f"{snap.backup_id}.json"
    elif kind == "body":
        target = next((root / "snapshots" / "bodies").iterdir())
    else:
        target = sorted((root / "keys").iterdir())[-1]
    # a byte in the middle of the ciphertext: the file still has its magic and length
    flip_byte(target, target.stat().st_size // 2)
    _forget(repo)
    password = PASSWORD if kind != "key" else "second"
    reopened = Repository(root, password=password)
    try:
        res = check(reopened, read_data=True)
    except WrongPassword:  # the flipped slot was the one of this password: try the other
        res = check(Repository(root, password=PASSWORD if password == "second" else "second"), read_data=True)
    assert not res.ok
    rel = target.relative_to(root).as_posix()
    assert any(p.location == rel for p in res.errors), [p.to_dict() for p in res.errors]


def test_tampered_ciphertext_with_fixed_name_is_caught(tmp_path: Path) -> None:
    """Even if an attacker renames the file to the sha256 of the tampered bytes, authentication fails."""
    store = make_json_store(tmp_path / "store", agents=1, docs=5)
    repo = _encrypted_repo(tmp_path / "repo")
    snap = create_snapshot(store, repo, incremental=False)
    body = next((repo.path / "snapshots" / "bodies").iterdir())
    flip_byte(body, body.stat().st_size - 3)
    new = hashlib.sha256(body.read_bytes()).hexdigest()
    hdr = repo.path / "snapshots" / f"{snap.backup_id}.json"
    assert hdr.read_bytes()  # header is sealed; its recorded body name no longer matches either way
    os.rename(body, body.with_name(f"{new}.zst"))
    res = check(repo)
    assert not res.ok


def test_key_add_list_remove(tmp_path: Path) -> None:
    store = make_json_store(tmp_path / "store", agents=1, docs=3)
    repo = _encrypted_repo(tmp_path / "repo")
    create_snapshot(store, repo, incremental=False)
    first = repo.list_keys()
    assert len(first) == 1 and first[0].kdf == {"name": "scrypt", **CHEAP_KDF}
    assert "salt" not in json.dumps(first[0].to_dict()) and PASSWORD not in json.dumps(first[0].to_dict())
    new_id = repo.add_key("second password")
    assert {k.id for k in repo.list_keys()} == {first[0].id, new_id}
    _forget(repo)
    other = Repository(repo.path, password="second password")
    assert len(list_snapshots(other)) == 1
    other.remove_key(first[0].id[:12])
    _forget(repo)
    with pytest.raises(WrongPassword):
        Repository(repo.path, password=PASSWORD).open()
    with pytest.raises(BackupError, match="last key slot"):
        Repository(repo.path, password="second password").remove_key(new_id)
    with pytest.raises(BackupError, match="not encrypted"):
        Repository(tmp_path / "plain").init().add_key("x")
    for raw in (p.read_bytes() for p in (repo.path / "keys").iterdir()):
        assert b"second password" not in raw


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=4096), aad=st.binary(max_size=32), flip=st.integers(min_value=0))
def test_seal_round_trip_and_tamper(data: bytes, aad: bytes, flip: int) -> None:
    key = crypto.MasterKey.generate()
    sealed = key.seal(data, aad)
    assert len(sealed) == len(data) + crypto.OVERHEAD
    assert key.unseal(sealed, aad) == data
    i = flip % len(sealed)
    bad = sealed[:i] + bytes([sealed[i] ^ 0x01]) + sealed[i + 1 :]
    with pytest.raises(crypto.DecryptError):
        key.unseal(bad, aad)
    with pytest.raises(crypto.DecryptError):
        key.unseal(sealed, aad + b"x")
    with pytest.raises(crypto.DecryptError):
        crypto.MasterKey.generate().unseal(sealed, aad)


def test_cli_init_encrypt_backup_list_and_keys(tmp_path: Path, aml_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cli.main import store_app
    from workers.app import current_aml_app

    app = current_aml_app()
    monkeypatch.setitem(app.conf, "aml_settings", aml_settings)  # the callback replaces it; restored after
    store = make_json_store(tmp_path / "project" / "memory", agents=2, docs=4)
    pw, pw2, bad = tmp_path / "pw", tmp_path / "pw2", tmp_path / "bad"
    pw.write_text(PASSWORD + "\n")
    pw2.write_text("another one\n")
    bad.write_text("wrong\n")
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        res = runner.invoke(store_app, ["backup", *args], obj={"store": str(store)})
        return res.exit_code, res.output

    code, out = run("--password-file", str(pw), "init", "--encrypt")
    assert code == 0 and "encrypted" in out, out
    repo_path = store.parent / "memory-backup"
    assert json.loads((repo_path / "config.json").read_text())["encryption"]["cipher"] == "aes-256-gcm"
    code, out = run("--password-file", str(pw), "create")
    assert code == 0, out
    code, out = run("--password-file", str(pw), "list", "--json")
    assert code == 0 and json.loads(out)["encrypted"] is True and len(json.loads(out)["snapshots"]) == 1, out
    code, out = run("--password-file", str(pw), "list")
    assert "is encrypted" in out

    crypto.forget(repo_path)
    code, out = run("--password-file", str(bad), "list")
    assert code == 2 and "wrong password or no key slot for it" in out and "Traceback" not in out, out
    assert out.count("error:") == 1 and str(repo_path) in out.replace("\n", ""), out  # one message (rich wraps it)
    crypto.forget(repo_path)
    code, out = run("--password-file", str(bad), "key", "list")
    assert code == 2 and "wrong password or no key slot for it" in out, out

    code, out = run("--password-file", str(pw), "key", "add", "--new-password-file", str(pw2))
    assert code == 0 and "added key" in out, out
    code, out = run("--password-file", str(pw2), "key", "list", "--json")
    keys = json.loads(out)["keys"]
    assert code == 0 and len(keys) == 2 and all("salt" not in k["kdf"] for k in keys), out
    code, out = run("--password-file", str(pw2), "key", "remove", keys[0]["id"])
    assert code == 0, out
    code, out = run("--password-file", str(pw2), "key", "list", "--json")
    remaining = json.loads(out)["keys"]
    assert len(remaining) == 1
    code, out = run("--password-file", str(pw2), "key", "remove", remaining[0]["id"])
    assert code == 2 and "last key slot" in out, out
    code, out = run("--password-file", str(pw2), "verify", "--read-data", "--json")
    assert code in (0, 2), out


def test_rotate_prunes_and_repacks_an_encrypted_repository(tmp_path: Path) -> None:
    from aml.backup import RetentionPolicy, rotate
    from tests.backup_helpers import mutate

    store = make_json_store(tmp_path / "store", agents=3, docs=20)
    repo = _encrypted_repo(tmp_path / "repo")
    create_snapshot(store, repo, incremental=False)
    mutate(store, 0.5, seed=3)
    before = tree_state(store)
    last = create_snapshot(store, repo, incremental=True)
    rotate(repo, RetentionPolicy(keep_last=1), orphan_grace=0)
    _forget(repo)
    reopened = Repository(repo.path, password=PASSWORD)
    assert [s.backup_id for s in list_snapshots(reopened)] == [last.backup_id]
    assert check(reopened, read_data=True).ok
    restore(reopened, last.backup_id, tmp_path / "out")
    assert diff_states(before, tree_state(tmp_path / "out")) == []
