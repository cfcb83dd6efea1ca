"""The prune plan: what a run would remove or archive, why, and the value of each record. Writes nothing.

:func:`build_plan` reads the store once (:class:`aml.store.FileStore`), but for the live Loom collections the
record index holds unchanged, whose records' rule fields it takes from the index (:mod:`aml.prune.indexed`),
builds one :class:`~aml.prune.strategies.Candidate` per live Loom record (patterns, solutions, decisions of
the agent directories; ``global/archived-decisions.json`` is already an archive and is left alone),
applies the requested strategies in the order of :data:`~aml.prune.config.STRATEGIES`, and returns a
:class:`PrunePlan`. A record matched by several rules appears once, with the first rule's reason.
With ``preserve_high_value``, a Loom record whose value is at least the threshold is never planned;
it is listed in :attr:`PrunePlan.preserved` instead. Documents that fail to parse yield no records
and are never touched. ``--dry-run`` is exactly this function.
"""

from __future__ import annotations

import functools
import os
import pickle
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from pathlib import Path
from typing import Any, Final

from aml.prune import strategies as strat
from aml.prune.config import PruneConfig, Strategy, normalise_strategies
from aml.prune.fields import LOOM_LIVE, RuleFields, rule_fields, value_inputs
from aml.prune.indexed import PlanIndex
from aml.prune.sessions import SESSION_LISTS, read_sidecar, resolve_limits, session_removals
from aml.prune.strategies import Action, Candidate
from aml.prune.tinytroupe import EPISODIC_POINTER, episodic_removals
from aml.prune.value import value_of_base, value_score
from aml.store import accessors as acc
from aml.store.documents import LAZY_ITEMS_BYTES, Document
from aml.store.extract import records_from_document
from aml.store.filestore import FileStore
from aml.store.records import item_size, json_pointer
from aml.store.timestamps import now_utc, utc_iso_z


@dataclass(frozen=True, slots=True)
class PlannedAction:
    """One record a run will remove or archive.

    Attributes:
        strategy: the strategy whose rule matched.
        reason: the rule (``unused_too_long``, ``session_duplicate``...; see :mod:`aml.prune.strategies`,
            :mod:`aml.prune.sessions`, :mod:`aml.prune.tinytroupe`).
        action: ``removed`` or ``archived`` (decisions).
        agent, collection, record_id, kind: as in :class:`aml.store.Record`.
        document: store-relative path of the document.
        list_pointer: JSON pointer of the list holding the record (``""`` for a Loom collection).
        index: position in that list.
        value: value score 0-1 (Loom records), else ``None``.
        size_bytes: the record as compact JSON, bytes.
    """

    strategy: str
    reason: str
    action: Action
    agent: str
    collection: str
    record_id: str
    kind: str
    document: str
    list_pointer: str
    index: int
    value: float | None
    size_bytes: int

    def __reduce__(self) -> tuple[type[PlannedAction], tuple[Any, ...]]:
        """Pickled as the call that makes it: about twice as fast both ways as the dataclass's own state, which
        looks the fields up for each object (:func:`_compacted` pickles every action of a plan)."""
        return PlannedAction, (self.strategy, self.reason, self.action, self.agent, self.collection, self.record_id,
                               self.kind, self.document, self.list_pointer, self.index, self.value, self.size_bytes)

    @property
    def pointer(self) -> str:
        """JSON pointer of the record itself."""
        return f"{self.list_pointer}/{self.index}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (value rounded to 6 places)."""
        return {
            "strategy": self.strategy, "reason": self.reason, "action": self.action, "agent": self.agent,
            "collection": self.collection, "record_id": self.record_id, "kind": self.kind,
            "document": self.document, "pointer": self.pointer, "index": self.index,
            "value": None if self.value is None else round(self.value, 6), "size_bytes": self.size_bytes,
        }


@dataclass(frozen=True, slots=True)
class DocumentState:
    """A document as the plan saw it (apply refuses to edit it if it changed since).

    Attributes:
        size_bytes: ``st_size``.
        mtime_ns: ``st_mtime_ns``.
        kind: the document kind (``loom_collection``, ``aitor_session``, ``tinytroupe_spec``).
    """

    size_bytes: int
    mtime_ns: int
    kind: str


