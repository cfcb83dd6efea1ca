"""The TinyTroupe seed's ``MemoryVisualizer``: chart data, an HTML report, JSON export and ASCII charts of what a
:class:`aml.agent.monitor.MemoryMonitor` recorded.

::

    viz = MemoryVisualizer(monitor)
    timeline = viz.prepare_memory_timeline_data("Alice")
    print(viz.print_ascii_chart("Alice", metric="memory_size"))
    viz.generate_html_report("Alice", path="memory_report.html")   # also returns the page
    viz.export_data_json(path="memory_data.json")                 # every agent; also returns the JSON

The HTML page is one self-contained file: inline SVG charts drawn by :func:`aml.health.report_html.svg_chart`
(the health report's), no script, font or image from the network. Files are written atomically
(:func:`aml.store.atomic.atomic_write`).
"""

from __future__ import annotations

import html
import json
import os
from datetime import UTC, datetime
from typing import Any

from aml.agent.monitor import MemoryMonitor
from aml.health.report_html import CSS, svg_chart
from aml.store.atomic import atomic_write

__all__ = ["METRICS", "MemoryVisualizer"]

METRICS = {
    "memory_size": "items",
    "bytes": "bytes",
    "usage_ratio": "ratio",
    "growth_rate": "ratio",
}
"""Snapshot metrics a chart can show, with their units; any memory kind of the agent (``episodic_memory``,
``messages`` ...) can be charted too (items)."""

_COLORS = ("#0969da", "#8250df", "#1a7f37", "#bc4c00", "#cf222e", "#6e7781")
_BLOCKS = " ▁▂▃▄▅▆▇█"

PathArg = str | os.PathLike[str]


def _e(value: object) -> str:
    return html.escape(str(value))


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


