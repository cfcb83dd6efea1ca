"""Options and helpers shared by the CLI's store commands."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from celery import Task

from workers.dispatch import Outcome, execute
from workers.render import err_console, print_json

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
EnqueueOpt = Annotated[bool, typer.Option("--enqueue", help="Send the task to the workers (Redis broker).")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="With --enqueue: wait for the result and print it.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="With --wait: seconds to wait.")]


def store_of(ctx: typer.Context) -> str:
    """The memory path given before the command (``aml <memory_path> ...``)."""
    obj = ctx.find_root().obj or {}
    store = obj.get("store")
    if not store:
        raise typer.BadParameter("no memory path given: aml <memory_path> COMMAND")
    return str(store)


def run_task(task: Task, kwargs: dict[str, Any], *, enqueue: bool, wait: bool, timeout: float,
             as_json: bool) -> dict[str, Any] | None:
    """Run ``task`` inline or enqueue it; print the task id when queued without waiting.

    Returns:
        The result dict, or ``None`` when the task was queued and not waited for.

    Raises:
        typer.Exit: code 2 when the task raised (its error is printed).
    """
    try:
        outcome: Outcome = execute(task, kwargs, enqueue=enqueue, wait=wait, timeout=timeout)
    except Exception as exc:  # the task's own error: report it, exit non-zero
        err_console.print(f"[red]error[/]: {task.name} failed: {exc}")
        raise typer.Exit(2) from exc
    if outcome.result is None:
        if as_json:
            print_json({"task_id": outcome.task_id, "task": task.name, "queued": True})
        else:
            err_console.print(f"queued {task.name} as task {outcome.task_id}")
        return None
    return outcome.result