@dataclass
class PrunePlan:
    """What a prune run will do.

    Attributes:
        store: store id; root: its directory.
        config: the thresholds used; now: the reference instant (aware UTC).
        strategies: the strategies applied, in order.
        agents: the agent filter (``None`` = every agent).
        actions: the records to remove or archive, by document then list then index.
        documents: every document an action touches, as seen by the plan.
        preserved: Loom records a rule matched (or space pruning reached) but kept for their value:
            ``{"agent", "collection", "record_id", "document", "reason", "value"}``.
        records_scanned: live records seen (Loom, sessions, TinyTroupe).
        agent_bytes: bytes on disk per agent before the run.
        store_bytes: bytes on disk of the whole store before the run.
        errors: documents that failed to parse (``DocumentError.as_dict()``), left alone; also Aitor
            sessions whose limits sidecar could not be read (``code`` ``bad_sidecar``), left alone.
        wrong_type: Loom records held back from every strategy because a field has the wrong JSON
            type: ``{"file", "record_id", "pointer", "agent", "collection", "fields"}``.
        sessions: per Aitor session (store-relative path): ``{"agent", "mode", "limits", "limit_sources",
            "before": {list: entries}, "removed": {list: entries}}`` (``session_based`` runs only).
        documents_from_index: live Loom collections taken from the record index, unread (unchanged since it
            was built: :mod:`aml.prune.indexed`).
        candidates_held: the most records planning held at once (as candidates or records): every live record
            of the store with ``space_based`` (its rules weigh them together), else those of its largest
            document (each document's rules are applied as it is taken in, and its candidates dropped). Decides
            whether the plan is compacted (:func:`_compacted`).
    """

    store: str
    root: Path
    config: PruneConfig
    now: datetime
    strategies: tuple[Strategy, ...]
    agents: frozenset[str] | None
    actions: list[PlannedAction] = field(default_factory=list)
    documents: dict[str, DocumentState] = field(default_factory=dict)
    preserved: list[dict[str, Any]] = field(default_factory=list)
    records_scanned: int = 0
    agent_bytes: dict[str, int] = field(default_factory=dict)
    store_bytes: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    wrong_type: list[dict[str, Any]] = field(default_factory=list)
    documents_from_index: int = 0
    candidates_held: int = 0

    def counts(self) -> dict[str, Any]:
        """``{"total", "removed", "archived", "by_reason": {...}, "by_strategy": {...}, "by_agent": {...}}``."""
        by_action = Counter(a.action for a in self.actions)
        return {
            "total": len(self.actions),
            "removed": by_action.get("removed", 0),
            "archived": by_action.get("archived", 0),
            "by_reason": dict(sorted(Counter(a.reason for a in self.actions).items())),
            "by_strategy": dict(sorted(Counter(a.strategy for a in self.actions).items())),
            "by_agent": dict(sorted(Counter(a.agent for a in self.actions).items())),
        }

    def to_dict(self, *, include_actions: bool = True) -> dict[str, Any]:
        """JSON-ready form: ``{"store", "now", "strategies", "session_mode", "agents", "config", "counts",
        "records_scanned", "documents_from_index", "agent_bytes", "store_bytes", "preserved", "errors", "sessions",
        "wrong_type", "actions"}``."""
        out: dict[str, Any] = {
            "store": self.store,
            "now": utc_iso_z(self.now),
            "strategies": list(self.strategies),
            "session_mode": self.config.session_mode,
            "agents": sorted(self.agents) if self.agents is not None else None,
            "config": self.config.to_dict(),
            "counts": self.counts(),
            "records_scanned": self.records_scanned,
            "documents_from_index": self.documents_from_index,
            "agent_bytes": dict(sorted(self.agent_bytes.items())),
            "store_bytes": self.store_bytes,
            "preserved": self.preserved,
            "errors": self.errors,
            "sessions": self.sessions,
            "wrong_type": self.wrong_type,
        }
        if include_actions:
            out["actions"] = [a.to_dict() for a in self.actions]
        return out


