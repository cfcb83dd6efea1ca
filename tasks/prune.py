"""Celery tasks of the ``prune`` operation: ``aml.prune.run`` and ``aml.prune.undo``.

A run follows DESIGN.md's order: the plan (record, collection, reason, value) -> ``dry_run`` stops
there -> a pre-prune safety snapshot, whose id is recorded with the run -> atomic rewrites of the
touched documents (decisions archived into the backup repository's ``archives/<agent>/``), with one
``prune_actions`` row per removed or archived record and the document's undo logs holding what undo needs
of each (``prune_undo_logs``, :mod:`models.undolog`). Both tasks are destructive: they hold the store's lock
(a dry run does not take it).

The run id users see (``aml <store> prune undo <run_id>``) is the Celery task id.

**Undo stays exact whatever kills a run.** A document's rows are committed *before* its rewrite is
published (write-ahead, :data:`aml.prune.apply.BeforePublish`), so every record a run removed has its
row at every instant, even when the worker's pool child is killed between two rewrites. A crash between
the commit and the rename leaves rows for records still in their document; undo counts them "already
present". The redelivered task (the same task id, so the same run) first adopts what the killed attempt
did: it keeps the rows of records gone from the store and deletes the rows of records still there
(:func:`aml.prune.undo.present_entries`), then plans and prunes the rest under the same run id. A write
that fails within an attempt is reconciled the same way. ``prune undo <run_id>`` then puts back every
record that any attempt of the run removed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aml.prune import (
    AppliedRecord,
    PruneConfig,
    UndoEntry,
    apply_plan,
    build_plan,
    lean_payload,
    normalise_strategies,
    present_entries,
    undo_documents,
)
from aml.prune.sessions import parse_limits
from aml.store.atomic import remove_stale_temp
from aml.store.names import resolve_text_path, text_name
from models import queries
from models.undolog import UndoLogError
from tasks.base import Catalog, normalize_store, run_operation, store_path
from tasks.registry import operation_task
from workers.app import get_settings

if TYPE_CHECKING:
    from celery import Task

log = logging.getLogger("aml.tasks.prune")

ACTIONS_IN_RESULT = 5000
"""At most this many planned actions are returned in a task result (the counts are always complete)."""


def make_config(aggressive: bool = False, now: str | None = None,
                overrides: dict[str, Any] | None = None, *, limits: str | Sequence[str] | None = None,
                fifo: bool = False, setting_limits: str = "") -> PruneConfig:
    """The :class:`PruneConfig` of a run: the seeds' defaults, ``--aggressive``, session limits, then overrides.

    Session limits (see :mod:`aml.prune.sessions`; a session's sidecar file beats all of these): general
    entries of ``setting_limits`` (``AML_SESSION_LIMITS``), then of ``limits`` (``--limits``), replace
    Aitor's defaults (100/50/100) key by key; per-agent entries are kept as layers, ``--limits`` first.

    Args:
        aggressive: the seeds' ``--aggressive`` thresholds.
        now: ISO 8601 reference instant.
        overrides: :class:`PruneConfig` fields to set last.
        limits: ``--limits`` values (:func:`aml.prune.sessions.parse_limits` syntax).
        fifo: Aitor's own oldest-first rule for sessions instead of the default ``managed`` mode.
        setting_limits: the ``AML_SESSION_LIMITS`` setting.

    Raises:
        ValueError: an unknown setting, malformed limits or an unreadable ``now``.
    """
    config = PruneConfig()
    if aggressive:
        config = config.aggressive()
    from_setting = parse_limits(setting_limits or None, "AML_SESSION_LIMITS")
    from_cli = parse_limits(limits, "--limits")
    values: dict[str, Any] = {}
    for table in (from_setting, from_cli):
        for key, count in table.get(None, {}).items():
            values[f"session_{key}"] = count
    layers = [(name, {a: v for a, v in table.items() if a is not None})
              for name, table in (("--limits", from_cli), ("AML_SESSION_LIMITS", from_setting))]
    values["session_agent_limits"] = [(name, table) for name, table in layers if table]
    if fifo:
        values["session_mode"] = "fifo"
    values.update(overrides or {})
    if now is not None:
        values["now"] = now
    return config.with_overrides(values)


def drop_unpublished(catalog: Catalog, root: Path, store_id: str, run_id: str,
                     documents: Collection[str] | None = None) -> dict[str, int]:
    """Reconcile run ``run_id``'s rows with the store: a row whose record is still in its document was
    written ahead of a rewrite that never happened (a killed attempt, a failed write) and is deleted;
    the others, records that a rewrite did remove, are kept: the run owns them. The rows of a document whose undo
    log does not decode are kept unchecked (undo counts the records still present as such).

    Args:
        catalog: the operation's catalog opener.
        root: the store directory.
        store_id: the store id (rows of other stores are left alone).
        run_id: the prune run.
        documents: only the rows of these documents (default: all of the run's rows not undone).

    Returns:
        ``{"kept", "dropped"}``: rows kept and rows deleted.
    """
    wanted = None if documents is None else {text_name(d) for d in documents}  # the catalog keeps paths as text
    entries: list[UndoEntry] = []
    unchecked = 0
    with catalog(write=False) as session:
        _, pending = queries.prune_action_documents(session, run_id, store_id)
        for document_path, refs in pending.items():
            if wanted is not None and document_path not in wanted:
                continue
            try:
                entries += [UndoEntry(action_id, resolve_text_path(root, document_path), record_id, payload)
                            for action_id, record_id, payload in queries.prune_action_payloads(session, refs)]
            except UndoLogError as exc:  # cannot tell which were removed: every row is kept (none is lost)
                log.error("prune %s: %s: rows kept unchecked: %s", run_id, document_path, exc)
                unchecked += len(refs)
    stale = present_entries(root, entries) if entries else []
    if stale:
        with catalog() as session:
            queries.delete_prune_actions(session, run_id, stale)
    return {"kept": len(entries) - len(stale) + unchecked, "dropped": len(stale)}


def run_body(store_id: str, run_id: str, *, strategies: Sequence[str] | None, agents: Sequence[str] | None,
             config: PruneConfig, dry_run: bool, use_index: bool = True) -> Any:
    """Build the operation body of one prune run (see :func:`tasks.base.run_operation`)."""
    settings = get_settings()

    def body(catalog: Catalog) -> dict[str, Any]:
        root = store_path(store_id)
        # a redelivered task (same id): adopt what a killed attempt removed, forget what it did not
        resumed = None if dry_run else drop_unpublished(catalog, root, store_id, run_id)
        plan = build_plan(root, config, strategies, agents=agents, compact=not dry_run, use_index=use_index)
        planned = plan.to_dict(include_actions=False)
        planned["actions"] = [a.to_dict() for a in plan.actions[:ACTIONS_IN_RESULT]]
        planned["actions_truncated"] = len(plan.actions) > ACTIONS_IN_RESULT
        result: dict[str, Any] = {"run_id": run_id, "dry_run": dry_run, "plan": planned, "backup_id": None,
                                  "applied": None,
                                  "resumed": resumed if resumed is not None and any(resumed.values()) else None}
        if dry_run:
            return result
        if not plan.actions:  # nothing to remove: a known zero (the remediation policy reads it)
            result.update(records_removed=0, records_archived=0)
            return result
        # imported by runs that change the store only: a dry run does without its ~25 ms
        from tasks.snapshots import archive_root as archive_root_of
        from tasks.snapshots import safety_snapshot

        snapshot = safety_snapshot(catalog, store_id, root, settings, reason="pre-prune", tags=[f"prune:{run_id}"])
        result["backup_id"] = snapshot.backup_id
        _sweep_temp(root, {a.document for a in plan.actions}, result)
        archive_root = archive_root_of(root, settings)
        with catalog(write=False) as session:
            task_run = queries.get_task_run(session, run_id)
            task_run_id = task_run.id if task_run is not None else None
        written_ahead: list[str] = []
        published: set[str] = set()

        def write_ahead(document: str, records: list[AppliedRecord]) -> None:
            # one transaction; the rows inserted WRITE_AHEAD_BATCH at a time (one document may hold a whole
            # store's records: its statement parameters are not all built at once)
            now = datetime.now(UTC)
            with catalog() as session:
                for start in range(0, len(records), WRITE_AHEAD_BATCH):
                    queries.add_prune_actions(
                        session, run_id=run_id, store=store_id, backup_id=snapshot.backup_id,
                        task_run_id=task_run_id, now=now,
                        records=[queries.PrunedRecord(
                            agent=r.action.agent, collection=r.action.collection, record_id=r.action.record_id,
                            reason=r.action.reason, action=r.action.action, document_path=r.action.document,
                            record=r.payload, score=r.action.value)
                            for r in records[start:start + WRITE_AHEAD_BATCH]],
                    )
            written_ahead.append(document)

        def unpublished() -> list[str]:
            return [d for d in written_ahead if d not in published]

        try:
            applied = apply_plan(plan, run_id=run_id, archive_root=archive_root, on_document=published.add,
                                 before_publish=write_ahead)
        except Exception:  # e.g. the lock's lease lost: the rows of the document it stopped at may be stale
            if unpublished():
                try:
                    drop_unpublished(catalog, root, store_id, run_id, unpublished())
                except Exception:  # the error that stopped the run is the one to report
                    log.exception("prune %s: could not reconcile the rows of %s", run_id, unpublished())
            raise
        if unpublished():  # a failed write (applied.error): its document may or may not have been replaced
            drop_unpublished(catalog, root, store_id, run_id, unpublished())
        result["applied"] = applied.to_dict()
        # scalars a task-run summary always keeps (``applied`` lists documents and may be left out of it)
        result["records_removed"] = result["applied"]["removed"]
        result["records_archived"] = result["applied"]["archived"]
        if applied.error:
            result["status"] = "failure"
            result["error"] = applied.error
        elif applied.conflicts:
            result["status"] = "warning"
        return result

    return body


@operation_task("aml.prune.run")
def run(
    self: Task,
    store: str,
    strategies: list[str] | None = None,
    aggressive: bool = False,
    dry_run: bool = False,
    agents: list[str] | None = None,
    now: str | None = None,
    overrides: dict[str, Any] | None = None,
    limits: list[str] | str | None = None,
    fifo: bool = False,
    use_index: bool = True,
) -> dict[str, Any]:
    """Prune a file store (or, with ``dry_run``, only plan it).

    Args:
        store: path of the file store (e.g. ``.loom/memory``).
        strategies: any of ``time_based``, ``performance_based``, ``space_based``, ``session_based``
            (default: time, performance and session).
        aggressive: the seeds' ``--aggressive`` thresholds (60/120 days, success < 30 %).
        dry_run: stop after the plan; nothing is written and no lock is taken.
        agents: only these agents.
        now: ISO 8601 reference instant for ages (default: now), for reproducible runs.
        overrides: :class:`~aml.prune.config.PruneConfig` fields to override (e.g. ``agent_limit_mib``).
        limits: Aitor session limits, ``MESSAGES/TOOLS/STEPS`` or ``NAME=COUNT,...``, optionally
            ``AGENT:``-prefixed, ``;``-separated (:func:`aml.prune.sessions.parse_limits`). A session's
            sidecar ``<id>.limits.json`` beats per-agent entries, which beat general ones; ``--limits``
            beats ``AML_SESSION_LIMITS`` at the same level; Aitor's 100/50/100 apply last.
        fifo: prune sessions with Aitor 1.1.2's own rule (oldest first, whatever the role) instead of
            the default ``managed`` rule (the seed's ``ManagedReactAgent.prune_memory`` by whole exchanges).
        use_index: take the live Loom collections the record index holds unchanged (same size, mtime and
            inode) from it, unread (:mod:`aml.prune.indexed`); ``False`` reads every document.

    Returns:
        ``{"run_id", "dry_run", "plan": {counts, actions, preserved, ...}, "backup_id", "applied":
        {removed, archived, documents, conflicts, bytes_freed, ...} | None, "resumed": {kept, dropped} | None,
        "status", "task_run_id", ...}``. ``applied`` counts this attempt's work; ``resumed`` is set when an
        earlier attempt of the same task id (killed, then redelivered) left rows: ``kept`` records it had
        removed (the run owns them; undo puts them back too), ``dropped`` rows of a rewrite it never made.
        Status ``warning`` when documents changed under the run (they were left alone).

    Raises:
        ValueError: unknown strategy or setting.
        aml.backup.BackupError: the pre-prune snapshot failed (nothing was changed).
    """
    store_id = normalize_store(store)
    run_id = str(self.request.id or uuid.uuid4())
    config = make_config(aggressive, now, overrides, limits=limits, fifo=fifo,
                         setting_limits=get_settings().session_limits)
    normalise_strategies(strategies)
    arguments = {"store": store, "strategies": strategies, "aggressive": aggressive, "dry_run": dry_run,
                 "agents": agents, "now": now, "overrides": overrides, "limits": limits, "fifo": fifo,
                 "use_index": use_index}
    return run_operation(task_id=self.request.id, operation="prune", store=store_id, arguments=arguments,
                         destructive=not dry_run,
                         body=run_body(store_id, run_id, strategies=strategies, agents=agents, config=config,
                                       dry_run=dry_run, use_index=use_index))


def _sweep_temp(root: Path, documents: Collection[str], result: dict[str, Any]) -> None:
    """Remove the temporary files a killed prune or undo left beside ``documents`` (store-relative paths), once
    unchanged for :data:`aml.store.atomic.STALE_TEMP_S`; list them in ``result["temp_files_removed"]``
    (store-relative paths) when there are any."""
    removed = remove_stale_temp({(root / document).parent for document in documents})
    if removed:
        result["temp_files_removed"] = sorted(text_name(p.relative_to(root).as_posix()) for p in removed)
        log.warning("removed %d temporary file(s) a killed run left: %s", len(removed),
                    ", ".join(result["temp_files_removed"]))


def _pre_prune_snapshot(catalog: Catalog, store_id: str, run_id: str) -> str | None:
    """The id of run ``run_id``'s pre-prune snapshot (tagged ``prune:<run_id>``), if the catalog has it."""
    with catalog(write=False) as session:
        tagged = [b.backup_id for b in queries.list_backups(session, store_id) if f"prune:{run_id}" in (b.tags or [])]
    return tagged[-1] if tagged else None


def _restore_hint(store_id: str, backup_id: str) -> str:
    return (f"its pre-prune snapshot {backup_id} holds the store as it was before the run: "
            f"aml {store_id} backup restore --backup-id {backup_id} --dry-run shows what that would put back")


def _snapshot_hint(catalog: Catalog, store_id: str, run_id: str) -> str:
    """Where the records undo could not read from the catalog are kept: the run's pre-prune snapshot."""
    snapshot = _pre_prune_snapshot(catalog, store_id, run_id)
    if snapshot is None:
        return f"prune run {run_id!r} has no pre-prune snapshot recorded in the catalog"
    return f"some undo logs of prune run {run_id!r} do not decode; " + _restore_hint(store_id, snapshot)


def _no_rows_message(catalog: Catalog, store_id: str, run_id: str) -> str:
    """Why ``undo`` has nothing to put back: an unknown run, or a run that removed nothing (it stopped
    before its first rewrite, or its rows were deleted), whose pre-prune snapshot (tagged
    ``prune:<run_id>``) is then named."""
    snapshot = _pre_prune_snapshot(catalog, store_id, run_id)
    if snapshot is None:
        return f"no prune run {run_id!r} recorded for {store_id}"
    return (f"prune run {run_id!r} recorded no actions (it stopped before its first rewrite, or its rows were "
            "deleted); " + _restore_hint(store_id, snapshot))


WRITE_AHEAD_BATCH = 5000
"""``prune_actions`` rows inserted per statement when a document's undo rows are written ahead of its rewrite."""


def _undo_rows(catalog: Catalog, root: Path, store_id: str, run_id: str
               ) -> tuple[int, dict[str, list[queries.ActionRef]]]:
    """The run's rows as undo needs them first, without their payloads
    (:func:`models.queries.prune_action_documents`).

    Returns:
        ``(rows, pending)``: how many rows the run has for this store (undone or not), and the actions not undone
        yet (ids and undo log entries) by store-relative document path, in id (recording) order. A document
        named with bytes that are not UTF-8 is recorded escaped: its file is found again here.
    """
    with catalog(write=False) as session:
        total, by_recorded = queries.prune_action_documents(session, run_id, store_id)
    pending: dict[str, list[queries.ActionRef]] = {}
    for document_path, refs in by_recorded.items():
        pending.setdefault(resolve_text_path(root, document_path), []).extend(refs)
    return total, {relpath: sorted(refs) for relpath, refs in pending.items()}


def _undo_documents(catalog: Catalog, pending: dict[str, list[queries.ActionRef]],
                    unreadable: list[dict[str, Any]]) -> Iterator[tuple[str, list[UndoEntry]]]:
    """``(document, its UndoEntry rows)`` in path order, each document's payloads read from the catalog
    only when undo reaches it (:func:`models.queries.prune_action_payloads`, a short read transaction), so
    that at most two documents' rows are in memory at a time (the one being written, the next); each payload is
    made lean (:func:`aml.prune.undo.lean_payload`). A document one of whose undo logs does not decode is yielded
    with no entries and its rows added to ``unreadable`` (``{"action_id", "document", "reason"}``, the reason naming
    the log).

    Yields:
        One ``(store-relative path, its entries in id order)`` per document.
    """
    shared: dict[Any, Any] = {}  # one copy of each list's layout
    for relpath in sorted(pending):
        try:
            with catalog(write=False) as session:  # each payload made lean as it is read
                entries = [UndoEntry(action_id, relpath, record_id, lean_payload(record, shared, owned=True))
                           for action_id, record_id, record in queries.prune_action_payloads(session, pending[relpath])]
        except UndoLogError as exc:  # that document's records cannot be put back from the catalog; the others can
            log.error("prune undo: %s: %s", relpath, exc)
            unreadable.extend({"action_id": ref.id, "document": relpath, "reason": str(exc)}
                              for ref in pending[relpath])
            entries = []
        yield relpath, entries


def undo_body(store_id: str, run_id: str) -> Any:
    """Build the operation body of ``prune undo`` (see :func:`tasks.base.run_operation`).

    The rows' payloads are read one document at a time (:func:`aml.prune.undo.undo_documents`): undo
    holds at most two documents' texts, spans and rows at once (one of them being written, never two large
    ones), whatever the size of the run."""
    settings = get_settings()

    def body(catalog: Catalog) -> dict[str, Any]:
        root = store_path(store_id)
        total, pending = _undo_rows(catalog, root, store_id, run_id)
        if not total:
            raise ValueError(_no_rows_message(catalog, store_id, run_id))
        waiting = sum(len(ids) for ids in pending.values())
        result: dict[str, Any] = {"run_id": run_id, "records": total, "already_undone": total - waiting,
                                  "restored": 0, "already_present": 0, "failed": [], "backup_id": None}
        if not waiting:
            return result
        from tasks.snapshots import archive_root as archive_root_of
        from tasks.snapshots import safety_snapshot

        snapshot = safety_snapshot(catalog, store_id, root, settings, reason="pre-undo", tags=[f"undo:{run_id}"])
        _sweep_temp(root, pending, result)
        unreadable: list[dict[str, Any]] = []
        undone = undo_documents(root, _undo_documents(catalog, pending, unreadable),
                                archive_root=archive_root_of(root, settings))
        with catalog() as session:
            queries.mark_prune_actions_undone(session, run_id, ids=undone.done)
        undone.failed.extend(unreadable)
        result.update(undone.to_dict())
        result["backup_id"] = snapshot.backup_id
        if unreadable:
            result["restore_hint"] = _snapshot_hint(catalog, store_id, run_id)
        if undone.failed or undone.archive_errors:
            result["status"] = "warning"
        return result

    return body


@operation_task("aml.prune.undo")
def undo(self: Task, store: str, run_id: str) -> dict[str, Any]:
    """Put back exactly the records prune run ``run_id`` removed or archived (idempotent).

    Records other than the restored ones, including later changes, are left as they are. A
    ``pre-undo`` safety snapshot is taken first.

    Args:
        store: path of the file store.
        run_id: the prune run's id (printed by ``aml <store> prune``; its Celery task id).

    Returns:
        ``{"run_id", "records", "already_undone", "restored", "already_present", "failed": [...],
        "documents", "archives_updated", "backup_id", "status", ...}``; status ``warning`` when some
        records could not be put back (their document is missing or does not parse, or their undo log in the
        catalog does not decode: then ``restore_hint`` names the run's pre-prune snapshot, which holds them), or
        when an archive file could not be read or rewritten (``archive_errors``: its restored decisions stay in it).

    Raises:
        ValueError: no such run for this store.
    """
    store_id = normalize_store(store)
    return run_operation(task_id=self.request.id, operation="prune", store=store_id,
                         arguments={"store": store, "undo": run_id}, destructive=True,
                         body=undo_body(store_id, run_id))
