"""Taking a snapshot of a file store (restic's archiver, sized for many small files).

Write order (restic's rule), so a killed backup leaves at most unreferenced packs, never a visible broken
snapshot: packs (each fsynced) -> one index file for the new packs -> manifest body -> manifest header
(atomic, no-clobber link: the commit point) -> ``backup_metadata.json``.

Hot path: one scan (``scandir`` + ``lstat``), then per file ``openat(O_NOFOLLOW)``, one ``read``,
``fstat`` (the file must still be as scanned, else it is re-read with care), ``close``; sha256 of the
bytes; objects not yet in the repository are zstd-compressed into an in-memory pack that is written
once it reaches the pack size. No per-file fsync, no per-object file.

Every kind of entry a store holds is kept: regular files (content, mode, mtime), directories (empty
ones too, with mode and mtime), symlinks as links (``readlink``; never followed), names with any bytes
(exact; see :mod:`aml.backup.manifest`). Fifos, sockets and devices are listed in ``errors``, not stored.
Excluded paths (:mod:`aml.backup.excludes`: aml's derived files by default, plus ``excludes``) are not
descended into nor stored.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import os
import stat
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zstandard

from aml.procpool import ordered_map, worker_processes
from aml.store.atomic import atomic_write
from aml.store.documents import AGENT_FILES, base_name, read_document
from aml.store.names import text_names
from aml.store.timestamps import require_timestamp, utc_iso_z

from . import crypto, remote
from ._common import TMP_PREFIX, hostname
from ._fs import DirFds, open_root
from .errors import BackupError, CorruptionError, SnapshotNotFound
from .excludes import Excludes
from .fileread import READ_FLAGS, read_ahead
from .index import load_index, write_index
from .manifest import DirTable, FileTable, LinkTable, Manifest, load_manifest, read_header, write_manifest
from .pack import Dictionary, PackWriter, train_dictionary
from .progress import ProgressCallback, Reporter
from .repository import Repository, as_repository, local_collector_paused
from .summary import read_summary, summary_entry, update_summary

NON_AGENT_DIRS = frozenset({"global", "config", "monitoring", "audit", "backup"})
"""Top-level directories of a Loom store that are not agents (DESIGN.md, Memory stores)."""

_FOREIGN_KINDS = frozenset({"aitor_session", "tinytroupe_spec", "tinytroupe_cache"})
"""Document kinds that make a folder a folder of sessions or specs, not an agent (``aml.store.documents``)."""

__all__ = ["NON_AGENT_DIRS", "SnapshotResult", "create_snapshot", "scan_store", "summary_agents"]


@dataclass
class SnapshotResult:
    """What :func:`create_snapshot` did. Sizes in bytes, durations in seconds, times ISO 8601 UTC.

    Attributes:
        backup_id: the new snapshot's id.
        backup_type: ``"full"`` or ``"incremental"`` (an incremental without a usable parent is full).
        parent_backup_id: snapshot used for change detection, if any.
        time: backup start time.
        source_path: absolute store path.
        repository: absolute repository path.
        file_count, dir_count, link_count, total_size_bytes: what the snapshot contains (regular files,
            directories, symlinks; bytes of the files).
        files_read, bytes_read: files whose content was read (not skipped as unchanged).
        files_unchanged: files taken from the parent manifest without reading.
        objects_added, bytes_added: new objects stored (uncompressed bytes).
        stored_bytes: bytes of new pack files written.
        packs_written: number of new pack files.
        index_id: the new index file, or None if no pack was written.
        errors: ``[{"path", "reason"}]``: entries not stored (unreadable, special file such as a fifo).
        warnings: ``[{"path", "reason"}]``: files stored but changed while being read (restic's rule:
            the entry holds exactly the bytes read, its size and sha256 describe them, and its mtime is
            the scan's so the next incremental reads the file again). The manifest counts them in
            ``stats["files_changed_during_read"]``.
        skipped_temp: aml temporary files (``.aml-tmp-*``) skipped.
        excluded: entries left out by an exclude pattern (an excluded directory counts once).
        excludes: the patterns applied (:mod:`aml.backup.excludes`), recorded in the manifest.
        agents: agent directories found.
        tags, description: as given.
        duration_seconds: wall time.
    """

    backup_id: str
    backup_type: str
    parent_backup_id: str | None
    time: str
    source_path: str
    repository: str
    file_count: int
    dir_count: int
    total_size_bytes: int
    files_read: int
    bytes_read: int
    files_unchanged: int
    objects_added: int
    bytes_added: int
    stored_bytes: int
    packs_written: int
    index_id: str | None
    errors: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    skipped_temp: int = 0
    agents: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    description: str | None = None
    duration_seconds: float = 0.0
    link_count: int = 0
    excluded: int = 0
    excludes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (names that are not valid UTF-8 escaped as ``\\xNN``)."""
        return text_names(asdict(self))


@dataclass
class _Scan:
    files: list[tuple[str, int, int, int, int]]  # path, size, mtime_ns, mode, inode
    dirs: list[tuple[str, int, int]]  # path, mode, mtime_ns
    errors: list[dict[str, str]]
    skipped_temp: int
    links: list[tuple[str, str, int]] = field(default_factory=list)  # path, target, mtime_ns
    excluded: int = 0


def scan_store(
    store_root: str | os.PathLike[str],
    *,
    exclude: Iterable[str | os.PathLike[str]] = (),
    patterns: Excludes | None = None,
) -> tuple[list[tuple[str, int, int, int, int]], list[tuple[str, int, int]], list[dict[str, str]], int]:
    """Walk a store without following symlinks.

    Args:
        store_root: the store directory.
        exclude: directories to leave out (e.g. a repository inside the store).
        patterns: exclude patterns (default: none).

    Returns:
        ``(files, dirs, errors, skipped_temp)``: files as ``(path, size, mtime_ns, mode, inode)`` and dirs
        as ``(path, mode, mtime_ns)``, paths relative and ``/``-separated, both sorted by path; errors as
        ``{"path", "reason"}`` for special files and unreadable directories or links; the number of
        ``.aml-tmp-*`` files skipped. (Symlinks are not in this summary; backups store them.)
    """
    s = _scan(os.path.realpath(os.fspath(store_root)), exclude, patterns or Excludes(defaults=False))
    return s.files, s.dirs, s.errors, s.skipped_temp


SCAN_WORKERS = 2
"""Worker processes that scan the store's top-level directories (:mod:`~aml.procpool`; the scan is
one ``lstat`` per entry plus the Python around it: a second process takes a third off a 100,000-file scan)."""

SCAN_PARALLEL_AFTER = 20_000
"""Entries the scan finds by itself before it hands the remaining top-level directories to
:data:`SCAN_WORKERS` processes (about a tenth of a second of scanning: less would not repay the fork)."""


def _scan(root: str, exclude: Iterable[str | os.PathLike[str]], patterns: Excludes) -> _Scan:
    """Scan ``root``: its own entries here, then its top-level directories' trees, one after the other until
    :data:`SCAN_PARALLEL_AFTER` entries are found, the rest by :data:`SCAN_WORKERS` worker processes where
    they can be forked (else here). Lists sorted by path, errors too."""
    excluded: set[tuple[int, int]] = set()
    for ex in exclude:
        try:
            st = os.stat(ex)
            excluded.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    out = _Scan([], [], [], 0)
    subdirs: list[tuple[str, str]] = []
    _scan_into(out, [("", root)], excluded, patterns, subdirs)
    # top-level trees scanned here until SCAN_PARALLEL_AFTER entries are seen: a small store never forks
    while subdirs and len(out.files) + len(out.dirs) < SCAN_PARALLEL_AFTER:
        _scan_into(out, [subdirs.pop()], excluded, patterns)
    if worker_processes(SCAN_WORKERS, len(subdirs)) > 1:
        with ordered_map(functools.partial(_scan_tree, excluded=excluded, patterns=patterns), subdirs,
                         workers=SCAN_WORKERS) as parts:
            for part in parts:
                out.files += part.files
                out.dirs += part.dirs
                out.links += part.links
                out.errors += part.errors
                out.skipped_temp += part.skipped_temp
                out.excluded += part.excluded
    else:
        _scan_into(out, subdirs, excluded, patterns)
    out.files.sort()
    out.dirs.sort()
    out.links.sort()
    out.errors.sort(key=lambda e: e["path"])
    return out


def _scan_tree(start: tuple[str, str], *, excluded: set[tuple[int, int]], patterns: Excludes) -> _Scan:
    """The scan of one directory's tree (``(relative path, absolute path)``), unsorted (a worker's part)."""
    out = _Scan([], [], [], 0)
    _scan_into(out, [start], excluded, patterns)
    return out


def _scan_into(out: _Scan, stack: list[tuple[str, str]], excluded: set[tuple[int, int]], patterns: Excludes,
               subdirs: list[tuple[str, str]] | None = None) -> None:
    """Add the entries of the directories on ``stack`` (``(relative path, absolute path)``) to ``out``, and
    of their subdirectories; with ``subdirs``, the subdirectories found are put there instead, unread."""
    files, dirs, links, errors = out.files, out.dirs, out.links, out.errors
    pending = stack if subdirs is None else subdirs
    skipped = n_excluded = 0
    while stack:
        rel_dir, abs_dir = stack.pop()
        try:
            it = os.scandir(abs_dir)
        except OSError as exc:
            errors.append({"path": rel_dir or ".", "reason": f"directory not readable: {exc.strerror or exc}"})
            continue
        prefix = rel_dir + "/" if rel_dir else ""
        slashed = "/" + prefix
        match = patterns.for_dir(rel_dir)  # None: no pattern can match here (one check per directory)
        with it:
            for entry in it:
                name = entry.name
                if name.startswith(TMP_PREFIX):
                    skipped += 1
                    continue
                if match is not None and match(slashed + name):
                    n_excluded += 1
                    continue
                rel = prefix + name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        if (st.st_dev, st.st_ino) in excluded:
                            continue
                        dirs.append((rel, st.st_mode & 0o7777, st.st_mtime_ns))
                        pending.append((rel, entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        files.append((rel, st.st_size, st.st_mtime_ns, st.st_mode & 0o7777, st.st_ino))
                    elif entry.is_symlink():
                        st = entry.stat(follow_symlinks=False)
                        links.append((rel, os.readlink(entry.path), st.st_mtime_ns))
                    else:
                        errors.append({"path": rel, "reason": "not a regular file, directory or symlink: not stored"})
                except OSError as exc:
                    errors.append({"path": rel, "reason": f"cannot stat: {exc.strerror or exc}"})
    out.skipped_temp += skipped
    out.excluded += n_excluded


def summary_agents(
    root: str,
    files: list[tuple[str, int, int, int, int]],
    dirs: list[tuple[str, int, int]],
) -> list[str]:
    """The agents of a backup summary: the store's top-level directories, minus folders of sessions or specs.

    A top-level directory is an agent unless it is one of :data:`NON_AGENT_DIRS`, hidden, or a folder of
    Aitor sessions / TinyTroupe specifications (and caches): it holds no Loom agent file (the rule of
    :func:`aml.store.filestore.holds_agent_files`, applied to the scan: a direct ``patterns.json``...
    or a ``sessions/`` directory), and every JSON document below it is classified by aml's reader as an
    Aitor session, a TinyTroupe spec or a TinyTroupe cache (at least one; files that are not JSON do not
    count; a file that fails to read or parse keeps the directory an agent). Loom agent directories are
    recognised from the scan alone; another directory's documents are read until the first one that is
    not a session or spec, so a Loom-like directory of other JSON costs one read.

    Args:
        root: the store's resolved path.
        files: the scan's files ``(path, size, mtime_ns, mode, inode)``, sorted by path.
        dirs: the scan's directories ``(path, mode, mtime_ns)``, sorted by path.

    Returns:
        The agent directory names, sorted.
    """
    with_sessions = {d[0][: -len("/sessions")] for d in dirs if d[0].count("/") == 1 and d[0].endswith("/sessions")}
    agents: list[str] = []
    for rel_dir, _mode, _mtime in dirs:
        if "/" in rel_dir or rel_dir in NON_AGENT_DIRS or rel_dir.startswith("."):
            continue
        if rel_dir in with_sessions or not _only_sessions_or_specs(root, rel_dir, files):
            agents.append(rel_dir)
    return sorted(agents)


def _only_sessions_or_specs(root: str, top: str, files: list[tuple[str, int, int, int, int]]) -> bool:
    """True if ``top`` holds no Loom agent file, and its JSON documents are all sessions/specs (at least one)."""
    prefix = top + "/"
    lo = bisect_left(files, prefix, key=lambda f: f[0])
    hi = bisect_left(files, top + chr(ord("/") + 1), lo=lo, key=lambda f: f[0])
    mine = [f[0] for f in files[lo:hi]]
    if any("/" not in rel[len(prefix) :] and base_name(rel[len(prefix) :]) in AGENT_FILES for rel in mine):
        return False
    found = False
    for rel in mine:
        doc = read_document(Path(root, rel), rel)
        if doc.error is None and doc.kind == "opaque":
            continue
        if doc.error is not None or doc.kind not in _FOREIGN_KINDS:
            return False
        found = True
    return found


def _find_parent(repo: Repository, parent: str | None, source: str) -> Manifest | None:
    root = repo.path
    if parent is not None:
        try:
            return load_manifest(root, parent)
        except SnapshotNotFound as exc:
            raise SnapshotNotFound(f"parent snapshot {parent!r} not found (legacy backups cannot be parents)") from exc
    candidates: list[Manifest] = []
    for backup_id in repo.snapshot_ids():
        try:
            m = read_header(root, backup_id)
        except (CorruptionError, SnapshotNotFound):
            continue
        if m.source_path == source:
            candidates.append(m)
    for m in sorted(candidates, key=lambda m: (m.time, m.backup_id), reverse=True):
        try:
            return load_manifest(root, m.backup_id)
        except CorruptionError:
            continue  # a damaged parent only costs re-reading: try an older one
    return None


class _NotRegular(Exception):
    pass


def _read_stream(
    fd: int, chunk_size: int, store: Callable[[str, bytes], None], hasher: Callable[..., Any] = hashlib.sha256
) -> tuple[str, int, list[str], os.stat_result, bool]:
    """Read an open file from offset 0 to its end, in objects of at most ``chunk_size`` bytes.

    The path for files that are large, or were not as scanned: every object is handed to ``store`` as it
    is read, so memory stays bounded by ``chunk_size`` whatever the file grew to. The result describes
    exactly the bytes read (restic's rule: store what was read, and say so if it was not stable).

    Args:
        fd: a file descriptor opened for reading.
        chunk_size: the repository's maximum object size.
        store: called with ``(sha256 hex, bytes)`` for every object, in file order.
        hasher: makes ids: ``hashlib.sha256``, or the keyed hash of an encrypted repository.

    Returns:
        ``(sha256, size, chunk_ids, before, stable)``: sha256 and size of all the bytes read, the object
        ids in order (one for a file up to ``chunk_size``), the ``fstat`` taken before the read, and
        whether the read was stable: size and mtime_ns unchanged by the read and equal to the bytes read.

    Raises:
        _NotRegular: the descriptor is no longer a regular file (swapped for a fifo or device).
        OSError: the read failed.
    """
    before = os.fstat(fd)
    if not stat.S_ISREG(before.st_mode):
        raise _NotRegular
    os.lseek(fd, 0, os.SEEK_SET)
    whole = hasher()
    chunk_ids: list[str] = []
    total = 0
    while True:
        data = _read_exact(fd, chunk_size)
        if not data and chunk_ids:
            break
        whole.update(data)
        cid = hasher(data).hexdigest()
        chunk_ids.append(cid)
        total += len(data)
        store(cid, data)
        if len(data) < chunk_size:
            break
    after = os.fstat(fd)
    stable = (
        before.st_size == after.st_size == total
        and before.st_mtime_ns == after.st_mtime_ns
        and before.st_ino == after.st_ino
    )
    return whole.hexdigest(), total, chunk_ids, before, stable


DICT_SAMPLES = 200
"""Files sampled (spread over the store) to train a compression dictionary."""


def _dictionary(
    repo: Repository, files: list[tuple[str, int, int, int, int]], reuse: dict[int, int], dirfds: DirFds
) -> Dictionary | None:
    """The repository's compression dictionary, trained on a sample of the store on first use."""
    ddir = repo.path / "dicts"
    key = crypto.key_for(repo.path)
    hasher = crypto.id_hasher(repo.path)
    try:
        names = sorted(n for n in os.listdir(ddir) if n.endswith(".zdict"))
    except FileNotFoundError:
        names = []
    for name in reversed(names):
        try:
            raw = crypto.unseal_for(key, (ddir / name).read_bytes(), b"dict", f"dicts/{name}")
            found = Dictionary(raw)
        except (OSError, zstandard.ZstdError, CorruptionError):
            continue
        if hasher(raw).hexdigest() == name[:-6]:
            return found
    cands = [i for i, f in enumerate(files) if i not in reuse and 64 <= f[1] <= 128 * 1024]
    if len(cands) < 64:
        return None
    step = max(1, len(cands) // DICT_SAMPLES)
    samples: list[bytes] = []
    for i in cands[::step][:DICT_SAMPLES]:
        rel = files[i][0]
        try:
            fd = dirfds.open_file(rel, READ_FLAGS)
        except (OSError, BackupError):
            continue
        try:
            samples.append(os.read(fd, 128 * 1024))
        except OSError:
            pass
        finally:
            os.close(fd)
    d = train_dictionary(samples)
    if d is not None:
        ddir.mkdir(exist_ok=True)
        name = hasher(d.raw).hexdigest()  # the sha256 of a plain repository's dictionary, keyed if encrypted
        sealed = crypto.seal_for(key, d.raw, b"dict")
        atomic_write(ddir / f"{name}.zdict", sealed, mode=0o444)
        remote.published(repo.path, ddir / f"{name}.zdict", sealed)
    return d


def _taken_names(repo: Repository) -> set[str]:
    try:
        names = set(os.listdir(repo.path))
    except FileNotFoundError:
        names = set()
    doc = read_summary(repo.path)
    if doc:
        names.update(str(b.get("backup_id")) for b in doc["backups"] if isinstance(b, dict))
    return names


@local_collector_paused
def create_snapshot(
    store_root: str | os.PathLike[str],
    repo: Repository | str | os.PathLike[str],
    *,
    incremental: bool,
    parent: str | None = None,
    tags: Iterable[str] = (),
    description: str | None = None,
    progress: ProgressCallback | None = None,
    lock_wait: float = 0.0,
    snapshot_time: datetime | None = None,
    excludes: Iterable[str] = (),
    default_excludes: bool = True,
) -> SnapshotResult:
    """Back up a file store into a repository as one complete, deduplicated snapshot.

    Every file below ``store_root`` is recorded (path relative to the root, sha256, size, mtime_ns, mode,
    inode), every directory (so empty ones are restored), and every symlink as a link (its target, never
    followed). Names are kept byte-exact. Special files (fifos, sockets, devices) and unreadable files are
    listed in the manifest's ``errors`` and not stored. aml temporary files (``.aml-tmp-*``) are skipped.
    A repository located inside the store is excluded, and so are the paths matching the exclude
    patterns (:mod:`aml.backup.excludes`; aml's derived files by default).

    A file that is not as scanned after its read (size, mtime_ns or inode differ) is read again from its
    start, streaming into ``chunk_size`` objects whatever size it grew to. A stable second read is stored
    as read (size, mtime_ns and inode of that read); a file still changing is stored exactly as read and
    named in ``warnings`` (restic's behaviour). Either way the manifest entry's size and sha256 describe
    exactly the stored bytes.

    Args:
        store_root: the store directory.
        repo: the repository (a path is accepted; an uninitialised one is initialised with defaults).
        incremental: reuse the parent manifest's entry, without reading the file, for every file whose
            size, mtime_ns and inode are unchanged. Without a usable parent the backup is full.
        parent: parent backup id (default: the newest aml snapshot of the same source path).
        tags: labels stored in the manifest.
        description: free text stored in the manifest.
        progress: called with :class:`~aml.backup.progress.Progress` events (phase ``"scan"``, then
            ``"backup"``; at most ten per second plus a final one).
        lock_wait: seconds to wait for a conflicting exclusive lock (prune) before failing.
        snapshot_time: record this instant as the snapshot's time (and id) instead of now, like
            restic's ``backup --time`` (imports, tests); naive values are UTC.
        excludes: restic-style exclude patterns (``--exclude``), relative to the store root.
        default_excludes: also exclude aml's own derived files (:data:`~aml.backup.excludes.DEFAULT_EXCLUDES`).

    Returns:
        A :class:`SnapshotResult`.

    Raises:
        ValueError: a malformed exclude pattern (before anything is written).
        BackupError: the store is not a directory.
        SnapshotNotFound: ``parent`` was given and does not exist.
        LockError: an exclusive lock is held.
        OSError: repository write failure (the snapshot is then not visible).
    """
    t0 = time.monotonic()
    patterns = Excludes(excludes, defaults=default_excludes)
    repo = as_repository(repo).open_or_init()
    cfg = repo.config
    root = repo.path
    source = os.path.abspath(os.fspath(store_root))
    if not os.path.isdir(source):
        raise BackupError(f"store {source!r} is not a directory")
    tags = [str(t) for t in tags]
    with repo.lock(exclusive=False, operation="backup", wait=lock_wait) as lock:
        start = datetime.now(UTC) if snapshot_time is None else require_timestamp(snapshot_time)
        parent_m = _find_parent(repo, parent, source) if incremental else None
        backup_type = "incremental" if parent_m is not None else "full"
        index = load_index(root, strict=False, include_damaged=False)

        scan_rep = Reporter(progress, "scan")
        scan = _scan(os.path.realpath(source), [root], patterns)
        scan_rep.state.files_done = scan_rep.state.files_total = len(scan.files)
        scan_rep.state.bytes_done = scan_rep.state.bytes_total = sum(f[1] for f in scan.files)
        scan_rep.done()

        rep = Reporter(progress, "backup")
        st_ = rep.state
        st_.files_total = len(scan.files)
        st_.bytes_total = scan_rep.state.bytes_total

        objects = index.objects
        added: set[str] = set()
        chunk_size = cfg.chunk_size
        errors = list(scan.errors)
        warnings: list[dict[str, str]] = []
        changed = 0
        bytes_added = 0
        pmap: dict[str, int] = {}
        pf: FileTable | None = None
        if parent_m is not None and parent_m.files is not None:
            pf = parent_m.files
            pmap = {p: i for i, p in enumerate(pf.path)}
        sha256 = crypto.id_hasher(root)
        object_id = crypto.id_function(root)
        root_fd = open_root(os.path.realpath(source))
        dirfds = DirFds(root_fd)
        files_read = bytes_read = unchanged = 0
        total_size = 0
        writer: PackWriter | None = None
        workers = contextlib.ExitStack()
        gc_was_enabled = gc.isenabled()
        gc.disable()  # the loop allocates ~10 objects per file and frees none: collections only cost time
        try:
            # which files must be read (the others are unchanged since the parent)
            reuse: dict[int, int] = {}
            if pf is not None and parent_m is not None:
                # objects of the parent the index no longer has (damaged index files): their files are read
                lost = parent_m.referenced_objects().difference(objects)
                psize, pmtime, pinode = pf.size, pf.mtime_ns, pf.inode
                for n, (rel, size, mtime_ns, _mode, ino) in enumerate(scan.files):
                    j = pmap.get(rel)
                    if (
                        j is not None
                        and psize[j] == size
                        and pmtime[j] == mtime_ns
                        and pinode[j] == ino
                        and (not lost or lost.isdisjoint(pf.objects_of(j)))
                    ):
                        reuse[n] = j
            dictionary = _dictionary(repo, scan.files, reuse, dirfds)
            writer = PackWriter(root, target_size=cfg.pack_size, level=cfg.compression_level, dictionary=dictionary)
            add, add_frame = writer.add, writer.add_frame
            # the files to read, read, hashed and compressed ahead by worker processes where that pays
            ready = workers.enter_context(read_ahead(
                root_fd, scan.files, [n for n in range(len(scan.files)) if n not in reuse], known=objects,
                object_id=object_id, dictionary=dictionary, level=cfg.compression_level, chunk_size=chunk_size))
            rows: list[tuple[str, str, int, int, int, int]] = []
            row = rows.append
            chunked: dict[int, list[str]] = {}
            os_read, os_close, os_fstat, open_file = os.read, os.close, os.fstat, dirfds.open_file
            s_isreg = stat.S_ISREG

            def store(oid: str, data: bytes) -> None:
                nonlocal bytes_added
                if oid not in objects and oid not in added:
                    add(oid, data)
                    added.add(oid)
                    bytes_added += len(data)
                lock.maybe_refresh()

            parent_sha = pf.sha256 if pf is not None else []
            parent_chunks = pf.chunks if pf is not None else {}
            for n, (rel, size, mtime_ns, mode, ino) in enumerate(scan.files):
                j = reuse.get(n)
                if j is not None:  # unchanged since the parent: its entry, not read
                    if parent_chunks:
                        objs = parent_chunks.get(j)
                        if objs is not None and len(objs) > 1:
                            chunked[len(rows)] = objs
                    row((rel, parent_sha[j], size, mtime_ns, mode, ino))
                    unchanged += 1
                    total_size += size
                    if not n & 255:
                        st_.files_done = n
                        st_.files_unchanged = unchanged
                        rep.tick()
                    continue
                got = next(ready) if ready is not None else None  # a worker's result for this file
                if got is not None:
                    oid, frame, fsize = got
                    if oid not in objects and oid not in added:
                        if frame is None:
                            got = None  # deduplicated by a worker against what is not stored: read it here
                        else:
                            add_frame(oid, frame, fsize)
                            added.add(oid)
                            bytes_added += fsize
                if got is None:
                    try:
                        fd = open_file(rel, READ_FLAGS)
                    except (OSError, BackupError) as exc:
                        errors.append({"path": rel, "reason": f"cannot open: {getattr(exc, 'strerror', None) or exc}"})
                        continue
                    try:
                        data = os_read(fd, size + 1) if size <= chunk_size else None
                        if data is not None and len(data) == size:
                            fst = os_fstat(fd)
                            if not (
                                fst.st_size == size
                                and fst.st_mtime_ns == mtime_ns
                                and fst.st_ino == ino
                                and s_isreg(fst.st_mode)
                            ):
                                data = None  # changed since the scan: read it again, with care
                        else:
                            data = None
                        if data is not None:  # the hot path: one read, exactly the size scanned, file unchanged
                            fsize = size
                            oid = object_id(data)
                            if oid not in objects and oid not in added:
                                add(oid, data)
                                added.add(oid)
                                bytes_added += fsize
                            del data
                        else:  # large, or not as scanned: stream from offset 0 into chunk_size objects
                            oid, fsize, chunk_ids, before, stable = _read_stream(fd, chunk_size, store, sha256)
                            if len(chunk_ids) > 1:
                                chunked[len(rows)] = chunk_ids
                            if stable:
                                # a consistent copy (perhaps newer than the scan): describe it as it was read
                                mtime_ns, mode, ino = before.st_mtime_ns, before.st_mode & 0o7777, before.st_ino
                            else:
                                # changed during the read: keep what was read (the entry describes exactly
                                # those bytes) and the scan's mtime, so the next incremental reads it again
                                changed += 1
                                warnings.append(
                                    {
                                        "path": rel,
                                        "reason": f"changed while being read: stored as read ({fsize} bytes; "
                                        f"{size} at scan time)",
                                    }
                                )
                    except OSError as exc:
                        errors.append({"path": rel, "reason": f"read error: {exc.strerror or exc}"})
                        continue
                    except _NotRegular:
                        errors.append({"path": rel, "reason": "no longer a regular file: not stored"})
                        continue
                    finally:
                        os_close(fd)
                # size is the bytes stored; mtime and inode as scanned *before* the read unless the read
                # was stable: if the file changed meanwhile, the next incremental sees a newer mtime and
                # reads it again (never the reverse)
                row((rel, oid, fsize, mtime_ns, mode, ino))
                files_read += 1
                bytes_read += fsize
                total_size += fsize
                if not n & 127:
                    st_.files_done = n
                    st_.bytes_done = bytes_read
                    st_.files_read = files_read
                    st_.bytes_read = bytes_read
                    st_.files_unchanged = unchanged
                    st_.current = rel
                    rep.tick()
                    lock.maybe_refresh()
            columns: list[list[Any]] = [list(c) for c in zip(*rows, strict=True)] if rows else [[]] * 6
            table = FileTable(path=columns[0], sha256=columns[1], size=columns[2], mtime_ns=columns[3],
                              mode=columns[4], inode=columns[5], chunks=chunked)
            del rows
            packs = writer.flush()
            stored_bytes = writer.bytes_written
        finally:
            workers.close()  # before the descriptors they read through are closed
            if gc_was_enabled:
                gc.enable()
            if writer is not None:
                writer.close()
            dirfds.close()
            os.close(root_fd)
        st_.files_done = len(scan.files)
        st_.bytes_done = total_size
        st_.files_read, st_.bytes_read, st_.files_unchanged = files_read, bytes_read, unchanged
        rep.done()

        index_id = write_index(root, packs) if packs else None

        dirs = DirTable([d[0] for d in scan.dirs], [d[1] for d in scan.dirs], [d[2] for d in scan.dirs])
        links = LinkTable([x[0] for x in scan.links], [x[1] for x in scan.links], [x[2] for x in scan.links])
        agents = summary_agents(os.path.realpath(source), scan.files, scan.dirs)
        stats = {
            "files_read": files_read,
            "bytes_read": bytes_read,
            "files_unchanged": unchanged,
            "objects_added": len(added),
            "bytes_added": bytes_added,
            "stored_bytes": stored_bytes,
            "packs_written": len(packs),
            "skipped_temp": scan.skipped_temp,
            "files_changed_during_read": changed,
            "excluded": scan.excluded,
        }
        prefix = "incr" if backup_type == "incremental" else "full"
        m = Manifest(
            backup_id=f"{prefix}_{start.strftime('%Y%m%d_%H%M%S')}",
            backup_type=backup_type,
            time=start,
            source_path=source,
            hostname=hostname(),
            parent_backup_id=parent_m.backup_id if parent_m is not None else None,
            end_time=datetime.now(UTC),
            tags=tags,
            description=description,
            file_count=len(table),
            dir_count=len(dirs),
            total_size_bytes=total_size,
            agents=agents,
            errors=errors,
            stats=stats,
            files=table,
            dirs=dirs,
            links=links,
            link_count=len(links),
            excludes=list(patterns.patterns),
        )
        taken = _taken_names(repo)
        backup_id = write_manifest(root, m, taken=taken.__contains__)
        try:
            update_summary(root, add=[summary_entry(root, m)])
        except (OSError, ValueError) as exc:
            # the snapshot is published (its header is the commit point): say so, never fail it; the next
            # write of the summary adds the missing entry (update_summary reconciles with snapshots/)
            warnings.append({"path": "backup_metadata.json",
                             "reason": f"summary not updated ({exc}); snapshot {backup_id} is complete"})

    return SnapshotResult(
        backup_id=backup_id,
        backup_type=backup_type,
        parent_backup_id=m.parent_backup_id,
        time=utc_iso_z(start),
        source_path=source,
        repository=repo.url,
        file_count=len(table),
        dir_count=len(dirs),
        total_size_bytes=total_size,
        files_read=files_read,
        bytes_read=bytes_read,
        files_unchanged=unchanged,
        objects_added=len(added),
        bytes_added=bytes_added,
        stored_bytes=stored_bytes,
        packs_written=len(packs),
        index_id=index_id,
        errors=errors,
        warnings=warnings,
        skipped_temp=scan.skipped_temp,
        agents=agents,
        tags=tags,
        description=description,
        duration_seconds=round(time.monotonic() - t0, 6),
        link_count=len(links),
        excluded=scan.excluded,
        excludes=list(patterns.patterns),
    )


def _read_exact(fd: int, n: int) -> bytes:
    """Read up to ``n`` bytes, looping over short reads; fewer only at end of file."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        b = os.read(fd, n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)