def _candidate(agent: str, collection: str, document: str, index: int, item: Mapping[str, Any],
               config: PruneConfig, now: datetime, *, lean: bool = False,
               clean: bool = False) -> Candidate:
    """The :class:`Candidate` of one Loom item (id and kind as :class:`aml.store.Record` has them);
    with ``lean``, its size (``size_bytes``, ``cost_bytes``) and ``value`` are left at 0, for
    :func:`_apply_rules` to fill in for the candidates a rule matches (:func:`_size_and_value`); ``clean``: its document
    is proven free of wrong types (``Document.types_clean``).

    Its fields are read in one pass per item (:func:`aml.prune.fields.rule_fields`), which returns what the
    single-field accessors do (tests/test_prune_candidates.py)."""
    wrong = () if clean else tuple(w.field for w in acc.wrong_types(item, collection))
    c = _from_fields(agent, collection, document, index, rule_fields(collection, item, clean=clean), wrong, config)
    if not lean:
        _size_and_value(c, item, config, now)
    return c


def _from_fields(agent: str, collection: str, document: str, index: int, f: RuleFields, wrong_types: tuple[str, ...],
                 config: PruneConfig) -> Candidate:
    """The lean :class:`Candidate` (no size, no value) of a Loom item whose rule fields are ``f``."""
    average = f.outcome_average
    # positional, in Candidate's field order (about twice as fast as by keyword, once per Loom item of the store)
    return Candidate(agent, collection, f.record_id or f"{document}#{json_pointer(index)}", f.kind or collection,
                     document, index, 0, 0.0, 0.0, f.last_used, f.created, f.success, f.confidence, f.executions,
                     f.worked, f.repeat_false or (average is not None and average < config.negative_metric_average),
                     wrong_types)


def _size_and_value(c: Candidate, item: Mapping[str, Any], config: PruneConfig, now: datetime) -> None:
    """Set ``c``'s ``size_bytes``, ``cost_bytes`` (the size, before any scaling) and ``value``.

    Args:
        c: the candidate of ``item`` (its rule fields set by :func:`_candidate`).
        item: the Loom item.
        config: for the recency half-life.
        now: the reference instant.
    """
    inputs = value_inputs(c.collection, item, c.success, c.confidence, c.executions, c.last_used)
    c.size_bytes = item_size(item)
    c.cost_bytes = float(c.size_bytes)
    c.value = value_score(inputs, now, half_life_days=config.recency_half_life_days)


def build_plan(
    root: str | os.PathLike[str],
    config: PruneConfig | None = None,
    strategies: Iterable[str] | None = None,
    *,
    agents: Iterable[str] | None = None,
    compact: bool = True,
    use_index: bool = True,
) -> PrunePlan:
    """Plan a prune run. Reads the store; writes nothing.

    Args:
        root: the store directory.
        config: thresholds (default :class:`PruneConfig`); ``config.now`` fixes the reference time.
        strategies: strategy names (default :data:`~aml.prune.config.DEFAULT_STRATEGIES`).
        agents: only records of these agents (Loom directory, session ``agent_name`` or persona).
        compact: lay a large plan out anew in memory (:func:`_compacted`), for a plan that is to be applied (its
            apply phase then reads documents in the memory the planning freed); a dry run, which only reports
            the plan, skips it.
        use_index: take the live Loom collections the record index holds unchanged from it, unread
            (:mod:`aml.prune.indexed`); ``False`` reads every document.

    Returns:
        The :class:`PrunePlan`.

    Raises:
        ValueError: an unknown strategy.
        FileNotFoundError, NotADirectoryError: the root is not a directory.
    """
    if not compact:
        return _build_plan(root, config, strategies, agents=agents, use_index=use_index)
    # passed straight on: no reference here may keep the plan as made alive while it is made anew
    return _compacted(_build_plan(root, config, strategies, agents=agents, use_index=use_index))


