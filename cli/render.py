"""Human output of the CLI (rich) and its JSON output."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import msgspec
from rich.console import Console

if TYPE_CHECKING:
    from rich.table import Table

console = Console()
err_console = Console(stderr=True)

STATUS_STYLE = {"healthy": "green", "success": "green", "warning": "yellow", "critical": "red", "failure": "red",
                "skipped": "yellow", "info": "cyan", "error": "red"}


def new_table(**options: Any) -> Table:
    """A :class:`rich.table.Table` with a bold header; ``options`` go to its constructor (``title=``...).

    ``rich.table`` is imported here, by the first table a command prints: a command whose output is ``--json``
    never imports it (about 20 ms of a one-shot command's start-up)."""
    from rich.table import Table

    return Table(**{"header_style": "bold", **options})


def json_text(data: Any) -> str:
    """``data`` as indented JSON text (two spaces, keys in their order, a final newline), non-ASCII as is.

    Encoded by msgspec (C; a large plan's JSON took ``json.dumps(indent=2)``'s pure-Python encoder 0.2 s):
    floats in its shortest notation, non-finite floats as ``null`` (valid JSON, unlike ``NaN``), a ``datetime``
    as RFC 3339 text, other objects as ``str()``. A string holding a lone surrogate (no UTF-8 form) is written
    by ``json.dumps`` instead, as a ``\\udcXX`` escape.
    """
    try:
        return msgspec.json.format(_ENCODER.encode(data), indent=2).decode("utf-8") + "\n"
    except UnicodeEncodeError:
        return json.dumps(data, indent=2, default=str) + "\n"


_ENCODER = msgspec.json.Encoder(enc_hook=str)


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout (machine-readable; pipe it to ``jq``): :func:`json_text`."""
    sys.stdout.write(json_text(data))


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
                  f"over {perf['lookups']}{' (through the index)' if perf.get('probe') == 'index' else ''}; "
                  f"cache hit rate "
                  f"{'n/a (no query traffic)' if rate is None else f'{rate:.0%}'}")
    table = new_table()
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
    render_remediation(report.get("remediation"))


def render_alerts(alerts: list[dict[str, Any]]) -> None:
    """Print alerts as a table."""
    if not alerts:
        console.print("no alerts")
        return
    table = new_table()
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
    table = new_table()
    for col in ("metric", "subject", "latest", "unit", "points", "at"):
        table.add_column(col)
    for key in sorted(latest):
        s = latest[key]
        table.add_row(key[0], key[1] or "-", f"{s['value']:,.6g}", s["unit"], str(points[key]), s["time"])
    console.print(table)


DECISION_LABEL = {"would_run": "would run", "run": "started", "skipped": "skipped", "refused": "refused",
                  "off": "rule off"}


def render_remediation(section: dict[str, Any] | None) -> None:
    """Print the report's ``remediation`` section: the mode, each decision (rule, actions, status, why), the
    chain closed by this run and what was started."""
    if not section or section.get("mode") in (None, "off"):
        return
    if section.get("error"):
        console.print(f"  remediation: [red]policy error[/] {section['error']} (health itself completed)")
        return
    closed = section.get("closed")
    if closed:
        res = closed.get("result") or {}
        console.print(f"  remediation #{closed['id']} ({closed['rule']}) closed: {styled(closed['status'])}; effect "
                      f"{res.get('effect')}, measure {_measure(res.get('measure_before'))} -> "
                      f"{_measure(res.get('measure_after'))}"
                      + ("" if res.get("still_fires", True) else " (the rule no longer fires)"))
    for item in section.get("reconciled") or []:
        console.print(f"  remediation #{item['remediation_id']} ({item['rule']}) finished as failure: {item['reason']}")
    decisions = section.get("decisions") or []
    if not decisions:
        return
    listing = "" if section.get("acting") else (" (listed only: AML_REMEDIATE=on and --remediate run it)"
                                                if section["mode"] == "on" else " (AML_REMEDIATE=dry-run)")
    console.print(f"  remediation{listing}:")
    for d in decisions:
        actions = " -> ".join(a["summary"] for a in d["actions"]) or "-"
        label = DECISION_LABEL.get(d["status"], d["status"])
        console.print(f"    [bold]{d['rule']}[/]: {styled(label) if d['status'] != 'would_run' else label} "
                      f"{actions}")
        console.print(f"      why: {d['why']}")


def _measure(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "-"


def render_remediations(items: list[dict[str, Any]]) -> None:
    """Print remediation rows as a table: when, rule, status, effect, measure before/after, alert after, why."""
    if not items:
        console.print("no remediation recorded (AML_REMEDIATE=on records them)")
        return
    table = new_table()
    for col in ("id", "created", "rule", "status", "effect", "measure", "alert after", "why"):
        table.add_column(col, overflow="fold")
    for r in items:
        res = r.get("result") or {}
        after = r.get("alert_after") or {}
        alert = "-" if not after else ("open " + str(after.get("severity")) if after.get("open") else "resolved")
        measure = _measure(res.get("measure_before"))
        if "measure_after" in res:
            measure += " -> " + _measure(res["measure_after"]) + ("" if res.get("still_fires", True) else " (cleared)")
        table.add_row(str(r["id"]), r["created_at"], r["rule"], styled(r["status"]), str(res.get("effect", "-")),
                      measure, alert, r["reason"])
    console.print(table)
