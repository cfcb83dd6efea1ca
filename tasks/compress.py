"""Celery tasks of the compress/optimize operation (queue ``heavy``): compress, gc, index, warm-cache, all.

Each task validates its arguments and calls the engine in :mod:`aml.optimize` through
:func:`tasks.base.run_operation`, which records a ``task_runs`` row. Tasks that rewrite memory
(``compress``, ``gc``, ``all``) hold the store's destructive lock; ``index`` and ``warm_cache`` only
write aml's own ``.aml/`` files (serialised by the index's own ``flock``).

* ``gc`` plans first; with anything to remove and not ``dry_run``, it takes a safety snapshot
  (:func:`tasks.snapshots.safety_snapshot`, reason ``pre-gc``) whose id it returns and records in the
  catalog's ``backups`` table, copies unparseable documents to ``<store>/.aml/quarantine/``, then
  rewrites. ``aml <store> backup restore --backup-id <snapshot_id>`` undoes it.
* ``compress`` needs no snapshot: it is lossless and undone by ``--decompress``.
* ``warm_cache`` measures ``measure`` id lookups through a new engine afterwards and records their
  mean time (``query_time``, seconds) and hit rate (``query_cache_hit_rate``, ratio).
* ``all`` runs gc, compress and index in that order under one lock (the seeds' ``optimize all``); in
  a dry run it plans gc and compress and skips index (which writes ``.aml/index.sqlite``).

A result's ``status`` is ``warning`` when unparseable documents were found (they are left alone).
Metric samples (store-wide): ``compress_bytes_saved`` (bytes), ``gc_records_removed`` (count),
``index_records`` (count), ``index_duration`` (seconds), ``warm_cache_records`` (count),
``warm_cache_bytes`` (bytes), ``query_time`` (seconds), ``query_cache_hit_rate`` (ratio).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from aml.optimize import CODECS, SCOPES, apply_gc, build_index, compress_store, plan_gc, quarantine_unparseable
from aml.optimize import measure_lookups as measure_engine_lookups
from aml.optimize import warm_cache as warm_engine
from aml.optimize.compress import DEFAULT_AGE_DAYS, Codec, Scope
from aml.optimize.warm import DEFAULT_WARM_BYTES, DEFAULT_WARM_LIMIT
from models import queries
from tasks.base import Catalog, OperationBody, normalize_store, run_operation, store_path
from tasks.registry import operation_task
from workers.app import get_settings

if TYPE_CHECKING:
    from celery import Task

MIB = 1024 * 1024


def _samples(catalog: Catalog, store_id: str, rows: list[tuple[str, float, str]]) -> None:
    """Record store-wide metric samples ``(name, value, unit)``."""
    if not rows:
        return
    with catalog() as session:
        queries.add_metric_samples(session, [queries.Sample(store_id, name, value, unit) for name, value, unit in rows])


def _check_compress_args(codec: str, scope: str, age_days: float, level: int | None) -> None:
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {', '.join(CODECS)}, not {codec!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    if age_days < 0:
        raise ValueError("age_days must be at least 0")
    if level is not None and level < 0:
        raise ValueError("level must be at least 0")


# ------------------------------------------------------------------------------------ bodies


def compress_step(catalog: Catalog, store_id: str, *, codec: str, level: int | None, age_days: float,
                  decompress: bool, scope: str, dry_run: bool) -> dict[str, Any]:
    """Compress (or decompress) the store and record ``compress_bytes_saved``; returns the summary."""
    result = compress_store(store_path(store_id), codec=cast(Codec, codec), level=level, age_days=age_days,
                            decompress=decompress, scope=cast(Scope, scope), dry_run=dry_run)
    out = result.as_dict()
    if not dry_run and not decompress:
        _samples(catalog, store_id, [("compress_bytes_saved", float(result.bytes_before - result.bytes_after),
                                      "bytes")])
    if result.errors:
        out["status"] = "warning"
    return out


def gc_step(catalog: Catalog, store_id: str, *, dry_run: bool, quarantine: bool) -> dict[str, Any]:
    """Plan gc; unless ``dry_run``: safety snapshot (if anything is removed), quarantine, rewrite."""
    root = store_path(store_id)
    plan = plan_gc(root)
    out: dict[str, Any] = {"dry_run": dry_run, "plan": plan.as_dict(), "snapshot_id": None, "quarantined": [],
                           "applied": None}
    if not dry_run:
        if plan.documents:
            # imported by runs that change the store only: a dry run does without its ~25 ms
            from tasks.snapshots import safety_snapshot

            snap = safety_snapshot(catalog, store_id, root, get_settings(), reason="pre-gc")
            out["snapshot_id"] = snap.backup_id
        if quarantine:
            out["quarantined"] = quarantine_unparseable(root, plan)
        applied = apply_gc(root, plan)
        out["applied"] = applied.as_dict()
        out["records_removed"] = len(applied.removed)
        _samples(catalog, store_id, [("gc_records_removed", float(len(applied.removed)), "count")])
    else:
        out["records_removed"] = 0
    if plan.unparseable:
        out["status"] = "warning"
    return out


def index_step(catalog: Catalog, store_id: str, *, full: bool) -> dict[str, Any]:
    """Build the index and record ``index_records`` and ``index_duration``; returns the summary."""
    result = build_index(store_path(store_id), full=full)
    _samples(catalog, store_id, [("index_records", float(result.records), "count"),
                                 ("index_duration", result.duration_s, "seconds")])
    out = result.as_dict()
    if result.errors:
        out["status"] = "warning"
    return out


def compress_body(store_id: str, **kwargs: Any) -> OperationBody:
    """Operation body of ``aml.compress.compress``."""
    return lambda catalog: compress_step(catalog, store_id, **kwargs)


def gc_body(store_id: str, *, dry_run: bool, quarantine: bool) -> OperationBody:
    """Operation body of ``aml.compress.gc``."""
    return lambda catalog: gc_step(catalog, store_id, dry_run=dry_run, quarantine=quarantine)


def index_body(store_id: str, *, full: bool) -> OperationBody:
    """Operation body of ``aml.compress.index``."""
    return lambda catalog: index_step(catalog, store_id, full=full)


def warm_body(store_id: str, *, limit: int, max_bytes: int, agent: str | None, measure: int) -> OperationBody:
    """Operation body of ``aml.compress.warm_cache``."""

    def body(catalog: Catalog) -> dict[str, Any]:
        root = store_path(store_id)
        result = warm_engine(root, limit=limit, max_bytes=max_bytes, agent=agent)
        out: dict[str, Any] = result.as_dict()
        rows: list[tuple[str, float, str]] = [("warm_cache_records", float(result.records), "count"),
                                              ("warm_cache_bytes", float(result.bytes), "bytes")]
        if measure > 0:
            m = measure_engine_lookups(root, sample=measure)
            out["measurement"] = m.as_dict()
            if m.mean_s is not None and m.cache.hit_rate is not None:
                rows += [("query_time", m.mean_s, "seconds"), ("query_cache_hit_rate", m.cache.hit_rate, "ratio")]
        _samples(catalog, store_id, rows)
        return out

    return body


def all_body(store_id: str, *, dry_run: bool, age_days: float, codec: str, level: int | None,
             scope: str, quarantine: bool) -> OperationBody:
    """Operation body of ``aml.compress.all``: gc, compress, index in that order."""

    def body(catalog: Catalog) -> dict[str, Any]:
        steps: dict[str, Any] = {}
        steps["gc"] = gc_step(catalog, store_id, dry_run=dry_run, quarantine=quarantine)
        steps["compress"] = compress_step(catalog, store_id, codec=codec, level=level, age_days=age_days,
                                          decompress=False, scope=scope, dry_run=dry_run)
        if dry_run:
            steps["index"] = {"skipped": "dry run: index writes .aml/index.sqlite"}
        else:
            steps["index"] = index_step(catalog, store_id, full=False)
        warn = any(isinstance(s, dict) and s.get("status") == "warning" for s in steps.values())
        return {"dry_run": dry_run, "steps": steps, "status": "warning" if warn else "success"}

    return body


# ------------------------------------------------------------------------------------ tasks


@operation_task("aml.compress.compress")
def compress(self: Task, store: str, age_days: float = DEFAULT_AGE_DAYS, codec: str = "gzip",
             level: int | None = None, decompress: bool = False, scope: str = "loom",
             dry_run: bool = False) -> dict[str, Any]:
    """Compress cold documents of a file store in place (``optimize compress``).

    Args:
        store: path of the file store.
        age_days: compress files not modified for this many days (ignored with ``decompress``).
        codec: ``gzip`` (readable by Loom's runtime) or ``zstd`` (aml-only stores).
        level: codec level (gzip: isal 0-3, default 2; zstd default 3).
        decompress: write every compressed document back as plain bytes.
        scope: ``loom`` (documents Loom's runtime reads) or ``all`` (every JSON document).
        dry_run: report what would change; write nothing.

    Returns:
        :meth:`aml.optimize.CompressResult.as_dict` plus the run fields (``task_run_id``, ``status``...).

    Raises:
        ValueError: bad argument.
    """
    store_id = normalize_store(store)
    _check_compress_args(codec, scope, age_days, level)
    args = {"store": store, "age_days": age_days, "codec": codec, "level": level, "decompress": decompress,
            "scope": scope, "dry_run": dry_run}
    return run_operation(task_id=self.request.id, operation="compress", store=store_id, arguments=args,
                         body=compress_body(store_id, codec=codec, level=level, age_days=age_days,
                                            decompress=decompress, scope=scope, dry_run=dry_run),
                         destructive=not dry_run)


@operation_task("aml.compress.gc")
def gc(self: Task, store: str, dry_run: bool = False, quarantine: bool = True) -> dict[str, Any]:
    """Remove invalid and duplicate records; quarantine unparseable documents (``optimize gc``).

    Args:
        store: path of the file store.
        dry_run: plan only; write nothing (no snapshot, no quarantine copy).
        quarantine: copy unparseable documents to ``<store>/.aml/quarantine/``.

    Returns:
        ``{"dry_run", "plan", "snapshot_id", "quarantined", "applied", "records_removed"}`` plus the
        run fields.

    Raises:
        aml.backup.BackupError: the safety snapshot failed (nothing was changed).
    """
    store_id = normalize_store(store)
    return run_operation(task_id=self.request.id, operation="gc", store=store_id,
                         arguments={"store": store, "dry_run": dry_run, "quarantine": quarantine},
                         body=gc_body(store_id, dry_run=dry_run, quarantine=quarantine), destructive=not dry_run)


@operation_task("aml.compress.index")
def index(self: Task, store: str, full: bool = False) -> dict[str, Any]:
    """Build or update ``<store>/.aml/index.sqlite`` and its Bloom filter (``optimize index``).

    Args:
        store: path of the file store.
        full: re-read every document (default: only those changed since the last build).

    Returns:
        :meth:`aml.optimize.IndexResult.as_dict` plus the run fields.
    """
    store_id = normalize_store(store)
    return run_operation(task_id=self.request.id, operation="index", store=store_id,
                         arguments={"store": store, "full": full}, body=index_body(store_id, full=full))


@operation_task("aml.compress.warm_cache")
def warm_cache(self: Task, store: str, limit: int = DEFAULT_WARM_LIMIT, max_mb: float = DEFAULT_WARM_BYTES / MIB,
               agent: str | None = None, measure: int = 50) -> dict[str, Any]:
    """Preload the highest-value records into the index's warm set (``optimize warm-cache``).

    Args:
        store: path of the file store (it must have an index).
        limit: at most this many records.
        max_mb: at most this much compact record JSON, MiB (1024² bytes).
        agent: only this agent's records.
        measure: id lookups timed afterwards (0: none); their mean time and hit rate are recorded.

    Returns:
        :meth:`aml.optimize.WarmResult.as_dict` plus ``measurement`` and the run fields.

    Raises:
        aml.optimize.IndexMissingError: no index yet.
        ValueError: negative limit or size.
    """
    store_id = normalize_store(store)
    if limit < 0 or max_mb < 0 or measure < 0:
        raise ValueError("limit, max_mb and measure must be at least 0")
    return run_operation(task_id=self.request.id, operation="warm_cache", store=store_id,
                         arguments={"store": store, "limit": limit, "max_mb": max_mb, "agent": agent,
                                    "measure": measure},
                         body=warm_body(store_id, limit=limit, max_bytes=int(max_mb * MIB), agent=agent,
                                        measure=measure))


@operation_task("aml.compress.all")
def optimize_all(self: Task, store: str, dry_run: bool = False, age_days: float = DEFAULT_AGE_DAYS,
                 codec: str = "gzip", level: int | None = None, scope: str = "loom",
                 quarantine: bool = True) -> dict[str, Any]:
    """``optimize all``: gc, compress, index, in that order, under one store lock.

    Args:
        store: path of the file store.
        dry_run: plan gc and compress; write nothing; index is skipped.
        age_days, codec, level, scope: as for :func:`compress`.
        quarantine: as for :func:`gc`.

    Returns:
        ``{"dry_run", "steps": {"gc", "compress", "index"}}`` plus the run fields.
    """
    store_id = normalize_store(store)
    _check_compress_args(codec, scope, age_days, level)
    args = {"store": store, "dry_run": dry_run, "age_days": age_days, "codec": codec, "level": level,
            "scope": scope, "quarantine": quarantine}
    return run_operation(task_id=self.request.id, operation="optimize", store=store_id, arguments=args,
                         body=all_body(store_id, dry_run=dry_run, age_days=age_days, codec=codec, level=level,
                                       scope=scope, quarantine=quarantine),
                         destructive=not dry_run)
