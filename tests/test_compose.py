"""compose.yaml runs the aml fleet from nothing: checked by reading the file (no docker here).

The file is parsed with ``yaml.safe_load`` (merge keys ``<<`` included) and its ``${VAR}`` references
are resolved the way ``docker compose`` does (``$$`` escapes, ``:-`` defaults, ``:?`` required), so the
tests see the values the containers would get and check them against the real CLI and settings.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from workers.app import QUEUES, TIME_LIMITS, create_app
from workers.service import flower_auth_given, worker_argv
from workers.settings import Settings, env_name, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"

AML_SERVICES = ("migrate", "worker-heavy", "worker-fast", "beat", "flower")
LONG_RUNNING = ("rabbitmq", "redis", "postgres", "worker-heavy", "worker-fast", "beat", "flower")
WORKERS = ("worker-heavy", "worker-fast")
REQUIRED_ENV = {"FLOWER_PASSWORD": "s3cret", "AML_STORES": "/stores/a/.loom/memory,/stores/b/.loom/memory"}
"""The variables a user must set; everything else has a default."""


class MissingVariable(ValueError):
    """A ``${VAR:?message}`` whose variable is unset or empty."""


_VAR = re.compile(r"\$(?:(\$)|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?\Z", re.S)


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """``value`` with compose's variable syntax resolved against ``env``."""

    def one(match: re.Match[str]) -> str:
        if match.group(1):
            return "$"
        if match.group("plain"):
            return env.get(match.group("plain"), "")
        inner = _BRACED.match(match.group("braced"))
        assert inner is not None, f"bad compose variable {match.group(0)!r}"
        name, op, arg = inner.group("name"), inner.group("op"), inner.group("arg") or ""
        current = env.get(name)
        unset = current is None or (current == "" and op is not None and op.startswith(":"))
        if op in ("-", ":-"):
            return interpolate(arg, env) if unset else str(current)
        if op in ("?", ":?"):
            if unset:
                raise MissingVariable(f"{name}: {arg}")
            return str(current)
        if op in ("+", ":+"):
            return "" if unset else interpolate(arg, env)
        return current or ""

    return _VAR.sub(one, value)


def _resolve(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _resolve(value, env) for key, value in node.items()}
    return node


