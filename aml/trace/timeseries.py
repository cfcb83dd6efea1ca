"""The AMAOS seed's time-series log: one JSON line per trace in ``memory_tracer_timeseries.jsonl``.

Each line: ``{"time", "store", "source", "keys", "bytes", "anomalies", "partial", "patterns": {pattern:
[keys, bytes]}}``. Lines are appended under an exclusive ``flock`` and fsynced, so traces of several
stores (several workers) never interleave their bytes and a crash loses at most the line being written.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

FILE_NAME = "memory_tracer_timeseries.jsonl"
"""The log's name, as the AMAOS seed calls it."""


def timeseries_line(report: dict[str, Any]) -> dict[str, Any]:
    """The log line of a trace report (:func:`aml.trace.run.trace_keyspace`)."""
    return {
        "time": report["time"],
        "store": report["store"],
        "source": report["source"],
        "keys": report["keys"],
        "bytes": report["bytes"],
        "anomalies": len(report["anomalies"]),
        "partial": report["partial"],
        "patterns": {name: [p["keys"], p["bytes"]] for name, p in report["patterns"].items()},
    }


def append(directory: Path, report: dict[str, Any]) -> Path:
    """Append the trace's line to ``directory/memory_tracer_timeseries.jsonl`` (created if missing).

    Returns:
        The log's path.

    Raises:
        OSError: the directory cannot be created or the file written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FILE_NAME
    data = (json.dumps(timeseries_line(report), ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def read(path: Path, store: str | None = None) -> list[dict[str, Any]]:
    """The lines of a log, oldest first (of one ``store`` when given); a line cut short by a crash or
    otherwise not JSON is skipped."""
    out: list[dict[str, Any]] = []
    with path.open("rb") as fh:
        for raw in fh:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict) and (store is None or line.get("store") == store):
                out.append(line)
    return out
