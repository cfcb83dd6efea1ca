"""Planning a migration: what every collection file would become, without writing anything.

:func:`build_plan` reads every collection file (:mod:`aml.migrate.files`), moves each item to the
target (:func:`aml.migrate.chain.migrate_item`) and records, per file: item counts by source
version, how many items change, which items a downgrade would lose data from, and (only when
asked, within a memory budget) the new bytes. One file is in memory at a time, and by default no new
content is built at all: ``--dry-run`` prints the plan; :func:`aml.migrate.apply.apply_plan` carries
it out, migrating each file again as it writes it. Files that cannot be read or hold an item of
unknown version are *problems*: listed, never written.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Final

from aml.migrate.chain import UnknownItemVersion, item_version, migrate_item
from aml.migrate.detect import version_of
from aml.migrate.files import (
    SCHEMA_FILE,
    LoadedFile,
    RawFile,
    collection_files,
    iter_spans,
    parse_collection,
    read_collection,
    read_schema_file,
    render,
    sha256,
)
from aml.migrate.journal import Journal
from aml.migrate.lean import lean_counts
from aml.migrate.legacy import LEGACY_KEY
from aml.migrate.steps import KIND_OF_COLLECTION, StepContext, loom_style
from aml.migrate.versions import DEFAULT_VERSION, LATEST, VERSIONS, check_version
from aml.store.accessors import ItemVersion
from aml.store.codec import Encoding
from aml.store.documents import DocumentError
from aml.store.filestore import FileStore
from aml.store.rewrite import LOOM_STYLE, TextSink, detect_json_style, document_text, dumps_element, gzip_level_of
from aml.store.timestamps import PY_AWARE_STYLE, TS_STYLE, now_utc

DEFAULT_KEEP_BYTES: Final = 0
"""New file contents up to this total are kept from planning to writing; beyond it, files are
migrated a second time when written (same result: the run's bookkeeping instant is fixed). None by
default: a plan then only counts (see :func:`_plan_streamed`), so that a ``--dry-run`` neither serialises
nor holds any new content, and a write migrates one file at a time."""

LOSSY_LISTED: Final = 200
"""At most this many lossy items are listed in a plan's dict form (all are counted)."""


@dataclass(slots=True)
class FilePlan:
    """The plan for one collection file.

    Attributes:
        relpath, agent, collection: which file.
        encoding: its encoding (kept when rewritten).
        sha256, size_bytes, mtime_ns: the file as planned (to notice a change before writing).
        items: number of items.
        versions: items per source version.
        changed: items that move to another version (the file is rewritten when > 0).
        lost: items a downgrade loses data from: ``[{"index", "id", "lost": [JSON pointers]}]``.
        new_bytes: the new content, or ``None`` (unchanged, over the memory budget, or written to a file
            as it was made: see ``written_sha256``).
        written_sha256: hex SHA-256 of the new content when :func:`plan_file` wrote it to its ``out`` file
            (``new_bytes`` is then ``None``), else ``None``.
    """

    relpath: str
    agent: str
    collection: str
    encoding: Encoding
    sha256: str
    size_bytes: int
    mtime_ns: int
    items: int
    versions: dict[str, int]
    changed: int
    lost: list[dict[str, Any]] = field(default_factory=list)
    new_bytes: bytes | None = None
    written_sha256: str | None = None

    @property
    def writes(self) -> bool:
        """The file is rewritten."""
        return self.changed > 0


@dataclass(slots=True)
class Plan:
    """A whole migration, planned.

    Attributes:
        store_id, root: the store.
        target: the version to reach.
        now: the run's bookkeeping instant (aware UTC).
        force: lossy downgrades allowed.
        files: one :class:`FilePlan` per readable collection file, sorted by path.
        problems: files left alone: ``{"path", "relpath", "offset", "code", "reason"}`` (codes of
            :class:`~aml.store.documents.DocumentError`, plus ``unknown_version`` and
            ``legacy_conflict``).
        claimed: ``version`` of ``config/schema_version.json`` (``None`` without one).
        schema_doc: that file's content (``None`` without one).
        schema_error: that file exists but cannot be read (it is then never overwritten).
        journal: an interrupted migration found in the store, or ``None``.
    """

    store_id: str
    root: Path
    target: ItemVersion
    now: datetime
    force: bool
    files: list[FilePlan] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    claimed: str | None = None
    schema_doc: dict[str, Any] | None = None
    schema_error: dict[str, Any] | None = None
    journal: Journal | None = None

    @property
    def writes(self) -> list[FilePlan]:
        """Files to rewrite."""
        return [f for f in self.files if f.writes]

    @property
    def versions(self) -> dict[str, int]:
        """Items per source version over all files."""
        total: Counter[str] = Counter()
        for f in self.files:
            total.update(f.versions)
        return dict(sorted(total.items()))

    @property
    def lossy(self) -> list[dict[str, Any]]:
        """Every item that would lose data: ``{"path", "index", "id", "lost"}``."""
        return [{"path": f.relpath, **entry} for f in self.files for entry in f.lost]

    @property
    def refused(self) -> bool:
        """A downgrade would lose data and ``force`` is off: nothing may be written."""
        return not self.force and any(f.lost for f in self.files)

    @property
    def source_label(self) -> str:
        """What the store held before: its claimed version when the data agrees, else the data's
        version (``"mixed"`` when several)."""
        data = version_of(self.versions)
        claim = self.claimed or DEFAULT_VERSION
        if data is None or data == claim:
            return claim
        return data

    @property
    def schema_needs_write(self) -> bool:
        """``config/schema_version.json`` must be (re)written: files change, a journal is open, or the
        claim differs from the target. Never when the file exists but cannot be read."""
        if self.schema_error is not None:
            return False
        if self.writes or self.journal is not None:
            return True
        if self.claimed is None:
            return self.target != DEFAULT_VERSION
        return self.claimed != self.target

    @property
    def changes_nothing(self) -> bool:
        """Carrying out the plan would write nothing (already at the target, no journal to finish)."""
        return not self.writes and not self.schema_needs_write and self.journal is None

    def counts(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{agent: {collection: {"items", "changed", "from": {version: n}}}}``."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for f in self.files:
            out.setdefault(f.agent, {})[f.collection] = {"items": f.items, "changed": f.changed,
                                                         "from": f.versions}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: target, counts per agent, files to write, lossy items, problems."""
        lossy = self.lossy
        return {
            "store": self.store_id,
            "target": self.target,
            "claimed": self.claimed,
            "source": self.source_label,
            "versions": self.versions,
            "records": sum(f.items for f in self.files),
            "records_changed": sum(f.changed for f in self.files),
            "files": len(self.files),
            "files_to_write": [f.relpath for f in self.writes],
            "schema_write": self.schema_needs_write,
            "agents": self.counts(),
            "lossy_count": len(lossy),
            "lossy": lossy[:LOSSY_LISTED],
            "refused": self.refused,
            "force": self.force,
            "problems": self.problems,
            "schema_error": self.schema_error,
            "journal": self.journal.summary() if self.journal is not None else None,
        }


def plan_file(root: Path, relpath: str, agent: str, collection: str, agents: frozenset[str],
              target: ItemVersion, ctx: StepContext, *, keep_bytes: bool = True,
              check_loss: bool = True, planned: FilePlan | None = None, out: BinaryIO | None = None) -> FilePlan:
    """Plan one collection file.

    The file is read once and its items parsed one at a time (:func:`_plan_streamed`); without
    ``keep_bytes`` an upgraded item is only counted, not built (in one C pass over the bytes when it can:
    :mod:`aml.migrate.lean`). A file that pass cannot vouch for
    (invalid JSON, a non-object item, an unknown version, a broken ``aml_legacy``, any error) is
    planned by :func:`_plan_full` instead, which reports it exactly as it always did. The result is
    the same :class:`FilePlan` either way.

    Args:
        root: store root.
        relpath, agent, collection: the file (from :func:`aml.migrate.files.collection_files`).
        agents: the store's agents.
        target: the version to reach.
        ctx: the run's context.
        keep_bytes: keep the new content in the plan.
        check_loss: check downgraded items for loss.
        planned: the file's plan from earlier in the run: when the file still is what was planned
            (:func:`same_as_planned`), its loss check is not done again (``lost`` is then empty).
        out: with ``keep_bytes``, a binary file (empty, open for writing) that receives the new content
            as it is made, encoded as the file is (:class:`aml.store.rewrite.TextSink`), instead of
            keeping it in the plan: memory then holds the file's text, not its new bytes as well. The
            plan's ``written_sha256`` is set when something was written (nothing when no item changes).

    Returns:
        The :class:`FilePlan`.

    Raises:
        DocumentError: the file cannot be read or parsed; ``code`` is ``unknown_version`` when an
            item declares a version aml does not know, ``legacy_conflict`` when an item's
            ``metadata.aml_legacy`` is not aml's.
    """
    read = read_collection(root, relpath)
    if planned is not None and same_as_planned(planned, read.stat.st_size, read.stat.st_mtime_ns, sha256(read.raw)):
        check_loss = False
    sink = None
    if out is not None and keep_bytes:
        sink = TextSink(out, read.encoding, gzip_level_of(read.raw) if read.encoding == "gzip" else None)
    streamed = _plan_streamed(read, agent, collection, target, ctx, keep_bytes=keep_bytes, check_loss=check_loss,
                              sink=sink)
    if streamed is not None:
        return streamed
    full = _plan_full(parse_collection(read, agents), agent, collection, target, ctx, keep_bytes=keep_bytes,
                      check_loss=check_loss)
    if sink is not None and out is not None:
        sink.reset()  # the streaming pass may have written part of the file before it gave up
        if full.new_bytes is not None:
            out.write(full.new_bytes)
            full.written_sha256, full.new_bytes = sha256(full.new_bytes), None
    return full


def same_as_planned(planned: FilePlan, size: int, mtime_ns: int, digest: str) -> bool:
    """A file read with this ``size``, ``mtime_ns`` and SHA-256 ``digest`` is the one ``planned`` was
    made from (same size, same mtime, same content)."""
    return (size, mtime_ns, digest) == (planned.size_bytes, planned.mtime_ns, planned.sha256)


def _plan_full(loaded: LoadedFile, agent: str, collection: str, target: ItemVersion, ctx: StepContext, *,
               keep_bytes: bool, check_loss: bool) -> FilePlan:
    """The reference plan of one file: every item migrated in full from the parsed document, the new
    content spliced by :func:`aml.migrate.files.render`.

    Args:
        loaded: the file, parsed and shape-checked.
        agent, collection: the file.
        target: the version to reach.
        ctx: the run's context.
        keep_bytes: keep the new content in the plan.
        check_loss: check downgraded items for loss.

    Returns:
        The :class:`FilePlan`.

    Raises:
        ItemProblem: an item of unknown version, or with a ``metadata.aml_legacy`` that is not aml's.
    """
    kind = KIND_OF_COLLECTION[collection]
    versions: Counter[str] = Counter()
    new_items: dict[int, Any] = {}
    lost: list[dict[str, Any]] = []
    for index, item in enumerate(loaded.data):
        try:
            result = migrate_item(item, kind, target, ctx, check_loss=check_loss)
        except UnknownItemVersion as exc:
            raise ItemProblem(loaded.path, index, str(exc), "unknown_version", loaded.relpath) from exc
        except ValueError as exc:  # metadata.aml_legacy that is not aml's
            raise ItemProblem(loaded.path, index, str(exc), "legacy_conflict", loaded.relpath) from exc
        versions[result.source] += 1
        if result.changed:
            new_items[index] = result.item
        if result.lost:
            lost.append({"index": index, "id": item.get("id"), "lost": result.lost})
    new_bytes = render(loaded, new_items) if new_items and keep_bytes else None
    return FilePlan(loaded.relpath, agent, collection, loaded.encoding, loaded.sha256, loaded.size_bytes,
                    loaded.mtime_ns, len(loaded.data), dict(sorted(versions.items())), len(new_items), lost,
                    new_bytes)


_V12: Final = VERSIONS.index("1.2.0")


def _plan_streamed(read: RawFile, agent: str, collection: str, target: ItemVersion, ctx: StepContext, *,
                   keep_bytes: bool, check_loss: bool, sink: TextSink | None = None) -> FilePlan | None:
    """The plan of one file from one streaming pass over its text (:func:`aml.migrate.files.iter_spans`:
    one item in memory at a time), or ``None`` when the file needs :func:`_plan_full`. A lean plan (no
    ``keep_bytes``) is first tried in one C pass over the bytes (:func:`aml.migrate.lean.lean_counts`), which
    gives the same counts when it can vouch for the file and leaves it to this pass otherwise.

    With ``keep_bytes``, every changed item is migrated and its new text
    (:func:`aml.store.rewrite.dumps_element`, at the column the old one started at) replaces the old
    one's span, every other character kept: the text :func:`aml.migrate.files.render` splices.

    Without it (lean), an item already at the target is only counted, and an upgraded item is
    counted as changed without being migrated: an upgrade walk (:func:`aml.migrate.chain.walk`) can
    only fail in two places, and both are checked here: ``StepContext.stamp`` (called where the walk
    adds Loom's ``metadata``, so it is called here for the same items) and ``put_legacy`` on a
    ``metadata.aml_legacy`` that is not an object (such an item is migrated in full). A stamp in one
    of Loom's two timestamp forms (:func:`aml.migrate.steps.loom_style`) is the same for every item,
    so it is formatted once. A downgraded item is migrated in full, for its loss check.

    Any exception sends the file to :func:`_plan_full`, which raises the error the file has always
    been reported with (its errors come in the order of that pass: JSON, then shape, then items).

    Args:
        read: the file's bytes (:func:`aml.migrate.files.read_collection`).
        agent, collection: the file.
        target: the version to reach.
        ctx: the run's context.
        keep_bytes: build the new content.
        check_loss: check downgraded items for loss.
        sink: with ``keep_bytes``, where the new content goes as it is made (the plan's ``written_sha256``
            is then set and ``new_bytes`` is not); ``None``: it is kept in the plan. After ``None`` is
            returned the sink may hold part of the content.

    Returns:
        The plan, or ``None``.
    """
    kind = KIND_OF_COLLECTION[collection]
    wanted = VERSIONS.index(target)
    stamps = wanted >= _V12 and not keep_bytes
    position = {v: n for n, v in enumerate(VERSIONS)}
    versions: Counter[str] = Counter()
    lost: list[dict[str, Any]] = []
    changed = items = 0
    pieces: list[str] = []  # the new text: unchanged stretches of the old one, and new items
    emit = pieces.append if sink is None else sink.write

    def emit_range(start: int, end: int | None = None) -> None:  # an unchanged stretch of the old text
        if sink is None:
            pieces.append(text[start:end])
        else:
            sink.write_range(text, start, len(text) if end is None else end)
    heads: dict[str, str] = {}  # the text of each key, for dumps_element
    copied = scanned = line_start = 0
    if not keep_bytes:  # counts only: one C pass over the bytes when it can vouch for the file
        try:
            if stamps:
                for stamp_style in (TS_STYLE, PY_AWARE_STYLE):
                    ctx.stamp_as(stamp_style)
            counted = lean_counts(read.decoded, target, ctx, stamps=stamps)
        except Exception:  # e.g. a stamp that cannot be made: the streamed pass decides, as for any error there
            counted = None
        if counted is not None:
            st = read.stat
            return FilePlan(read.relpath, agent, collection, read.encoding, sha256(read.raw), st.st_size,
                            st.st_mtime_ns, counted[0], counted[1], counted[2], [], None, None)
    try:
        doc = document_text(read.raw, read.stat, read.decoded, read.encoding, read.path)
        text = doc.text
        style = detect_json_style(text) if keep_bytes else LOOM_STYLE
        if stamps:
            for stamp_style in (TS_STYLE, PY_AWARE_STYLE):
                ctx.stamp_as(stamp_style)
        for index, (start, end, item) in enumerate(iter_spans(text)):
            if type(item) is not dict:
                return None
            if keep_bytes:
                result = migrate_item(item, kind, target, ctx, check_loss=check_loss)
                source = result.source
                if result.changed:
                    changed += 1
                    newline = text.rfind("\n", scanned, start)  # the line the item starts on
                    if newline >= 0:
                        line_start = newline + 1
                    scanned = start
                    lead = text[line_start:start]
                    emit_range(copied, start)
                    emit(dumps_element(result.item, style, lead[: len(lead) - len(lead.lstrip(" \t"))], heads))
                    copied = end
                if result.lost:
                    lost.append({"index": index, "id": item.get("id"), "lost": result.lost})
                versions[source] += 1
                items += 1
                continue
            source = item_version(item)
            versions[source] += 1
            items += 1
            at = position[source]
            if at == wanted:
                continue
            changed += 1
            meta = item.get("metadata")
            if at > wanted:
                result = migrate_item(item, kind, target, ctx, check_loss=check_loss)
                if result.lost:
                    lost.append({"index": index, "id": item.get("id"), "lost": result.lost})
            elif type(meta) is dict:
                if LEGACY_KEY in meta and type(meta[LEGACY_KEY]) is not dict:
                    migrate_item(item, kind, target, ctx, check_loss=check_loss)
            elif stamps and loom_style(item.get("timestamp")) is None:
                ctx.stamp(item)  # the walk stamps it; in Loom's two forms that is formatted once, above
        new_bytes = written = None
        if keep_bytes and changed:
            emit_range(copied)
            if sink is None:
                new_bytes = doc.encoded("".join(pieces))
            else:
                written = sink.close()
    except OSError:  # writing to the sink failed (disk full): not a reason to build the content in memory
        raise
    except Exception:  # _plan_full reports it (or plans the file)
        return None
    st = read.stat
    return FilePlan(read.relpath, agent, collection, read.encoding, sha256(read.raw), st.st_size, st.st_mtime_ns,
                    items, dict(sorted(versions.items())), changed, lost, new_bytes, written)


class ItemProblem(DocumentError):
    """A readable collection file holding an item aml cannot migrate; the file is left alone.

    Attributes:
        index: the item's position in the file.
        problem: ``"unknown_version"`` or ``"legacy_conflict"`` (reported as the problem's code).
    """

    def __init__(self, path: Path, index: int, reason: str, problem: str, relpath: str) -> None:
        super().__init__(path, None, f"item {index}: {reason}", relpath=relpath)
        self.index = index
        self.problem = problem


def problem_of(exc: DocumentError) -> dict[str, Any]:
    """The report entry of a file left alone: ``DocumentError.as_dict()``, with ``code`` naming an
    :class:`ItemProblem`'s problem."""
    entry = exc.as_dict()
    if isinstance(exc, ItemProblem):
        entry["code"] = exc.problem
        entry["item"] = exc.index
    return entry


def build_plan(root: str | os.PathLike[str], target: str | None = None, *, force: bool = False,
               now: datetime | None = None, keep_bytes_limit: int = DEFAULT_KEEP_BYTES,
               check_loss: bool = True) -> Plan:
    """Plan the migration of a store to ``target``. Reads every collection file; writes nothing.

    Args:
        root: the store directory.
        target: the version to reach (``None``: :data:`~aml.migrate.versions.LATEST`).
        force: allow downgrades that lose data (they are still listed).
        now: the bookkeeping instant (default: the interrupted run's, when resuming to the same
            target, else the current time).
        keep_bytes_limit: keep new contents up to this many bytes in total (default
            :data:`DEFAULT_KEEP_BYTES`: none; files are then planned lean).
        check_loss: check downgraded items for loss (turning it off also turns off the refusal).

    Returns:
        The :class:`Plan`.

    Raises:
        ValueError: unknown target version.
        FileNotFoundError, NotADirectoryError: ``root`` is not a directory.
        aml.migrate.journal.JournalError: an unreadable journal is in the way.
    """
    wanted = check_version(target) if target is not None else LATEST
    store = FileStore(root)
    journal = Journal.load(store.root)
    if now is None:
        now = journal.now if journal is not None and journal.target == wanted else now_utc()
    ctx = StepContext(now)
    plan = Plan(store.store_id, store.root, wanted, now, force, journal=journal)
    schema, schema_error = read_schema_file(store.root)
    plan.schema_doc = schema
    if schema is not None and isinstance(schema.get("version"), str):
        plan.claimed = schema["version"]
    if schema_error is not None:
        plan.schema_error = schema_error.as_dict()
        plan.problems.append(problem_of(schema_error))
    agents = frozenset(store.agents())
    kept = 0
    for relpath, agent, collection in collection_files(store):
        try:
            fp = plan_file(store.root, relpath, agent, collection, agents, wanted, ctx,
                           keep_bytes=kept < keep_bytes_limit, check_loss=check_loss)
        except DocumentError as exc:
            plan.problems.append(problem_of(exc))
            continue
        kept += len(fp.new_bytes or b"")
        plan.files.append(fp)
    return plan


def schema_sha(root: Path) -> str:
    """SHA-256 of ``config/schema_version.json`` as it is on disk, ``""`` when absent."""
    try:
        return sha256((root / SCHEMA_FILE).read_bytes())
    except FileNotFoundError:
        return ""