def _compacted(plan: PrunePlan) -> PrunePlan:
    """``plan`` made anew, side by side in memory, once planning's candidates are gone.

    The plan's objects (its actions, the preserved records) were made among the candidates planning held at
    once (:attr:`PrunePlan.candidates_held`). Freed, the candidates leave CPython's small-object arenas (1 MiB
    each) part-used by the plan, and an arena goes back to the operating system only when wholly free: one 200 MB
    document's plan held 145 arenas (152 MB) for 44 MB of objects, through the apply phase that then reads the
    document. The plan is pickled, dropped (its arenas empty and are returned) and unpickled into few, full ones:
    58 arenas, 87 MB less, for about 4 µs per action.

    A plan with fewer than :data:`_COMPACT_FROM` actions, or whose planning never held that many candidates at
    once, is returned as it is: its arenas were reused document after document, and compacting it costs more
    than it gives back (issue 12: on 24 documents of 3,100 records each, the 27,394 actions of a plan took 0.12 s
    to compact, and the process ended 12 MB larger, holding the pickle's bytes for a while).
    """
    if len(plan.actions) < _COMPACT_FROM or plan.candidates_held < _COMPACT_FROM:
        return plan
    packed = pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL)
    del plan  # the caller holds no other reference: build_plan passes its result straight here
    return pickle.loads(packed)  # our own bytes, just made


_COMPACT_FROM: Final = 10_000
"""Plans with fewer actions, or made holding fewer candidates at once, are left as they are (their pages matter
little)."""


def _build_plan(root: str | os.PathLike[str], config: PruneConfig | None, strategies: Iterable[str] | None, *,
                agents: Iterable[str] | None, use_index: bool = True) -> PrunePlan:
    """:func:`build_plan`, before its actions are compacted."""
    config = config or PruneConfig()
    chosen = normalise_strategies(strategies)
    now = config.now or now_utc()
    only = frozenset(agents) if agents else None
    store = FileStore(root)
    plan = PrunePlan(store.store_id, store.root, config, now, chosen, only)

    candidates: list[Candidate] = []
    rule_actions: list[PlannedAction] = []
    ranked_preserved: list[tuple[int, dict[str, Any]]] = []
    session_actions: list[PlannedAction] = []
    agent_bytes: Counter[str] = Counter()
    states: dict[str, DocumentState] = {}
    largest_document = 0  # records
    read = functools.partial(_scan_document, store_id=store.store_id, config=config, now=now, chosen=chosen,
                             only=only)
    source = PlanIndex.open(store) if use_index else None
    substitute = None if source is None else functools.partial(_scan_indexed, source=source, config=config, now=now,
                                                                chosen=chosen, only=only)
    # documents read by worker processes, in path order; a very large Loom collection is read here, item by
    # item (its bytes and one item in memory); the unchanged live Loom collections of a current index are not read
    try:
        for part in store.map_documents(read, lazy_items=LAZY_ITEMS_BYTES, check_types=True, workers=PLAN_WORKERS,
                                        substitute=substitute):
            plan.documents_from_index += part.from_index
            plan.store_bytes += part.size_bytes
            if part.agent is not None:
                agent_bytes[part.agent] += part.size_bytes
            plan.errors.extend(part.errors)
            plan.records_scanned += part.records_scanned
            largest_document = max(largest_document, part.records_scanned)
            if part.state is not None:
                states[part.relpath] = part.state
            plan.wrong_type.extend(part.wrong_type)
            candidates.extend(part.candidates)
            rule_actions.extend(part.rule_actions)
            ranked_preserved.extend(part.preserved)
            plan.sessions.update(part.sessions)
            session_actions.extend(part.session_actions)
    finally:
        if source is not None:
            source.close()
    plan.agent_bytes = dict(agent_bytes)
    plan.candidates_held = plan.records_scanned if "space_based" in chosen else largest_document

    if "space_based" in chosen:  # the rules weigh every candidate of the store together
        actions = _plan_with_space(plan, candidates, only)
    else:  # each document's rules were applied where it was read; its preserved records come in rule order
        actions = rule_actions
        ranked_preserved.sort(key=itemgetter(0))  # stable: document order within a rule
        plan.preserved = [entry for _, entry in ranked_preserved]
    if "session_based" in chosen:
        actions.extend(session_actions)
    actions.sort(key=lambda a: (a.document, a.list_pointer, a.index))
    plan.actions = actions
    plan.documents = {a.document: states[a.document] for a in actions}
    return plan