class MemoryVisualizer:
    """Charts and exports of a monitor's snapshots and alerts.

    Args:
        monitor: the :class:`~aml.agent.monitor.MemoryMonitor` to read (read at each call: the charts show the
            snapshots recorded so far).
    """

    def __init__(self, monitor: MemoryMonitor) -> None:
        self.monitor = monitor

    # ------------------------------------------------------------------------------- data

    def prepare_memory_timeline_data(self, agent_name: str) -> dict[str, Any]:
        """One agent's time series, one value per snapshot (oldest first).

        Returns:
            ``agent_name``, ``shape``, ``timestamps`` (ISO UTC), ``memory_size`` (items), ``bytes``,
            ``usage_ratio`` (``None`` without a limit), ``growth_rate`` (fraction per snapshot, ``None`` for the
            first), ``counts`` (kind -> items per snapshot), ``limit`` (items, newest), ``alerts`` (their dicts
            without the stats: ``timestamp``, ``alert_type``, ``severity``, ``message``).

        Raises:
            KeyError: the agent is not tracked.
        """
        snaps = self.monitor.get_snapshots(agent_name)
        kinds: list[str] = []
        for s in snaps:
            kinds.extend(k for k in s["counts"] if k not in kinds)
        return {
            "agent_name": agent_name,
            "shape": self.monitor.get_agent_stats(agent_name)["shape"],
            "timestamps": [s["timestamp"] for s in snaps],
            "memory_size": [s["memory_size"] for s in snaps],
            "bytes": [s["bytes"] for s in snaps],
            "usage_ratio": [s["usage_ratio"] for s in snaps],
            "growth_rate": [s["growth_rate"] for s in snaps],
            "counts": {k: [s["counts"].get(k, 0) for s in snaps] for k in kinds},
            "limit": snaps[-1]["limit"] if snaps else None,
            "alerts": [{k: v for k, v in a.to_dict().items() if k != "memory_stats"}
                       for a in self.monitor.get_alerts(agent_name)],
        }

    def prepare_consolidation_data(self, agent_name: str) -> dict[str, Any]:
        """One agent's consolidation history (TinyTroupe: episodes committed from the episodic buffer).

        Returns:
            ``agent_name``, ``supported`` (``False`` for an agent without an episodic buffer, e.g. Aitor: the
            lists are then empty), ``timestamps``, ``buffer_size`` and ``committed`` (items per snapshot),
            ``events`` (one per snapshot where an episode was committed: ``timestamp``, ``committed_delta``
            items, ``buffer_size``), ``total_consolidations``, ``metrics`` (the agent's own
            ``get_consolidation_metrics()`` per snapshot, where it has one).

        Raises:
            KeyError: the agent is not tracked.
        """
        snaps = [s for s in self.monitor.get_snapshots(agent_name) if s["consolidation"] is not None]
        events = [{"timestamp": s["timestamp"], "committed_delta": s["consolidation"]["committed_delta"],
                   "buffer_size": s["consolidation"]["buffer_size"]} for s in snaps if s["consolidation"]["event"]]
        return {
            "agent_name": agent_name,
            "supported": bool(snaps),
            "timestamps": [s["timestamp"] for s in snaps],
            "buffer_size": [s["consolidation"]["buffer_size"] for s in snaps],
            "committed": [s["consolidation"]["committed"] for s in snaps],
            "events": events,
            "total_consolidations": len(events),
            "metrics": [{"timestamp": s["timestamp"], **s["consolidation"]["metrics"]}
                        for s in snaps if s["consolidation"].get("metrics")],
        }

    def _agents(self, agent_name: str | None) -> list[str]:
        if agent_name is None:
            return self.monitor.agents
        self.monitor.get_agent_stats(agent_name)  # KeyError for an agent not tracked
        return [agent_name]

    def export_data(self, agent_name: str | None = None) -> dict[str, Any]:
        """Everything the JSON export holds, as a dict (see :meth:`export_data_json`)."""
        agents = {}
        for name in self._agents(agent_name):
            stats = self.monitor.get_agent_stats(name)
            stats.pop("current", None)
            agents[name] = {"stats": stats, "timeline": self.prepare_memory_timeline_data(name),
                            "consolidation": self.prepare_consolidation_data(name)}
        return {"generated_at": datetime.now(UTC).isoformat(), "store": self.monitor.store,
                "thresholds": {"alert_threshold": self.monitor.alert_threshold,
                               "critical_threshold": self.monitor.critical_threshold,
                               "growth_rate_threshold": self.monitor.growth_rate_threshold,
                               "consolidation_frequency_threshold": self.monitor.consolidation_frequency_threshold},
                "agents": agents}

    def export_data_json(self, agent_name: str | PathArg | None = None, path: PathArg | None = None) -> str:
        """The monitor's data as JSON (for Jupyter, Plotly ...): per agent its ``stats``, ``timeline``
        (:meth:`prepare_memory_timeline_data`) and ``consolidation`` (:meth:`prepare_consolidation_data`).

        Args:
            agent_name: one agent (default: every tracked agent). A ``Path`` here is taken as ``path``.
            path: also write the JSON there, atomically (the directory must exist).

        Returns:
            The JSON text (UTF-8 when written; indented by 2).
        """
        agent_name, path = _split(agent_name, path)
        text = json.dumps(self.export_data(agent_name), indent=2, ensure_ascii=False, default=str)
        if path is not None:
            atomic_write(path, text.encode("utf-8"))
        return text

    # ------------------------------------------------------------------------------- HTML

    def generate_html_report(self, agent_name: str | PathArg | None = None, path: PathArg | None = None) -> str:
        """A self-contained HTML page: per agent its statistics, SVG charts of items, bytes, usage ratio, items
        per kind and the episodic buffer, and its alerts. No external URL, script or font.

        Args:
            agent_name: one agent (default: every tracked agent). A ``Path`` here is taken as ``path``.
            path: also write the page there, atomically (the directory must exist).

        Returns:
            The HTML document.
        """
        agent_name, path = _split(agent_name, path)
        names = self._agents(agent_name)
        sections = "".join(self._agent_section(n) for n in names) or "<p>No agent tracked.</p>"
        title = f"aml agent memory: {', '.join(names) or 'no agents'}"
        page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<style>{CSS}</style></head><body>
