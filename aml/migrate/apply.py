"""Carrying out a plan: journaled, atomic per file, ``config/schema_version.json`` last; and rollback.

:func:`migrate` is the whole operation (plan, then apply); :func:`apply_plan` writes a plan;
:func:`rollback` undoes an interrupted (or refused-to-finish) migration from its journal. See
:mod:`aml.migrate.journal` for the crash-safety argument.

Every rewrite keeps the file's encoding (gzip stays gzip), its JSON layout and its permissions; the
new content gets the current time as mtime (its content changed). A file that changed on disk since
it was planned (an agent wrote to it) is planned again from what is there now.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aml.migrate.files import SCHEMA_FILE, schema_bytes, sha256
from aml.migrate.journal import AML_DIR, ORIG_DIR, Journal, JournalError, tidy
from aml.migrate.plan import LOSSY_LISTED, FilePlan, Plan, build_plan, plan_file, problem_of, schema_sha
from aml.migrate.steps import StepContext
from aml.store.atomic import atomic_open, atomic_write, fsync_dir, remove_stale_temp
from aml.store.documents import DocumentError
from aml.store.filestore import FileStore
from aml.store.guard import check_write
from aml.store.loomlock import loom_lock_held
from aml.store.timestamps import detect_style, format_like, now_utc, utc_iso_z

FileCallback = Callable[[str, int, int], None]
"""Called after each file is written: ``(relpath, files done, files to write)``."""


@dataclass(slots=True)
class MigrationResult:
    """The outcome of :func:`migrate` / :func:`apply_plan`.

    Attributes:
        plan: the plan that was carried out.
        outcome: ``"migrated"``, ``"unchanged"`` (already at the target), ``"dry_run"`` or
            ``"refused"`` (a downgrade would lose data; nothing written).
        run_id: this run's id (also in the journal and in ``migration_history``).
        files_written: files rewritten, in order.
        schema_written: ``config/schema_version.json`` was written.
        resumed: an interrupted migration's journal was found and finished.
        problems: files left alone (the plan's, plus files that became unreadable before writing).
        duration_s: wall time of the run, seconds (planning included).
    """

    plan: Plan
    outcome: str
    run_id: str
    files_written: list[str] = field(default_factory=list)
    schema_written: bool = False
    resumed: bool = False
    problems: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def status(self) -> str:
        """``"success"``, or ``"failure"`` when refused or when any file was left alone."""
        return "failure" if self.outcome == "refused" or self.problems else "success"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready result (the plan's summary plus what was written)."""
        plan = self.plan
        lossy = plan.lossy
        records = sum(f.items for f in plan.files)
        return {
            "status": self.status,
            "outcome": self.outcome,
            "run_id": self.run_id,
            "store": plan.store_id,
            "target": plan.target,
            "claimed_before": plan.claimed,
            "source": plan.source_label,
            "versions_before": plan.versions,
            "records": records,
            "records_changed": sum(f.changed for f in plan.files),
            "files": len(plan.files),
            "files_written": self.files_written,
            "files_to_write": [f.relpath for f in plan.writes],
            "schema_written": self.schema_written,
            "agents": plan.counts(),
            "lossy_count": len(lossy),
            "lossy": lossy[:LOSSY_LISTED],
            "forced": plan.force and bool(lossy),
            "refused": self.outcome == "refused",
            "resumed": self.resumed,
            "problems": self.problems,
            "unparseable": [p["relpath"] or p["path"] for p in self.problems],
            "duration_s": round(self.duration_s, 6),
            "records_per_s": round(records / self.duration_s, 1) if self.duration_s > 0 else None,
        }


@dataclass(slots=True)
class RollbackResult:
    """The outcome of :func:`rollback`.

    Attributes:
        store: the store id.
        outcome: ``"rolled_back"``, ``"nothing"`` (no migration in progress) or ``"refused"``
            (files changed since aml wrote them; nothing restored).
        restored: files put back to their originals.
        removed: files the migration created and the rollback removed (``schema_version.json``).
        conflicts: ``{"path", "reason"}`` of files that block the rollback (unless forced).
        target: the version the interrupted migration was heading for.
    """

    store: str
    outcome: str
    restored: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    conflicts: list[dict[str, str]] = field(default_factory=list)
    target: str | None = None

    @property
    def status(self) -> str:
        """``"success"`` unless refused."""
        return "failure" if self.outcome == "refused" else "success"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"status": self.status, "outcome": self.outcome, "store": self.store, "target": self.target,
                "restored": self.restored, "removed": self.removed, "conflicts": self.conflicts}


