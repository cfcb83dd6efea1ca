"""Maintenance that acts on what health finds: the decision matrix (:mod:`aml.health.remediate`) run as tasks.

A health run evaluates the matrix on its results. What happens next depends on ``AML_REMEDIATE``:

- ``off``: nothing is listed or run.
- ``dry-run`` (default), or a health run not asked to act: the report lists what would run and why,
  including what a cooldown or a refusal would stop. Nothing is written.
- ``on``, acting (a health task on a worker; ``aml <store> monitor health --remediate`` inline): every
  decision is a ``remediations`` row. The first rule that may run becomes a chain of its actions followed by
  a health run (``aml.health.check`` with ``remediation_id``), which records the outcome (each step's task
  run, the effect, the measure before and after, the alert's state after) so the alert resolves once its
  cause is gone. On workers the chain is enqueued (each step on its own queue: prune and optimize on
  ``heavy``, health on ``fast``); inline it runs here, step by step.

No runaway loops:

- **one chain per store in flight**: the row is ``queued``/``running`` until the closing health run finishes
  it, and the database refuses a second (``ux_remediations_store_in_flight``); other rules wait, and the
  closing health run picks the next one. A chain whose step failed for good (its Celery state is
  ``FAILURE``: no retry is left), or with no outcome within ``AML_VISIBILITY_TIMEOUT`` (12 h: the longest
  chain, index then warm-cache, is bounded by two 3 h time limits, and a killed worker's message is
  redelivered well within it) is finished as ``failure`` by the next decision on its store.
- **no repeat of what did not help**: when the rule's previous chain succeeded but changed nothing (prune or
  gc removed nothing, warm-cache loaded nothing) or left its measure no better, and the cause is unchanged
  since (the same alert still open, or none then and now, and the measure no worse than after that chain), the
  decision is ``refused`` at once (before any cooldown): the reason says so, and the open alert's severity is
  set one level above what its check reports (warning -> error, error -> critical), re-applied by each health
  run while the refusal lasts. The raised severity reaches the notification targets with the alert's next
  notification (``AML_ALERT_REPEAT_INTERVAL``).
- **a cooldown per rule and store** (``AML_REMEDIATE_COOLDOWN``; 24 h for prune and gc, 6 h for index and
  cache): a started chain of the rule within it makes the decision ``skipped``.
- **a budget per store**: at most ``AML_REMEDIATE_MAX_PER_HOUR`` chains started in any hour (6), whatever the
  cooldowns say (a cooldown of 0 cannot make a loop).

A remediation never fails or blocks the health run: an error while deciding, recording or starting a chain is
logged and reported in the ``remediation`` section (``error``), and the run completes.
"""

from __future__ import annotations

import importlib
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from aml.health.checks import CheckResult
from aml.health.remediate import (
    ACTIONS,
    MEMORY_RULES,
    Finding,
    Policy,
    PolicyError,
    current_measure,
    evaluate,
    parse_cooldowns,
    parse_policy,
)
from models import queries
from models import remediations as rows
from models.base import as_utc, iso_z
from models.tables import Remediation, RemediationStatus, TaskStatus
from tasks.base import CAUSE_HEADER, Catalog
from workers.app import get_settings
from workers.catalog import session_scope
from workers.settings import Settings

if TYPE_CHECKING:
    from celery import Task

log = logging.getLogger("aml.tasks.remediate")

OK_STEP = (TaskStatus.SUCCESS.value, TaskStatus.WARNING.value)
"""Task-run statuses of a step that did its work."""


def policy_of(settings: Settings) -> Policy:
    """The :class:`~aml.health.remediate.Policy` the settings give.

    Raises:
        PolicyError: ``AML_REMEDIATE_POLICY`` or ``AML_REMEDIATE_COOLDOWN`` does not parse.
    """
    return Policy(rules=parse_policy(settings.remediate_policy),
                  cooldowns_s=parse_cooldowns(settings.remediate_cooldown),
                  prune_ratio=settings.remediate_prune_ratio, aggressive_ratio=settings.remediate_aggressive_ratio,
                  lookup_ms=settings.remediate_lookup_ms, cache_hit=settings.remediate_cache_hit,
                  agent_limit_mib=settings.agent_critical_mb, store_limit_mib=settings.store_critical_mb)


