"""The migration journal: what makes a killed migration resumable, or undoable, by running it again.

Layout, inside the store (``.aml*`` entries are invisible to store scans)::

    .aml/migrate-journal.json      {"format", "run_ids", "started_at", "updated_at", "target", "now",
                                    "state", "source", "schema_existed", "files": [{"path", "before"}]}
    .aml/migrate-orig/<relpath>    the original of every file rewritten so far: a hard link to the old
                                   inode (no copy; a copy where links are not possible)
    .aml/migrate-progress.jsonl    one line per file, appended just before its rename:
                                   {"path", "after"} (SHA-256 of the new content)

Order of a run (:mod:`aml.migrate.apply`): journal written (atomically, fsynced) -> every original
linked, their directories fsynced -> for each file: progress line appended, new content written
atomically (temp file, fsync, rename) -> the rewritten files' directories and the progress log
fsynced -> ``config/schema_version.json`` (same treatment, fsynced with its directory) -> journal
marked ``committed`` -> originals, progress and journal removed.

After a kill at any point, a rerun finds the journal: running the migration again rolls forward
(items already at the target are left as they are, so the rerun only finishes what is missing), and
:func:`aml.migrate.apply.rollback` puts every original back (hard links keep their bytes and
mtimes). A rollback refuses to overwrite a file that is neither the original nor what aml wrote
(someone changed it since), unless forced. ``schema_version.json`` is written last, so a store
never claims the target version before every file holds it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from aml.store.atomic import TMP_PREFIX, atomic_write, fsync_dir
from aml.store.timestamps import now_utc, parse_timestamp, utc_iso_z

AML_DIR: Final = ".aml"
JOURNAL_FILE: Final = f"{AML_DIR}/migrate-journal.json"
ORIG_DIR: Final = f"{AML_DIR}/migrate-orig"
PROGRESS_FILE: Final = f"{AML_DIR}/migrate-progress.jsonl"
FORMAT: Final = 1


class JournalError(RuntimeError):
    """The journal cannot be read or used (unknown format, corrupt, missing originals)."""


@dataclass(slots=True)
class Journal:
    """An in-progress migration of one store.

    Attributes:
        root: the store root.
        run_ids: ids of the runs that worked on this migration (a resumed run adds its own).
        started_at: when the first run began (aware UTC).
        target: the version being migrated to.
        now: the bookkeeping instant of the runs (see :class:`aml.migrate.steps.StepContext`).
        state: ``"applying"`` or ``"committed"`` (every file and the schema file written).
        source: what the store held before: ``{"claimed", "versions"}``.
        schema_existed: ``config/schema_version.json`` existed before the first run.
        files: ``{relpath: sha256 before the first run}`` of every file the migration may rewrite.
    """

    root: Path
    run_ids: list[str]
    started_at: datetime
    target: str
    now: datetime
    state: str = "applying"
    source: dict[str, Any] = field(default_factory=dict)
    schema_existed: bool = False
    files: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ paths

    @staticmethod
    def path_of(root: Path) -> Path:
        """The journal file of a store."""
        return root / JOURNAL_FILE

    def orig_path(self, relpath: str) -> Path:
        """Where the original of ``relpath`` is kept."""
        return self.root / ORIG_DIR / relpath

    # ------------------------------------------------------------------ persistence

    @classmethod
    def load(cls, root: Path) -> Journal | None:
        """The store's journal, or ``None`` when no migration is in progress.

        Raises:
            JournalError: the journal exists but is unreadable or of an unknown format.
        """
        path = cls.path_of(root)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise JournalError(f"{path}: cannot read: {exc}") from exc
        try:
            doc = json.loads(raw)
            if doc.get("format") != FORMAT:
                raise JournalError(f"{path}: unknown journal format {doc.get('format')!r}")
            started = parse_timestamp(doc["started_at"])
            now = parse_timestamp(doc["now"])
            if started is None or now is None:
                raise ValueError("bad timestamps")
            return cls(root=root, run_ids=list(doc["run_ids"]), started_at=started, target=str(doc["target"]),
                       now=now, state=str(doc["state"]), source=dict(doc.get("source") or {}),
                       schema_existed=bool(doc.get("schema_existed")), files=dict(doc["files"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise JournalError(f"{path}: corrupt journal: {exc}") from exc

    def save(self) -> None:
        """Write the journal atomically (creating ``.aml/``)."""
        (self.root / AML_DIR).mkdir(exist_ok=True)
        doc = {
            "format": FORMAT,
            "run_ids": self.run_ids,
            "started_at": utc_iso_z(self.started_at),
            "updated_at": utc_iso_z(now_utc()),
            "target": self.target,
            "now": utc_iso_z(self.now),
            "state": self.state,
            "source": self.source,
            "schema_existed": self.schema_existed,
            "files": self.files,
        }
        atomic_write(self.path_of(self.root), json.dumps(doc, indent=1).encode())

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary for reports: target, state, times, runs, file counts."""
        return {"target": self.target, "state": self.state, "started_at": utc_iso_z(self.started_at),
                "run_ids": self.run_ids, "files": len(self.files), "written": len(self.written()),
                "source": self.source, "path": JOURNAL_FILE}

    # ------------------------------------------------------------------ originals and progress

    def keep_original(self, relpath: str, *, sync: bool = True) -> bool:
        """Keep the current file at ``relpath`` as its original, unless one is kept already.

        A hard link (the old inode survives the atomic rename of the new content); a copy where the
        file system refuses links.

        Args:
            relpath: store-relative path.
            sync: fsync the original's directory before returning (callers keeping many originals
                pass ``False`` and fsync the directories once, before the first rewrite).

        Returns:
            ``True`` if an original was kept now, ``False`` if one was there already or the file
            does not exist.
        """
        target = self.orig_path(relpath)
        source = self.root / relpath
        if os.path.lexists(target) or not os.path.lexists(source):
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            tmp = target.with_name(target.name + ".part")
            shutil.copy2(source, tmp, follow_symlinks=False)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        if sync:
            fsync_dir(target.parent)
        return True

    def record_written(self, relpath: str, after: str, *, sync: bool = True) -> None:
        """Append ``{"path", "after"}`` to the progress log (fsynced unless ``sync`` is false).

        Called just *before* the new content is renamed into place, so that a kill between the two
        never leaves aml's own content looking like someone else's.

        A line lost to a power cut only makes a later rollback more careful: the file then looks
        changed by someone else and is restored only with ``force``."""
        path = self.root / PROGRESS_FILE
        line = json.dumps({"path": relpath, "after": after}) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            os.write(fd, line.encode())
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def sync_progress(self) -> None:
        """fsync the progress log (after a batch of unsynced :meth:`record_written`)."""
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(self.root / PROGRESS_FILE, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def written(self) -> dict[str, set[str]]:
        """``{relpath: {sha256 of every content aml wrote there}}`` from the progress log (a torn
        last line, from a kill in mid-append, is ignored)."""
        out: dict[str, set[str]] = {}
        try:
            text = (self.root / PROGRESS_FILE).read_text(errors="replace")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                out.setdefault(str(entry["path"]), set()).add(str(entry["after"]))
            except (ValueError, KeyError, TypeError):
                continue
        return out

    def discard(self) -> None:
        """Remove originals, progress log and journal (in that order: the journal goes last, so a
        kill in between leaves a journal a rerun cleans up)."""
        shutil.rmtree(self.root / ORIG_DIR, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self.root / PROGRESS_FILE).unlink()
        with contextlib.suppress(FileNotFoundError):
            self.path_of(self.root).unlink()
        tidy(self.root)


def tidy(root: Path) -> None:
    """Remove what a killed run may leave in ``.aml/`` without a journal: the temporary file of a
    journal write, and ``.aml/`` itself when nothing else is in it (other aml tools may keep files
    there). Call only when no journal exists or it is being discarded."""
    aml_dir = root / AML_DIR
    with contextlib.suppress(OSError):
        for name in os.listdir(aml_dir):
            if name.startswith(TMP_PREFIX):
                (aml_dir / name).unlink(missing_ok=True)
        fsync_dir(aml_dir)
        aml_dir.rmdir()
