"""Keyspace snapshots as JSON (export / import), trace clean and its undo, on a private redis-server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aml.trace.clean import CleanCriteria, clean, undo_clean
from aml.trace.keyspace import (
    Entry,
    KeyspaceFileError,
    export_keyspace,
    import_entries,
    read_keyspace_file,
    write_entries,
)
from tests.trace_helpers import AMAOS_RDB, assert_same_keyspace, fresh_db, keyspace_state, load_amaos


@pytest.fixture(scope="module")
def port(private_redis_port: int) -> int:
    return private_redis_port










def _changes(client: redis.Redis) -> int:
    return int(client.info("persistence")["rdb_changes_since_last_save"])


def _fill_all_types(client: redis.Redis) -> None:
    import pickle

    client.set("s:pickle", pickle.dumps({"when": 1, "tags": {"a", "b"}}), ex=3600)
    client.set(b"s:\xff\xfe", b"\x00\xff binary")
    client.set("s:empty", b"")
    client.hset("h:1", mapping={"f": "v", b"\xff": b"\x80\x04K\x01."})
    client.hset("h:big", mapping={f"f{i}": "x" * 100 for i in range(300)})  # hashtable encoding
    client.rpush("l:1", "a", "b", "a", b"\xff")
    client.sadd("set:1", "x", "y", b"\xfe")
    client.sadd("set:int", 1, 2, 3)
    client.zadd("z:1", {"m": 1.5, "n": float("inf"), "o": float("-inf")})
    client.xadd("st:1", {"f": "v"})
    client.xadd("st:1", {"g": b"\xff"})
    client.expire("h:1", 86400)


@pytest.mark.parametrize("absolute", [True, False], ids=["pexpiretime", "pttl"])
def test_export_import_round_trip_of_every_type(port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                absolute: bool) -> None:
    """Every type round-trips; expiry times exactly where the server reports them absolutely (Redis 7's
    PEXPIRETIME), within a second from the time left (PTTL) on older servers."""
    import aml.trace.keyspace as keyspace_mod

    if not absolute:
        monkeypatch.setattr(keyspace_mod, "absolute_expiry_supported", lambda client: False)
    elif not keyspace_mod.absolute_expiry_supported(fresh_db(port, 2)):
        pytest.skip("this Redis has no PEXPIRETIME (before 7.0)")
    src, dst = fresh_db(port, 2), fresh_db(port, 3)
    _fill_all_types(src)
    result = export_keyspace(src, tmp_path / "snap.json", source="test")
    assert result.keys == src.dbsize() and set(result.types) == {"string", "hash", "list", "set", "zset", "stream"}
    doc = json.loads((tmp_path / "snap.json").read_text())  # plain JSON a person can read
    assert doc["format"] == "aml-keyspace" and doc["keys"] == result.keys
    _header, entries = read_keyspace_file(tmp_path / "snap.json")
    report = import_entries(dst, entries)
    assert report["written"] == result.keys and report["overwritten"] == 0
    assert_same_keyspace(keyspace_state(dst), keyspace_state(src))
    assert dst.get("s:pickle") == src.get("s:pickle")  # byte-identical, never unpickled
    if absolute:
        assert dst.execute_command("PEXPIRETIME", "h:1") == src.execute_command("PEXPIRETIME", "h:1") > 0


@pytest.mark.slow
def test_amaos_keyspace_snapshot_flush_restore_is_exact(port: int, tmp_path: Path) -> None:
    if not AMAOS_RDB.exists():
        pytest.skip("shared AMAOS data not found")
    client = fresh_db(port, 4)
    load_amaos(client)
    before = keyspace_state(client)
    export_keyspace(client, tmp_path / "amaos.json")
    client.flushdb()  # the test's own database
    _header, entries = read_keyspace_file(tmp_path / "amaos.json")
    report = import_entries(client, entries)
    assert report["written"] == len(before) == 4297
    assert_same_keyspace(keyspace_state(client), before)


def test_expired_entries_are_skipped_and_counted(port: int, tmp_path: Path) -> None:
    client = fresh_db(port, 5)
    now = int(time.time() * 1000)
    entries = [Entry(b"old", "string", b"x", now - 1000), Entry(b"new", "string", b"y", now + 60_000),
               Entry(b"forever", "string", b"z", None)]
    report = import_entries(client, entries)
    assert (report["written"], report["expired_skipped"]) == (2, 1) and report["examples"]["expired"] == ["old"]
    assert client.get("old") is None and client.get("forever") == b"z" and 0 < client.pttl("new") <= 60_000


def test_restore_over_existing_keys_saves_them_first_and_dry_run_writes_nothing(port: int, tmp_path: Path) -> None:
    client = fresh_db(port, 6)
    client.set("a", "new a")
    client.rpush("b", "1", "2")
    client.set("untouched", "u")
    entries = [Entry(b"a", "string", b"old a"), Entry(b"b", "list", [b"9"]), Entry(b"c", "string", b"c")]
    changes = _changes(client)
    plan = import_entries(client, entries, dry_run=True, pre_restore=tmp_path / "pre.json")
    assert _changes(client) == changes and not (tmp_path / "pre.json").exists()
    assert (plan["would_write"], plan["overwritten"], plan["written"]) == (3, 2, 0)
    report = import_entries(client, entries, pre_restore=tmp_path / "pre.json")
    assert report["pre_restore"]["keys"] == 2
    assert client.lrange("b", 0, -1) == [b"9"]  # replaced whole, not merged
    assert client.get("untouched") == b"u"
    _h, saved = read_keyspace_file(tmp_path / "pre.json")
    assert {e.key: e.value for e in saved} == {b"a": b"new a", b"b": [b"1", b"2"]}


def test_restore_only_a_pattern(port: int) -> None:
    client = fresh_db(port, 7)
    entries = [Entry(b"agent:1", "string", b"x"), Entry(b"other:1", "string", b"y")]
    report = import_entries(client, entries, match="agent:*")
    assert (report["written"], report["filtered"]) == (1, 1) and client.keys() == [b"agent:1"]


@pytest.mark.parametrize("content,reason", [
    (b"{not json", "not a readable keyspace file"),
    (b'{"format": "other", "entries": []}', "not an aml-keyspace file"),
    (b'{"format": "aml-keyspace", "version": 1, "entries": [{"key": "k", "type": "blob", "value": "v"}]}',
     "entry 0: unknown type"),
    (b'{"format": "aml-keyspace", "version": 1, "entries": [{"key": {"base64": "!!"}, "type": "string", '
     b'"value": "v"}]}', "entry 0"),
    (b'{"format": "aml-keyspace", "version": 9, "entries": []}', "format version 9"),
])
def test_a_bad_keyspace_file_is_named_with_its_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(KeyspaceFileError, match=reason) as info:
        read_keyspace_file(path)
    assert str(path) in str(info.value)


_bytes = st.binary(min_size=0, max_size=40)
_nonempty = st.binary(min_size=1, max_size=40)
_entry = st.one_of(
    st.builds(lambda v: ("string", v), _bytes),
    st.builds(lambda v: ("hash", v), st.dictionaries(_nonempty, _bytes, min_size=1, max_size=5)),
    st.builds(lambda v: ("list", v), st.lists(_bytes, min_size=1, max_size=5)),
    st.builds(lambda v: ("set", v), st.sets(_bytes, min_size=1, max_size=5)),
    st.builds(lambda v: ("zset", v), st.dictionaries(_bytes, st.floats(allow_nan=False), min_size=1, max_size=5)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.dictionaries(_nonempty, _entry, min_size=1, max_size=8))
def test_any_keyspace_round_trips_through_the_json_file(port: int, tmp_path: Path, data: dict) -> None:
    src, dst = fresh_db(port, 8), fresh_db(port, 9)
    for key, (kind, value) in data.items():
        if kind == "string":
            src.set(key, value)
        elif kind == "hash":
            src.hset(key, mapping=value)
        elif kind == "list":
            src.rpush(key, *value)
        elif kind == "set":
            src.sadd(key, *value)
        else:
            src.zadd(key, value)
    export_keyspace(src, tmp_path / "p.json")
    import_entries(dst, read_keyspace_file(tmp_path / "p.json")[1])
    assert_same_keyspace(keyspace_state(dst), keyspace_state(src))


def test_clean_then_undo_is_exact(port: int, tmp_path: Path) -> None:
    client = fresh_db(port, 10)
    _fill_all_types(client)
    for i in range(1200):  # more than one batch
        client.set(f"agent:{i}:scratch", f"v{i}", ex=3600 if i % 2 else None)
    client.set("keep:me", "k")
    before = keyspace_state(client)
    result = clean(client, CleanCriteria("agent:*"), tmp_path / "clean.json", source="test")
    assert result["removed"] == result["selected"] == 1200 and result["snapshot"]
    assert client.get("keep:me") == b"k" and not list(client.scan_iter(match="agent:*"))
    client.set("agent:7:scratch", "written again since")  # a key created again is left alone by undo
    undone = undo_clean(client, tmp_path / "clean.json")
    assert undone["written"] == 1199 and undone["existing_skipped"] == 1
    after = keyspace_state(client)
    assert client.get("agent:7:scratch") == b"written again since"
    del before[b"agent:7:scratch"], after[b"agent:7:scratch"]
    assert_same_keyspace(after, before)


def test_clean_criteria_select_what_they_say(port: int, tmp_path: Path) -> None:
    client = fresh_db(port, 11)
    client.set("job:persistent", "p")
    client.set("job:ttl", "t", ex=3600)
    client.set("job:expiring", "e", px=900)
    changes = _changes(client)
    assert clean(client, CleanCriteria("job:*", no_ttl=True), tmp_path / "x.json", dry_run=True)["examples"] \
        == ["job:persistent"]
    assert clean(client, CleanCriteria("job:*", ttl_zero_only=True), tmp_path / "x.json", dry_run=True)["examples"] \
        == ["job:expiring"]
    assert clean(client, CleanCriteria("job:*", idle_days=1), tmp_path / "x.json", dry_run=True)["selected"] == 0
    assert _changes(client) == changes and not (tmp_path / "x.json").exists()
    with pytest.raises(ValueError, match="disjoint"):
        CleanCriteria("job:*", no_ttl=True, ttl_zero_only=True)
    with pytest.raises(ValueError, match="--pattern"):
        CleanCriteria("")


def test_clean_with_an_unwritable_snapshot_removes_nothing(port: int, tmp_path: Path) -> None:
    client = fresh_db(port, 12)
    client.set("agent:1", "x")
    with pytest.raises(OSError):
        clean(client, CleanCriteria("agent:*"), tmp_path / "no-such-dir" / "snap.json")
    assert client.get("agent:1") == b"x"


def test_write_entries_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "snap.json"
    path.write_text("previous")

    def boom():  # the entries fail half-way: the old file stays
        yield Entry(b"a", "string", b"x")
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError):
        write_entries(path, boom(), source="t")
    assert path.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["snap.json"]