@dataclass
class Decision:
    """What the policy decided for one finding: ``status`` is ``run`` (this health run starts its chain),
    ``would_run`` (listing only), ``skipped``, ``refused`` or ``off``; ``remediation_id`` is its row when one
    was written."""

    finding: Finding
    fingerprint: str
    actions: list[dict[str, Any]]
    status: str
    reason: str
    remediation_id: int | None = None
    alert_before: dict[str, Any] | None = None
    good_copies: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form for reports."""
        return {**self.finding.to_dict(), "fingerprint": self.fingerprint, "status": self.status,
                "why": self.reason, "actions": self.actions, "remediation_id": self.remediation_id,
                "alert_before": self.alert_before, "good_copies": self.good_copies}


@dataclass
class Plan:
    """The outcome of :func:`decide` for one health run.

    Attributes:
        mode: ``AML_REMEDIATE``.
        acting: decisions were written and a chain may start.
        decisions: one per finding, in priority order.
        error: why nothing could be decided (a policy that does not parse), else ``None``.
        chain: the row id, the steps (task, kwargs, task id) and the closing health run's task id of the
            chain to start, or ``None``.
        reconciled: chains in flight finished as failures by this decision (a failed step, no outcome).
    """

    mode: str
    acting: bool
    decisions: list[Decision] = field(default_factory=list)
    error: str | None = None
    chain: dict[str, Any] | None = None
    reconciled: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report's ``remediation`` section."""
        return {"mode": self.mode, "acting": self.acting, "error": self.error,
                "decisions": [d.to_dict() for d in self.decisions], "chain": self.chain,
                "reconciled": self.reconciled}


def _steps(policy: Policy, rule: str, store: str) -> list[dict[str, Any]]:
    return [{"action": action.name, "task": action.task, "kwargs": {"store": store, **kwargs},
             "summary": action.summary} for action, kwargs in policy.steps(rule)]


def _measure_after(row: Remediation) -> float | None:
    value = (row.result or {}).get("measure_after")
    return float(value) if isinstance(value, int | float) else None


def _ineffective(row: Remediation) -> str | None:
    """Why the finished chain ``row`` could not improve its cause, or ``None`` when it did (or it is unknown)."""
    result = row.result or {}
    if row.status != RemediationStatus.SUCCESS.value:
        return None  # a failed chain proved nothing: it may run again after its cooldown
    if result.get("effect") == 0:
        return f"its previous chain (task {row.task_id}) changed nothing"
    if result.get("improved") is False:
        return (f"its previous chain (task {row.task_id}) left the measure no better ({result.get('measure_before')} "
                f"before, {result.get('measure_after')} after)")
    return None


def _same_cause(row: Remediation, finding: Finding, alert_now: Mapping[str, Any] | None) -> bool:
    """The cause is unchanged since ``row``: the same alert still open (or none then and now), and the measure
    no worse than after that chain."""
    then = row.alert_before or {}
    open_now = bool(alert_now and alert_now.get("open"))
    if open_now and alert_now is not None and then.get("id") != alert_now.get("id"):
        return False
    if not open_now and then.get("open"):
        return False
    after = _measure_after(row)
    if after is None:
        return True
    worse = finding.measure > after if finding.better == "lower" else finding.measure < after
    return not worse


def _step_failed_for_good(task_id: str) -> bool:
    """Whether Celery's result backend says the task failed with no retry left (``FAILURE``; a task being
    retried is ``RETRY``). A backend that does not answer says no: the stale bound closes the chain later."""
    from workers.app import current_aml_app  # the aml app's result backend, inline too (where none was made yet)

    try:
        return bool(current_aml_app().AsyncResult(task_id).state == "FAILURE")
    except Exception:  # an unreachable result backend: decide later
        return False


