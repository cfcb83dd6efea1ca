"""Prometheus exposition of aml's own metrics, read from the catalog on every scrape.

:class:`CatalogCollector` is a prometheus_client custom collector: each ``collect()`` opens one
short read-only session on the catalog, runs a handful of aggregate queries and yields metric
families named ``aml_*`` in base units (bytes, seconds, Unix timestamps in seconds):

- ``aml_store_bytes{store}``, ``aml_store_records{store}``, ``aml_agent_bytes{store,agent}``,
  ``aml_agent_records{store,agent}``: the values of the newest health run of each store (the
  ``store_bytes``, ``store_records``, ``agent_bytes`` and ``records`` samples it recorded;
  ``aml_agent_records`` sums the per-collection ``records`` samples of each agent). A series
  missing from a store's newest run (an agent that was removed) is not exported.
- ``aml_last_successful_backup_timestamp_seconds{store}``: ``created_at`` of the newest snapshot.
- ``aml_last_successful_verify_timestamp_seconds{store}``: newest ``verified_at`` of a snapshot
  whose last verification is ``ok``.
- ``aml_open_alerts{store,severity}``: open alerts (``resolved_at IS NULL``); every severity is
  exported (0 when none) for each store that has any alert row, open or resolved.
- ``aml_task_duration_seconds{operation,status}``: histogram of ``duration_s`` of the task runs
  finished in the last 24 h (:data:`DURATION_BUCKETS_S`).
- ``aml_task_runs{operation,status}``: finished runs (terminal statuses) in the catalog; a gauge, because
  catalog retention (``AML_TASK_RUNS_DAYS``) deletes old runs and a counter must never go down.
- ``aml_catalog_up``: 1 when the queries succeeded, 0 otherwise (the error is logged and no other
  family is exported by that scrape).

Runtime layer: imports ``models`` and ``workers.catalog`` only (never ``cli`` or ``tasks``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from models.tables import TERMINAL_STATUSES, Alert, Backup, MetricSample, Severity, TaskRun, VerifyStatus

__all__ = ["DURATION_BUCKETS_S", "CatalogCollector", "registry_for", "serve"]

log = logging.getLogger(__name__)

DURATION_BUCKETS_S: tuple[float, ...] = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 21600)
"""Upper bounds (seconds, inclusive) of the ``aml_task_duration_seconds`` buckets; ``+Inf`` is added."""

DURATION_WINDOW_S = 24 * 3600.0
"""Only task runs finished within this many seconds before the scrape enter the duration histogram."""

_STORE_SAMPLES = {"aml_store_bytes": "store_bytes", "aml_store_records": "store_records"}
"""Exported family -> store-wide (``subject IS NULL``) sample name recorded by health runs."""

_RUN_MARKER = "store_bytes"
"""Store-wide sample every health run records (``aml.health.monitor``): its time marks the run."""


@dataclass
class _Histogram:
    count: int
    sum_s: float
    cumulative: list[int]  # one per DURATION_BUCKETS_S bound


@dataclass
class _Snapshot:
    """Everything one scrape read from the catalog."""

    store_values: dict[str, dict[str, float]] = field(default_factory=dict)  # family -> {store: value}
    agent_bytes: dict[tuple[str, str], float] = field(default_factory=dict)  # (store, agent) -> bytes
    agent_records: dict[tuple[str, str], float] = field(default_factory=dict)  # (store, agent) -> records
    last_backup: dict[str, float] = field(default_factory=dict)  # store -> unix s
    last_verify: dict[str, float] = field(default_factory=dict)  # store -> unix s
    open_alerts: dict[tuple[str, str], int] = field(default_factory=dict)  # (store, severity) -> n
    durations: dict[tuple[str, str], _Histogram] = field(default_factory=dict)  # (operation, status) -> h
    runs_total: dict[tuple[str, str], int] = field(default_factory=dict)  # (operation, status) -> n


def _newest_run_samples(session: Session, names: tuple[str, ...]) -> list[tuple[str, str, str | None, float]]:
    """The samples named ``names`` recorded by each store's newest health run: two queries in all.

    A health run records all its samples at one instant, ``store_bytes`` always among them: the
    newest ``store_bytes`` time of a store identifies its newest run (so an agent absent from that
    run, or a store whose newest run found no agent, exports no stale series).

    Returns:
        ``[(name, store, subject, value)]`` in row id order (for one series, the newest row last).
    """
    newest = {store: when for store, when in session.execute(
        select(MetricSample.store, func.max(MetricSample.time))
        .where(MetricSample.name == _RUN_MARKER, MetricSample.subject.is_(None))
        .group_by(MetricSample.store))}
    if not newest:
        return []
    rows = session.execute(
        select(MetricSample.name, MetricSample.store, MetricSample.subject, MetricSample.time, MetricSample.value)
        .where(MetricSample.name.in_(names), MetricSample.time.in_(set(newest.values())))
        .order_by(MetricSample.id))
    return [(r.name, r.store, r.subject, float(r.value)) for r in rows if newest.get(r.store) == r.time]


def _read(session: Session, now: datetime, window_s: float) -> _Snapshot:
    """Run the scrape's queries (about ten, whatever the number of stores) in ``session``."""
    snap = _Snapshot()

    per_collection: dict[tuple[str, str], float] = {}
    store_families = {name: family for family, name in _STORE_SAMPLES.items()}
    for family in _STORE_SAMPLES:
        snap.store_values[family] = {}
    for name, store, subject, value in _newest_run_samples(session, (*store_families, "agent_bytes", "records")):
        if subject is None and name in store_families:
            snap.store_values[store_families[name]][store] = value
        elif subject is not None and name == "agent_bytes":
            snap.agent_bytes[(store, subject)] = value
        elif subject is not None and name == "records":  # per agent and collection ("agent/collection")
            per_collection[(store, subject)] = value  # same (store, subject) twice: the newer row wins
    records: defaultdict[tuple[str, str], float] = defaultdict(float)
    for (store, subject), value in per_collection.items():
        records[(store, subject.partition("/")[0])] += value
    snap.agent_records = dict(records)

    for store, created in session.execute(
        select(Backup.store, func.max(Backup.created_at)).group_by(Backup.store)
    ):
        if created is not None:
            snap.last_backup[store] = created.timestamp()
    for store, verified in session.execute(
        select(Backup.store, func.max(Backup.verified_at))
        .where(Backup.verify_status == VerifyStatus.OK.value, Backup.verified_at.is_not(None))
        .group_by(Backup.store)
    ):
        if verified is not None:
            snap.last_verify[store] = verified.timestamp()

    open_count = func.sum(case((Alert.resolved_at.is_(None), 1), else_=0))
    for store, severity, n in session.execute(
        select(Alert.store, Alert.severity, open_count).group_by(Alert.store, Alert.severity)
    ):
        for level in Severity:
            snap.open_alerts.setdefault((store, level.value), 0)
        snap.open_alerts[(store, severity)] = snap.open_alerts.get((store, severity), 0) + int(n or 0)

    terminal = sorted(str(s) for s in TERMINAL_STATUSES)
    since = now - timedelta(seconds=window_s)
    bucket_cols = [func.sum(case((TaskRun.duration_s <= bound, 1), else_=0)) for bound in DURATION_BUCKETS_S]
    for row in session.execute(
        select(TaskRun.operation, TaskRun.status, func.count(), func.sum(TaskRun.duration_s), *bucket_cols)
        .where(TaskRun.status.in_(terminal), TaskRun.finished_at >= since, TaskRun.duration_s.is_not(None))
        .group_by(TaskRun.operation, TaskRun.status)
    ):
        operation, status, count, total, *cumulative = row
        snap.durations[(operation, status)] = _Histogram(int(count), float(total or 0.0),
                                                         [int(c or 0) for c in cumulative])
    for operation, status, count in session.execute(
        select(TaskRun.operation, TaskRun.status, func.count())
        .where(TaskRun.status.in_(terminal))
        .group_by(TaskRun.operation, TaskRun.status)
    ):
        snap.runs_total[(operation, status)] = int(count)
    return snap


