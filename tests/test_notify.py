"""Alert notifications end to end: a real HTTP server (Alertmanager + webhook), a real SMTP server
(aiosmtpd), a real worker for retries; firing, repeat interval, resolution, failures, secrets."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tests.fixtures_runtime import REPO, spawn_worker, stop_process

TOKEN = "tok-S3CRET-webhook-4242"
SMTP_PASSWORD = "pa$$-S3CRET-smtp"


class Recorder:
    """A real HTTP server on a free loopback port that records every POST and answers from a script."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.codes: dict[str, list[int]] = {}  # path -> status codes to answer in turn (then 200)
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorder.requests.append({"path": self.path, "headers": dict(self.headers),
                                          "body": json.loads(body)})
                script = recorder.codes.get(self.path, [])
                code = script.pop(0) if script else 200
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    yield rec
    rec.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _use(monkeypatch: pytest.MonkeyPatch, settings: Any, **changes: Any) -> Any:
    from workers.app import current_aml_app

    new = settings.replace(**changes)
    monkeypatch.setitem(current_aml_app().conf, "aml_settings", new)
    return new


def _broken_store(root: Path) -> Path:
    store = root / ".loom" / "memory"
    (store / "global").mkdir(parents=True)
    (store / "alice").mkdir()
    (store / "alice" / "patterns.json").write_text(json.dumps([{"id": "p1", "agent": "alice",
                                                                 "timestamp": "2026-01-01T00:00:00Z"}]))
    (store / "alice" / "solutions.json").write_bytes(b'[{"id": "s1", "agent": "alice", "timest')
    return store


def _repair(store: Path) -> None:
    (store / "alice" / "solutions.json").write_text("[]")


def run_health(store: Path) -> dict[str, Any]:
    from tasks.health import check

    return check.apply(kwargs={"store": str(store)}, throw=True).get()


def _integrity(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for a in alerts if a["labels"]["alertname"] == "file_integrity"]


def _catalog_text(url: str) -> str:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    out = []
    with engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            out += [repr(tuple(r)) for r in conn.execute(sa.text(f'SELECT * FROM "{table}"'))]
    engine.dispose()
    return "\n".join(out)


def _iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --------------------------------------------------------------------------------- inline, HTTP