@cache
def raw() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose model as docker compose would see it with ``env`` (default: the required variables)."""
    resolved = _resolve(raw(), REQUIRED_ENV if env is None else env)
    assert isinstance(resolved, dict)
    return resolved


def service(name: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    services = compose(env)["services"]
    assert name in services, f"compose.yaml has no service {name}"
    svc = services[name]
    assert isinstance(svc, dict)
    return svc


def environment(svc: Mapping[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def healthcheck_text(svc: Mapping[str, Any]) -> str:
    test = (svc.get("healthcheck") or {}).get("test")
    assert test, "no healthcheck test"
    if isinstance(test, str):
        return test
    assert test[0] in ("CMD", "CMD-SHELL"), f"healthcheck test must start with CMD or CMD-SHELL, not {test[0]!r}"
    return " ".join(test[1:])


def option_value(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def depends(svc: Mapping[str, Any]) -> dict[str, str]:
    deps = svc.get("depends_on") or {}
    assert isinstance(deps, dict), "depends_on must use the long form with conditions"
    return {name: (cond or {}).get("condition", "service_started") for name, cond in deps.items()}


# --- the fleet --------------------------------------------------------------------------------------------


def test_fleet_has_every_service_and_aml_ones_share_the_x_aml_anchor() -> None:
    assert set(compose()["services"]) == {"rabbitmq", "redis", "postgres", *AML_SERVICES}
    anchor = compose()["x-aml"]
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert re.search(r"^x-aml:\s*&aml\b", text, re.M)
    for name in AML_SERVICES:
        svc = service(name)
        assert svc["image"] == anchor["image"] == "aml:latest"
        assert svc["build"] == anchor["build"] == "."
        assert svc["volumes"] == anchor["volumes"], f"{name} does not take its volumes from x-aml"


def test_workers_wait_for_catalog_upgrade() -> None:
    migrate = service("migrate")
    assert migrate["command"] == ["aml", "db", "upgrade"]
    assert migrate["restart"] == "no"
    assert depends(migrate) == {"postgres": "service_healthy"}
    for name in ("worker-heavy", "worker-fast", "beat", "flower"):
        deps = depends(service(name))
        assert deps.get("migrate") == "service_completed_successfully", name
        assert deps.get("rabbitmq") == "service_healthy", name
        assert deps.get("redis") == "service_healthy", name


def test_long_running_services_restart_and_have_healthchecks() -> None:
    for name in LONG_RUNNING:
        svc = service(name)
        assert svc.get("restart") == "unless-stopped", name
        assert not (svc.get("healthcheck") or {}).get("disable"), name
        assert healthcheck_text(svc).strip(), name
    assert "healthcheck" not in service("migrate")


def test_infrastructure_healthchecks_use_each_servers_own_probe() -> None:
    assert "rabbitmq-diagnostics -q ping" in healthcheck_text(service("rabbitmq"))
    assert "redis-cli ping" in healthcheck_text(service("redis"))
    pg = healthcheck_text(service("postgres")).split()
    assert pg[0] == "pg_isready"
    assert option_value(pg, "-U") == environment(service("postgres"))["POSTGRES_USER"]
    assert option_value(pg, "-d") == "aml"


def test_worker_healthchecks_ping_their_own_node() -> None:
    for name in WORKERS:
        command = service(name)["command"]
        queues = option_value(command, "-Q", "--queues")
        assert queues is not None
        argv = worker_argv(queues, 1, "info", command[2:])
        node = option_value(argv, "-n", "--hostname")
        assert node is not None and node.endswith("@%h"), argv
        check = healthcheck_text(service(name))
        assert service(name)["healthcheck"]["test"][0] == "CMD-SHELL", "$HOSTNAME needs a shell"
        assert "celery -A workers.main inspect ping" in check
        destination = option_value(check.split(), "--destination", "-d")
        assert destination in (node.replace("%h", "${HOSTNAME}"), node.replace("%h", "$HOSTNAME")), check
        assert option_value(check.split(), "--timeout", "-t"), "inspect ping needs a timeout"
    # compose would eat a single $: the file must escape it
    for name in WORKERS:
        assert "$${HOSTNAME}" in " ".join(raw()["services"][name]["healthcheck"]["test"])


def test_flower_healthcheck_hits_its_unauthenticated_endpoint() -> None:
    flower = service("flower")
    check = healthcheck_text(flower)
    assert "http://127.0.0.1:5555/healthcheck" in check
    assert flower["ports"] == ["5555:5555"]


def test_beat_healthcheck_watches_the_redbeat_lock() -> None:
    beat = service("beat")
    app = create_app(load_settings(environment(beat)))
    assert app.conf.beat_scheduler == "redbeat.RedBeatScheduler"
    check = healthcheck_text(beat)
    assert f"'{app.conf.redbeat_lock_key}'" in check
    assert "AML_LOCK_URL" in check


# --- wiring ------------------------------------------------------------------------------------------------


def test_postgres_has_a_volume_and_is_wired_as_catalog() -> None:
    custom = {**REQUIRED_ENV, "POSTGRES_USER": "keeper", "POSTGRES_PASSWORD": "pw"}
    for env in (REQUIRED_ENV, custom):
        pg = service("postgres", env)
        assert pg["image"] == "postgres:16"
        assert "profiles" not in pg, "postgres must start with a plain `docker compose up`"
        pg_env = environment(pg)
        assert pg_env["POSTGRES_DB"] == "aml"
        volume = next(v for v in pg["volumes"] if v.endswith(":/var/lib/postgresql/data"))
        assert volume.split(":")[0] in compose(env)["volumes"]
        for name in AML_SERVICES:
            url = make_url(environment(service(name, env))["AML_CATALOG_URL"])
            assert url.drivername == "postgresql+psycopg2", name
            assert (url.host, url.database) == ("postgres", "aml"), name
            assert url.username == pg_env["POSTGRES_USER"], name
            assert url.password == pg_env["POSTGRES_PASSWORD"], name
    assert environment(service("postgres", custom))["POSTGRES_USER"] == "keeper"


def test_broker_is_rabbitmq_and_locks_use_redis() -> None:
    rabbit_env = environment(service("rabbitmq"))
    for name in AML_SERVICES:
        env = environment(service(name))
        broker = make_url(env["AML_BROKER_URL"])
        assert broker.drivername == "amqp" and broker.host == "rabbitmq" and broker.port == 5672, name
        assert broker.username == rabbit_env["RABBITMQ_DEFAULT_USER"], name
        assert broker.password == rabbit_env["RABBITMQ_DEFAULT_PASS"], name
        assert env["AML_RESULT_BACKEND"] == "redis://redis:6379/0", name
        assert env["AML_LOCK_URL"] == "redis://redis:6379/0", name
        settings = load_settings(env)
        assert settings.redis_lock_url == "redis://redis:6379/0", name
        assert settings.broker_url.startswith("amqp://"), name


def test_rabbitmq_and_redis_keep_their_data() -> None:
    rabbit = service("rabbitmq")
    assert rabbit["image"] in ("rabbitmq:3-management", "rabbitmq:3")
    assert rabbit.get("hostname"), "RabbitMQ's data directory is named after its host: fix the host name"
    redis = service("redis")
    assert redis["image"] == "redis:7"
    command = redis["command"]
    assert option_value(command, "--maxmemory-policy") == "noeviction"
    assert option_value(command, "--appendonly") == "yes"
    declared = compose()["volumes"]
    for svc, target in ((rabbit, "/var/lib/rabbitmq"), (redis, "/data")):
        sources = [v.split(":")[0] for v in svc["volumes"] if v.split(":")[1] == target]
        assert sources and sources[0] in declared, target


def test_rabbitmq_consumer_timeout_outlives_the_longest_task() -> None:
    args = environment(service("rabbitmq"))["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"].split()
    timeout_ms = int(option_value(args, "consumer_timeout") or 0) if "-rabbit" in args else 0
    longest_s = max(hard for _, hard in TIME_LIMITS.values())
    assert timeout_ms > longest_s * 1000, "RabbitMQ would close a worker's channel mid-task"


def test_named_volumes_are_declared() -> None:
    declared = compose()["volumes"]
    for name, svc in compose()["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source} is not declared"


def test_stores_are_mounted_read_write() -> None:
    for name in AML_SERVICES:
        mounts = [v.split(":") for v in service(name)["volumes"]]
        stores = [m for m in mounts if m[1] == "/stores"]
        assert len(stores) == 1, name
        assert "ro" not in stores[0][2:], f"{name} mounts the stores read-only"
    assert service("worker-heavy", {**REQUIRED_ENV, "STORES_DIR": "/srv/loom"})["volumes"][1].startswith("/srv/loom:")


def test_flower_requires_auth() -> None:
    with pytest.raises(MissingVariable, match="FLOWER_PASSWORD"):
        compose({k: v for k, v in REQUIRED_ENV.items() if k != "FLOWER_PASSWORD"})
    command = service("flower")["command"]
    assert flower_auth_given(command[2:], environ={})
    assert option_value(command, "--basic-auth") == "aml:" + REQUIRED_ENV["FLOWER_PASSWORD"]
    assert "--unsafe-no-auth" not in command
    custom = service("flower", {**REQUIRED_ENV, "FLOWER_USER": "ops"})["command"]
    assert option_value(custom, "--basic-auth") == "ops:" + REQUIRED_ENV["FLOWER_PASSWORD"]


def test_beat_requires_stores_and_runs_once() -> None:
    with pytest.raises(MissingVariable, match="AML_STORES"):
        compose({k: v for k, v in REQUIRED_ENV.items() if k != "AML_STORES"})
    with pytest.raises(MissingVariable, match="AML_STORES"):
        compose({**REQUIRED_ENV, "AML_STORES": ""})
    beat = service("beat")
    assert beat["command"] == ["aml", "beat"], "beat must refuse to start without stores"
    assert beat["deploy"]["replicas"] == 1
    assert load_settings(environment(beat)).stores == tuple(REQUIRED_ENV["AML_STORES"].split(","))
    assert all(s.startswith("/stores/") for s in load_settings(environment(beat)).stores)
    beats = [n for n, s in compose()["services"].items() if s.get("command", [])[:2] == ["aml", "beat"]]
    assert beats == ["beat"]


def service_commands() -> set[str]:
    """``cli.main.SERVICE_COMMANDS``, the words ``aml`` routes to its service commands (read, not imported:
    importing ``cli.main`` loads every store command and takes a second)."""
    tree = ast.parse((ROOT / "cli" / "main.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "SERVICE_COMMANDS"
                                                for t in node.targets):
            assert isinstance(node.value, ast.Call) and node.value.args
            return set(ast.literal_eval(node.value.args[0]))
    raise AssertionError("cli/main.py defines no SERVICE_COMMANDS")


def test_worker_commands_match_cli() -> None:
    import typer.main

    from cli.service import service_app

    commands = typer.main.get_command(service_app).commands  # type: ignore[attr-defined]
    consumed: set[str] = set()
    for name in (*WORKERS, "beat", "flower", "migrate"):
        command = service(name)["command"]
        assert command[0] == "aml", name
        assert command[1] in service_commands() and command[1] in commands, name
    assert "upgrade" in commands["db"].commands
    for name, queue in (("worker-heavy", "heavy"), ("worker-fast", "fast")):
        command = service(name)["command"]
        assert command[1] == "worker"
        assert option_value(command, "-Q", "--queues") == queue
        assert int(option_value(command, "-c", "--concurrency") or 0) >= 1
        consumed.add(queue)
        worker_argv(queue, 1, "info", [])  # raises ServiceRefused on an unknown queue
    assert set(QUEUES) <= consumed | {"celery"}
    assert option_value(service("worker-heavy")["command"], "-c") == "1"


def test_aml_variables_are_real_settings() -> None:
    known = {env_name(field) for field in Settings.model_fields}
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{?(AML_[A-Za-z0-9_]*)", text))
    for svc in raw()["services"].values():
        used |= {k for k in environment(svc) if k.startswith("AML_")}
    assert {"AML_CATALOG_URL", "AML_BROKER_URL", "AML_STORES"} <= used
    assert used <= known, f"not aml settings: {sorted(used - known)}"


def test_every_aml_service_environment_loads_as_settings() -> None:
    for name in AML_SERVICES:
        settings = load_settings(environment(service(name)))
        assert str(settings.home) == "/data", name


# --- image ---------------------------------------------------------------------------------------------------


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip().lstrip("/").rstrip("/")
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[" and "]" in pattern[i:]:
                end = pattern.index("]", i)
                body = pattern[i + 1 : end]
                out, i = out + "[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]", end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(out + r"\Z")))
    return rules


def dockerignored(path: str) -> bool:
    """Whether docker leaves ``path`` (relative to the context) out: it or a parent matches, last rule wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, rule in _dockerignore_rules():
        if any(rule.match(p) for p in prefixes):
            excluded = not negate
    return excluded


