"""Options and helpers shared by the CLI's store commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.markup import escape

from cli.render import err_console, print_json, styled

EXIT_UNAVAILABLE = 69
"""Exit code when a service aml needs does not answer (the lock Redis, or no worker consumes the queue):
``EX_UNAVAILABLE`` of BSD's sysexits.h, distinct from the health codes 0/1/2."""

EXIT_TEMPFAIL = 75
"""Exit code when ``--wait`` timed out (the task may still finish): ``EX_TEMPFAIL`` of sysexits.h."""

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


def run_task(task: Any, kwargs: dict[str, Any], *, enqueue: bool, wait: bool, timeout: float,
             as_json: bool) -> dict[str, Any] | None:
    """Run ``task`` (a :class:`tasks.registry.OperationTask`) inline or enqueue it; print the task id when
    queued without waiting.

    Returns:
        The result dict, or ``None`` when the task was queued and not waited for.

    Raises:
        typer.Exit: code 2 when the task raised (its error is printed); 69 (:data:`EXIT_UNAVAILABLE`) when
            the lock Redis does not answer or no worker consumes the queue; 75 when ``--wait`` timed out.
    """
    # imported here: the CLI's start-up (--help) pays for the catalog only when a command runs, and an inline
    # run never imports Celery (tasks.registry)
    from aml.gcpause import end_startup
    from workers.dispatch import NoConsumer, execute
    from workers.locks import LockUnavailable

    timeout_error: type[Exception] = _NeverRaised
    if enqueue:
        from celery.exceptions import TimeoutError as CeleryTimeoutError

        from workers.app import current_aml_app

        if hasattr(type(task), "celery_task"):
            task.celery_task()  # the aml tasks become Celery tasks (tasks.registry)
        current_aml_app()
        timeout_error = CeleryTimeoutError
        end_startup()  # nothing more to import; an inline run ends the start-up as its body begins (tasks.base)
    try:
        outcome = execute(task, kwargs, enqueue=enqueue, wait=wait, timeout=timeout)
    except (LockUnavailable, NoConsumer) as exc:  # a service aml needs is not there: nothing ran
        err_console.print(f"[red]refused[/]: {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    except timeout_error:
        err_console.print(f"[yellow]timed out[/]: {task.name} did not finish within {timeout:g} s; it is still "
                          "queued or running (see Flower, or `aml <store> monitor ...` later)", soft_wrap=True)
        raise typer.Exit(EXIT_TEMPFAIL) from None
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


class _NeverRaised(Exception):
    """Stands for Celery's ``TimeoutError`` in an inline run (which cannot time out, and imports no Celery)."""


def exit_if_skipped(result: dict[str, Any], command: str, as_json: bool) -> None:
    """Report a task that did not run because the store was locked, then exit 2.

    :func:`tasks.base.run_operation` returns ``{"status": "skipped", "reason": ...}`` (and the run
    fields) when another destructive operation holds the store's lock: none of the command's own
    fields are present, so every destructive command checks this before rendering them.

    Args:
        result: the task's result dict.
        command: the command, for the message (``"backup create"``, ``"prune undo"``...).
        as_json: print the result as JSON instead of the message.

    Raises:
        typer.Exit: code 2 when ``result["status"] == "skipped"``; otherwise returns.
    """
    if result.get("status") != "skipped":
        return
    if as_json:
        print_json(result)
    else:
        reason = escape(str(result.get("reason") or "the store is locked by another operation"))
        err_console.print(f"{command} {styled('skipped')}: {reason}; nothing was changed (store locked: "
                          "retry when the other operation has finished)", soft_wrap=True)
    raise typer.Exit(2)


def exit_for_status(result: dict[str, Any]) -> None:
    """Exit with the result's code: 2 for ``failure`` or ``skipped``, 1 for ``warning``, else return.

    Raises:
        typer.Exit: the status is not ``success``.
    """
    status = result.get("status")
    if status in ("failure", "skipped"):
        raise typer.Exit(2)
    if status == "warning":
        raise typer.Exit(1)


def emit(result: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], None], *,
         command: str | None = None) -> None:
    """The end of a store command: report a skip (destructive ``command`` only), print the result
    as JSON or with ``render``, then exit by its status (:func:`exit_for_status`).

    Raises:
        typer.Exit: skipped, failed or warned.
    """
    if command is not None:
        exit_if_skipped(result, command, as_json)
    if as_json:
        print_json(result)
    else:
        render(result)
    exit_for_status(result)
