"""aml settings: one pydantic-settings model read from ``AML_*`` environment variables.

Every field is one variable (``AML_`` + the field name in capitals); its description is the meaning
and unit the README's configuration table gives (a test checks the table against :class:`Settings`).
Defaults come from the seeds (Loom ``scripts/aml``: monitor thresholds 60/80 MiB per agent, 600/800 MiB
per store; retention 30 days, at most 100 backups) and from Celery's documentation (the Redis
visibility timeout must exceed the longest task; 12 h here).
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from aml.health.thresholds import Thresholds

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
"""The broker when ``AML_BROKER_URL`` is not set (the Redis these machines run)."""

DERIVED_DEFAULTS: dict[str, str] = {
    "home": "~/.aml",
    "result_backend": "same as AML_BROKER_URL",
    "catalog_url": "sqlite:///$AML_HOME/catalog.db",
    "lock_url": "AML_BROKER_URL when that is set and is Redis, else none",
    "stores": "empty",
    "trace_families": "empty",
    "beat_schedule": "empty",
    "backup_root": "<store>/../memory-backup",
    "backup_password_file": "empty",
    "backup_sftp_key_file": "the SSH agent and ~/.ssh/id_*",
    "backup_sftp_known_hosts": "~/.ssh/known_hosts",
    "session_limits": "empty",
    "alertmanager_url": "empty",
    "alert_webhook_url": "empty",
    "alert_webhook_token": "empty",
    "smtp_url": "empty",
    "alert_email_to": "empty",
    "alert_email_from": "aml@<hostname>",
    "alert_generator_url": "aml://<hostname>",
}
"""How the README states the defaults that depend on other settings (the rest print as their value)."""


class Settings(BaseSettings):
    """All runtime settings. Build with :func:`load_settings`; override with :meth:`replace`.

    Units: seconds, MiB (1024² bytes), milliseconds, ratios 0-1, as each description says.

    ``AML_BEAT_SCHEDULE`` changes when beat fires the entries of a task, for every store: ``TASK=SCHEDULE``
    pairs separated by ``;``, where ``TASK`` is a task beat has entries for (``aml.health.check``,
    ``aml.backup.auto``, ``aml.prune.run``, ...) and ``SCHEDULE`` is a positive number of seconds between
    runs or a five-field cron expression in UTC (minute, hour, day of the month, month, day of the week);
    unnamed tasks keep the seeds' times (``beat_schedule.py``). An unknown task or a bad schedule is refused
    when the settings load. With RedBeat an entry's last run is kept across a change: an interval that has
    already elapsed since then fires at once.
    """

    model_config = SettingsConfigDict(env_prefix="AML_", frozen=True, extra="ignore", env_ignore_empty=True)

    home: Path = Field(Path("~/.aml"), description="data directory: embedded SQLite catalog, exporter state")
    broker_url: str = Field(DEFAULT_BROKER, description="Celery broker: Redis (`redis://`) or RabbitMQ (`amqp://`)")
    result_backend: str = Field("", description="Celery result backend")
    catalog_url: str = Field("", description="SQLAlchemy URL of the catalog (`postgresql+psycopg2://...` at scale)")
    lock_url: str = Field("", description="Redis for per-store locks (`none` for the lock file in the store alone)")
    stores: Annotated[tuple[str, ...], NoDecode] = Field((), description="comma-separated stores that beat maintains")
    beat_schedule: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="beat times replacing the seeds' per task, `;`-separated: "
        "`TASK=SECONDS` or `TASK=CRON` (5 fields, UTC), e.g. `aml.health.check=300; aml.prune.run=0 4 * * sat`")
    backup_root: str | None = Field(None, description="backup repository: a directory, "
                                    "`sftp://[user@]host[:port]/path` or `s3://bucket[/prefix]` (S3 endpoint and "
                                    "credentials from boto3's usual settings: AWS_ENDPOINT_URL_S3, "
                                    "AWS_ACCESS_KEY_ID, ...)")
    backup_timeout: float = Field(60.0, gt=0, description="seconds one operation on a remote backup repository "
                                  "(SFTP, S3) may take before the command fails, leaving no visible broken snapshot")
    backup_sftp_key_file: str | None = Field(None, description="private key for an `sftp://` backup repository "
                                             "(default: the SSH agent and ~/.ssh/id_*)")
    backup_sftp_known_hosts: str | None = Field(None, description="known_hosts file the SFTP server's host key must "
                                                "be in (default ~/.ssh/known_hosts); an unknown key is refused")
    backup_password_file: str | None = Field(None, description="file holding the password of an encrypted backup "
                                             "repository (`backup init --encrypt`); one line, read by the process "
                                             "that opens the repository, never passed in task arguments")
    visibility_timeout: int = Field(43200, description="Redis visibility timeout, seconds; task time limits "
                                    "stay below it")
    lock_lease: float = Field(30.0, gt=0, description="lease of a store's Redis lock, seconds; renewed every "
                              "third of it")
    lock_timeout: float = Field(60.0, description="seconds a destructive task waits for a store's lock before "
                                "it retries later")
    agent_warning_mb: float = Field(60.0, description="per-agent size warning, MiB (1024² bytes)")
    agent_critical_mb: float = Field(80.0, description="per-agent size critical, MiB")
    store_warning_mb: float = Field(600.0, description="store size warning, MiB")
    store_critical_mb: float = Field(800.0, description="store size critical, MiB")
    query_warning_ms: float = Field(50.0, description="record lookup time warning, ms")
    query_critical_ms: float = Field(100.0, description="record lookup time critical, ms")
    cache_hit_warning: float = Field(0.6, description="cache hit rate warning below, ratio 0-1")
    cache_hit_critical: float = Field(0.5, description="cache hit rate critical below, ratio 0-1")
    backup_max_age_hours: float = Field(24.0, description="a backup older than this is not recent, hours")
    max_document_mb: float = Field(256.0, gt=0, description="largest document (file) any command reads, MiB on "
                                   "disk (4x that decoded); a larger one is reported `too_large` and left alone, "
                                   "naming this setting")
    index_max_age_hours: float = Field(24.0, description="an index older than this is stale, hours")
    drill_max_age_days: float = Field(14.0, gt=0, description="health: warn when no restore drill passed in "
                                      "this long (`restore_tested`), days")
    retention_days: int = Field(30, description="backup retention, days")
    max_backups: int = Field(100, description="maximum snapshots kept")
    backup_orphan_grace_hours: float = Field(24.0, ge=0, description="rotate: packs in no index (left by killed "
                                             "backups) are removed once older than this; a younger one may belong "
                                             "to a backup still running, hours")
    metrics_raw_days: float = Field(7.0, description="catalog: metric samples kept raw, days; older ones are "
                                    "rolled up to hourly means")
    metrics_hourly_days: float = Field(90.0, description="catalog: hourly roll-ups kept, days; older ones are deleted")
    task_runs_days: float = Field(90.0, description="catalog: finished task runs kept, days")
    trace_interval: float = Field(300.0, gt=0, description="beat: seconds between two traces of each Redis store")
    trace_delimiters: str = Field(":", min_length=1, description="trace: key segment delimiters")
    trace_families: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="trace: comma-separated key family globs, first match wins (stable time-series names)")
    trace_max_patterns: int = Field(1000, ge=1, description="trace: most inferred patterns; later ones count as "
                                    "`<other>`")
    trace_series_patterns: int = Field(100, ge=0, description="trace: largest patterns recorded as time series "
                                       "in the catalog per trace")
    trace_unused_days: float = Field(7.0, gt=0, description="trace: a key not accessed for this long is unused, days")
    trace_growth_ratio: float = Field(0.5, gt=0, description="trace: a pattern that grew by more than this share "
                                      "since the previous trace is growing rapidly, ratio")
    trace_growth_min_keys: int = Field(100, ge=0, description="trace: smallest pattern checked for growth, keys")
    trace_persistent_ttl_share: float = Field(0.5, gt=0, le=1, description="trace: keys without TTL are flagged "
                                              "where at least this share of their pattern has one, ratio")
    trace_companion_coverage: float = Field(0.5, gt=0, le=1, description="trace: share of a pattern's keys "
                                            "with a companion key above which the others are orphans, ratio")
    session_limits: str = Field("", description="prune: Aitor session limits, `;`-separated `[AGENT:]MESSAGES/"
                                "TOOLS/STEPS` or `NAME=COUNT,...`, e.g. `150/40/120; SupportBot:2000/2000/2000` "
                                "(below `--limits` and a session's `<id>.limits.json`), counts")
    alertmanager_url: str = Field("", description="notify: Alertmanager base URL; alerts are POSTed to "
                                  "`/api/v2/alerts` on firing and resolution")
    alert_webhook_url: str = Field("", description="notify: URL receiving a JSON POST (Alertmanager's webhook "
                                   "body, version 4) on firing and resolution")
    alert_webhook_token: SecretStr = Field(SecretStr(""), description="notify: bearer token sent to the "
                                           "webhook (never logged or recorded)")
    smtp_url: SecretStr = Field(SecretStr(""), description="notify: mail server, `smtp://[user:pass@]host[:port]` "
                                "(STARTTLS when offered) or `smtps://` (TLS)")
    alert_email_to: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="notify: comma-separated e-mail recipients (with `AML_SMTP_URL`)")
    alert_email_from: str = Field("", description="notify: sender address of alert e-mails")
    alert_generator_url: str = Field("", description="notify: base of each alert's `generatorURL` "
                                     "(`<base>/alerts/<fingerprint>`)")
    alert_repeat_interval: float = Field(14400.0, gt=0, description="notify: seconds between two notifications "
                                         "of an alert still firing (Alertmanager's `repeat_interval`, 4 h)")
    alert_timeout: float = Field(5.0, gt=0, description="notify: timeout of one delivery attempt, seconds")
    alert_retries: int = Field(5, ge=0, description="notify: retries of a failed delivery on a worker "
                               "(exponential backoff, full jitter)")
    remediate: Literal["off", "dry-run", "on"] = Field(
        "dry-run", description="remediation: `off`, `dry-run` (health lists what the decision matrix would run "
        "and why) or `on` (beat's health runs enqueue it; `monitor health --remediate` runs it)")
    remediate_policy: str = Field("", description="remediation: `;`-separated `RULE=ACTION[,ACTION]` over the "
                                  "seeds' matrix, `none` turns a rule off, e.g. `slow_lookups=optimize_index; "
                                  "low_cache_hit=none`")
    remediate_cooldown: str = Field("", description="remediation: `;`-separated `RULE=SECONDS` before a rule "
                                    "runs again on a store (defaults: 86400 for prune and gc, 21600 for index "
                                    "and cache)")
    remediate_prune_ratio: float = Field(0.70, gt=0, description="remediation: prune (time + performance) above "
                                         "this share of the critical size, ratio (seeds: 70 %)")
    remediate_aggressive_ratio: float = Field(0.85, gt=0, description="remediation: prune (all strategies, "
                                              "aggressive) above this share, ratio (seeds: 85 %)")
    remediate_lookup_ms: float = Field(50.0, gt=0, description="remediation: rebuild the index and warm the "
                                       "cache when lookups take longer, ms (seeds: 50)")
    remediate_cache_hit: float = Field(0.60, ge=0, le=1, description="remediation: warm more records when the "
                                       "cache hit rate is below, ratio (seeds: 60 %)")
    remediate_max_per_hour: int = Field(6, ge=1, description="remediation: most chains started on one store in "
                                        "any hour, whatever the cooldowns, count")

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("lock_url", mode="after")
    @classmethod
    def _check_lock_url(cls, value: str) -> str:
        """A lock URL is a Redis URL or ``none``: a typo must not silently drop the cross-host lock."""
        if value in ("none", "none://") or value.startswith(("redis://", "rediss://", "unix://")):
            return value
        raise ValueError("must be a redis://, rediss:// or unix:// URL, or `none` (the store's flock alone)")

    @field_validator("stores", "trace_families", "alert_email_to", mode="before")
    @classmethod
    def _split_stores(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(s.strip() for s in value.split(",") if s.strip())
        return value

    @field_validator("beat_schedule", mode="before")
    @classmethod
    def _parse_beat_schedule(cls, value: Any) -> Any:
        """``TASK=SCHEDULE;...`` (or a mapping), checked: a typo must fail at start-up, not skip an entry."""
        if (isinstance(value, str) and not value.strip()) or (isinstance(value, Mapping) and not value):
            return {}  # none given: nothing to check (the check's module, which imports Celery, stays unimported)
        from beat_schedule import check_overrides, parse_overrides

        if isinstance(value, str):
            return parse_overrides(value)
        if isinstance(value, Mapping):
            check_overrides(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _derive(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items() if v not in ("", None) or k == "backup_root"}
        broker_set = bool(data.get("broker_url"))
        broker = str(data.get("broker_url") or DEFAULT_BROKER)
        home = Path(str(data.get("home") or "~/.aml")).expanduser()
        data.setdefault("result_backend", broker)
        data.setdefault("catalog_url", f"sqlite:///{home / 'catalog.db'}")
        if "lock_url" not in data:
            data["lock_url"] = broker if broker_set and broker.startswith(("redis://", "rediss://", "unix://")) \
                else "none"
        if data.get("backup_root") == "":
            data["backup_root"] = None
        host = socket.gethostname() or "localhost"
        data.setdefault("alert_email_from", f"aml@{host}")
        data.setdefault("alert_generator_url", f"aml://{host}")
        return data

    @property
    def thresholds(self) -> Thresholds:
        """The health thresholds (:class:`aml.health.thresholds.Thresholds`) these settings give."""
        return Thresholds(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Thresholds)})

    @property
    def redis_lock_url(self) -> str | None:
        """The Redis URL of per-store locks, or ``None`` when locks are the store's lock file alone."""
        if self.lock_url.startswith(("redis://", "rediss://", "unix://")):
            return self.lock_url
        return None

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied; ``thresholds=Thresholds(...)`` sets every threshold field."""
        thresholds = changes.pop("thresholds", None)
        if isinstance(thresholds, Thresholds):
            changes.update(dataclasses.asdict(thresholds))
        return self.model_copy(update=changes)


class _MappingSettings(Settings):
    """:class:`Settings` read from the values given to it alone (no environment, no ``.env``)."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def env_name(field: str) -> str:
    """The environment variable of a settings field: ``AML_`` + the name in capitals."""
    return "AML_" + field.upper()


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``environ`` (default ``os.environ``, through pydantic-settings).

    Returns:
        A :class:`Settings`.

    Raises:
        ValueError: a variable does not parse; the message names the variable, its value and why.
    """
    try:
        if environ is None:
            return Settings()  # type: ignore[call-arg]  # pydantic-settings fills every field
        values = {name: environ[env_name(name)] for name in Settings.model_fields
                  if environ.get(env_name(name), "") != ""}
        return _MappingSettings(**values)  # type: ignore[arg-type]  # strings, validated by pydantic
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            problems.append(f"{env_name(field)}={err.get('input')!r}: {err['msg']}")
        raise ValueError("invalid aml settings: " + "; ".join(problems)) from None


def configuration_table() -> list[tuple[str, str, str]]:
    """The README's configuration table: ``(variable, default as documented, meaning)`` per field."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = DERIVED_DEFAULTS.get(name)
        if default is None:
            value = field.default
            default = f"{value:g}" if isinstance(value, float) else str(value)
        rows.append((env_name(name), default, field.description or ""))
    return rows
