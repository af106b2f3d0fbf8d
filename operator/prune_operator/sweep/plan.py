"""PruneSweep reconciliation as a pure function: which children to create now
and the status to write, given the sweep and the PruneJobs it owns.

- The grid (prune_job.sweep.grid) names every child deterministically, so an
  operator restart or a lost status write never creates a child twice: a
  child that exists is never created again (and the API server's 409 covers a
  race).
- At most `parallelism` children are unfinished at any time; the next ones in
  grid order are created as earlier ones finish.
- A failed child is a row with phase Failed and a Warning Event; the others
  go on. The sweep is Complete when every child has finished, Failed (as a
  whole) only when none succeeded.
- Dense perplexity (and, on CPU, the dense peak memory measured in a process
  of its own) is measured once per sweep: until one is known, a single
  child runs, created with `evaluation.measureDenseFirst` (it measures the
  dense model before pruning and posts `status.denseBaseline` at once); then
  the others (up to `parallelism`) are created with it as
  `evaluation.denseBaseline`. If the measurer fails before posting, the next
  child measures. Generation speed is still measured beside every child.
- The best child (prune_job.sweep.select) is chosen among the finished ones.
- Once Complete with rows (Failed as a whole included), the report is written
  by one Job (report_job.py; created once: a Job that exists, or a report in
  the status, is never created again); `status.report` and the condition
  ReportWritten follow it.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

from prune_job.spec import PruneSweepSpec, PruneSweepStatus, SweepReport
from prune_job.sweep import grid as sweep_grid
from prune_job.sweep.select import row, status_from_rows
from prune_operator import parents
from prune_operator.conditions import Event, describe_problems
from prune_operator.sweep import report_job

SWEEP_LABEL = "pruning.dev/sweep"
COMBINATION_ANNOTATION = "pruning.dev/combination"
FINISHED = ("Succeeded", "Failed")
WAITING = "Waiting"  # a row whose child is not created yet


@dataclass(frozen=True)
class Observed:
    """What the sweep needs to know of one PruneJob it owns."""

    name: str
    phase: Optional[str] = None
    results: Optional[dict[str, Any]] = None
    message: Optional[str] = None
    dense: Optional[dict[str, Any]] = None  # status.denseBaseline: posted by a child that measured it first

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED


@dataclass(frozen=True)
class Plan:
    status: PruneSweepStatus
    create: tuple[sweep_grid.Child, ...] = ()
    dense_baseline: Optional[dict[str, Any]] = None  # for the children created now
    events: tuple[Event, ...] = ()
    write_report: bool = False  # create the report's ConfigMap and Job now


@dataclass
class _Draft:
    status: PruneSweepStatus
    events: list[Event] = field(default_factory=list)


def reconcile(name: str, spec: PruneSweepSpec, status: PruneSweepStatus, children: list[Observed], now: datetime,
              generation: Optional[int] = None, report: Optional[tuple[str, Optional[str]]] = None,
              report_refused: Optional[str] = None) -> Plan:
    """`report`: the report Job's (phase, message) when it exists (report_job.job_phase);
    `report_refused`: why the operator's policy forbids its pod, if it does."""
    grid = sweep_grid.plan_grid(name, spec.template, spec.matrix)
    seen = {c.name: c for c in children}
    active = sum(1 for c in grid.children if c.name in seen and not seen[c.name].finished)
    waiting = [c for c in grid.children if c.name not in seen]
    in_grid_order = [seen[c.name] for c in grid.children if c.name in seen]
    baseline = dense_baseline(in_grid_order, name)
    slots = spec.parallelism if baseline is not None or not needs_dense(spec) else 1  # one measurer at a time
    create = tuple(waiting[: max(0, slots - active)])
    rows = [_row(c, seen.get(c.name), c in create) for c in grid.children]
    draft = _Draft(status_from_rows(rows, grid.skipped, spec.select))
    draft.status.conditions = status.conditions
    _track(draft, {r.child: r.phase for r in status.rows}, create)
    _decide(draft, now, generation)
    write = _report(draft, name, spec, status.report, report, report_refused, now, generation)
    return Plan(draft.status, create, baseline, tuple(draft.events), write)


def _row(child: sweep_grid.Child, observed: Optional[Observed], creating: bool):
    if observed is None:
        return row(child.name, child.combination, "Pending" if creating else WAITING, None)
    return row(child.name, child.combination, observed.phase or "Pending", observed.results,
               observed.message if observed.phase == "Failed" else None)


def _track(draft: _Draft, before: dict[str, str], create: tuple[sweep_grid.Child, ...]) -> None:
    for child in create:
        draft.events.append(Event("Normal", "ChildCreated", f"Created PruneJob {child.name} {child.combination}"))
    for r in draft.status.rows:
        if r.phase == "Failed" and before.get(r.child) != "Failed":
            draft.events.append(Event("Warning", "ChildFailed", f"PruneJob {r.child} failed: {r.message or ''}".strip()))


def _decide(draft: _Draft, now: datetime, generation: Optional[int]) -> None:
    status = draft.status
    was_complete = any(c.type == "Complete" and c.status == "True" for c in status.conditions)
    complete = status.completed == status.total
    status.observed_generation = generation
    conds = parents.set_condition(status.conditions, "Accepted", "True", "Valid", "", now, generation)
    failed = [r.child for r in status.rows if r.phase == "Failed"]
    summary = f"{status.completed}/{status.total} children finished, {len(failed)} failed"
    conds = parents.set_condition(conds, "Complete", "True" if complete else "False",
                                  "AllFinished" if complete else "Running", summary, now, generation)
    none_succeeded = complete and len(failed) == status.total
    conds = parents.set_condition(conds, "Failed", "True" if none_succeeded else "False",
                                  "AllChildrenFailed" if none_succeeded else "NotFailed",
                                  summary if none_succeeded else "", now, generation)
    status.conditions = conds
    if complete and not was_complete:
        best = status.best
        if best is not None and best.child:
            draft.events.append(Event("Normal", "Complete", f"{summary}; best: {best.child} ({best.why})"))
        else:
            draft.events.append(Event("Warning", "Complete", f"{summary}; {best.why if best else 'no best'}"))


