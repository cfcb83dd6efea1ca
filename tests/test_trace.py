"""trace over a live Redis (a private redis-server per module) and over the AMAOS RDB file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from aml.store.storeid import keyspace_id, redact
from aml.trace.rdbfile import RdbError
from aml.trace.run import TraceOptions, trace_keyspace, trace_rdb_file
from tests.fixtures_runtime import REPO, start_redis_server
from tests.trace_helpers import AMAOS_RDB, load_amaos, manifest

pytestmark = pytest.mark.skipif(not AMAOS_RDB.exists(), reason="shared AMAOS data not found")

MANIFEST = manifest()
FAMILIES = tuple(p for p in MANIFEST["patterns"])  # the manifest lists amaos:*:metadata first


@pytest.fixture(scope="module")
def server(private_redis_port: int) -> int:
    return private_redis_port


@pytest.fixture(scope="module")
def amaos_url(server: int) -> str:
    """db 1 of the private server holds the AMAOS keyspace (never modified by the tests)."""
    client = redis.Redis(port=server, db=1)
    assert load_amaos(client) == MANIFEST["db0_keys"]
    client.close()
    return f"redis://127.0.0.1:{server}/1"


def _changes(port: int) -> int:
    return int(redis.Redis(port=port).info("persistence")["rdb_changes_since_last_save"])


def _assert_manifest(report: dict) -> None:
    for pattern, expected in MANIFEST["patterns"].items():
        got = report["patterns"].get(pattern)
        if expected["keys"] == 0:
            assert got is None, pattern
            continue
        assert got is not None, pattern
        assert (got["keys"], got["with_ttl"], got["without_ttl"]) == (
            expected["keys"], expected["with_ttl"], expected["without_ttl"]), pattern
    assert report["keys"] == MANIFEST["db0_keys"]
    assert report["with_ttl"] == MANIFEST["keys_with_ttl"]
    assert report["values"] == MANIFEST["value_encoding"]
    orphans = [a for a in report["anomalies"] if a["kind"] == "orphaned_companions"]
    assert sum(a["keys"] for a in orphans) == MANIFEST["amaos_values_without_metadata"] == 55
    assert sum(c["companions_without_key"] for c in report["companions"]) == MANIFEST["amaos_metadata_without_value"]


def test_live_trace_of_the_amaos_keyspace_matches_its_manifest_and_writes_nothing(server: int, amaos_url: str) -> None:
    before = _changes(server)
    report = trace_keyspace(amaos_url, TraceOptions(families=FAMILIES))
    assert _changes(server) == before  # not one write (rdb_changes_since_last_save counts every write)
    _assert_manifest(report)
    assert report["partial"] is False and report["error"] is None
    assert report["server"]["keys"] == MANIFEST["db0_keys"] and report["server"]["redis_version"]
    turns = report["patterns"]["amaos:agent:*:session:*:turn:*"]
    assert turns["ttl"]["le_1h"] == 894 and turns["types"] == {"string": 894}
    assert turns["bytes"] > 0 and turns["idle"] is not None and turns["encodings"]
    assert report["patterns"]["amaos:episode:*"]["values"]["pickle"] > 0


def test_inferred_patterns_replace_ids_and_sum_to_the_families(amaos_url: str) -> None:
    report = trace_keyspace(amaos_url)
    patterns = report["patterns"]
    assert "amaos:agent:coder:session:*:turn:*" in patterns
    assert "amaos:semantic:*" in patterns and "amaos:tool_cache:sql_query:*" in patterns
    assert all("-" not in p.split(":")[-1] or p.endswith("*") for p in patterns if p.startswith("amaos:semantic"))
    metadata = sum(p["keys"] for name, p in patterns.items()
                   if name.startswith("amaos:") and name.endswith(":metadata"))
    assert metadata == MANIFEST["patterns"]["amaos:*:metadata"]["keys"]
    orphaned = {a["pattern"]: a["keys"] for a in report["anomalies"] if a["kind"] == "orphaned_companions"}
    assert sum(orphaned.values()) == 55 and all(":turn:*" in p for p in orphaned)
    example = next(a for a in report["anomalies"] if a["kind"] == "orphaned_companions")["examples"][0]
    client = redis.Redis.from_url(amaos_url)
    assert client.exists(example) and not client.exists(example + ":metadata")


def test_offline_trace_of_the_rdb_file_matches_its_manifest() -> None:
    report = trace_rdb_file(AMAOS_RDB, TraceOptions(families=FAMILIES))
    _assert_manifest(report)
    assert report["rdb"]["version"] == 10 and report["rdb"]["read"] == report["rdb"]["declared_keys"] == 4297
    assert report["expired"] > 0  # the file's expiry times are long past
    at_save = trace_rdb_file(AMAOS_RDB, TraceOptions(families=FAMILIES), now=MANIFEST["rdb_saved_at_epoch"])
    assert at_save["expired"] == 0
    for pattern, expected in MANIFEST["patterns"].items():
        if expected["ttl_max_s"] is not None:  # seconds left at the save (ctime is whole seconds: within 2 s)
            assert abs(at_save["patterns"][pattern]["ttl_max_s"] - expected["ttl_max_s"]) <= 2, pattern


@pytest.mark.parametrize("content", [b"", b"not an rdb file at all", None])
def test_a_bad_rdb_file_is_a_clear_error(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "dump.rdb"
    if content is None:
        path.write_bytes(AMAOS_RDB.read_bytes()[:20000])  # truncated
    else:
        path.write_bytes(content)
    with pytest.raises(RdbError, match=str(path)):
        trace_rdb_file(path)


def test_a_pattern_that_matches_nothing_is_an_empty_report(amaos_url: str) -> None:
    report = trace_keyspace(amaos_url, TraceOptions(match="no-such-prefix:*"))
    assert report["keys"] == 0 and report["patterns"] == {} and report["anomalies"] == []
    assert report["error"] is None


def test_sample_stops_early_and_scales(amaos_url: str) -> None:
    report = trace_keyspace(amaos_url, TraceOptions(sample=500))
    assert 500 <= report["keys"] < 1500 and report["sampled"] and report["partial"]
    estimated = sum(p["keys_estimated"] for p in report["patterns"].values())
    assert abs(estimated - MANIFEST["db0_keys"]) <= len(report["patterns"])


def test_lfu_policy_reads_access_frequency(tmp_path: Path) -> None:
    proc, port = start_redis_server(tmp_path, "--maxmemory-policy", "allkeys-lfu")
    try:
        client = redis.Redis(port=port)
        for i in range(50):
            client.set(f"job:{i}", "x")
        for _ in range(20):
            client.get("job:1")
        report = trace_keyspace(f"redis://127.0.0.1:{port}/0")
        p = report["patterns"]["job:*"]
        assert report["idle_source"] == "freq" and p["lfu_freq_avg"] is not None and p["idle"] is None
    finally:
        proc.kill()
        proc.wait()


def test_huge_values_are_sized_without_being_read(tmp_path: Path) -> None:
    proc, port = start_redis_server(tmp_path)
    try:
        client = redis.Redis(port=port)
        client.setrange("blob:1", 512 * 1024 * 1024 - 1, b"x")  # a 512 MiB string
        client.set("blob:2", b"\x80\x04\x95" + b"\0" * 100)
        sent_before = int(client.info("stats")["total_net_output_bytes"])
        report = trace_keyspace(f"redis://127.0.0.1:{port}/0")
        sent = int(client.info("stats")["total_net_output_bytes"]) - sent_before
        p = report["patterns"]["blob:*"]
        assert p["max_bytes"] >= 512 * 1024 * 1024
        assert sent < 1024 * 1024  # the value never crossed the wire
        assert p["values"] == {"binary": 1, "pickle": 1}
    finally:
        proc.kill()
        proc.wait()


def test_a_redis_that_disappears_mid_trace_gives_a_partial_result(tmp_path: Path) -> None:
    proc, port = start_redis_server(tmp_path)
    client = redis.Redis(port=port)
    pipe = client.pipeline(transaction=False)
    for i in range(20000):
        pipe.set(f"item:{i}", "v")
    pipe.execute()

    def kill(done: int, total: int) -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    report = trace_keyspace(f"redis://127.0.0.1:{port}/0", progress=kill)
    assert report["partial"] is True and "stopped answering" in report["error"]
    assert 0 < report["keys"] < 20000
    assert report["patterns"]["item:*"]["keys"] == report["keys"]


@pytest.mark.slow
def test_wrong_password_and_missing_db_are_refused_before_reading(tmp_path: Path) -> None:
    proc, port = start_redis_server(tmp_path, "--requirepass", "s3cret")
    try:
        with pytest.raises(redis.AuthenticationError):
            trace_keyspace(f"redis://:wrong@127.0.0.1:{port}/0")
        with pytest.raises(redis.ResponseError, match="DB index"):
            trace_keyspace(f"redis://:s3cret@127.0.0.1:{port}/99")
        report = trace_keyspace(f"redis://:s3cret@127.0.0.1:{port}/0")
        assert "s3cret" not in json.dumps(report) and report["store"] == f"redis://:***@127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(ValueError, match="not a Redis URL"):
        trace_keyspace("/some/path")


def test_keyspace_ids() -> None:
    assert keyspace_id("redis://h:6379") == keyspace_id("redis://h:6379/0") == "redis://h:6379/0"
    assert keyspace_id(" redis://u:pw@h:1/2 ") == "redis://u:***@h:1/2"
    assert redact("redis://h:1/0") == "redis://h:1/0"


@pytest.mark.slow
def test_cli_trace_json_and_rdb(amaos_url: str, tmp_path: Path) -> None:
    env = {"AML_HOME": str(tmp_path / "home"), "AML_LOCK_URL": "none", "PATH": "/usr/bin:/bin",
           "AML_TRACE_FAMILIES": ",".join(FAMILIES)}
    live = subprocess.run([sys.executable, "-m", "cli.main", amaos_url, "trace", "--json"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert live.returncode == 1, live.stderr  # anomalies: a warning
    result = json.loads(live.stdout)
    _assert_manifest(result["report"])
    assert result["recorded"]["alerts_raised"] == len(result["report"]["anomalies"])
    offline = subprocess.run([sys.executable, "-m", "cli.main", "trace", "--rdb", str(AMAOS_RDB)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
    assert offline.returncode == 1 and "55 keys lack theirs" in offline.stdout, offline.stdout + offline.stderr
    bad = subprocess.run([sys.executable, "-m", "cli.main", "trace", "--rdb", str(tmp_path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not a file" in bad.stderr and "Traceback" not in bad.stderr


_literal = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
_variable = st.one_of(st.integers(0, 10**12).map(str), st.uuids().map(str),
                      st.binary(min_size=4, max_size=12).map(lambda b: b.hex() + "0"),
                      st.dates().map(lambda d: d.isoformat()))


@settings(max_examples=200, deadline=None)
@given(shape=st.lists(st.tuples(st.booleans(), _literal), min_size=1, max_size=6), data=st.data())
def test_inferred_patterns_match_their_keys_and_ignore_ids(shape: list[tuple[bool, str]], data: st.DataObject) -> None:
    import fnmatch

    from aml.trace.patterns import PatternInferer

    inferer = PatternInferer()

    def key() -> str:
        return ":".join(data.draw(_variable) if variable else literal for variable, literal in shape)

    first, second = key(), key()
    assert inferer.infer(first) == inferer.infer(second)  # the same shape, other ids: one pattern
    assert fnmatch.fnmatchcase(first, inferer.infer(first))
    assert inferer.infer(first).count("*") == sum(1 for variable, _ in shape if variable)


def test_the_pattern_table_is_bounded() -> None:
    from aml.trace.patterns import OVERFLOW, PatternInferer

    inferer = PatternInferer(max_patterns=3)
    names = [inferer.pattern(f"kind{c}:1") for c in "abcde"]
    assert names[:3] == ["kinda:*", "kindb:*", "kindc:*"] and names[3:] == [OVERFLOW, OVERFLOW]
    assert inferer.overflowed == 2
    assert PatternInferer(":/").infer("a/12:b/ff00aa11") == "a/*:b/*"
    with pytest.raises(ValueError):
        PatternInferer("")


@pytest.mark.parametrize("head,expected", [
    (b'{"role": "user"', "json"), (b'["a", 1]', "json"), (b"-12.5e3", "json"), (b'"quoted"', "json"),
    (b"\x80\x04\x95\x10\x00", "pickle"), (b"\x1f\x8b\x08\x00", "compressed"), (b"\x28\xb5\x2f\xfd", "compressed"),
    (b"the agent tried", "raw_text"), (b"[INFO] started", "raw_text"), (b"\x00\x01\x02", "binary"),
    (b"caf\xc3", "raw_text"), (b"\xff\xfe\xfd", "binary"), (b"", "empty"),
])
def test_value_sniffing(head: bytes, expected: str) -> None:
    from aml.trace.sniff import sniff

    assert sniff(head) == expected
