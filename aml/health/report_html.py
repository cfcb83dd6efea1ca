"""A self-contained HTML health report: tables plus SVG charts of the time series.

No scripts, fonts or images from the network: the file opens anywhere, offline. Charts are inline
SVG polylines drawn here (a handful of lines, not a charting library, so the page stays one file).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

Series = Sequence[tuple[datetime, float]]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222;max-width:70em}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f4f4f4}.healthy,.ok{color:#1a7f37}.warning{color:#9a6700}.critical,.error{color:#cf222e}
.charts{display:flex;flex-wrap:wrap;gap:1em}.chart{border:1px solid #ddd;padding:.5em}
.chart svg{display:block}small{color:#666}
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def svg_chart(points: Series, *, width: int = 320, height: int = 120, unit: str = "",
              color: str = "#0969da") -> str:
    """An SVG line chart of ``points`` (time, value), with min/max labels.

    Args:
        points: samples in time order.
        width, height: size in CSS pixels.
        unit: shown after the min/max values.
        color: the line's CSS colour.

    Returns:
        An ``<svg>`` element as a string (empty chart text for fewer than one point).
    """
    if not points:
        return f'<svg width="{width}" height="{height}"><text x="8" y="20">no samples</text></svg>'
    xs = [p[0].timestamp() for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    pad = 18
    span_x = (x1 - x0) or 1.0
    span_y = (y1 - y0) or 1.0

    def sx(x: float) -> float:
        return pad + (x - x0) / span_x * (width - 2 * pad)

    def sy(y: float) -> float:
        return height - pad - (y - y0) / span_y * (height - 2 * pad)

    coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys, strict=True))
    dots = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2"/>' for x, y in zip(xs, ys, strict=True))
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
        f'<polyline fill="none" stroke="{_e(color)}" stroke-width="1.5" points="{coords}"/>'
        f'<g fill="{_e(color)}">{dots}</g>'
        f'<text x="2" y="12" font-size="10">max {y1:,.4g} {_e(unit)}</text>'
        f'<text x="2" y="{height - 2}" font-size="10">min {y0:,.4g} {_e(unit)}</text></svg>'
    )


def render_html(report: Mapping[str, Any], series: Mapping[str, tuple[str, Series]]) -> str:
    """Render a health report and its time series as one HTML page.

    Args:
        report: the JSON report of :meth:`aml.health.monitor.HealthRun.report`.
        series: chart title -> (unit, points), e.g. ``{"store_bytes": ("bytes", [...])}``.

    Returns:
        The complete HTML document (UTF-8 text).
    """
    mem = report["memory"]
    status = report["status"]
    rows = "".join(
        f"<tr><td>{_e(r['check'])}</td><td>{_e(r['agent'] or '-')}</td>"
        f"<td class='{'ok' if r['passed'] else _e(r['severity'])}'>{'ok' if r['passed'] else _e(r['severity'])}</td>"
        f"<td>{_e(r['message'])}</td></tr>"
        for r in report["results"]
    )
    agents = "".join(
        f"<tr><td>{_e(name)}</td><td>{a.get('size_bytes', 0):,}</td><td>{a.get('patterns', 0)}</td>"
        f"<td>{a.get('solutions', 0)}</td><td>{a.get('decisions', 0)}</td></tr>"
        for name, a in report["agents"].items()
    )
    alerts = "".join(
        f"<tr><td class='{_e(a['severity'])}'>{_e(a['severity'])}</td><td>{_e(a['agent'] or '-')}</td>"
        f"<td>{_e(a['check'])}</td><td>{a['count']}</td><td>{_e(a['first_seen'])}</td><td>{_e(a['message'])}</td></tr>"
        for a in report["alerts"].get("open", [])
    )
    remediation = report.get("remediation") or {}
    decisions = "".join(
        f"<tr><td>{_e(d['rule'])}</td><td>{_e(d['status'])}</td>"
        f"<td>{_e(' -> '.join(a['summary'] for a in d['actions']) or '-')}</td><td>{_e(d['why'])}</td></tr>"
        for d in remediation.get("decisions") or []
    )
    remedy = (f"<h2>Remediation ({_e(remediation.get('mode', 'off'))})</h2>"
              + (f"<p class='error'>policy error: {_e(remediation['error'])}</p>" if remediation.get("error") else "")
              + (f"<table><tr><th>rule</th><th>decision</th><th>actions</th><th>why</th></tr>{decisions}</table>"
                 if decisions else "<p>nothing to do</p>")) if remediation.get("mode", "off") != "off" else ""
    charts = "".join(
        f"<div class='chart'><b>{_e(title)}</b> <small>{_e(unit)}, {len(points)} samples</small>"
        f"{svg_chart(points, unit=unit)}</div>"
        for title, (unit, points) in series.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>aml health: {_e(report['store'])}</title>
<style>{CSS}</style></head><body>
<h1>aml health: {_e(report['store'])}</h1>
<p>Status <b class="{_e(status)}">{_e(status)}</b> at {_e(report['timestamp'])};
{report['health_checks']['passed']}/{report['health_checks']['total']} checks passed.
Memory {mem['total_mb']:.2f} MiB in {mem['agents']} agents: {mem['patterns']} patterns, {mem['solutions']}
solutions, {mem['decisions']} decisions.</p>
<h2>Checks</h2><table><tr><th>check</th><th>agent</th><th>result</th><th>message</th></tr>{rows}</table>
<h2>Agents</h2><table><tr><th>agent</th><th>bytes</th><th>patterns</th><th>solutions</th><th>decisions</th></tr>
{agents}</table>
<h2>Open alerts ({report['alerts']['active']})</h2>
<table><tr><th>severity</th><th>agent</th><th>check</th><th>count</th><th>first seen</th><th>message</th></tr>
{alerts}</table>
{remedy}
<h2>Time series</h2><div class="charts">{charts}</div>
</body></html>
"""