def _report(draft: _Draft, name: str, spec: PruneSweepSpec, before: Optional[SweepReport],
            observed: Optional[tuple[str, Optional[str]]], refused: Optional[str], now: datetime,
            generation: Optional[int]) -> bool:
    """status.report and ReportWritten; True when the report Job is to be created now."""
    status = draft.status
    current = SweepReport(job=report_job.report_name(name), uri=report_job.report_uri(spec))
    write = False
    if observed is not None:
        current.phase, current.message = observed
    elif before is not None:  # its Job is gone (deleted after it finished): never written twice
        current = before
    elif status.rows and status.completed == status.total:
        if refused:
            current.phase, current.message = "Failed", f"not started: {refused}"
        else:
            write = True
            draft.events.append(Event("Normal", "ReportStarted", f"Job {current.job} writes the report to {current.uri}"))
    else:
        return False
    status.report = current
    if before is None or before.phase != current.phase:
        if current.phase == "Succeeded":
            draft.events.append(Event("Normal", "ReportWritten", f"report.md, sweep.json and pareto.png in {current.uri}"))
        elif current.phase == "Failed":
            draft.events.append(Event("Warning", "ReportFailed", f"Job {current.job}: {current.message or 'failed'}"))
    verdict = {"Succeeded": ("True", "Written", f"report.md, sweep.json and pareto.png in {current.uri}"),
               "Failed": ("False", "ReportFailed", current.message or f"Job {current.job} failed")}
    cond_status, reason, message = verdict.get(current.phase, ("False", "Writing", f"Job {current.job} writes it"))
    status.conditions = parents.set_condition(status.conditions, "ReportWritten", cond_status, reason, message, now,
                                              generation)
    return write


def needs_dense(spec: PruneSweepSpec) -> bool:
    """Whether the children evaluate against a dense perplexity the sweep has yet to measure."""
    return spec.template.evaluation.enabled and spec.template.evaluation.dense_baseline is None


def dense_baseline(children: list[Observed], sweep: str) -> Optional[dict[str, Any]]:
    """The dense perplexity that the first child (in `children`' order) to report one measured itself:
    posted before pruning (status.denseBaseline) or in its results."""
    for c in children:
        ppl = (c.results or {}).get("perplexity") or {}
        posted = c.dense if (c.dense or {}).get("perplexity") else None
        if posted is None and ppl.get("dense") and not ppl.get("denseSource"):
            posted = {"perplexity": ppl["dense"]}
        if posted is not None:
            extra = {k: posted[k] for k in ("nll", "peakMemoryBytes") if posted.get(k) is not None}
            return {"perplexity": posted["perplexity"], **extra, "source": f"PruneJob {c.name} (sweep {sweep})"}
    return None


def refused_status(status: PruneSweepStatus, problems: list[tuple[str, str]], now: datetime,
                   generation: Optional[int] = None) -> PruneSweepStatus:
    refused = status.model_copy(deep=True)
    refused.conditions = parents.set_condition(status.conditions, "Accepted", "False", "InvalidSpec",
                                               describe_problems(problems), now, generation)
    refused.observed_generation = generation
    return refused


# ---------------------------------------------------------------- objects in and out


def observed_from_object(obj: dict[str, Any]) -> Observed:
    status = obj.get("status") or {}
    failed = next((c for c in status.get("conditions") or [] if c.get("type") == "Failed" and c.get("status") == "True"),
                  None)
    return Observed(name=obj["metadata"]["name"], phase=status.get("phase"), results=status.get("results"),
                    message=(failed or {}).get("message"), dense=status.get("denseBaseline"))


def prunejob_for_child(sweep: dict[str, Any], child: sweep_grid.Child,
                       baseline: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The child PruneJob: the template as written with the combination's pruning fields, its own
    output folder `<template output>/<child>/`, labelled and owned by the sweep; with the sweep's
    dense `baseline`, or, while there is none, told to measure it first."""
    meta = sweep["metadata"]
    spec = copy.deepcopy(sweep["spec"]["template"])
    spec["pruning"] = {**(spec.get("pruning") or {}), **child.combination}
    spec["output"] = {**spec["output"], "uri": sweep_grid.child_output(spec["output"]["uri"], child.name)}
    evaluation = spec.get("evaluation") or {}
    if evaluation.get("enabled", True) and "denseBaseline" not in evaluation:
        spec["evaluation"] = {**evaluation, **({"denseBaseline": baseline} if baseline is not None
                                               else {"measureDenseFirst": True})}
    return {
        "apiVersion": "pruning.dev/v1alpha1",
        "kind": "PruneJob",
        "metadata": {
            "name": child.name,
            "namespace": meta.get("namespace"),
            "labels": {SWEEP_LABEL: meta["name"]},
            "annotations": {COMBINATION_ANNOTATION: json.dumps(child.combination, sort_keys=True)},
            "ownerReferences": [parents.owner_reference("PruneSweep", meta)],
        },
        "spec": spec,
    }