def _reconcile(session: Any, store: str, now: datetime, stale_s: float) -> list[dict[str, Any]]:
    """Finish the store's chains in flight that failed a step for good or outlived ``stale_s``; return them."""
    out = []
    for row in rows.in_flight(session, store):
        runs = rows.task_runs(session, [s.get("task_id") for s in row.actions or []])
        failed = [(tid, r) for tid, r in runs.items()
                  if r.status == TaskStatus.FAILURE.value and _step_failed_for_good(tid)]
        if failed:
            tid, run = failed[0]
            reason = f"step {run.operation} (task {tid}) failed: {run.error or 'no error recorded'}"
        elif (now - as_utc(row.created_at)).total_seconds() > stale_s:
            reason = f"no outcome within {stale_s:g} s of being queued (a lost message or a dead chain)"
        else:
            continue
        rows.fail(session, row, reason, now=now)
        out.append({"remediation_id": row.id, "rule": row.rule, "reason": reason})
    return out


def decide(catalog: Catalog, store: str, results: Sequence[CheckResult], settings: Settings, *, act: bool,
           eager: bool, now: datetime | None = None) -> Plan:
    """Evaluate the decision matrix on one health run and, when acting, record the decisions.

    Called in the health body after the run's alerts were observed (so the alert states are this run's).

    Args:
        catalog: the operation's catalog opener.
        store: the store id.
        results: the health run's check results.
        settings: runtime settings (mode, policy, cooldowns, thresholds, visibility timeout).
        act: write rows and start a chain (``AML_REMEDIATE=on`` only; ignored otherwise).
        eager: the chain will run inline (its row starts ``running``) rather than be enqueued (``queued``).
        now: the decision's instant (default: now).

    Returns:
        A :class:`Plan`. A policy that does not parse gives ``plan.error`` and no decision: health completes.
    """
    now = now or datetime.now(UTC)
    mode = settings.remediate
    acting = act and mode == "on"
    plan = Plan(mode=mode, acting=acting)
    if mode == "off":
        return plan
    try:
        policy = policy_of(settings)
    except PolicyError as exc:
        plan.error = str(exc)
        log.error("remediation not evaluated on %s: %s", store, exc)
        return plan
    findings = evaluate(results, policy)
    try:
        _decide(catalog, store, findings, policy, settings, plan, eager=eager, now=now)
    except Exception as exc:  # the health run must complete: the decision (and its rows) is rolled back
        log.exception("remediation on %s failed while deciding", store)
        plan.error = f"remediation failed while deciding: {type(exc).__name__}: {exc}"
        plan.chain = None
        return plan
    if plan.chain is not None and plan.chain["rule"] == "unparsable_document":
        _name_good_copies(catalog, plan, store, settings)
    elif not plan.acting:
        for decision in plan.decisions:
            if decision.finding.rule == "unparsable_document" and decision.status == "would_run":
                decision.good_copies = _good_copies(decision.finding, store, settings)
    return plan


def _decide(catalog: Catalog, store: str, findings: list[Finding], policy: Policy, settings: Settings, plan: Plan,
            *, eager: bool, now: datetime) -> None:
    if not findings:
        if plan.acting:
            with catalog() as session:
                plan.reconciled = _reconcile(session, store, now, float(settings.visibility_timeout))
        return
    with catalog(write=plan.acting) as session:
        if plan.acting:
            plan.reconciled = _reconcile(session, store, now, float(settings.visibility_timeout))
            session.flush()
        flying = rows.in_flight(session, store)
        started = rows.started_since(session, store, now - timedelta(hours=1))
        chosen: Decision | None = None
        for finding in findings:
            decision = _judge(session, store, finding, policy, flying, chosen, now,
                              budget=(started, settings.remediate_max_per_hour))
            if plan.acting:
                _record(session, store, decision, plan.mode, eager, now, plan)
            plan.decisions.append(decision)
            if chosen is None and decision.status in ("would_run", "run"):
                chosen = decision


