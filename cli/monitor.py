"""``aml <memory_path> monitor health|metrics|alerts|report``: the seeds' monitoring commands."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from aml.health.report_html import render_html
from aml.store.atomic import atomic_write
from cli.common import EnqueueOpt, JsonOpt, TimeoutOpt, WaitOpt, run_task, store_of
from cli.lazy import lazy_module
from cli.render import (
    console,
    err_console,
    json_text,
    print_json,
    render_alerts,
    render_health,
    render_metrics,
    render_remediations,
    styled,
)

health_tasks = lazy_module("tasks.health")

monitor_app = typer.Typer(help="Health checks, alerts, metrics and reports.", no_args_is_help=True)


@monitor_app.command("health")
def health(
    ctx: typer.Context,
    as_json: JsonOpt = False,
    enqueue: EnqueueOpt = False,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 600.0,
    lookups: Annotated[int, typer.Option(help="Record lookups timed by the performance check.")] = 50,
    remediate: Annotated[bool, typer.Option("--remediate", help="Run what the decision matrix calls for, here "
                                            "(AML_REMEDIATE=on; with dry-run it only lists).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --remediate: list what would run and why; "
                                          "run nothing.")] = False,
) -> None:
    """Run the health checks; raise/resolve alerts; record metrics; list (or, with --remediate, run) what the
    seeds' decision matrix calls for. Exit 0 healthy, 1 warning, 2 critical (of the last health run)."""
    from workers.app import get_settings

    if dry_run and not remediate:
        raise typer.BadParameter("--dry-run goes with --remediate")
    mode = get_settings().remediate
    if remediate and not dry_run and mode != "on":
        err_console.print(f"remediation is {mode} (AML_REMEDIATE={mode}): listing what would run; set "
                          "AML_REMEDIATE=on to run it")
    # only --remediate acts (a health run on a worker otherwise would, with AML_REMEDIATE=on: beat's runs do)
    kwargs: dict[str, Any] = {"store": store_of(ctx), "lookup_sample": lookups, "remediate": remediate and not dry_run}
    result = run_task(health_tasks.check, kwargs, enqueue=enqueue, wait=wait, timeout=timeout, as_json=as_json)
    if result is None:
        return
    report = result["report"]
    run = result.get("remediation_run")
    final = report
    if as_json:
        print_json({**report, "remediation_run": run} if run else report)
    else:
        render_health(report)
    while run and not run.get("enqueued") and run.get("closing"):  # inline chains: each closing health run
        for step in run.get("steps", []):
            if not as_json:
                console.print(f"  step {step['action']} (task {step['task_id']}): {styled(step['status'])}"
                              + (f": {step['error']}" if step.get("error") else ""))
        final = run["closing"]["report"]
        if not as_json:
            console.print("[bold]after remediation:[/]")
            render_health(final)
        run = run["closing"].get("remediation_run")
    if run and run.get("enqueued") and not as_json:
        console.print(f"  remediation chain enqueued: {', '.join(run['task_ids'])}")
    if run and run.get("error") and not as_json:
        err_console.print(f"remediation failed: {run['error']}")
    raise typer.Exit(int(final["status_code"]))


CHART_METRICS = ("store_bytes", "store_records", "integrity_failures", "lookup_time", "query_time",
                 "health_duration")
"""Store-wide series charted by the HTML report (plus ``agent_bytes`` per agent)."""


def _series(samples: list[dict[str, Any]]) -> dict[str, tuple[str, list[tuple[datetime, float]]]]:
    out: dict[str, tuple[str, list[tuple[datetime, float]]]] = {}
    for s in samples:
        if s["name"] in CHART_METRICS and s["subject"] is None:
            title = s["name"]
        elif s["name"] == "agent_bytes":
            title = f"agent_bytes {s['subject']}"
        else:
            continue
        out.setdefault(title, (s["unit"], []))[1].append((datetime.fromisoformat(s["time"].replace("Z", "+00:00")),
                                                          float(s["value"])))
    return out


@monitor_app.command("report")
def report(
    ctx: typer.Context,
    as_json: JsonOpt = False,
    fmt: Annotated[str, typer.Option("--format", "-f", help="json, text or html.")] = "text",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the report to this file.")] = None,
    hours: Annotated[float, typer.Option(help="Time series window for the HTML charts, hours.")] = 24 * 30,
    enqueue: EnqueueOpt = False,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 600.0,
) -> None:
    """The seeds' monitoring report (`... monitor report --json | jq '.performance'`); --format html
    writes a self-contained page with charts of the recorded time series."""
    fmt = "json" if as_json else fmt
    if fmt not in ("json", "text", "html"):
        raise typer.BadParameter("--format must be json, text or html")
    store = store_of(ctx)
    result = run_task(health_tasks.check, {"store": store, "remediate": False}, enqueue=enqueue, wait=wait,
                      timeout=timeout, as_json=fmt == "json")
    if result is None:
        return
    data = result["report"]
    if fmt == "html":
        samples = run_task(health_tasks.metrics, {"store": store, "hours": hours}, enqueue=False, wait=False,
                           timeout=0, as_json=False)
        assert samples is not None
        page = render_html(data, _series(samples["samples"]))
        target = output or Path("aml-report.html")
        atomic_write(target, page.encode())
        console.print(f"wrote {target} ({len(page):,} bytes): status {data['status']}")
    elif fmt == "json":
        if output is not None:
            atomic_write(output, json_text(data).encode())
        print_json(data)
    else:
        if output is not None:
            atomic_write(output, json_text(data).encode())
        render_health(data)
    raise typer.Exit(int(data["status_code"]))


@monitor_app.command("alerts")
def alerts(
    ctx: typer.Context,
    as_json: JsonOpt = False,
    all_: Annotated[bool, typer.Option("--all", help="Include resolved alerts.")] = False,
    limit: Annotated[int, typer.Option(help="Maximum alerts listed.")] = 100,
) -> None:
    """List the store's alerts from the catalog (open ones by default)."""
    result = run_task(health_tasks.alerts, {"store": store_of(ctx), "include_resolved": all_, "limit": limit},
                      enqueue=False, wait=False, timeout=0, as_json=as_json)
    assert result is not None
    if as_json:
        print_json(result)
    else:
        render_alerts(result["alerts"])


@monitor_app.command("remediations")
def remediations(
    ctx: typer.Context,
    as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option(help="Maximum rows listed.")] = 50,
) -> None:
    """List what the decision matrix did on the store (AML_REMEDIATE=on), newest first: rule, outcome, why."""
    result = run_task(health_tasks.remediations, {"store": store_of(ctx), "limit": limit}, enqueue=False,
                      wait=False, timeout=0, as_json=as_json)
    assert result is not None
    if as_json:
        print_json(result)
    else:
        render_remediations(result["remediations"])


@monitor_app.command("metrics")
def metrics(
    ctx: typer.Context,
    as_json: JsonOpt = False,
    name: Annotated[str | None, typer.Option(help="Only this metric.")] = None,
    hours: Annotated[float, typer.Option(help="How far back, hours.")] = 24.0,
) -> None:
    """Show the recorded time series of the store (latest values; --json for every sample)."""
    result = run_task(health_tasks.metrics, {"store": store_of(ctx), "name": name, "hours": hours},
                      enqueue=False, wait=False, timeout=0, as_json=as_json)
    assert result is not None
    if as_json:
        print_json(result)
    elif not result["samples"]:
        console.print("no metric samples yet: run `monitor health` first")
    else:
        render_metrics(result["samples"])