def _plan_with_space(plan: PrunePlan, candidates: list[Candidate], only: frozenset[str] | None) -> list[PlannedAction]:
    """The actions of a run with ``space_based``: the time and performance rules over every candidate (sized and
    valued), then space pruning over what they left; records kept for their value go to ``plan.preserved``."""
    config = plan.config
    taken: dict[int, PlannedAction] = {}
    preserved_ids: set[int] = set()

    def preserve(c: Candidate, reason: str) -> bool:
        if _kept_for_value(c, config):
            if id(c) not in preserved_ids:
                preserved_ids.add(id(c))
                plan.preserved.append(_preserved_entry(c, reason))
            return True
        return False

    def take(c: Candidate, strategy: str, reason: str) -> None:
        taken[id(c)] = _planned(c, strategy, reason)

    for c, strategy, reason in _rule_matches(candidates, plan.strategies, config, plan.now):
        if not preserve(c, reason):
            take(c, strategy, reason)
    _plan_space(plan, candidates, taken, preserve, take, only)
    return list(taken.values())


def _rule_matches(candidates: list[Candidate], chosen: tuple[Strategy, ...], config: PruneConfig,
                  now: datetime) -> list[tuple[Candidate, str, str]]:
    """Each candidate a time or performance rule matches, once, with the first matching rule's strategy and
    reason: the time rule's matches, then the performance rule's others, each in candidate order (the order a
    run meets them, strategy by strategy)."""
    seen: set[int] = set()
    out: list[tuple[Candidate, str, str]] = []
    for strategy in chosen:
        if strategy == "time_based":
            matches = strat.time_based(candidates, config, now)
        elif strategy == "performance_based":
            matches = strat.performance_based(candidates, config)
        else:
            continue
        for c, reason in matches:
            if id(c) not in seen:
                seen.add(id(c))
                out.append((c, strategy, reason))
    return out


def _kept_for_value(c: Candidate, config: PruneConfig) -> bool:
    """Whether ``preserve_high_value`` keeps ``c`` (its value at least ``high_value_threshold``)."""
    return config.preserve_high_value and c.value >= config.high_value_threshold


def _preserved_entry(c: Candidate, reason: str) -> dict[str, Any]:
    """A :attr:`PrunePlan.preserved` entry: ``c``, which ``reason`` matched, kept for its value."""
    return {"agent": c.agent, "collection": c.collection, "record_id": c.record_id, "document": c.document,
            "reason": reason, "value": round(c.value, 6)}


def _planned(c: Candidate, strategy: str, reason: str) -> PlannedAction:
    """The action of a Loom record a rule took."""
    return PlannedAction(strategy, reason, c.action, c.agent, c.collection, c.record_id, c.kind, c.document, "",
                         c.index, c.value, c.size_bytes)


PLAN_WORKERS: Final = 2
"""Worker processes reading the store's documents for a plan (:meth:`aml.store.FileStore.map_documents`)."""


@dataclass
class _DocumentScan:
    """What the plan takes in from one document (made where the document was read, maybe a worker)."""

    relpath: str
    agent: str | None
    size_bytes: int
    records_scanned: int = 0
    state: DocumentState | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    wrong_type: list[dict[str, Any]] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    rule_actions: list[PlannedAction] = field(default_factory=list)
    preserved: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    session_actions: list[PlannedAction] = field(default_factory=list)
    from_index: bool = False