def _judge(session: Any, store: str, finding: Finding, policy: Policy, flying: list[Remediation],
           chosen: Decision | None, now: datetime, *, budget: tuple[int, int]) -> Decision:
    """Decide one finding: off, waits (a chain in flight, or the chain this run starts), refused (the rule's
    last chain could not help and the cause is unchanged), skipped (cooldown, budget), else would run."""
    fingerprint = queries.alert_fingerprint(store, finding.agent, finding.check)
    alert_now = rows.alert_state(session, fingerprint)
    steps = _steps(policy, finding.rule, store)
    decision = Decision(finding, fingerprint, steps, "would_run", finding.reason, alert_before=alert_now)

    def set_(status: str, why: str) -> Decision:
        decision.status, decision.reason = status, f"{finding.reason}; {why}"
        return decision

    if not steps:
        return set_("off", "the rule is off (AML_REMEDIATE_POLICY)")
    if flying:
        return set_("skipped", f"waits: the chain of rule {flying[0].rule} (task {flying[0].task_id}) is in flight "
                               "on this store (one chain per store)")
    if chosen is not None and chosen.finding.rule != finding.rule:
        return set_("skipped", f"waits for the chain of rule {chosen.finding.rule} (one chain per store; the "
                               "health run closing it decides the next)")
    last = rows.last_started(session, store, finding.rule)
    if last is not None:
        why = _ineffective(last)
        if why is not None and _same_cause(last, finding, alert_now):
            raise_ = ("the alert's severity is raised instead" if alert_now and alert_now.get("open")
                      else "no alert is open to raise")
            return set_("refused", f"not run again: {why}, and the cause is unchanged since; {raise_}")
        until = as_utc(last.created_at) + timedelta(seconds=policy.cooldowns_s.get(finding.rule, 0.0))
        if now < until:
            return set_("skipped", f"cooldown: rule {finding.rule} last started at {iso_z(last.created_at)} "
                                   f"(task {last.task_id}), not again before {iso_z(until)}")
    started, most = budget
    if started >= most:
        return set_("skipped", f"budget: {started} chains started on this store in the last hour "
                               f"(AML_REMEDIATE_MAX_PER_HOUR={most})")
    return decision


def _record(session: Any, store: str, decision: Decision, mode: str, eager: bool, now: datetime,
            plan: Plan) -> None:
    """Write the decision's row (acting only); start the chain's row for the first runnable decision."""
    finding = decision.finding
    values: dict[str, Any] = {"store": store, "rule": finding.rule, "fingerprint": decision.fingerprint, "mode": mode,
                              "actions": decision.actions, "reason": decision.reason,
                              "alert_before": decision.alert_before, "created_at": now,
                              "result": {"measure_before": finding.measure, "unit": finding.unit,
                                         "finding": finding.to_dict()}}
    if decision.status == "would_run" and plan.chain is None:
        for step in decision.actions:
            step["task_id"] = str(uuid.uuid4())
        status = RemediationStatus.RUNNING.value if eager else RemediationStatus.QUEUED.value
        row = rows.add(session, **values, status=status, task_id=decision.actions[0]["task_id"])
        if row is not None:
            session.flush()
            decision.status, decision.remediation_id = "run", row.id
            plan.chain = {"remediation_id": row.id, "rule": finding.rule, "fingerprint": decision.fingerprint,
                          "steps": decision.actions, "closing_task_id": str(uuid.uuid4())}
            return
        decision.status = "skipped"
        decision.reason = f"{finding.reason}; waits: another chain started on this store at the same moment"
    if decision.status in ("skipped", "refused", "off"):
        if decision.status == "refused":
            raised = rows.escalate(session, decision.fingerprint, decision.reason)
            if raised:
                decision.reason += (f" ({raised[0]} -> {raised[1]})" if raised[0] != raised[1]
                                    else f" (already {raised[1]})")
                values["alert_after"] = rows.alert_state(session, decision.fingerprint)
        status = RemediationStatus.REFUSED.value if decision.status == "refused" else RemediationStatus.SKIPPED.value
        row = rows.add(session, **{**values, "reason": decision.reason}, status=status, finished_at=now)
        if row is not None:
            session.flush()
            decision.remediation_id = row.id