@pytest.mark.slow
def test_firing_repeat_and_resolution_reach_alertmanager_and_webhook(tmp_path: Path, aml_settings, recorder,
                                                                      monkeypatch, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    settings = _use(monkeypatch, aml_settings, alertmanager_url=recorder.url("/am"),
                    alert_webhook_url=recorder.url("/hook?key=QUERYSECRET"), alert_webhook_token=SecretStr(TOKEN),
                    alert_generator_url="https://aml.example.org")
    store = _broken_store(tmp_path)

    before = datetime.now(UTC)
    first = run_health(store)
    assert first["notifications"]["targets"] == ["alertmanager", "webhook"]
    assert first["notifications"]["errors"] == {}
    assert set(first["notifications"]["delivered"]) == {"alertmanager", "webhook"}
    (am,) = recorder.on("/am/api/v2/alerts")
    (fired,) = _integrity(am["body"])
    assert am["headers"]["Content-Type"] == "application/json"
    assert fired["labels"]["store"] == first["report"]["store"] and fired["labels"]["service"] == "aml"
    assert fired["labels"]["severity"] == "error" and len(fired["labels"]["fingerprint"]) >= 16
    assert "agent" not in fired["labels"] or fired["labels"]["agent"]
    assert fired["annotations"]["summary"] and fired["annotations"]["description"].startswith(
        fired["annotations"]["summary"])
    assert before.replace(microsecond=0) <= _iso(fired["startsAt"]) <= datetime.now(UTC)
    # firing: endsAt two repeat intervals ahead (Alertmanager must not resolve it between two pushes)
    ahead = (_iso(fired["endsAt"]) - datetime.now(UTC)).total_seconds()
    assert 2 * 14400 - 60 < ahead <= 2 * 14400
    assert fired["generatorURL"] == f"https://aml.example.org/alerts/{fired['labels']['fingerprint']}"

    (hook,) = recorder.on("/hook?key=QUERYSECRET")
    assert hook["headers"]["Authorization"] == f"Bearer {TOKEN}"
    body = hook["body"]
    assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "aml"
    assert body["groupLabels"] == {"store": first["report"]["store"]}
    (w,) = [a for a in body["alerts"] if a["labels"]["alertname"] == "file_integrity"]
    assert w["status"] == "firing" and w["endsAt"] == "0001-01-01T00:00:00Z" and w["startsAt"] == fired["startsAt"]
    assert w["fingerprint"] == fired["labels"]["fingerprint"] and w["aml"]["count"] == 1

    # still failing, inside the repeat interval: nothing sent
    second = run_health(store)
    assert second["notifications"]["firing"] == 0 and len(recorder.requests) == 2

    # the repeat interval elapsed: sent again, same alert (same startsAt), count grown
    _use(monkeypatch, settings, alert_repeat_interval=0.5)
    time.sleep(0.6)
    run_health(store)
    am_posts = recorder.on("/am/api/v2/alerts")
    assert len(am_posts) == 2
    (again,) = _integrity(am_posts[1]["body"])
    assert again["startsAt"] == fired["startsAt"] and again["labels"] == fired["labels"]

    # repaired: one resolution, endsAt = the resolution time
    _use(monkeypatch, settings, alert_repeat_interval=3600.0)
    _repair(store)
    fourth = run_health(store)
    assert fourth["notifications"]["resolved"] >= 1
    (resolved,) = _integrity(recorder.on("/am/api/v2/alerts")[2]["body"])
    assert resolved["labels"] == fired["labels"]
    assert _iso(resolved["startsAt"]) < _iso(resolved["endsAt"]) <= datetime.now(UTC)
    hook_last = recorder.on("/hook?key=QUERYSECRET")[-1]["body"]
    (w,) = [a for a in hook_last["alerts"] if a["labels"]["alertname"] == "file_integrity"]
    assert w["status"] == "resolved" and w["endsAt"] == resolved["endsAt"]
    # the resolution is sent once
    count = len(recorder.requests)
    run_health(store)
    assert not any(_integrity(r["body"] if isinstance(r["body"], list) else r["body"]["alerts"])
                   for r in recorder.requests[count:])

    # no secret in results, logs or catalog
    text = json.dumps([first, second, fourth]) + caplog.text + _catalog_text(aml_settings.catalog_url)
    assert TOKEN not in text and "QUERYSECRET" not in text


def test_endpoint_down_inline_is_logged_health_succeeds_and_next_run_retries(tmp_path: Path, aml_settings,
                                                                            recorder, monkeypatch, caplog) -> None:
    caplog.set_level(logging.WARNING)
    dead = f"http://alerts:S3CRETPW@127.0.0.1:{_free_port()}"
    settings = _use(monkeypatch, aml_settings, alertmanager_url=dead, alert_timeout=2.0)
    store = _broken_store(tmp_path)
    started = time.monotonic()
    result = run_health(store)
    assert time.monotonic() - started < 30
    assert result["report"]["checks"]["file_integrity"] is False and result["status"] in ("warning", "failure")
    errors = result["notifications"]["errors"]
    assert "TransientDeliveryError" in errors["alertmanager"] and "127.0.0.1" in errors["alertmanager"]
    assert "notification of" in caplog.text
    assert "S3CRETPW" not in json.dumps(result) + caplog.text + _catalog_text(aml_settings.catalog_url)
    # nothing reached any target: the claim was released, the next run (endpoint back) sends the alert
    _use(monkeypatch, settings, alertmanager_url=recorder.url(""))
    nxt = run_health(store)
    assert nxt["notifications"]["delivered"] == {"alertmanager": "HTTP 200"}
    assert _integrity(recorder.on("/api/v2/alerts")[0]["body"])


def test_name_that_does_not_resolve_is_a_clear_error(tmp_path: Path, aml_settings, monkeypatch) -> None:
    _use(monkeypatch, aml_settings, alert_webhook_url="http://no-such-host.invalid/hook", alert_timeout=3.0)
    result = run_health(_broken_store(tmp_path))
    assert "no-such-host.invalid" in result["notifications"]["errors"]["webhook"]
    assert result["report"]["checks"]["file_integrity"] is False


def test_no_target_claims_nothing(tmp_path: Path, aml_settings) -> None:
    from models import queries
    from workers.catalog import session_scope

    result = run_health(_broken_store(tmp_path))
    assert result["notifications"] == {"targets": []}
    with session_scope(aml_settings.catalog_url) as session:
        assert all(a.notified_at is None for a in queries.list_alerts(session, include_resolved=True))


# ------------------------------------------------------------------------------ retries, 4xx


def _notices(aml_settings) -> list[dict[str, Any]]:
    from aml.notify import notice
    from models import queries
    from workers.catalog import session_scope

    now = datetime.now(UTC)
    with session_scope(aml_settings.catalog_url) as session:
        alert = queries.observe_check(session, store="/s", agent="a", check="file_integrity", passed=False,
                                      severity="error", message="broken", now=now)
        assert alert is not None
        return [notice(alert, now=now, repeat_s=3600, generator_base="aml://h")]


def test_send_retries_5xx_and_429_with_backoff_then_delivers(aml_settings, recorder, monkeypatch) -> None:
    import tasks.notify as notify

    _use(monkeypatch, aml_settings, alertmanager_url=recorder.url(""))
    monkeypatch.setattr(notify, "RETRY_BASE_S", 0.01)
    recorder.codes["/api/v2/alerts"] = [500, 429, 503]
    result = notify.send.apply(kwargs={"target": "alertmanager", "notices": _notices(aml_settings)}).get()
    assert result == {"target": "alertmanager", "alerts": 1, "delivered": "HTTP 200"}
    assert len(recorder.on("/api/v2/alerts")) == 4


def test_send_does_not_retry_4xx(aml_settings, recorder, monkeypatch) -> None:
    from aml.notify import PermanentDeliveryError
    from tasks.notify import send

    _use(monkeypatch, aml_settings, alert_webhook_url=recorder.url("/hook"), alert_webhook_token=SecretStr(TOKEN))
    recorder.codes["/hook"] = [401, 401, 401]
    outcome = send.apply(kwargs={"target": "webhook", "notices": _notices(aml_settings)})
    assert isinstance(outcome.result, PermanentDeliveryError) and "HTTP 401" in str(outcome.result)
    assert TOKEN not in str(outcome.result) and TOKEN not in (outcome.traceback or "")
    assert len(recorder.on("/hook")) == 1


@pytest.mark.slow
def test_worker_retries_a_500_and_health_is_not_held(tmp_path: Path, recorder, monkeypatch,
                                                     celery_worker_process) -> None:
    """On a real worker: health enqueues ``aml.notify.send``; Alertmanager answers 500 then 200."""
    from tests.realdata import extract_loom

    recorder.codes["/api/v2/alerts"] = [500]
    env = dict(celery_worker_process.env)
    env["AML_ALERTMANAGER_URL"] = recorder.url("")
    # the worker reads its targets from its own settings: restart it with the URL set
    celery_worker_process.proc.terminate()
    celery_worker_process.proc.wait(timeout=30)
    log = tmp_path / "worker2.log"
    proc = spawn_worker(env, log)
    try:
        store = extract_loom("loom-plain-v1.0", tmp_path)
        out = subprocess.run([sys.executable, "-m", "cli.main", str(store), "monitor", "health", "--enqueue",
                              "--wait", "--timeout", "120", "--json"], cwd=REPO, env=env, capture_output=True,
                             timeout=180)
        assert out.returncode in (1, 2), out.stderr.decode() + log.read_text()
        deadline = time.monotonic() + 60
        while len(recorder.on("/api/v2/alerts")) < 2:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        posts = recorder.on("/api/v2/alerts")
        assert posts[0]["body"] == posts[1]["body"] and posts[0]["body"]
        text = log.read_text()
        assert "aml.notify.send" in text and "retry 1" in text
    finally:
        stop_process(proc)


# ------------------------------------------------------------------------------------- SMTP


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, list[Any], list[tuple[str, str]]]]:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    received: list[Any] = []
    logins: list[tuple[str, str]] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope)
            return "250 OK"

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        user, password = auth_data.login.decode(), auth_data.password.decode()
        logins.append((user, password))
        return AuthResult(success=user == "alerts" and password == SMTP_PASSWORD, handled=False)

    port = _free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, authenticator=authenticator,
                            auth_require_tls=False)
    controller.start()
    try:
        yield port, received, logins
    finally:
        controller.stop()