def _scan_document(doc: Document, *, store_id: str, config: PruneConfig, now: datetime,
                   chosen: tuple[Strategy, ...], only: frozenset[str] | None) -> _DocumentScan:
    """Take in one document: its bytes, its errors, its candidates or its session actions."""
    part = _DocumentScan(doc.relpath, doc.agent, doc.size_bytes)
    if doc.error is not None:
        part.errors.append(doc.error.as_dict())
        return part
    if doc.kind == "loom_collection" and doc.collection in LOOM_LIVE and doc.agent is not None:
        part.records_scanned = len(doc.data)
        part.state = DocumentState(doc.size_bytes, doc.mtime_ns, doc.kind)
        if only is not None and doc.agent not in only:
            return part
        items = doc.data
        made = [_candidate(doc.agent, doc.collection, doc.relpath, index, item, config, now, lean=True,
                           clean=doc.types_clean) for index, item in enumerate(items)]
        _loom_verdicts(part, made, lambda c: _size_and_value(c, items[c.index], config, now), chosen, config, now)
    elif doc.kind in ("aitor_session", "tinytroupe_spec"):
        records = records_from_document(store_id, doc)
        part.records_scanned = len(records)
        if "session_based" not in chosen:
            return part
        by_pointer = {r.location.pointer: r for r in records}
        if doc.kind == "aitor_session":
            session_plan = _plan_session(part, doc.relpath, doc.path, doc.agent, doc.data, config)
            if session_plan is None:
                return part
            removals = [(json_pointer(key), i, reason) for key, i, reason in session_plan]
        else:
            removals = [(EPISODIC_POINTER, i, reason) for i, reason in episodic_removals(doc.data, config)]
        for list_pointer, index, reason in removals:
            r = by_pointer[f"{list_pointer}/{index}"]
            if only is not None and r.agent not in only:
                continue
            part.session_actions.append(PlannedAction(
                "session_based", reason, "removed", r.agent, r.collection, r.id, r.kind, doc.relpath,
                list_pointer, index, None, r.size_bytes))
            part.state = DocumentState(doc.size_bytes, doc.mtime_ns, doc.kind)
    return part


def _scan_indexed(relpath: str, st: os.stat_result, *, source: PlanIndex, config: PruneConfig, now: datetime,
                  chosen: tuple[Strategy, ...], only: frozenset[str] | None) -> _DocumentScan | None:
    """Take in an unchanged live Loom collection from the record index (:mod:`aml.prune.indexed`), unread: what
    :func:`_scan_document` takes in from reading it; ``None`` when the index does not hold it unchanged."""
    held = source.document(relpath, st)
    if held is None:
        return None
    agent, collection, items = held
    part = _DocumentScan(relpath, agent, st.st_size, records_scanned=len(items),
                         state=DocumentState(st.st_size, st.st_mtime_ns, "loom_collection"), from_index=True)
    if only is not None and agent not in only:
        return part
    made = [_from_fields(agent, collection, relpath, index, item.rule, item.wrong_types, config)
            for index, item in enumerate(items)]
    half_life = config.recency_half_life_days

    def size_and_value(c: Candidate) -> None:
        item = items[c.index]
        c.size_bytes = item.size_bytes
        c.cost_bytes = float(item.size_bytes)
        c.value = value_of_base(item.base, item.value_last_used, now, half_life_days=half_life)

    _loom_verdicts(part, made, size_and_value, chosen, config, now)
    return part


def _loom_verdicts(part: _DocumentScan, made: list[Candidate], size_and_value: Callable[[Candidate], None],
                   chosen: tuple[Strategy, ...], config: PruneConfig, now: datetime) -> None:
    """Take in one live Loom collection's lean candidates (``made``, in item order): its records of a wrong type,
    and either every candidate sized and valued (a run with ``space_based``: it weighs every record of the store
    together) or the verdicts of the time and performance rules (:func:`_apply_rules`).

    Args:
        part: what the plan takes in from the document (``size_bytes`` set); filled here.
        made: the candidates.
        size_and_value: sets a candidate's size and value (:func:`_size_and_value`, or from the index).
        chosen, config, now: the run's strategies, thresholds and reference instant.
    """
    want_space = "space_based" in chosen
    if want_space:
        for c in made:
            size_and_value(c)
    scale = part.size_bytes / (sum(c.size_bytes for c in made) or 1)
    for c in made:
        c.cost_bytes = c.size_bytes * scale
        if c.wrong_types:
            part.wrong_type.append({"file": c.document, "record_id": c.record_id, "pointer": json_pointer(c.index),
                                    "agent": c.agent, "collection": c.collection, "fields": list(c.wrong_types)})
    if want_space:
        part.candidates = made
    else:  # the rules look at each record alone: they are applied here, and only what they match is sized
        _apply_rules(part, made, size_and_value, chosen, config, now)