def _good_copies(finding: Finding, store: str, settings: Settings) -> dict[str, Any]:
    """Per unparseable document of ``finding``, the newest snapshot holding a copy that parses
    (:func:`aml.backup.goodcopy.newest_good_copies`); ``{"error": ...}`` when the repository cannot be read."""
    from aml.backup.goodcopy import newest_good_copies
    from tasks.base import store_path
    from tasks.snapshots import repository_for

    paths = [p for p in finding.details.get("paths", []) if isinstance(p, str)]
    try:
        root = store_path(store)
        found = newest_good_copies(repository_for(root, settings), root, paths)
    except Exception as exc:  # naming a snapshot is advice: it never stops the decision
        log.warning("could not look for good copies in the snapshots of %s: %s", store, exc)
        return {"error": str(exc)}
    return {p: (c.to_dict() if c is not None else None) for p, c in found.items()}


def _name_good_copies(catalog: Catalog, plan: Plan, store: str, settings: Settings) -> None:
    """Add the good copies to the chain's decision and row (after the decision's transaction: restoring from
    snapshots must not hold the catalog's write lock)."""
    assert plan.chain is not None
    decision = next(d for d in plan.decisions if d.remediation_id == plan.chain["remediation_id"])
    copies = decision.good_copies = _good_copies(decision.finding, store, settings)
    named = [f"{p}: restore from {c['backup_id']}" if c else f"{p}: no snapshot holds a good copy"
             for p, c in copies.items() if p != "error"]
    with catalog() as session:
        row = rows.get(session, plan.chain["remediation_id"])
        if row is not None:
            row.result = {**(row.result or {}), "good_copies": copies}
            if named:
                row.reason = f"{row.reason}; " + "; ".join(named)


def record_outcome(catalog: Catalog, remediation_id: int, results: Sequence[CheckResult], settings: Settings,
                   now: datetime | None = None) -> dict[str, Any] | None:
    """Close the chain ``remediation_id`` from the health run that ends it: the steps' task runs, the effect
    (``None`` when a step's result does not say), the measure after (:func:`aml.health.remediate.current_measure`
    of the same subject), whether it improved, whether the rule still fires, the alert's state after;
    ``success`` when every step did its work, else ``failure``. A row already finished (by a reconciliation)
    keeps its verdict.

    Returns:
        The row as a dict, or ``None`` when there is no such row (nothing is changed).
    """
    now = now or datetime.now(UTC)
    try:
        policy = policy_of(settings)
    except PolicyError:
        policy = Policy()
    firing = {f.rule for f in evaluate(results, policy)}
    with catalog() as session:
        row = rows.get(session, remediation_id)
        if row is None:
            log.warning("health run closing remediation %s: no such row", remediation_id)
            return None
        if row.status not in rows.IN_FLIGHT:
            return rows.to_dict(row)
        runs = rows.task_runs(session, [s.get("task_id") for s in row.actions or []])
        steps: list[dict[str, Any]] = []
        effects: list[int | None] = []
        for step in row.actions or []:
            run = runs.get(str(step.get("task_id")))
            action = ACTIONS.get(str(step.get("action")))
            effects.append(action.effect(run.result) if action is not None and run is not None else None)
            steps.append({"action": step.get("action"), "task_id": step.get("task_id"),
                          "status": run.status if run is not None else "missing", "effect": effects[-1],
                          "error": run.error if run is not None else None})
        agent = ((row.result or {}).get("finding") or {}).get("agent")
        finding = Finding(row.rule, "", agent, 0.0, "", "higher" if row.rule == "low_cache_hit" else "lower", "")
        before = (row.result or {}).get("measure_before")
        after = current_measure(row.rule, agent, results)
        still = row.rule in firing or (row.rule in MEMORY_RULES and bool(firing & set(MEMORY_RULES)))
        result = {**(row.result or {}), "steps": steps, "measure_after": after, "still_fires": still,
                  "effect": None if None in effects else sum(e for e in effects if e is not None),
                  "improved": finding.improved(before, after)}
        ok = all(s["status"] in OK_STEP for s in steps)
        rows.finish(session, row, status="success" if ok else "failure", result=result,
                    alert_after=rows.alert_state(session, row.fingerprint or "") or {}, now=now)
        session.flush()
        return rows.to_dict(row)


