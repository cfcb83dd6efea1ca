"""``migrate detect``: the schema version of every agent and collection of a store. Writes nothing.

Loom's ``MigrationManager.detect_version`` trusts ``config/schema_version.json`` and otherwise looks
at the first pattern of whichever agent directory ``iterdir`` lists first. aml reads every item of
every collection file, reports the versions it finds per agent and collection, says when a store is
mixed, and compares the data with what ``schema_version.json`` claims.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aml.migrate.chain import UnknownItemVersion, item_version
from aml.migrate.files import SCHEMA_FILE, collection_files, read_schema_file
from aml.migrate.journal import JOURNAL_FILE, Journal, JournalError
from aml.migrate.versions import DEFAULT_VERSION, LATEST, VERSIONS
from aml.store.documents import LAZY_ITEMS_BYTES, DocumentError, read_document
from aml.store.filestore import FileStore


def version_of(counts: Counter[str] | dict[str, int]) -> str | None:
    """The single version of a group of items: ``None`` when empty, ``"mixed"`` when several."""
    present = [v for v, n in counts.items() if n]
    if not present:
        return None
    return present[0] if len(present) == 1 else "mixed"


def count_versions(items: Iterable[Any]) -> Counter[str]:
    """Items per version; an item declaring an unknown version counts as ``"unknown:<value>"``."""
    counts: Counter[str] = Counter()
    for item in items:
        try:
            counts[item_version(item)] += 1
        except UnknownItemVersion as exc:
            counts[f"unknown:{exc.version}"] += 1
    return counts


@dataclass(slots=True)
class Detection:
    """What ``detect`` found.

    Attributes:
        store: the store id.
        claimed: ``version`` of ``config/schema_version.json``, or ``None`` without one.
        versions: items per version over every migrated collection file.
        agents: ``{agent: {collection: {"path", "encoding", "items", "version", "versions"}}}``;
            ``version`` is one version, ``"mixed"``, or ``None`` for an empty file.
        outside_scope: Loom item lists a migration leaves alone (``global/archived-decisions.json``,
            ``backup/`` copies): ``[{"path", "kind", "items", "version", "versions"}]``.
        unparseable: collection files that cannot be read (``DocumentError.as_dict()``).
        schema_error: ``config/schema_version.json`` exists but cannot be read.
        journal: an interrupted migration (``Journal.summary()``; ``{"error", "path"}`` when the
            journal cannot be read), or ``None``.
    """

    store: str
    claimed: str | None = None
    versions: dict[str, int] = field(default_factory=dict)
    agents: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    outside_scope: list[dict[str, Any]] = field(default_factory=list)
    unparseable: list[dict[str, Any]] = field(default_factory=list)
    schema_error: dict[str, Any] | None = None
    journal: dict[str, Any] | None = None

    @property
    def version(self) -> str | None:
        """The data's version: one version, ``"mixed"``, or ``None`` (no items)."""
        return version_of(self.versions)

    @property
    def mixed(self) -> bool:
        """Items of more than one version (or of an unknown one) in the migrated collections."""
        return self.version == "mixed"

    @property
    def effective_claim(self) -> str:
        """What the store claims: ``schema_version.json``'s version, else Loom's default 1.0.0."""
        return self.claimed or DEFAULT_VERSION

    @property
    def consistent(self) -> bool:
        """The data is all at the claimed version (or empty), every file was read, and no migration
        is half done."""
        data = self.version
        return (data is None or data == self.effective_claim) and not self.unparseable \
            and self.journal is None and self.schema_error is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with ``version``, ``mixed``, ``consistent`` and ``latest`` added."""
        return {
            "store": self.store,
            "version": self.version,
            "claimed": self.claimed,
            "claimed_file": SCHEMA_FILE if self.claimed is not None else None,
            "mixed": self.mixed,
            "consistent": self.consistent,
            "latest": LATEST,
            "known_versions": list(VERSIONS),
            "versions": dict(sorted(self.versions.items())),
            "agents": self.agents,
            "outside_scope": self.outside_scope,
            "unparseable": self.unparseable,
            "schema_error": self.schema_error,
            "journal": self.journal,
        }


def detect(root: str | os.PathLike[str]) -> Detection:
    """Detect the schema versions of a file store. Reads every collection file; writes nothing.

    Args:
        root: the store directory (e.g. ``project/.loom/memory``).

    Returns:
        A :class:`Detection`.

    Raises:
        FileNotFoundError, NotADirectoryError: ``root`` is not a directory.
    """
    store = FileStore(root)
    result = Detection(store.store_id)
    schema, schema_error = read_schema_file(store.root)
    if schema is not None:
        claimed = schema.get("version")
        result.claimed = claimed if isinstance(claimed, str) else None
    if schema_error is not None:
        result.schema_error = schema_error.as_dict()
    agents = frozenset(store.agents())
    total: Counter[str] = Counter()
    for relpath, agent, collection in collection_files(store):
        # a large collection is read item by item (LazyItems): its bytes and one item in memory
        doc = read_document(store.root / relpath, relpath, loom_agents=agents, lazy_items=LAZY_ITEMS_BYTES)
        if doc.error is not None:
            result.unparseable.append(doc.error.as_dict())
            continue
        counts = count_versions(doc.data)
        total.update(counts)
        result.agents.setdefault(agent, {})[collection] = {
            "path": relpath, "encoding": doc.encoding, "items": len(doc.data),
            "version": version_of(counts), "versions": dict(sorted(counts.items())),
        }
    result.versions = dict(total)
    result.outside_scope = _outside_scope(store)
    try:
        journal = Journal.load(store.root)
        result.journal = journal.summary() if journal is not None else None
    except JournalError as exc:
        result.journal = {"error": str(exc), "path": JOURNAL_FILE}
    return result


def _outside_scope(store: FileStore) -> list[dict[str, Any]]:
    """Loom item lists that migrations leave alone, with their versions."""
    out: list[dict[str, Any]] = []
    for top in ("global", "backup"):
        base = store.root / top
        if not base.is_dir() or base.is_symlink():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                relpath = Path(dirpath, name).relative_to(store.root).as_posix()
                try:
                    doc = store.read_document(relpath)
                except (DocumentError, ValueError):
                    continue
                if doc.kind not in ("loom_archive", "loom_item_copy") or not isinstance(doc.data, list):
                    continue
                counts = count_versions([i for i in doc.data if isinstance(i, dict)])
                out.append({"path": relpath, "kind": doc.kind, "items": len(doc.data),
                            "version": version_of(counts), "versions": dict(sorted(counts.items()))})
    return out