def _apply_rules(part: _DocumentScan, made: list[Candidate], size_and_value: Callable[[Candidate], None],
                 chosen: tuple[Strategy, ...], config: PruneConfig, now: datetime) -> None:
    """Apply the time and performance rules to one document's candidates, for a run without ``space_based``.

    Those rules look at each record alone, from fields that need neither a size nor a value, so a document's
    verdicts need nothing from the rest of the store: only the records a rule matches are sized and valued
    (``size_and_value``), and only their actions (``part.rule_actions``) and the records kept for their
    value (``part.preserved``, each with the rank of its rule in ``chosen``, for the plan to put them in rule
    order) go back to the plan. The same verdicts as :func:`_plan_with_space` with limits it never reaches.

    Args:
        part: what the plan takes in from the document; filled here.
        made: the document's candidates, lean (:func:`_candidate` with ``lean=True``).
        size_and_value: sets a candidate's size and value.
        chosen: the run's strategies.
        config, now: as for the rules.
    """
    rank: dict[str, int] = {strategy: i for i, strategy in enumerate(chosen)}
    for c, strategy, reason in _rule_matches(made, chosen, config, now):
        size_and_value(c)
        if _kept_for_value(c, config):
            part.preserved.append((rank[strategy], _preserved_entry(c, reason)))
        else:
            part.rule_actions.append(_planned(c, strategy, reason))


def _plan_session(plan: _DocumentScan, relpath: str, path: Path, agent: str | None, data: Mapping[str, Any],
                  config: PruneConfig) -> list[tuple[str, int, str]] | None:
    """The removals of one Aitor session, with its limits resolved (sidecar, per-agent, general) and
    recorded in ``plan.sessions``; ``None`` (and an entry in ``plan.errors``) when its sidecar is unreadable."""
    try:
        sidecar = read_sidecar(path)
    except ValueError as exc:
        plan.errors.append({"path": str(path), "relpath": relpath, "offset": None, "code": "bad_sidecar",
                            "reason": f"limits sidecar: {exc}; session left alone"})
        return None
    general = {"max_messages": config.session_max_messages,
               "max_tool_executions": config.session_max_tool_executions,
               "max_reasoning_steps": config.session_max_reasoning_steps}
    limits, sources = resolve_limits(agent, config.session_agent_limits, general, sidecar)
    removals = session_removals(data, limits, config.session_mode, dedupe=config.session_dedupe)
    removed = Counter(key for key, _, _ in removals)
    plan.sessions[relpath] = {
        "agent": agent, "mode": config.session_mode, "limits": limits.to_dict(), "limit_sources": sources,
        "before": {key: len(data.get(key) or []) for key in SESSION_LISTS},
        "removed": {key: removed.get(key, 0) for key in SESSION_LISTS},
    }
    return removals


def _plan_space(plan: PrunePlan, candidates: list[Candidate], taken: dict[int, PlannedAction],
                preserve: Callable[[Candidate, str], bool], take: Callable[[Candidate, str, str], None],
                only: frozenset[str] | None) -> None:
    """Space-based pruning: per agent against ``agent_limit_mib``, then the store against ``store_limit_mib``."""
    config = plan.config
    by_agent: defaultdict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        by_agent[c.agent].append(c)

    def run(pool: list[Candidate], size: int, limit: int, reason: str) -> None:
        projected = size - sum(c.cost_bytes for c in pool if id(c) in taken)
        ordered = strat.space_order(c for c in pool if id(c) not in taken)
        for c in strat.space_based(ordered, projected=projected, limit=limit,
                                   target_ratio=config.space_target_ratio,
                                   preserved=lambda c: preserve(c, reason)):
            take(c, "space_based", reason)

    for agent in sorted(plan.agent_bytes):
        if only is None or agent in only:
            run(by_agent.get(agent, []), plan.agent_bytes[agent], config.agent_limit_bytes, "memory_limit_exceeded")
    run(candidates, plan.store_bytes, config.store_limit_bytes, "store_limit_exceeded")