def start_chain(task: Task, store: str, chain: Mapping[str, Any], *, lookup_sample: int = 50) -> dict[str, Any]:
    """Start the chain :func:`decide` recorded: its steps, then the health run that closes it.

    On a worker the chain is enqueued (``celery.chain`` of immutable signatures carrying the task ids the row
    names and, in the :data:`tasks.base.CAUSE_HEADER` header, the remediation and the alert fingerprint that
    caused it; each step goes to its own queue by aml's routes). Inline (``task.request.is_eager``) each step
    runs here in turn (a failed step does not stop the closing health run, which records the failure), then
    the closing health run, which may start the next rule's chain (bounded by the cooldowns and
    ``AML_REMEDIATE_MAX_PER_HOUR``).

    Args:
        task: the health task that decided (its app runs or sends the chain).
        store: the store id.
        chain: ``Plan.chain``: ``{"remediation_id", "rule", "fingerprint", "steps": [{task, kwargs, task_id}],
            "closing_task_id"}``.
        lookup_sample: the closing health run's lookup sample.

    Returns:
        Enqueued: ``{"enqueued": True, "task_ids": [...]}``; inline: ``{"enqueued": False, "steps": [{action,
        task_id, status, result | error}], "closing": <the closing health result> | None}``. A chain that
        could not be sent, or whose closing run failed, is finished as ``failure`` in its row and returned with
        ``error``. Never raises.
    """
    for module in ("tasks.compress", "tasks.prune"):  # registers the tasks the steps name
        importlib.import_module(module)

    rid = int(chain["remediation_id"])
    closing = {"store": store, "lookup_sample": lookup_sample, "remediation_id": rid, "remediate": True}
    headers = {CAUSE_HEADER: {"remediation_id": rid, "rule": chain["rule"], "fingerprint": chain.get("fingerprint")}}
    if not task.request.is_eager:
        from celery import chain as celery_chain

        closing["remediate"] = None
        sigs = [task.app.signature(s["task"], kwargs=s["kwargs"], immutable=True)
                .set(task_id=s["task_id"], headers=headers) for s in chain["steps"]]
        sigs.append(task.app.signature("aml.health.check", kwargs=closing, immutable=True)
                    .set(task_id=chain["closing_task_id"], headers=headers))
        try:
            celery_chain(*sigs).apply_async()
        except Exception as exc:  # a broker that refuses: the row must not stay in flight
            return _failed_chain(store, rid, f"the chain could not be enqueued: {exc}")
        return {"enqueued": True, "task_ids": [s["task_id"] for s in chain["steps"]] + [chain["closing_task_id"]]}
    steps = []
    for step in chain["steps"]:
        outcome = task.app.tasks[step["task"]].apply(kwargs=step["kwargs"], task_id=step["task_id"], throw=False,
                                                     headers=headers)
        value = outcome.result
        if isinstance(value, BaseException):
            steps.append({"action": step["action"], "task_id": step["task_id"], "status": "failure",
                          "error": f"{type(value).__name__}: {value}"})
        else:
            steps.append({"action": step["action"], "task_id": step["task_id"],
                          "status": (value or {}).get("status", "success"), "result": value})
    closed = task.app.tasks["aml.health.check"].apply(kwargs=closing, task_id=chain["closing_task_id"], throw=False,
                                                      headers=headers)
    if isinstance(closed.result, BaseException):
        failed = _failed_chain(store, rid, f"its closing health run failed: {type(closed.result).__name__}: "
                                           f"{closed.result}")
        return {"enqueued": False, "steps": steps, "closing": None, "error": failed["error"]}
    return {"enqueued": False, "steps": steps, "closing": closed.result}


def _failed_chain(store: str, remediation_id: int, reason: str) -> dict[str, Any]:
    """Finish ``remediation_id`` as ``failure`` with ``reason`` (so it does not stay in flight); never raises."""
    log.error("remediation %s on %s: %s", remediation_id, store, reason)
    try:
        with session_scope(get_settings().catalog_url) as session:
            row = rows.get(session, remediation_id)
            if row is not None and row.status in rows.IN_FLIGHT:
                rows.fail(session, row, reason)
    except Exception:  # the catalog is down too: the stale bound closes the row later
        log.exception("could not record the failure of remediation %s", remediation_id)
    return {"enqueued": False, "error": reason}