def new_run_id() -> str:
    """A run id: ``mig_YYYYMMDD_HHMMSS_<6 hex>`` (UTC)."""
    return f"mig_{now_utc():%Y%m%d_%H%M%S}_{uuid.uuid4().hex[:6]}"


def migrate(root: str | os.PathLike[str], target: str | None = None, *, dry_run: bool = False,
            force: bool = False, run_id: str | None = None, on_file: FileCallback | None = None,
            now: datetime | None = None) -> MigrationResult:
    """Migrate a store to ``target`` (default: the latest version).

    Args:
        root: the store directory.
        target: the version to reach, e.g. ``"1.2.0"``.
        dry_run: plan only; write nothing at all (no journal, no ``.aml/`` directory).
        force: carry out downgrades that lose data (listed in the result).
        run_id: id recorded in the journal and ``migration_history`` (default: :func:`new_run_id`).
        on_file: progress callback.
        now: bookkeeping instant (tests; default: now, or the interrupted run's).

    Returns:
        A :class:`MigrationResult`. Unreadable files are left alone and listed in ``problems``
        (status ``failure``); every other file is migrated.

    Raises:
        ValueError: unknown target version.
        FileNotFoundError, NotADirectoryError: ``root`` is not a directory.
        JournalError: an unreadable journal is in the way.
        OSError: a write failed (the journal lets a rerun finish or roll back).
    """
    started = time.perf_counter()
    plan = build_plan(root, target, force=force, now=now)
    if dry_run:
        return MigrationResult(plan, "dry_run" if not plan.refused else "refused", run_id or new_run_id(),
                               problems=list(plan.problems), duration_s=time.perf_counter() - started)
    result = apply_plan(plan, run_id=run_id, on_file=on_file)
    result.duration_s = time.perf_counter() - started
    return result


def apply_plan(plan: Plan, *, run_id: str | None = None, on_file: FileCallback | None = None) -> MigrationResult:
    """Write a plan (see the module docstring for the order of writes).

    Args:
        plan: from :func:`aml.migrate.plan.build_plan`.
        run_id: the run's id (default: :func:`new_run_id`).
        on_file: progress callback.

    Returns:
        A :class:`MigrationResult` (``duration_s`` covers this call only).

    Raises:
        OSError: a write failed; the journal stays, so a rerun finishes (or rolls back) the migration.
    """
    started = time.perf_counter()
    run_id = run_id or new_run_id()
    result = MigrationResult(plan, "migrated", run_id, problems=list(plan.problems), resumed=plan.journal is not None)
    if plan.refused:
        result.outcome = "refused"
        return result
    writes = plan.writes
    journal = plan.journal
    current_schema = schema_sha(plan.root)
    schema_write = plan.schema_needs_write
    if journal is not None and not writes and current_schema in journal.written().get(SCHEMA_FILE, set()):
        schema_write = False  # killed after the schema file was written: only the cleanup is left
    if not writes and not schema_write:
        if journal is not None:
            _remove_stale_temp(plan.root, journal)
            journal.discard()
        else:
            tidy(plan.root)
        result.outcome = "unchanged" if journal is None else "migrated"
        result.duration_s = time.perf_counter() - started
        return result

    if journal is not None:
        _remove_stale_temp(plan.root, journal)
    else:
        journal = Journal(root=plan.root, run_ids=[], started_at=now_utc(), target=plan.target, now=plan.now,
                          source={"claimed": plan.claimed, "versions": plan.versions, "label": plan.source_label},
                          schema_existed=current_schema != "")
    journal.run_ids.append(run_id)
    journal.target, journal.now, journal.state = plan.target, plan.now, "applying"
    for fp in writes:
        journal.files.setdefault(fp.relpath, fp.sha256)
    journal.files.setdefault(SCHEMA_FILE, current_schema)
    journal.save()

    # Originals first (hard links, so cheap), made durable together; then the new contents, each
    # fsynced, their directories fsynced together before the schema file is written.
    kept = {journal.orig_path(fp.relpath).parent for fp in writes if journal.keep_original(fp.relpath, sync=False)}
    if kept:
        for directory in (*kept, plan.root / ORIG_DIR, plan.root / AML_DIR):
            fsync_dir(directory)
    ctx = StepContext(plan.now)
    agents = frozenset(FileStore(plan.root).agents())
    changed = 0
    touched: set[Path] = set()
    for done, fp in enumerate(writes, 1):
        fresh = _write_file(plan, fp, agents, ctx, result, journal)
        if fresh is None:
            continue
        touched.add((plan.root / fp.relpath).parent)
        result.files_written.append(fp.relpath)
        changed += (fresh or fp).changed
        if on_file is not None:
            on_file(fp.relpath, done, len(writes))
    for directory in touched:
        fsync_dir(directory)
    journal.sync_progress()

    left_alone = [p["relpath"] or p["path"] for p in result.problems]
    if plan.schema_error is None and not (left_alone and not journal.schema_existed):
        # A store with files left alone holds two versions: it keeps its old claim (none stays none),
        # and the history entry says the run was incomplete and names them. A rerun finishes it.
        doc = _schema_doc(plan, journal, run_id, changed, left_alone)
        journal.keep_original(SCHEMA_FILE)
        if not (plan.root / "config").is_dir():
            (plan.root / "config").mkdir()
            fsync_dir(plan.root)
        data = schema_bytes(doc)
        journal.record_written(SCHEMA_FILE, sha256(data))
        atomic_write(plan.root / SCHEMA_FILE, data)
        result.schema_written = True

    journal.state = "committed"
    journal.save()
    journal.discard()
    result.duration_s = time.perf_counter() - started
    return result