LOCAL_STATE = (
    ".venv/bin/python", ".git/HEAD", "demo/store/agents.json", "build/lib/aml/__init__.py", "dist/aml.whl",
    "aml.egg-info/PKG-INFO", "aml/__pycache__/x.cpython-311.pyc", "aml/store/__pycache__/codec.pyc",
    "workers/__pycache__", "__pycache__/beat_schedule.pyc", ".mypy_cache/3.11/x.json", ".ruff_cache/CACHEDIR.TAG",
    ".pytest_cache/v/x", "tests/.pytest_cache/v/x", ".hypothesis/examples/x",
    ".aml/catalog.db", "tests/.aml/catalog.db", "tests/.aml/stores/a.json", "catalog.db",
    "stores/a/.loom/memory/x.json", ".env",
)
"""Paths (relative to the build context) that must stay out of the image: environments, VCS, caches,
build output, local catalogs and stores, compose secrets."""


def test_dockerignore_excludes_local_state() -> None:
    for path in LOCAL_STATE:
        assert dockerignored(path), f"{path} would be sent to the docker build"


def test_dockerignore_keeps_the_build_inputs() -> None:
    for path in ("pyproject.toml", "README.md", "beat_schedule.py", "alembic.ini", "aml/__init__.py",
                 "cli/main.py", "workers/main.py", "tasks/__init__.py", "models/migrations/env.py"):
        assert not dockerignored(path), f"{path} is needed to build the image"
    for package in ("aml", "cli", "workers", "tasks", "models"):
        assert (ROOT / package / "__init__.py").exists(), package


def test_dockerfile_installs_the_postgres_driver_the_catalog_url_names() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"pip install\b.*'\.\[postgres\]'", dockerfile)
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^postgres = \[.*"psycopg2', pyproject, re.M)
    assert re.search(r"^COPY \. ", dockerfile, re.M), "the Dockerfile copies the (dockerignored) context"