<h1>{_e(title)}</h1>
<p>Store <code>{_e(self.monitor.store)}</code>; generated {_e(datetime.now(UTC).isoformat(timespec='seconds'))}.
Alerts at usage {self.monitor.alert_threshold:.0%} (critical {self.monitor.critical_threshold:.0%}), growth above
{self.monitor.growth_rate_threshold:.0%} per snapshot.</p>
{sections}
</body></html>
"""
        if path is not None:
            atomic_write(path, page.encode("utf-8"))
        return page

    def _agent_section(self, name: str) -> str:
        stats = self.monitor.get_agent_stats(name)
        tl = self.prepare_memory_timeline_data(name)
        cons = self.prepare_consolidation_data(name)
        times = [_time(t) for t in tl["timestamps"]]

        def series(values: list[Any]) -> list[tuple[datetime, float]]:
            return [(t, float(v)) for t, v in zip(times, values, strict=True) if v is not None]

        charts: list[tuple[str, str, list[tuple[datetime, float]]]] = [
            ("memory size", "items", series(tl["memory_size"])), ("bytes", "bytes", series(tl["bytes"]))]
        if any(v is not None for v in tl["usage_ratio"]):
            charts.append(("usage ratio", "ratio", series(tl["usage_ratio"])))
        charts += [(kind, "items", series(values)) for kind, values in tl["counts"].items() if any(values)]
        if cons["supported"]:
            ctimes = [_time(t) for t in cons["timestamps"]]
            charts.append(("episodic buffer", "items",
                           [(t, float(v)) for t, v in zip(ctimes, cons["buffer_size"], strict=True)]))
        chart_html = "".join(
            f"<div class='chart'><b>{_e(title)}</b> <small>{_e(unit)}, {len(points)} snapshots</small>"
            f"{svg_chart(points, unit=unit, color=_COLORS[i % len(_COLORS)])}</div>"
            for i, (title, unit, points) in enumerate(charts))
        ratio = "-" if stats["usage_ratio"] is None else f"{stats['usage_ratio']:.1%}"
        rows = [("shape", stats["shape"]), ("snapshots", stats["snapshots"]),
                ("items (newest)", f"{stats['memory_size']:,}"), ("bytes (newest)", f"{stats['bytes']:,}"),
                ("limit", stats["limit"] if stats["limit"] is not None else "none known"), ("usage ratio", ratio),
                ("trend", stats["memory_trend"]), ("average growth", f"{stats['average_growth_rate']:+.1%}"),
                ("alerts", stats["total_alerts"])]
        if cons["supported"]:
            rows.append(("consolidations", cons["total_consolidations"]))
        table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
        alerts = "".join(
            f"<tr><td>{_e(a['timestamp'])}</td><td class='{_e(a['severity'])}'>{_e(a['severity'])}</td>"
            f"<td>{_e(a['alert_type'])}</td><td>{_e(a['message'])}</td></tr>" for a in tl["alerts"])
        alerts_html = ("<table><tr><th>time</th><th>severity</th><th>type</th><th>message</th></tr>"
                       f"{alerts}</table>") if alerts else "<p>No alerts.</p>"
        return (f"<h2>{_e(name)}</h2><table>{table}</table>"
                f"<div class='charts'>{chart_html}</div><h3>Alerts</h3>{alerts_html}")

    # ------------------------------------------------------------------------------- console

    def print_ascii_chart(self, agent_name: str, metric: str = "memory_size", *, width: int = 60,
                          height: int = 8) -> str:
        """A console chart of one metric over the snapshots (the seed prints what this returns).

        Args:
            agent_name: a tracked agent.
            metric: one of :data:`METRICS` (``memory_size`` items, ``bytes``, ``usage_ratio``, ``growth_rate``)
                or a memory kind of the agent (``episodic_memory``, ``messages`` ...).
            width: at most this many columns (snapshots beyond it are averaged into columns).
            height: rows of the chart.

        Returns:
            The chart as text (a title line, ``height`` rows with the max/min values on the axis, a footer).

        Raises:
            KeyError: the agent is not tracked.
            ValueError: an unknown metric (the message lists the known ones).
        """
        tl = self.prepare_memory_timeline_data(agent_name)
        if metric in METRICS:
            raw, unit = tl[metric], METRICS[metric]
        elif metric in tl["counts"]:
            raw, unit = tl["counts"][metric], "items"
        else:
            raise ValueError(f"unknown metric {metric!r}: one of {', '.join([*METRICS, *tl['counts']])}")
        values = [float(v) for v in raw if v is not None]
        title = f"{agent_name}: {metric} ({unit}), {len(values)} snapshots"
        if not values:
            return f"{title}\n(no data)"
        columns = _resample(values, max(1, width))
        lo, hi = min(columns), max(columns)
        span = (hi - lo) or 1.0
        levels = [(v - lo) / span * height if hi > lo else height / 2 for v in columns]
        label_w = max(len(f"{hi:,.4g}"), len(f"{lo:,.4g}"))
        rows = []
        for row in range(height, 0, -1):
            cells = []
            for level in levels:
                fill = level - (row - 1)
                cells.append("█" if fill >= 1 else _BLOCKS[max(0, int(fill * 8))] if fill > 0 else " ")
            label = f"{hi:,.4g}" if row == height else f"{lo:,.4g}" if row == 1 else ""
            rows.append(f"{label:>{label_w}} |{''.join(cells)}")
        footer = f"{'':>{label_w}} +{'-' * len(columns)}"
        times = tl["timestamps"]
        return "\n".join([title, *rows, footer, f"{'':>{label_w}}  {times[0]} .. {times[-1]}"])


def _resample(values: list[float], width: int) -> list[float]:
    if len(values) <= width:
        return values
    out = []
    for i in range(width):
        chunk = values[i * len(values) // width:(i + 1) * len(values) // width] or [values[-1]]
        out.append(sum(chunk) / len(chunk))
    return out


def _split(agent_name: str | PathArg | None, path: PathArg | None) -> tuple[str | None, PathArg | None]:
    """Accept ``f(path)`` as well as ``f(agent_name, path=...)``: a ``PathLike`` first argument is the path."""
    if agent_name is not None and not isinstance(agent_name, str):
        if path is not None:
            raise TypeError("give the path once: either as the first argument or as path=")
        return None, agent_name
    return agent_name, path