def _families(snap: _Snapshot) -> Iterator[Metric]:
    """The metric families of a successful scrape (``aml_catalog_up`` excluded)."""
    store_help = {
        "aml_store_bytes": ("Bytes of the store's files, from its newest health run.", "bytes"),
        "aml_store_records": ("Records in the store, from its newest health run.", ""),
    }
    for family, values in snap.store_values.items():
        doc, unit = store_help[family]
        gauge = GaugeMetricFamily(family, doc, labels=["store"], unit=unit)
        for store, value in sorted(values.items()):
            gauge.add_metric([store], value)
        yield gauge

    agent_bytes = GaugeMetricFamily("aml_agent_bytes", "Bytes on disk of an agent's memory, from the store's "
                                    "newest health run.", labels=["store", "agent"], unit="bytes")
    for (store, agent), value in sorted(snap.agent_bytes.items()):
        agent_bytes.add_metric([store, agent], value)
    yield agent_bytes
    agent_records = GaugeMetricFamily("aml_agent_records", "Records of an agent (all collections), from the "
                                      "store's newest health run.", labels=["store", "agent"])
    for (store, agent), value in sorted(snap.agent_records.items()):
        agent_records.add_metric([store, agent], value)
    yield agent_records

    backup = GaugeMetricFamily("aml_last_successful_backup_timestamp_seconds",
                               "Creation time of the store's newest snapshot in the catalog, Unix seconds.",
                               labels=["store"], unit="seconds")
    for store, ts in sorted(snap.last_backup.items()):
        backup.add_metric([store], ts)
    yield backup
    verify = GaugeMetricFamily("aml_last_successful_verify_timestamp_seconds",
                               "Newest verification time of a snapshot of the store whose last "
                               "verification passed, Unix seconds.", labels=["store"], unit="seconds")
    for store, ts in sorted(snap.last_verify.items()):
        verify.add_metric([store], ts)
    yield verify

    alerts = GaugeMetricFamily("aml_open_alerts", "Open (unresolved) health alerts by severity.",
                               labels=["store", "severity"])
    for (store, severity), n in sorted(snap.open_alerts.items()):
        alerts.add_metric([store, severity], n)
    yield alerts

    durations = HistogramMetricFamily(
        "aml_task_duration_seconds",
        f"Duration of the task runs finished in the last {DURATION_WINDOW_S / 3600:g} h, seconds.",
        labels=["operation", "status"], unit="seconds")
    for (operation, status), hist in sorted(snap.durations.items()):
        buckets = [(floatToGoString(bound), float(n)) for bound, n in zip(DURATION_BUCKETS_S, hist.cumulative,
                                                                          strict=True)]
        buckets.append(("+Inf", float(hist.count)))
        durations.add_metric([operation, status], buckets, hist.sum_s)
    yield durations

    runs = GaugeMetricFamily("aml_task_runs", "Finished task runs (terminal status) in the catalog; a gauge, "
                             "not a counter: catalog retention deletes old runs.", labels=["operation", "status"])
    for (operation, status), n in sorted(snap.runs_total.items()):
        runs.add_metric([operation, status], n)
    yield runs