class _LeftAlone(Exception):
    """Raised inside :func:`_write_file`'s temporary file: the file is not rewritten (the temporary file goes)."""


def _write_file(plan: Plan, fp: FilePlan, agents: frozenset[str], ctx: StepContext, result: MigrationResult,
                journal: Journal) -> FilePlan | None:
    """Rewrite one planned file: with the planned bytes when they were kept and the file is unchanged
    since planning, else migrated again as it is written (checked for loss again only when it changed
    since planning), its new content streamed to a temporary file next to it (:func:`plan_file` with
    ``out``: memory holds the file's text, not its new bytes as well). The journal records the new
    content's digest before the rename: a kill between the two must not look like a foreign write.

    Returns:
        The plan the file was written by (``fp``, or the fresh one), or ``None`` when it cannot be written
        (added to problems) or nothing in it changes any more.

    Raises:
        OSError: a write failed (the file is unchanged).
    """
    path = plan.root / fp.relpath
    if loom_lock_held(path):  # Loom's runtime is writing it: a rewrite now would lose one of the writes
        result.problems.append({"path": str(path), "relpath": fp.relpath, "offset": None, "code": "locked",
                                "reason": "locked by Loom's runtime (<file>.lock); run the migration again"})
        return None
    try:
        st = os.stat(path, follow_symlinks=False)
        unchanged = (st.st_size, st.st_mtime_ns) == (fp.size_bytes, fp.mtime_ns)
    except OSError:
        unchanged = False
    if unchanged and fp.new_bytes is not None:
        journal.keep_original(fp.relpath)  # no-op unless the file appeared since
        journal.record_written(fp.relpath, sha256(fp.new_bytes), sync=False)
        atomic_write(path, fp.new_bytes, sync_dir=False)
        return fp
    try:
        with atomic_open(path, sync_dir=False) as out:  # renamed over the file only if the block ends normally
            try:  # the file as planned is migrated again here (same result: the run's instant is fixed)
                fresh = plan_file(plan.root, fp.relpath, fp.agent, fp.collection, agents, plan.target, ctx,
                                  planned=fp, out=out)
            except DocumentError as exc:
                result.problems.append(problem_of(exc))
                raise _LeftAlone from exc
            if fresh.lost and not plan.force:  # only a file changed since planning is checked for loss again
                result.problems.append({"path": str(path), "relpath": fp.relpath, "offset": None, "code": "lossy",
                                        "reason": "changed since planning; migrating it now would lose data"})
                raise _LeftAlone
            if not fresh.writes or fresh.written_sha256 is None:
                raise _LeftAlone
            journal.keep_original(fp.relpath)  # no-op unless the file appeared since
            journal.record_written(fp.relpath, fresh.written_sha256, sync=False)
    except _LeftAlone:
        return None
    return fresh


