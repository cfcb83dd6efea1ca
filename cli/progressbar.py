"""A rich progress bar (files and bytes) fed by engine progress events, for inline runs."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from cli.render import err_console

if TYPE_CHECKING:
    from aml.backup.progress import Progress as Event


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[None]:
    """Show a progress bar on stderr for tasks run inline inside the block.

    Disabled (no output) when ``enabled`` is false or stderr is not a terminal, so ``--json`` output
    and pipes stay clean.
    """
    if not enabled or not sys.stderr.isatty():
        yield
        return
    from tasks.progress import progress_sink

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("files"),
               DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def sink(event: Event) -> None:
            if event.phase not in tasks:
                tasks[event.phase] = bar.add_task(event.phase, total=None)
            task_id = tasks[event.phase]
            bar.update(task_id, completed=event.bytes_done, total=event.bytes_total or None,
                       description=f"{event.phase} {event.files_done}/{event.files_total or '?'}")

        with progress_sink(sink):
            yield