def test_email_is_received_by_a_real_smtp_server(tmp_path: Path, aml_settings, smtp_server, monkeypatch,
                                                  caplog) -> None:
    from email import message_from_bytes
    from urllib.parse import quote

    caplog.set_level(logging.DEBUG)
    port, received, logins = smtp_server
    _use(monkeypatch, aml_settings, smtp_url=SecretStr(f"smtp://alerts:{quote(SMTP_PASSWORD)}@127.0.0.1:{port}"),
         alert_email_to=("ops@example.org", "oncall@example.org"), alert_email_from="aml@example.org")
    result = run_health(_broken_store(tmp_path))
    assert result["notifications"]["delivered"]["email"] == "250 to 2 recipient(s)"
    assert logins == [("alerts", SMTP_PASSWORD)]
    (envelope,) = received
    assert envelope.mail_from == "aml@example.org"
    assert envelope.rcpt_tos == ["ops@example.org", "oncall@example.org"]
    msg = message_from_bytes(envelope.content)
    assert msg["Subject"].startswith("[aml] FIRING ") and result["report"]["store"] in msg["Subject"]
    assert "[FIRING] error file_integrity" in msg.get_payload(decode=True).decode()
    assert SMTP_PASSWORD not in json.dumps(result) + caplog.text + _catalog_text(aml_settings.catalog_url)
    assert quote(SMTP_PASSWORD) not in caplog.text


