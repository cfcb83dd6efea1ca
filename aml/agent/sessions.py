"""The Aitor seed's ``SessionManager``: save and restore an agent's memory, one file per session.

::

    from aml.agent import SessionManager

    sessions = SessionManager("./agent_sessions")
    sessions.save_session(agent, "user123_session1")      # ./agent_sessions/user123_session1.json
    if sessions.load_session(agent, "user123_session1"):
        print("Session restored successfully")
    else:
        print("No previous session found")                 # or unreadable: see sessions.last_error
    sessions.list_sessions()                               # ["user123_session1", ...]

Same names, arguments, file layout and bytes as the seed's class (Aitor docs/memory.md, "Session
Management"): ``<storage_path>/<session_id>.json`` holding ``json.dumps(agent.export_memory(), indent=2,
default=str)``, so directories written by the seed's class (like ``/work/shared/data/aitor``) load here and
the other way round. What aml adds:

- **Atomic writes** (:func:`aml.store.atomic.atomic_write`: temp file, fsync, rename, fsync directory): a
  crash leaves the old session or the new one, never a torn file.
- **A store**: the storage directory is a file store aml reads (:class:`aml.store.FileStore` classifies each
  file as an ``aitor_session`` of its ``agent_name``), so ``aml <storage_path> backup|prune|monitor ...``
  maintain it. Before writing, the document is checked with the store reader's own rules; a session id the
  reader would take for something else (``config``: a root ``config.json`` is Loom's config) is refused.
- **The agent's limits**: an export carries none (``ReactMemory.to_dict`` drops them), so when the agent's
  memory has Aitor's ``max_conversation_length`` / ``max_tool_executions`` / ``max_reasoning_steps``,
  :meth:`save_session` also writes them to ``<session_id>.limits.json`` next to the session; ``aml ... prune``
  then prunes that session to its agent's own limits (:mod:`aml.prune.sessions`). :meth:`list_sessions`
  does not list these sidecars.
- **Validated ids**: a clear :class:`ValueError` for ``/``, ``\\``, ``..``, NUL, a leading ``.``, an empty id
  or one too long for a file name.
- **Damaged files are kept**: :meth:`SessionManager.load_session` returns ``False`` for a file that does not
  parse (plain, gzip or zstd: ``aml optimize compress`` may have compressed it), is not an Aitor session, or
  that the agent's ``import_memory`` rejects; it logs the reason (logger ``aml.agent.sessions``, WARNING),
  keeps it in :attr:`SessionManager.last_error` and never writes the file. :meth:`save_session` over such a
  file first copies it to ``<storage_path>/.aml/quarantine/`` (:func:`aml.store.quarantine`; readers skip
  ``.aml*``), then replaces it.

Pure Python plus :mod:`aml.store`: no Celery, no catalog.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aml.prune.sessions import is_sidecar, write_sidecar
from aml.store import accessors as acc
from aml.store.atomic import TMP_PREFIX, atomic_write
from aml.store.documents import DocumentError, classify, place, read_document
from aml.store.quarantine import quarantine

__all__ = ["QUARANTINE_DIR", "SUFFIX", "SessionManager", "validate_session_id"]

log = logging.getLogger("aml.agent.sessions")

SUFFIX = ".json"
"""Session file suffix (the seed's ``f"{session_id}.json"``)."""

QUARANTINE_DIR = ".aml/quarantine"
"""Where a damaged session file is copied before :meth:`SessionManager.save_session` replaces it, relative
to the storage path (``.aml*`` entries are skipped by aml's store reader)."""

_RESERVED = frozenset({"config"})
"""Ids whose file the store reader classifies by position, not as a session (root ``config.json``)."""

_MAX_NAME_BYTES = 255
"""Longest file name (bytes) on common file systems."""


def validate_session_id(session_id: object) -> str:
    """Check that ``session_id`` names one file directly inside the storage directory.

    Args:
        session_id: the id.

    Returns:
        The id, unchanged.

    Raises:
        TypeError: not a string.
        ValueError: empty; contains ``/``, ``\\``, NUL or ``..``; starts with ``.``; its file name would be
            over 255 bytes; or it is reserved (``config``).
    """
    if not isinstance(session_id, str):
        raise TypeError(f"session_id must be a str, got {type(session_id).__name__}")
    problem = None
    if not session_id:
        problem = "is empty"
    elif "\0" in session_id:
        problem = "contains a NUL character"
    elif "/" in session_id or "\\" in session_id:
        problem = "contains a path separator ('/' or '\\')"
    elif ".." in session_id:
        problem = "contains '..'"
    elif session_id.startswith("."):
        problem = "starts with '.' (hidden files and aml's '.aml*' entries are not sessions)"
    elif len((session_id + SUFFIX).encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES:
        problem = f"is too long for a file name ({_MAX_NAME_BYTES} bytes with '{SUFFIX}')"
    elif session_id in _RESERVED:
        problem = f"is reserved: aml's store reader reads a root '{session_id}{SUFFIX}' as Loom's config"
    if problem:
        raise ValueError(f"invalid session_id {session_id!r}: it {problem}")
    return session_id


def _export(agent: Any) -> Mapping[str, Any]:
    """The agent's ``export_memory()`` (or a memory's ``to_dict()``, or a ready export dict)."""
    if isinstance(agent, Mapping):
        return agent
    for method in ("export_memory", "to_dict"):
        fn = getattr(agent, method, None)
        if callable(fn):
            data = fn()
            if not isinstance(data, Mapping):
                raise TypeError(f"{type(agent).__name__}.{method}() returned {type(data).__name__}, expected a dict")
            return data
    get_memory = getattr(agent, "get_memory", None)
    memory = get_memory() if callable(get_memory) else None
    if memory is not None and memory is not agent and not isinstance(memory, str | bytes):
        return _export(memory)
    raise TypeError(
        f"save_session: {type(agent).__name__} has no export_memory() (an Aitor agent), to_dict() (a "
        f"ReactMemory) or get_memory() returning one; nothing to save"
    )


class SessionManager:
    """Saves and loads agents' memories as session files in ``storage_path`` (see the module docstring).

    Args:
        storage_path: the sessions directory; created (with parents) if missing.

    Attributes:
        storage_path: the directory, as given (a :class:`~pathlib.Path`).
        last_error: why the last :meth:`load_session` returned ``False`` for an existing file (a
            :class:`~aml.store.DocumentError`: path, byte offset, reason); ``None`` after a success or a
            missing file.
    """

    def __init__(self, storage_path: str | os.PathLike[str]) -> None:
        self.storage_path = Path(storage_path)
        self.storage_path.mkdir(parents=True, exist_ok=True)
        self.last_error: DocumentError | None = None

    def __repr__(self) -> str:
        return f"SessionManager({str(self.storage_path)!r})"

    def session_path(self, session_id: str) -> Path:
        """The file of ``session_id`` (validated: see :func:`validate_session_id`)."""
        return self.storage_path / f"{validate_session_id(session_id)}{SUFFIX}"

    def save_session(self, agent: Any, session_id: str) -> Path:
        """Save the agent's memory (``agent.export_memory()``) as ``<storage_path>/<session_id>.json``, atomically.

        Args:
            agent: an Aitor agent (``export_memory()``), a ``ReactMemory`` (``to_dict()``) or an export dict.
            session_id: the file's name without ``.json`` (validated).

        Returns:
            The path written (the seed returned nothing).

        Raises:
            ValueError: an invalid id, or an export aml's store reader would not read as an Aitor session
                (e.g. no ``conversation_history``); nothing is written.
            TypeError: ``agent`` has nothing to export.
            OSError: the write failed; the previous file is unchanged.
        """
        path = self.session_path(session_id)
        data = _export(agent)
        payload = json.dumps(data, indent=2, default=str)
        self._check_readable(json.loads(payload), path)
        if path.is_file():
            old = read_document(path, path.name)
            if old.error is not None and old.error.code not in ("symlink", "not_regular"):
                copy = quarantine(old.error, self.storage_path / QUARANTINE_DIR)
                log.warning("session %s: replacing a damaged file (%s); its copy is %s", session_id,
                            old.error.reason, copy)
        atomic_write(path, payload.encode("utf-8"))
        limits = _memory_limits(agent)
        if limits is not None:
            write_sidecar(path, limits)
        return path

    @staticmethod
    def _check_readable(data: Any, path: Path) -> None:
        """Refuse what the store reader would not classify as an Aitor session (its own rules)."""
        if not acc.is_aitor_session(data):
            keys = ", ".join(sorted(data)) if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(
                f"not an Aitor session export: needs 'conversation_history' and one of 'session_id', "
                f"'reasoning_trace', 'tool_executions' (has: {keys})"
            )
        parts = (path.name,)
        try:
            kind, _ = classify(data, parts, place(parts, frozenset()), path)
        except DocumentError as exc:
            raise ValueError(f"not an Aitor session export: {exc.reason}") from exc
        if kind != "aitor_session":  # pragma: no cover - guarded by validate_session_id
            raise ValueError(f"aml's store reader would read {path.name} as {kind}, not as a session")

    def load_session(self, agent: Any, session_id: str) -> bool:
        """Load ``<storage_path>/<session_id>.json`` into the agent (``agent.import_memory(data)``).

        Args:
            agent: an object with ``import_memory(dict)`` (an Aitor agent).
            session_id: the session (validated).

        Returns:
            ``True`` when imported. ``False`` when there is no such file, or the file does not parse, is not
            an Aitor session, or ``import_memory`` rejected it (``KeyError``/``ValueError``/``TypeError``):
            then the reason is logged and kept in :attr:`last_error`, and the file is left untouched.

        Raises:
            ValueError: an invalid id.
            TypeError: ``agent`` has no ``import_memory``.
        """
        path = self.session_path(session_id)
        import_memory = getattr(agent, "import_memory", None)
        if not callable(import_memory):
            raise TypeError(f"load_session: {type(agent).__name__} has no import_memory(); cannot load into it")
        self.last_error = None
        if not os.path.lexists(path):
            return False
        doc = read_document(path, path.name)
        error = doc.error
        if error is None and doc.kind != "aitor_session":
            error = DocumentError(path, None, f"not an Aitor session export (read as {doc.kind})",
                                  code="wrong_type", relpath=path.name)
        if error is None:
            try:
                import_memory(doc.data)
                return True
            except (KeyError, ValueError, TypeError) as exc:
                error = DocumentError(path, None, f"{type(agent).__name__}.import_memory rejected it: "
                                      f"{type(exc).__name__}: {exc}", code="wrong_type", relpath=path.name)
        self.last_error = error
        where = f" at byte {error.offset}" if error.offset is not None else ""
        log.warning("session %s not loaded: %s%s: %s (file left as it is)", session_id, path, where, error.reason)
        return False

    def list_sessions(self) -> list[str]:
        """Ids of the session files in the storage directory, sorted (the seed's ``*.json`` glob, without
        aml's temporary files, hidden files, non-regular files and names that are not valid ids). Contents
        are not read: :meth:`load_session` tells whether one loads."""
        out = []
        try:
            entries = list(os.scandir(self.storage_path))
        except FileNotFoundError:
            return []
        for entry in entries:
            name = entry.name
            if not name.endswith(SUFFIX) or name.startswith((TMP_PREFIX, ".")) or is_sidecar(name):
                continue
            if not entry.is_file(follow_symlinks=False):
                continue
            stem = name[: -len(SUFFIX)]
            try:
                validate_session_id(stem)
            except ValueError:
                continue
            out.append(stem)
        return sorted(out)


def _memory_limits(agent: Any) -> dict[str, int] | None:
    """Aitor ``ReactMemory`` limits of ``agent`` (an agent with ``get_memory()`` or a memory), or ``None``."""
    memory = agent
    if not hasattr(agent, "max_conversation_length") and callable(getattr(agent, "get_memory", None)):
        try:
            memory = agent.get_memory()
        except Exception:  # an agent whose memory cannot be read has no limits to save
            return None
    names = {"max_messages": "max_conversation_length", "max_tool_executions": "max_tool_executions",
             "max_reasoning_steps": "max_reasoning_steps"}
    values = {key: getattr(memory, attr, None) for key, attr in names.items()}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values.values()):
        return None
    return {k: int(v) for k, v in values.items() if v is not None}
