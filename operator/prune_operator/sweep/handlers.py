"""Kopf handlers for PruneSweeps: thin, over plan.reconcile (the schedule
controller's shape, sharing its helpers through prune_operator.parents).

- known_sweeps (a Kopf index): every PruneSweep, as watched.
- prunesweep-event: every event of a PruneSweep syncs it.
- prunesweep-child: an event of a PruneJob carrying the sweep label syncs its
  sweep (a finished child frees a slot at once).
- prunesweep-report: an event of the report Job (a Job carrying the sweep
  label) syncs its sweep (status.report follows the Job).
- prunesweep-resync-start/-stop: every `config.resync_seconds` every
  unfinished sweep (or one whose report is not finished) is synced again
  (the safety net for a lost event).

A sync reads the sweep and its PruneJobs fresh, parses the spec once, asks
the pure `plan.reconcile`, creates (409 = created before: names are
deterministic) the children it names, then, once, the report's ConfigMap
and Job (report_job.py), writes the status only when it changed, and posts
Events.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

import kopf

from prune_job import spec as api
from prune_operator import conditions, parents
from prune_operator.config import OperatorConfig
from prune_operator.kube import Kube, object_path
from prune_operator.policy import policy_problems
from prune_operator.resync import Key, Resync
from prune_operator.sweep import plan, report_job

KNOWN_INDEX = "known_sweeps"  # the index's id is also the name of the handlers' keyword argument
LOCKS = parents.KeyedLocks()


def sweep_path(namespace: str, name: str, subresource: str = "") -> str:
    return object_path(api.API_VERSION, api.SWEEP_PLURAL, namespace, name, subresource)


def write_status(kube: Kube, sweep: dict[str, Any], status: api.PruneSweepStatus) -> bool:
    meta = sweep["metadata"]
    return parents.write_status(kube, sweep_path(meta["namespace"], meta["name"], "status"), sweep,
                                api.parse_sweep_status(sweep.get("status")), status)


def sync(kube: Kube, namespace: str, name: str, logger: Any,
         config: Optional[OperatorConfig] = None) -> Optional[plan.Plan]:
    """Bring one sweep up to date. None when it is gone or invalid."""
    return parents.sync_fresh(kube, sweep_path(namespace, name), LOCKS, (namespace, name),
                              lambda sweep: sync_once(kube, sweep, conditions.now(), logger, config))


def sync_once(kube: Kube, sweep: dict[str, Any], at: datetime, logger: Any,
              config: Optional[OperatorConfig] = None) -> Optional[plan.Plan]:
    config = config or OperatorConfig()
    meta = sweep["metadata"]
    status = api.parse_sweep_status(sweep.get("status"))
    try:
        spec = api.parse_sweep_spec(sweep.get("spec") or {})
    except api.SpecError as err:
        if write_status(kube, sweep, plan.refused_status(status, err.problems, at, meta.get("generation"))):
            conditions.post_events(kube, api.SWEEP_KIND, sweep,
                                   (conditions.Event("Warning", "InvalidSpec", str(err)),), at)
        raise
    children = [plan.observed_from_object(o) for o in parents.list_children(kube, sweep, plan.SWEEP_LABEL,
                                                                            api.SWEEP_KIND)]
    report = kube.get_or_none(object_path("batch/v1", "jobs", meta["namespace"], report_job.report_name(meta["name"])))
    if report is not None and not parents.owned_by(report, plan.SWEEP_LABEL, api.SWEEP_KIND, meta.get("uid"),
                                                   meta["name"]):
        report = None  # a same-named Job that is not this sweep's: left alone
    refused = policy_problems(spec.template, config)
    decided = plan.reconcile(meta["name"], spec, status, children, at, meta.get("generation"),
                             report_job.job_phase(report),
                             conditions.describe_problems(refused) if refused else None)
    for child in decided.create:
        fresh = kube.create(plan.prunejob_for_child(sweep, child, decided.dense_baseline))
        logger.info(f"PruneJob {child.name}: {'created' if fresh else 'existed already'}")
    if decided.write_report:  # the ConfigMap first: the pod mounts it
        kube.create(report_job.table_config_map(sweep, decided.status, plan.SWEEP_LABEL))
        fresh = kube.create(report_job.report_job(sweep, spec, config, plan.SWEEP_LABEL))
        logger.info(f"report Job {report_job.report_name(meta['name'])}: {'created' if fresh else 'existed already'}")
    write_status(kube, sweep, decided.status)
    conditions.post_events(kube, api.SWEEP_KIND, sweep, decided.events, at)
    return decided


sync_logged = parents.sync_logged(api.SWEEP_KIND, lambda memo, *key: sync(memo.kube, *key, memo.config),
                                  lambda config: config.resync_seconds)


def unfinished(known_sweeps: kopf.Index) -> list[Key]:
    return [key for key, done in known_sweeps.items() if not all(done)]


RESYNC = Resync(name="prunesweep-resync", index=KNOWN_INDEX, interval=lambda config: config.resync_seconds,
                due=unfinished, sync=sync_logged)


# ---------------------------------------------------------------- handlers


def known_sweep(body: Any, namespace: str, name: str, **_: Any) -> dict[Key, bool]:
    """The index entry: whether the sweep is done: Complete, and its report finished (or none to write)."""
    status = body.get("status") or {}
    complete = any(c.get("type") == "Complete" and c.get("status") == "True" for c in status.get("conditions") or [])
    report = (status.get("report") or {}).get("phase")
    return {(namespace, name): complete and (report in plan.FINISHED or not status.get("rows"))}


def report_event(body: Any, memo: Any, logger: Any, known_sweeps: kopf.Index, **_: Any) -> None:
    """An event of a report Job syncs its sweep."""
    meta = body.get("metadata") or {}
    sweep = (meta.get("labels") or {}).get(plan.SWEEP_LABEL)
    if sweep and (meta.get("namespace", ""), sweep) in known_sweeps:
        sync_logged(memo, meta.get("namespace", ""), sweep, logger)


def register(registry: kopf.OperatorRegistry) -> None:
    """Attach the PruneSweep handlers to `registry` (every one with an explicit id)."""
    parents.register_parent(registry, kind=api.SWEEP_KIND, plural=api.SWEEP_PLURAL, label=plan.SWEEP_LABEL,
                            index=KNOWN_INDEX, index_fn=known_sweep, sync=sync_logged, resync=RESYNC)
    kopf.on.event("batch", "v1", "jobs", id="prunesweep-report", labels={plan.SWEEP_LABEL: kopf.PRESENT},
                  registry=registry)(report_event)