def test_smtp_refusal_is_a_clear_error_without_the_password(tmp_path: Path, aml_settings, smtp_server,
                                                             monkeypatch, caplog) -> None:
    port, received, _ = smtp_server
    _use(monkeypatch, aml_settings, smtp_url=SecretStr(f"smtp://alerts:WRONG-S3CRET@127.0.0.1:{port}"),
         alert_email_to=("ops@example.org",))
    result = run_health(_broken_store(tmp_path))
    error = result["notifications"]["errors"]["email"]
    assert "PermanentDeliveryError" in error and "SMTP 535" in error and "smtp://127.0.0.1:" in error
    assert received == []
    assert "WRONG-S3CRET" not in json.dumps(result) + caplog.text


# ----------------------------------------------------------------------- claims, redaction


def test_claim_is_once_per_interval_and_resolution_once(aml_settings) -> None:
    from datetime import timedelta

    from models import queries
    from workers.catalog import session_scope

    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    url = aml_settings.catalog_url
    with session_scope(url) as s:
        queries.observe_check(s, store="/s", agent=None, check="c", passed=False, message="m", now=t0)
    with session_scope(url) as s:
        assert len(queries.claim_notifications(s, store="/s", repeat_s=3600, now=t0)) == 1
        assert queries.claim_notifications(s, store="/s", repeat_s=3600, now=t0 + timedelta(minutes=59)) == []
        assert queries.claim_notifications(s, store="/other", repeat_s=3600, now=t0 + timedelta(hours=2)) == []
        assert len(queries.claim_notifications(s, store="/s", repeat_s=3600, now=t0 + timedelta(hours=1))) == 1
    with session_scope(url) as s:
        queries.observe_check(s, store="/s", agent=None, check="c", passed=True, now=t0 + timedelta(hours=1, minutes=5))
    with session_scope(url) as s:
        (row,) = queries.claim_notifications(s, store="/s", repeat_s=3600, now=t0 + timedelta(hours=1, minutes=6))
        assert row.resolved_at is not None
        assert queries.claim_notifications(s, store="/s", repeat_s=3600, now=t0 + timedelta(hours=9)) == []


def test_redaction() -> None:
    from aml.notify import Target, redact_url, scrub

    assert redact_url("smtps://u:p%40ss@mail.example.org:465/x?token=t#f") == "smtps://mail.example.org:465/x"
    assert redact_url("http://[::1]:9093") == "http://[::1]:9093"
    target = Target("webhook", "https://u:p%40ss@h/hook?token=qq", token="TKN")
    assert "p%40ss" not in repr(target) and "TKN" not in repr(target)
    assert scrub("a p%40ss b p@ss c TKN token=qq", target.secrets) == "a *** b *** c *** ***"
