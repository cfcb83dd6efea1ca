"""The TinyTroupe seed's ``MemoryAlert`` and ``MemoryMonitor``, for agent processes (TinyTroupe or Aitor).

::

    from aml.agent.monitor import MemoryMonitor

    monitor = MemoryMonitor(alert_threshold=0.8)
    monitor.register_alert_callback(lambda alert: print(alert))
    monitor.track_agent(agent)            # a TinyPerson, an Aitor ReactAgent, or their JSON as a dict
    monitor.record_snapshot(agent)        # may raise alerts (each crossing once)
    stats = monitor.get_agent_stats(agent.name)     # stats["memory_trend"], stats["total_alerts"]
    print(monitor.generate_report(agent.name))

Alerts (``alert_type``):

* ``memory_threshold``: the usage ratio (memory used / the agent's limit, see
  :class:`aml.agent.shapes.MemoryMeasure`) reached ``alert_threshold`` (severity ``warning``) or
  ``critical_threshold`` (``critical``). An agent that exposes no limit never gets one.
* ``abnormal_growth``: the agent's items grew by more than ``growth_rate_threshold`` (a fraction) since the
  previous snapshot, and by at least ``growth_min_items``.
* ``consolidation_stalled``: TinyTroupe only: the episodic buffer grew in ``consolidation_frequency_threshold``
  snapshots in a row without an episode being committed to episodic memory.

Each alert fires once per crossing: a condition that starts and stays true fires once; it may fire again after
a snapshot where it was false (``memory_threshold`` also fires when it escalates from warning to critical).

Catalog: with ``catalog_url`` (or ``AML_CATALOG_URL``) every snapshot is recorded as metric samples (``agent_bytes``
per agent and ``records`` per ``<agent>/<kind>``, the health task's names, plus ``agent_usage_ratio``) and every
alert through ``observe_check`` with check ``monitor.<alert_type>`` (so one open alert per store + agent + check,
resolved when the condition clears), under the store id ``store`` (default ``agent://<host>/<program>``).
``aml <store> monitor alerts`` then lists them. SQLAlchemy is imported only then: importing this module
needs neither Celery nor the catalog. A catalog failure never reaches the agent: it is logged and kept in
``catalog_errors``; a URL that can never work (an in-memory SQLite database, an unknown dialect) turns recording
off at the first snapshot with one warning (``catalog_off``).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from aml.agent.shapes import MemoryMeasure, measure, with_limit
from aml.store.storeid import normalise_store_id

__all__ = ["AlertCallback", "MemoryAlert", "MemoryMonitor", "default_store_id"]

log = logging.getLogger("aml.agent.monitor")

Severity = Literal["info", "warning", "critical"]
AlertCallback = Callable[["MemoryAlert"], object]
Trend = Literal["increasing", "decreasing", "stable"]

ALERT_TYPES = ("memory_threshold", "abnormal_growth", "consolidation_stalled")
"""The alert types a monitor raises; the catalog check is ``monitor.<type>``."""

_RANK = {"info": 0, "warning": 1, "critical": 2}


def default_store_id() -> str:
    """``agent://<host>/<program>``: the store id an agent process records under when none is given
    (``<program>`` is the script's name without extension, ``python`` for an interactive session)."""
    program = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] not in ("", "-c", "-m") else "python"
    return f"agent://{socket.gethostname()}/{program or 'python'}"


@dataclass(frozen=True)
class MemoryAlert:
    """One memory alert (the TinyTroupe seed's).

    Attributes:
        timestamp: when it was raised (aware UTC).
        agent_name: the agent it is about.
        alert_type: one of :data:`ALERT_TYPES`.
        severity: ``info`` / ``warning`` / ``critical``.
        message: a sentence for people.
        memory_stats: the snapshot it was raised on (see :meth:`MemoryMonitor.record_snapshot`).
    """

    timestamp: datetime
    agent_name: str
    alert_type: str
    severity: Severity
    message: str
    memory_stats: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return (f"[{self.timestamp.isoformat()}] {self.severity.upper()} {self.agent_name} "
                f"{self.alert_type}: {self.message}")

    def to_dict(self) -> dict[str, Any]:
        """The alert as JSON-ready values (``timestamp`` as ISO 8601 UTC)."""
        return {"timestamp": self.timestamp.isoformat(), "agent_name": self.agent_name,
                "alert_type": self.alert_type, "severity": self.severity, "message": self.message,
                "memory_stats": dict(self.memory_stats)}


