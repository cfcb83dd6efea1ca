"""Human output of the CLI (rich) and its JSON output."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)

STATUS_STYLE = {"healthy": "green", "success": "green", "warning": "yellow", "critical": "red", "failure": "red",
                "skipped": "yellow", "info": "cyan", "error": "red"}


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout (machine-readable; pipe it to ``jq``)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def styled(status: str) -> str:
    """``status`` wrapped in rich markup of its colour."""
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def render_health(report: dict[str, Any]) -> None:
    """Print a health report: status, memory, the checks, failures."""
    mem = report["memory"]
    console.print(f"[bold]{report['store']}[/] health: {styled(report['status'])}  "
                  f"({report['health_checks']['passed']}/{report['health_checks']['total']} checks passed)")
    console.print(f"  memory {mem['total_mb']:.2f} MiB in {mem['agents']} agents: {mem['patterns']} patterns, "
                  f"{mem['solutions']} solutions, {mem['decisions']} decisions; largest "
                  f"{mem['largest_agent']['name']} ({mem['largest_agent']['size_mb']:.2f} MiB)")
    perf = report["performance"]
    rate = perf["cache_hit_rate"]
    console.print(f"  lookups {perf['avg_query_time_ms']:.2f} ms mean, {perf['p95_query_time_ms']:.2f} ms p95 "
                  f"over {perf['lookups']}; cache hit rate "
                  f"{'n/a (no query traffic)' if rate is None else f'{rate:.0%}'}")
    table = Table(show_header=True, header_style="bold")
    for col in ("check", "agent", "result", "message"):
        table.add_column(col)
    for r in report["results"]:
        if r["passed"] and r["agent"]:
            continue
        table.add_row(r["check"], r["agent"] or "-", "ok" if r["passed"] else styled(r["severity"]), r["message"])
    console.print(table)
    alerts = report["alerts"]
    levels = ", ".join(f"{k} {v}" for k, v in alerts["by_level"].items() if v)
    console.print(f"  alerts open: {alerts['active']}" + (f" ({levels})" if levels else ""))


def render_alerts(alerts: list[dict[str, Any]]) -> None:
    """Print alerts as a table."""
    if not alerts:
        console.print("no alerts")
        return
    table = Table(show_header=True, header_style="bold")
    for col in ("severity", "store", "agent", "check", "count", "first seen", "last seen", "resolved", "message"):
        table.add_column(col, overflow="fold")
    for a in alerts:
        table.add_row(styled(a["severity"]), a["store"], a["agent"] or "-", a["check"], str(a["count"]),
                      a["first_seen"], a["last_seen"], a["resolved_at"] or "-", a["message"])
    console.print(table)


def render_metrics(samples: list[dict[str, Any]]) -> None:
    """Print the latest value of each (name, subject) series and how many points it has."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    points: dict[tuple[str, str], int] = {}
    for s in samples:
        key = (s["name"], s["subject"] or "")
        latest[key] = s
        points[key] = points.get(key, 0) + 1
    table = Table(show_header=True, header_style="bold")
    for col in ("metric", "subject", "latest", "unit", "points", "at"):
        table.add_column(col)
    for key in sorted(latest):
        s = latest[key]
        table.add_row(key[0], key[1] or "-", f"{s['value']:,.6g}", s["unit"], str(points[key]), s["time"])
    console.print(table)