def _schema_doc(plan: Plan, journal: Journal, run_id: str, changed: int, left_alone: list[str]) -> dict[str, Any]:
    """The new ``config/schema_version.json``: Loom's keys first, the writer's timestamp style kept,
    one ``migration_history`` entry added for this migration.

    When files were ``left_alone`` (unreadable, or lossy since planning) the store does not hold the
    target version: ``version`` keeps the old claim, and the entry gets ``"status": "incomplete"`` and
    the files (at most 100). Loom's MigrationManager trusts ``version``; claiming the target would hide
    the unmigrated files from it and from aml's next run."""
    old = dict(plan.schema_doc or {})
    style = detect_style(old.get("updated_at"))
    now = now_utc()
    stamp = format_like(now, style) if style is not None else utc_iso_z(now)
    history = old.get("migration_history")
    history = list(history) if isinstance(history, list) else []
    history.append({"from": journal.source.get("label", plan.source_label), "to": plan.target, "at": stamp,
                    "by": "aml", "run_ids": list(journal.run_ids), "records_changed": changed})
    version: Any = plan.target
    if left_alone:
        history[-1].update({"status": "incomplete", "left_alone": left_alone[:100]})
        version = old.get("version")
    doc: dict[str, Any] = {"version": version, "updated_at": stamp, "migration_history": history}
    doc.update({k: v for k, v in old.items() if k not in doc})
    return doc


def rollback(root: str | os.PathLike[str], *, force: bool = False) -> RollbackResult:
    """Undo an interrupted migration: put every original back, remove what it created, drop the journal.

    Args:
        root: the store directory.
        force: restore even files changed since aml wrote them (those changes are lost).

    Returns:
        A :class:`RollbackResult`; ``outcome == "nothing"`` when no migration is in progress, or
        when the interrupted one had already written everything (only its cleanup is finished
        then). A finished migration is undone by migrating back, or by restoring its pre-migrate
        snapshot.

    Raises:
        JournalError: the journal is unreadable.
        OSError: a rename failed (the journal stays; run again).
    """
    store = FileStore(root)
    journal = Journal.load(store.root)
    if journal is None:
        return RollbackResult(store.store_id, "nothing")
    if journal.state == "committed":  # it had finished; only its cleanup was interrupted
        journal.discard()
        return RollbackResult(store.store_id, "nothing", target=journal.target)
    result = RollbackResult(store.store_id, "rolled_back", target=journal.target)
    written = journal.written()
    actions: list[tuple[str, str]] = []  # (relpath, "restore" | "remove")
    for relpath, before in sorted(journal.files.items(), key=lambda kv: (kv[0] != SCHEMA_FILE, kv[0])):
        path = store.root / relpath
        current = _sha_or_empty(path)
        ours = current in written.get(relpath, set())
        if os.path.lexists(journal.orig_path(relpath)):
            if current == before or ours or force:
                actions.append((relpath, "restore"))
            else:
                result.conflicts.append({"path": relpath, "reason": "changed since aml wrote it"})
        elif relpath == SCHEMA_FILE and not journal.schema_existed:
            if current and (ours or force):
                actions.append((relpath, "remove"))
            elif current:
                result.conflicts.append({"path": relpath, "reason": "created by someone else during the migration"})
        elif current != before:
            result.conflicts.append({"path": relpath, "reason": "changed, and no original was kept"})
    if result.conflicts and not force:
        result.outcome = "refused"
        return result
    touched: set[Path] = set()
    for relpath, action in actions:
        path = store.root / relpath
        check_write()
        if action == "restore":
            os.replace(journal.orig_path(relpath), path)
            result.restored.append(relpath)
        else:
            path.unlink(missing_ok=True)
            result.removed.append(relpath)
        touched.add(path.parent)
    for directory in touched:
        fsync_dir(directory)
    _remove_stale_temp(store.root, journal)
    if not journal.schema_existed:
        config = store.root / "config"
        with contextlib.suppress(OSError):
            config.rmdir()  # only when the migration created it and nothing else is in it
    journal.discard()
    return result


def _remove_stale_temp(root: Path, journal: Journal) -> None:
    """Remove temporary files (``.aml-tmp-*``) a killed run left in the directories it writes to.

    Only called when a journal shows that a migration was interrupted; the store lock (taken by the
    task) keeps other aml writers out meanwhile."""
    remove_stale_temp({(root / rel).parent for rel in journal.files} | {root / "config"}, older_than_s=0)


def _sha_or_empty(path: Path) -> str:
    try:
        return sha256(path.read_bytes())
    except FileNotFoundError:
        return ""


__all__ = [
    "FileCallback",
    "JournalError",
    "MigrationResult",
    "RollbackResult",
    "apply_plan",
    "migrate",
    "new_run_id",
    "rollback",
]
