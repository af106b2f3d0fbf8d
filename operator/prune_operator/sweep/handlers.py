"""Kopf handlers for PruneSweeps: thin, over plan.reconcile (the schedule
controller's shape, sharing its helpers through prune_operator.parents).

- known_sweeps (a Kopf index): every PruneSweep, as watched.
- prunesweep-event: every event of a PruneSweep syncs it.
- prunesweep-child: an event of a PruneJob carrying the sweep label syncs its
  sweep (a finished child frees a slot at once).
- prunesweep-resync-start/-stop: every `config.resync_seconds` every
  unfinished sweep is synced again (the safety net for a lost event).

A sync reads the sweep and its PruneJobs fresh, parses the spec once, asks
the pure `plan.reconcile`, creates (409 = created before: names are
deterministic), writes the status only when it changed, and posts Events.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

import kopf

from prune_job import spec as api
from prune_operator import conditions, parents
from prune_operator.kube import ApiError, Kube, object_path
from prune_operator.resync import Key, Resync
from prune_operator.sweep import plan

KNOWN_INDEX = "known_sweeps"  # the index's id is also the name of the handlers' keyword argument
LOCKS = parents.KeyedLocks()


def sweep_path(namespace: str, name: str, subresource: str = "") -> str:
    return object_path(api.API_VERSION, api.SWEEP_PLURAL, namespace, name, subresource)


def write_status(kube: Kube, sweep: dict[str, Any], status: api.PruneSweepStatus) -> bool:
    meta = sweep["metadata"]
    return parents.write_status(kube, sweep_path(meta["namespace"], meta["name"], "status"), sweep,
                                api.parse_sweep_status(sweep.get("status")), status)


def sync(kube: Kube, namespace: str, name: str, logger: Any) -> Optional[plan.Plan]:
    """Bring one sweep up to date. None when it is gone or invalid."""
    return parents.sync_fresh(kube, sweep_path(namespace, name), LOCKS, (namespace, name),
                              lambda sweep: sync_once(kube, sweep, conditions.now(), logger))


def sync_once(kube: Kube, sweep: dict[str, Any], at: datetime, logger: Any) -> Optional[plan.Plan]:
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
    decided = plan.reconcile(meta["name"], spec, status, children, at, meta.get("generation"))
    for child in decided.create:
        fresh = kube.create(plan.prunejob_for_child(sweep, child, decided.dense_baseline))
        logger.info(f"PruneJob {child.name}: {'created' if fresh else 'existed already'}")
    write_status(kube, sweep, decided.status)
    conditions.post_events(kube, api.SWEEP_KIND, sweep, decided.events, at)
    return decided


def sync_logged(memo: Any, namespace: str, name: str, logger: Any) -> None:
    """Event handlers are not retried by Kopf: log, and let the resync try again."""
    try:
        sync(memo.kube, namespace, name, logger)
    except api.SpecError as err:
        logger.warning(f"PruneSweep {namespace}/{name} refused: {err}")
    except (ApiError, kopf.TemporaryError) as err:
        logger.warning(f"PruneSweep {namespace}/{name}: {err}; retrying within {memo.config.resync_seconds:g}s")


def unfinished(known_sweeps: kopf.Index) -> list[Key]:
    return [key for key, done in known_sweeps.items() if not all(done)]


RESYNC = Resync(name="prunesweep-resync", index=KNOWN_INDEX, interval=lambda config: config.resync_seconds,
                due=unfinished, sync=sync_logged)


# ---------------------------------------------------------------- handlers


def known_sweep(body: Any, namespace: str, name: str, **_: Any) -> dict[Key, bool]:
    """The index entry: whether the sweep is Complete."""
    complete = any(c.get("type") == "Complete" and c.get("status") == "True"
                   for c in (body.get("status") or {}).get("conditions") or [])
    return {(namespace, name): complete}


def sweep_event(body: Any, memo: Any, logger: Any, type: Optional[str] = None, **_: Any) -> None:
    if type != "DELETED":
        meta = body["metadata"]
        sync_logged(memo, meta["namespace"], meta["name"], logger)


def child_event(body: Any, memo: Any, logger: Any, known_sweeps: kopf.Index, **_: Any) -> None:
    meta = body.get("metadata") or {}
    parent = (meta.get("labels") or {}).get(plan.SWEEP_LABEL)
    if parent and (meta.get("namespace", ""), parent) in known_sweeps:
        sync_logged(memo, meta.get("namespace", ""), parent, logger)


def register(registry: kopf.OperatorRegistry) -> None:
    """Attach the PruneSweep handlers to `registry` (every one with an explicit id)."""
    resource = (api.GROUP, api.VERSION, api.SWEEP_PLURAL)
    kopf.index(*resource, id=KNOWN_INDEX, registry=registry)(known_sweep)
    kopf.on.event(*resource, id="prunesweep-event", registry=registry)(sweep_event)
    kopf.on.event(api.GROUP, api.VERSION, api.PLURAL, id="prunesweep-child",
                  labels={plan.SWEEP_LABEL: kopf.PRESENT}, registry=registry)(child_event)
    RESYNC.register(registry)
