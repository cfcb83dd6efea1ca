"""The Prometheus exporter (``workers.metrics``): a real SQLite catalog, rows written through
``models.queries``, the exposition text parsed back with prometheus_client's own parser."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from models import queries as q
from workers.catalog import dispose_engines, ensure_catalog, session_scope
from workers.metrics import DURATION_BUCKETS_S, registry_for, serve

S1 = "/srv/memory/one"
S2 = "/srv/memory/two"
NOW = datetime.now(UTC).replace(microsecond=0)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(url: str) -> Samples:
    text = generate_latest(registry_for(url)).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _get(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def _names(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for n, labels in samples if n == name]


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    ensure_catalog(url)
    yield url
    dispose_engines(url)


@pytest.fixture
def populated(url: str) -> str:
    t_old, t_new = NOW - timedelta(hours=3), NOW - timedelta(hours=1)
    with session_scope(url) as session:
        # two health runs of S1: the newer one wins; bob is absent from it (agent removed)
        q.add_metric_samples(session, [
            q.Sample(S1, "store_bytes", 100, "bytes", None, t_old),
            q.Sample(S1, "store_records", 10, "count", None, t_old),
            q.Sample(S1, "agent_bytes", 50, "bytes", "alice", t_old),
            q.Sample(S1, "agent_bytes", 40, "bytes", "bob", t_old),
            q.Sample(S1, "records", 3, "count", "alice/notes", t_old),
            q.Sample(S1, "records", 2, "count", "bob/notes", t_old),
            q.Sample(S1, "store_bytes", 2048, "bytes", None, t_new),
            q.Sample(S1, "store_records", 12, "count", None, t_new),
            q.Sample(S1, "agent_bytes", 1500, "bytes", "alice", t_new),
            q.Sample(S1, "records", 5, "count", "alice/notes", t_new),
            q.Sample(S1, "records", 6, "count", "alice/facts", t_new),
            # S2's newest run found no agent and recorded no record count: nothing older leaks through
            q.Sample(S2, "store_bytes", 3, "bytes", None, t_old - timedelta(hours=2)),
            q.Sample(S2, "store_records", 1, "count", None, t_old - timedelta(hours=2)),
            q.Sample(S2, "agent_bytes", 3, "bytes", "carol", t_old - timedelta(hours=2)),
            q.Sample(S2, "records", 1, "count", "carol/notes", t_old - timedelta(hours=2)),
            q.Sample(S2, "store_bytes", 7, "bytes", None, t_old),
            q.Sample(S2, "query_time", 0.25, "seconds", None, NOW),  # not exported
        ])

        b_old, b_new = NOW - timedelta(days=2), NOW - timedelta(days=1, microseconds=-250_000)
        for backup_id, created in (("20260101T000000Z", b_old), ("20260102T000000Z", b_new)):
            q.record_backup(session, backup_id=backup_id, store=S1, repository="/repo", backup_type="full",
                            created_at=created, file_count=3, total_size_bytes=300, stored_size_bytes=100)
        q.record_backup(session, backup_id="20260103T000000Z", store=S2, repository="/repo2",
                        backup_type="full", created_at=b_old, file_count=1, total_size_bytes=1,
                        stored_size_bytes=1)
        q.set_backup_verification(session, backup_id="20260101T000000Z", repository="/repo", status="ok",
                                  verified_at=NOW - timedelta(hours=20))
        q.set_backup_verification(session, backup_id="20260102T000000Z", repository="/repo", status="failed",
                                  verified_at=NOW - timedelta(hours=10))

        for agent, check, severity in (("alice", "size", "warning"), ("bob", "size", "warning"),
                                       (None, "integrity", "critical"), (None, "backup_age", "error")):
            q.observe_check(session, store=S1, agent=agent, check=check, passed=False, severity=severity,
                            now=t_old)
        q.observe_check(session, store=S1, agent=None, check="backup_age", passed=True, now=t_new)
        q.observe_check(session, store=S2, agent=None, check="size", passed=False, severity="info", now=t_old)
        q.observe_check(session, store=S2, agent=None, check="size", passed=True, now=t_new)

        for status, started, duration_s in (("success", NOW - timedelta(minutes=30), 0.3),
                                            ("success", NOW - timedelta(minutes=20), 42.0),
                                            ("failure", NOW - timedelta(minutes=10), 2.0),
                                            ("success", NOW - timedelta(days=3), 10.0)):  # outside 24 h
            run = q.start_task_run(session, task_id=None, operation="backup", store=S1, now=started)
            q.finish_task_run(session, run, status=status, now=started + timedelta(seconds=duration_s))
        q.start_task_run(session, task_id="still-running", operation="prune", store=S1, now=NOW)
    return url


def test_latest_health_samples_per_store_and_agent(populated: str) -> None:
    samples = _scrape(populated)
    assert _get(samples, "aml_catalog_up") == 1.0
    assert _get(samples, "aml_store_bytes", store=S1) == 2048.0
    assert _get(samples, "aml_store_records", store=S1) == 12.0
    assert _get(samples, "aml_store_bytes", store=S2) == 7.0
    assert _names(samples, "aml_store_records") == [{"store": S1}]
    assert _names(samples, "aml_agent_bytes") == [{"store": S1, "agent": "alice"}]
    assert _get(samples, "aml_agent_bytes", store=S1, agent="alice") == 1500.0
    assert _names(samples, "aml_agent_records") == [{"store": S1, "agent": "alice"}]
    assert _get(samples, "aml_agent_records", store=S1, agent="alice") == 11.0


def test_backup_and_verify_timestamps(populated: str) -> None:
    samples = _scrape(populated)
    b_new = NOW - timedelta(days=1, microseconds=-250_000)
    assert _get(samples, "aml_last_successful_backup_timestamp_seconds", store=S1) == b_new.timestamp()
    assert _get(samples, "aml_last_successful_backup_timestamp_seconds", store=S2) == \
        (NOW - timedelta(days=2)).timestamp()
    # the newest snapshot failed its verification: the last success is the older one's
    assert _names(samples, "aml_last_successful_verify_timestamp_seconds") == [{"store": S1}]
    assert _get(samples, "aml_last_successful_verify_timestamp_seconds", store=S1) == \
        (NOW - timedelta(hours=20)).timestamp()


def test_open_alerts_by_severity(populated: str) -> None:
    samples = _scrape(populated)
    assert {labels["severity"]: _get(samples, "aml_open_alerts", **labels)
            for labels in _names(samples, "aml_open_alerts") if labels["store"] == S1} == \
        {"info": 0.0, "warning": 2.0, "error": 0.0, "critical": 1.0}
    # S2's only alert was resolved: its series stay, at 0
    assert {labels["severity"]: _get(samples, "aml_open_alerts", **labels)
            for labels in _names(samples, "aml_open_alerts") if labels["store"] == S2} == \
        {"info": 0.0, "warning": 0.0, "error": 0.0, "critical": 0.0}


def test_task_duration_histogram_and_run_counts(populated: str) -> None:
    samples = _scrape(populated)
    ok = {"operation": "backup", "status": "success"}
    buckets = {float(labels["le"]): _get(samples, "aml_task_duration_seconds_bucket", **labels)
               for labels in _names(samples, "aml_task_duration_seconds_bucket")
               if labels["status"] == "success"}
    assert sorted(buckets) == [*DURATION_BUCKETS_S, float("inf")]
    assert buckets == {0.1: 0, 0.5: 1, 1: 1, 5: 1, 15: 1, 60: 2, 300: 2, 900: 2, 3600: 2, 21600: 2,
                       float("inf"): 2}
    assert _get(samples, "aml_task_duration_seconds_count", **ok) == 2.0
    assert _get(samples, "aml_task_duration_seconds_sum", **ok) == pytest.approx(42.3)
    assert _get(samples, "aml_task_duration_seconds_count", operation="backup", status="failure") == 1.0
    assert _get(samples, "aml_task_duration_seconds_sum", operation="backup", status="failure") == 2.0
    # finished runs in the catalog only (the running prune is not counted)
    assert sorted((labels["operation"], labels["status"], _get(samples, "aml_task_runs", **labels))
                  for labels in _names(samples, "aml_task_runs")) == \
        [("backup", "failure", 1.0), ("backup", "success", 3.0)]


def test_empty_catalog_is_up_with_no_series(url: str) -> None:
    samples = _scrape(url)
    assert samples == {("aml_catalog_up", frozenset()): 1.0}


def test_unusable_catalog_reports_down(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the catalog's directory should be")
    url = f"sqlite:///{blocker / 'catalog.db'}"
    samples = _scrape(url)  # does not raise
    assert samples == {("aml_catalog_up", frozenset()): 0.0}
    assert "reading the catalog failed" in caplog.text
    dispose_engines(url)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_over_http(populated: str) -> None:
    port = _free_port()
    threading.Thread(target=serve, args=(populated, port), daemon=True).start()
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                body = response.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    families = {f.name: f for f in text_string_to_metric_families(body)}
    assert families["aml_catalog_up"].samples[0].value == 1.0
    assert families["aml_task_duration_seconds"].type == "histogram"
    assert families["aml_task_runs"].type == "gauge"  # retention deletes runs: a counter would go down
    assert any(s.labels == {"store": S1} and s.value == 2048.0 for s in families["aml_store_bytes"].samples)