class CatalogCollector:
    """prometheus_client custom collector reading aml's metrics from the catalog at each scrape.

    Args:
        url: SQLAlchemy URL of the catalog (``sqlite:///...``, ``postgresql://...``). Nothing is
            opened until the first scrape. A SQLite catalog that does not exist yet is created
            (empty) by :func:`workers.catalog.session_scope`.
        window_s: the duration histogram covers runs finished this many seconds before the scrape.
    """

    def __init__(self, url: str, *, window_s: float = DURATION_WINDOW_S) -> None:
        self.url = url
        self.window_s = window_s

    def collect(self) -> Iterator[Metric]:
        """Yield the ``aml_*`` families (see the module docstring), then ``aml_catalog_up``.

        Never raises: a failing catalog (unreachable, unmigrated, locked...) is logged and only
        ``aml_catalog_up 0`` is yielded.
        """
        from workers.catalog import session_scope

        try:
            with session_scope(self.url, write=False) as session:
                snap = _read(session, datetime.now(UTC), self.window_s)
        except Exception:
            log.exception("aml exporter: reading the catalog failed")
            up = 0.0
        else:
            up = 1.0
            yield from _families(snap)
        yield GaugeMetricFamily("aml_catalog_up", "1 when the last scrape read the catalog, 0 when it failed.",
                                value=up)

    def describe(self) -> list[Metric]:
        """No description: registering the collector must not query the catalog."""
        return []


def registry_for(url: str) -> CollectorRegistry:
    """A new registry holding only a :class:`CatalogCollector` on the catalog at ``url``.

    Returns:
        The :class:`~prometheus_client.CollectorRegistry` to pass to ``generate_latest`` or a server.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CatalogCollector(url))
    return registry


def serve(url: str, port: int, addr: str = "127.0.0.1") -> None:
    """Serve the catalog's metrics at ``http://addr:port/metrics`` until interrupted (blocks).

    Args:
        url: SQLAlchemy URL of the catalog.
        port: TCP port to listen on.
        addr: address to bind (default loopback only; ``0.0.0.0`` for every interface).
    """
    httpd, thread = start_http_server(port, addr=addr, registry=registry_for(url))
    try:
        thread.join()
    finally:
        httpd.shutdown()
        httpd.server_close()