@dataclass
class _AgentState:
    shape: str
    limit: int | Mapping[str, int] | None
    snapshots: deque[dict[str, Any]]
    alerts: deque[MemoryAlert]
    total_alerts: int = 0
    alerts_by_severity: dict[str, int] = field(default_factory=dict)
    # crossing state: what is currently "on" (fired and not yet cleared)
    threshold_level: int = 0  # 0 below, 1 >= alert_threshold, 2 >= critical_threshold
    growing: bool = False
    stalled: bool = False
    buffer_growth_run: int = 0
    consolidations: int = 0
    peak_items: int = 0
    peak_bytes: int = 0


class MemoryMonitor:
    """Tracks agents' memory over snapshots, raises alerts, reports trends (the TinyTroupe seed's).

    Args:
        alert_threshold: usage ratio (memory used / the agent's limit) from which a ``warning``
            ``memory_threshold`` alert fires. Source: the seed (``MemoryMonitor(alert_threshold=0.8)``).
        growth_rate_threshold: growth of the agent's items between two snapshots, as a fraction of the earlier
            count, above which ``abnormal_growth`` fires (0.5 = +50 %). aml's default: the seed makes it
            configurable but gives no number.
        consolidation_frequency_threshold: snapshots in a row in which a TinyTroupe episodic buffer grew with no
            episode committed before ``consolidation_stalled`` fires. aml's default (10); the seed gives none.
            TinyTroupe 0.6.0 commits an episode every 15 events (``MAX_EPISODE_LENGTH``, DATA.md §3).
        critical_threshold: usage ratio from which the threshold alert is ``critical`` (aml's default 0.95).
        growth_min_items: the least growth, in items, that can be abnormal (aml's default 10: 2 -> 4 items is
            +100 % but no news).
        trend_window: the last snapshots :meth:`get_agent_stats` reads the trend from (aml's default 5).
        trend_tolerance: relative change of items over that window under which the trend is ``stable``
            (aml's default 0.05 = 5 %).
        max_snapshots: snapshots kept per agent (summaries only; older ones are dropped), default 1000.
        max_alerts: alerts kept per agent for :meth:`get_alerts` (``total_alerts`` counts all), default 1000.
        catalog_url: record snapshots and alerts in this aml catalog (SQLAlchemy URL). Default
            ``$AML_CATALOG_URL``; with neither the monitor works in memory only.
        store: the store id in the catalog (default :func:`default_store_id`); a path is resolved as aml's
            tasks do, so ``store="~/.loom/memory"`` puts the alerts beside that store's own.
    """

    def __init__(self, alert_threshold: float = 0.8, growth_rate_threshold: float = 0.5,
                 consolidation_frequency_threshold: int = 10, *, critical_threshold: float = 0.95,
                 growth_min_items: int = 10, trend_window: int = 5, trend_tolerance: float = 0.05,
                 max_snapshots: int = 1000, max_alerts: int = 1000, catalog_url: str | None = None,
                 store: str | None = None) -> None:
        if not 0 < alert_threshold <= critical_threshold:
            raise ValueError(f"need 0 < alert_threshold <= critical_threshold, not {alert_threshold}, "
                             f"{critical_threshold}")
        if growth_rate_threshold <= 0:
            raise ValueError(f"growth_rate_threshold must be a positive fraction, not {growth_rate_threshold}")
        if consolidation_frequency_threshold < 1 or trend_window < 2 or max_snapshots < 2 or max_alerts < 1:
            raise ValueError("consolidation_frequency_threshold, max_alerts >= 1 and trend_window, "
                             "max_snapshots >= 2 are required")
        self.alert_threshold = float(alert_threshold)
        self.growth_rate_threshold = float(growth_rate_threshold)
        self.consolidation_frequency_threshold = int(consolidation_frequency_threshold)
        self.critical_threshold = float(critical_threshold)
        self.growth_min_items = int(growth_min_items)
        self.trend_window = int(trend_window)
        self.trend_tolerance = float(trend_tolerance)
        self.max_snapshots = int(max_snapshots)
        self.max_alerts = int(max_alerts)
        self.catalog_url = catalog_url or os.environ.get("AML_CATALOG_URL") or None
        self.store = normalise_store_id(store) if store is not None else default_store_id()
        self.catalog_errors: deque[str] = deque(maxlen=100)
        """The last catalog failures (the monitor goes on in memory)."""
        self.catalog_off: str | None = None
        """Why snapshots are not recorded although a catalog URL is set: the URL can never work (checked once, at
        the first snapshot: see :meth:`_catalog_usable`); ``None`` while recording is on."""
        self._catalog_checked = False
        self._agents: dict[str, _AgentState] = {}
        self._callbacks: list[AlertCallback] = []
        self._lock = threading.RLock()

    # ------------------------------------------------------------------------------- tracking

    @property
    def agents(self) -> list[str]:
        """Names of the tracked agents, in tracking order."""
        with self._lock:
            return list(self._agents)

    def track_agent(self, agent: Any, *, name: str | None = None,
                    limit: int | Mapping[str, int] | None = None) -> str:
        """Start tracking ``agent`` (no snapshot yet; tracking again only updates ``limit``).

        Args:
            agent: a TinyTroupe agent, an Aitor agent or either's JSON dict (see :mod:`aml.agent.shapes`).
            name: track it under this name (default: the agent's own).
            limit: its cap when it exposes none: total items, or items per kind.

        Returns:
            The name it is tracked under.

        Raises:
            TypeError: ``agent`` has neither memory shape (the message names what is missing).
        """
        m = measure(agent, name=name, limit=limit)
        with self._lock:
            state = self._agents.get(m.name)
            if state is None:
                self._agents[m.name] = _AgentState(m.shape, limit, deque(maxlen=self.max_snapshots),
                                                   deque(maxlen=self.max_alerts))
            elif limit is not None:
                state.limit = limit
        return m.name

    def register_alert_callback(self, callback: AlertCallback) -> None:
        """Call ``callback(alert)`` for every new alert, in the thread that recorded the snapshot. An exception
        it raises is logged and the monitor goes on."""
        with self._lock:
            self._callbacks.append(callback)

    def record_snapshot(self, agent: Any, *, name: str | None = None,
                        timestamp: datetime | None = None) -> dict[str, Any]:
        """Measure ``agent`` now, keep the summary, raise the alerts it crosses (and record both in the catalog
        when one is configured). An agent not yet tracked is tracked first.

        Args:
            agent: as :meth:`track_agent`.
            name: the name it is tracked under, if not its own.
            timestamp: the snapshot's time (default now; naive times are taken as UTC).

        Returns:
            The snapshot: ``timestamp`` (ISO UTC), ``agent_name``, ``shape``, ``memory_size`` (items),
            ``counts`` (items per kind), ``bytes`` (compact JSON), ``limit`` / ``limits`` (items),
            ``usage_ratio``, ``growth_rate`` (fraction since the previous snapshot, ``None`` for the first or
            from zero), ``consolidation`` (TinyTroupe: ``buffer_size``, ``committed``, ``event``) and
            ``alerts`` (the types raised on it).

        Raises:
            TypeError: ``agent`` has neither memory shape.
        """
        at = (timestamp or datetime.now(UTC))
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        m = measure(agent, name=name)
        with self._lock:
            state = self._agents.get(m.name)
            if state is None:
                state = self._agents[m.name] = _AgentState(m.shape, None, deque(maxlen=self.max_snapshots),
                                                           deque(maxlen=self.max_alerts))
            if state.limit is not None:
                m = with_limit(m, state.limit)
            previous = state.snapshots[-1] if state.snapshots else None
            snap = self._summary(m, at, previous)
            alerts, resolved = self._evaluate(state, m, snap, previous, at)
            snap["alerts"] = [a.alert_type for a in alerts]
            state.snapshots.append(snap)
            state.peak_items = max(state.peak_items, m.items)
            state.peak_bytes = max(state.peak_bytes, m.bytes)
            for alert in alerts:
                state.alerts.append(alert)
                state.total_alerts += 1
                state.alerts_by_severity[alert.severity] = state.alerts_by_severity.get(alert.severity, 0) + 1
            callbacks = list(self._callbacks)
        if self.catalog_url and self._catalog_usable(at):
            self._record_catalog(snap, m, alerts, resolved, at)
        for alert in alerts:
            for callback in callbacks:
                try:
                    callback(alert)
                except Exception:  # a callback must not break the monitor (nor its agent)
                    log.exception("memory alert callback %r failed on %s", callback, alert)
        return snap

    @staticmethod
    def _summary(m: MemoryMeasure, at: datetime, previous: dict[str, Any] | None) -> dict[str, Any]:
        growth: float | None = None
        if previous is not None and previous["memory_size"] > 0:
            growth = (m.items - previous["memory_size"]) / previous["memory_size"]
        snap: dict[str, Any] = {
            "timestamp": at.isoformat(), "agent_name": m.name, "shape": m.shape, "memory_size": m.items,
            "counts": dict(m.counts), "bytes": m.bytes, "limit": m.limit, "limits": dict(m.limits),
            "usage_ratio": m.usage_ratio, "growth_rate": growth, "consolidation": None,
        }
        if m.consolidation is not None:
            c = dict(m.consolidation)
            before = (previous or {}).get("consolidation") or {}
            # an episode was committed since the previous snapshot: the committed episodic memory grew
            c["event"] = bool(before) and c["committed"] > before.get("committed", 0)
            c["committed_delta"] = c["committed"] - before.get("committed", c["committed"])
            snap["consolidation"] = c
        return snap

    def _evaluate(self, state: _AgentState, m: MemoryMeasure, snap: dict[str, Any],
                  previous: dict[str, Any] | None, at: datetime) -> tuple[list[MemoryAlert], list[str]]:
        """The alerts this snapshot raises and the alert types it clears (crossing rules in the module doc)."""
        alerts: list[MemoryAlert] = []
        cleared: list[str] = []

        def raise_(kind: str, severity: Severity, message: str) -> None:
            alerts.append(MemoryAlert(at, m.name, kind, severity, message, dict(snap)))

        # threshold crossings
        ratio = m.usage_ratio
        level = 0
        if ratio is not None:
            level = 2 if ratio >= self.critical_threshold else 1 if ratio >= self.alert_threshold else 0
        if level > state.threshold_level:
            assert ratio is not None
            limit_text = (", ".join(f"{k} {m.counts.get(k, 0)}/{v}" for k, v in m.limits.items())
                          if m.limits else f"{m.items}/{m.limit} items")
            bound = self.critical_threshold if level == 2 else self.alert_threshold
            raise_("memory_threshold", "critical" if level == 2 else "warning",
                   f"memory at {ratio:.0%} of its limit ({limit_text}), at or above {bound:.0%}")
        elif level == 0 and state.threshold_level > 0:
            cleared.append("memory_threshold")
        state.threshold_level = level

        # abnormal growth
        growth = snap["growth_rate"]
        grew = previous is not None and growth is not None and growth > self.growth_rate_threshold \
            and m.items - previous["memory_size"] >= self.growth_min_items
        if grew and not state.growing:
            assert previous is not None and growth is not None
            raise_("abnormal_growth", "warning",
                   f"memory grew {growth:+.0%} since the previous snapshot ({previous['memory_size']} -> "
                   f"{m.items} items), above {self.growth_rate_threshold:.0%}")
        elif not grew and state.growing and previous is not None:
            cleared.append("abnormal_growth")
        state.growing = bool(grew)

        # consolidation (TinyTroupe: episodes committed from the buffer)
        c = snap["consolidation"]
        if c is not None and previous is not None and previous.get("consolidation"):
            if c["event"]:
                state.consolidations += 1
                state.buffer_growth_run = 0
            elif c["buffer_size"] > previous["consolidation"]["buffer_size"]:
                state.buffer_growth_run += 1
            stalled = state.buffer_growth_run >= self.consolidation_frequency_threshold
            if stalled and not state.stalled:
                raise_("consolidation_stalled", "warning",
                       f"the episodic buffer grew in {state.buffer_growth_run} snapshots in a row to "
                       f"{c['buffer_size']} items with no episode committed")
            elif not stalled and state.stalled:
                cleared.append("consolidation_stalled")
            state.stalled = stalled
        return alerts, cleared

    # ------------------------------------------------------------------------------- catalog

    def _catalog_usable(self, at: datetime) -> bool:
        """Whether snapshots go to the catalog. Its URL is checked once, at the first snapshot: one that can never
        work (not a database URL, an unknown dialect or driver, an in-memory SQLite database, which aml refuses:
        :func:`workers.catalog.check_catalog_url`) turns recording off with one warning, kept in
        :attr:`catalog_errors` and :attr:`catalog_off`, instead of a failure at every snapshot. Any other failure
        (a database down or locked, a catalog behind its migrations) may pass: it is met snapshot by snapshot."""
        with self._lock:
            if not self._catalog_checked:
                self._catalog_checked = True
                try:  # parsing and the dialect's class only: nothing here may pass by itself
                    from workers.catalog import check_catalog_url  # lazy: SQLAlchemy only when a catalog is set

                    check_catalog_url(str(self.catalog_url)).get_dialect()
                except Exception as exc:  # ArgumentError (NoSuchModuleError too), CatalogError: never stops the agent
                    self.catalog_off = f"{type(exc).__name__}: {exc}"
                    self.catalog_errors.append(f"{at.isoformat()} {self.catalog_off}")
                    # the URL is not logged: it may hold a password
                    log.warning("memory snapshots are not recorded in the catalog (the monitor goes on in memory): %s",
                                self.catalog_off)
            return self.catalog_off is None

    def _record_catalog(self, snap: dict[str, Any], m: MemoryMeasure, alerts: list[MemoryAlert],
                        cleared: list[str], at: datetime) -> None:
        """Write the snapshot's samples and the alerts' raise/resolve to the catalog; failures are logged and
        kept in :attr:`catalog_errors`, never raised."""
        try:
            from models import queries  # lazy: SQLAlchemy only when a catalog is configured
            from workers.catalog import session_scope

            samples = [queries.Sample(self.store, "agent_bytes", float(m.bytes), "bytes", m.name, at)]
            samples += [queries.Sample(self.store, "records", float(n), "count", f"{m.name}/{kind}", at)
                        for kind, n in m.counts.items()]
            if m.usage_ratio is not None:
                samples.append(queries.Sample(self.store, "agent_usage_ratio", float(m.usage_ratio), "ratio",
                                              m.name, at))
            with session_scope(self.catalog_url) as session:
                queries.add_metric_samples(session, samples)
                for alert in alerts:
                    details = {k: v for k, v in alert.memory_stats.items() if k != "alerts"}
                    details["source"] = "aml.agent.monitor"
                    queries.observe_check(session, store=self.store, agent=alert.agent_name,
                                          check=f"monitor.{alert.alert_type}", passed=False,
                                          severity=alert.severity, message=alert.message, details=details, now=at)
                for kind in cleared:
                    queries.observe_check(session, store=self.store, agent=m.name, check=f"monitor.{kind}",
                                          passed=True, now=at)
        except Exception as exc:  # the catalog is a copy: its failure must not stop the agent
            message = f"{at.isoformat()} {type(exc).__name__}: {exc}"
            self.catalog_errors.append(message)
            log.warning("recording memory snapshot of %s in the catalog failed: %s", m.name, message)

    # ------------------------------------------------------------------------------- queries

    def _state(self, agent_name: str) -> _AgentState:
        state = self._agents.get(agent_name)
        if state is None:
            raise KeyError(f"agent {agent_name!r} is not tracked (tracked: {', '.join(self._agents) or 'none'})")
        return state

    def get_snapshots(self, agent_name: str) -> list[dict[str, Any]]:
        """The kept snapshots of an agent, oldest first (see :meth:`record_snapshot`).

        Raises:
            KeyError: the agent is not tracked.
        """
        with self._lock:
            return [dict(s) for s in self._state(agent_name).snapshots]

    def _trend(self, snaps: list[dict[str, Any]]) -> Trend:
        window = snaps[-self.trend_window:]
        if len(window) < 2:
            return "stable"
        first, last = window[0]["memory_size"], window[-1]["memory_size"]
        change = (last - first) / max(first, 1)
        if change > self.trend_tolerance:
            return "increasing"
        if change < -self.trend_tolerance:
            return "decreasing"
        return "stable"

    def get_agent_stats(self, agent_name: str) -> dict[str, Any]:
        """An agent's statistics.

        Returns:
            ``agent_name``, ``shape``, ``snapshots`` (count), ``first_snapshot`` / ``last_snapshot`` (ISO UTC),
            ``memory_size`` / ``bytes`` / ``usage_ratio`` / ``limit`` / ``counts`` (the newest snapshot; sizes in
            items and bytes), ``peak_memory_size`` (items), ``peak_bytes``, ``average_growth_rate`` (mean
            fraction per snapshot), ``memory_trend`` (``increasing`` / ``decreasing`` / ``stable`` over the last
            ``trend_window`` snapshots), ``total_alerts``, ``alerts_by_severity``, ``consolidations`` (episodes
            seen committed), ``current`` (the newest snapshot, or ``None``).

        Raises:
            KeyError: the agent is not tracked.
        """
        with self._lock:
            state = self._state(agent_name)
            snaps = list(state.snapshots)
            last = snaps[-1] if snaps else None
            rates = [s["growth_rate"] for s in snaps if s["growth_rate"] is not None]
            return {
                "agent_name": agent_name,
                "shape": state.shape,
                "snapshots": len(snaps),
                "first_snapshot": snaps[0]["timestamp"] if snaps else None,
                "last_snapshot": last["timestamp"] if last else None,
                "memory_size": last["memory_size"] if last else 0,
                "bytes": last["bytes"] if last else 0,
                "usage_ratio": last["usage_ratio"] if last else None,
                "limit": last["limit"] if last else None,
                "counts": dict(last["counts"]) if last else {},
                "peak_memory_size": state.peak_items,
                "peak_bytes": state.peak_bytes,
                "average_growth_rate": sum(rates) / len(rates) if rates else 0.0,
                "memory_trend": self._trend(snaps),
                "total_alerts": state.total_alerts,
                "alerts_by_severity": dict(state.alerts_by_severity),
                "consolidations": state.consolidations,
                "current": dict(last) if last else None,
            }

    def get_alerts(self, agent_name: str | None = None, severity: str | None = None) -> list[MemoryAlert]:
        """Kept alerts, oldest first: of one agent and/or one severity (``info``/``warning``/``critical``)."""
        with self._lock:
            names = [agent_name] if agent_name is not None else list(self._agents)
            out = [a for n in names if n in self._agents for a in self._agents[n].alerts
                   if severity is None or a.severity == severity]
        return sorted(out, key=lambda a: a.timestamp)

    def generate_report(self, agent_name: str) -> str:
        """A text report of one agent: newest snapshot, trend, growth, consolidation and its last alerts.

        Raises:
            KeyError: the agent is not tracked.
        """
        s = self.get_agent_stats(agent_name)
        lines = [f"Memory report: {agent_name} ({s['shape']})", "=" * 40]
        if not s["snapshots"]:
            lines.append("no snapshot yet: call record_snapshot(agent)")
            return "\n".join(lines)
        ratio = f"{s['usage_ratio']:.1%} of its limit ({s['limit']} items)" if s["usage_ratio"] is not None \
            else "no limit known"
        lines += [
            f"snapshots: {s['snapshots']} ({s['first_snapshot']} .. {s['last_snapshot']})",
            f"memory: {s['memory_size']:,} items, {s['bytes']:,} bytes; {ratio}",
            "by kind: " + ", ".join(f"{k} {v:,}" for k, v in s["counts"].items()),
            f"peak: {s['peak_memory_size']:,} items, {s['peak_bytes']:,} bytes",
            f"trend: {s['memory_trend']}; average growth {s['average_growth_rate']:+.1%} per snapshot",
        ]
        if s["shape"] == "tinytroupe":
            lines.append(f"consolidations seen: {s['consolidations']}")
        lines.append(f"alerts: {s['total_alerts']}"
                     + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(s["alerts_by_severity"].items())) + ")"
                        if s["alerts_by_severity"] else ""))
        lines.extend(f"  {a}" for a in self.get_alerts(agent_name)[-10:])
        return "\n".join(lines)
