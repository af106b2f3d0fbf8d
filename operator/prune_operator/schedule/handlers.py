"""Kopf handlers for PruneSchedules: thin, over plan.reconcile.

- known_schedules (a Kopf index): every PruneSchedule, as watched.
- pruneschedule-event: every event of a PruneSchedule (the initial listing
  included) syncs it at once (validation, status).
- pruneschedule-child: an event of a PruneJob carrying the schedule label
  syncs its schedule (a finished run frees a Forbid schedule promptly).
- pruneschedule-resync-start/-stop (resync.Resync): every
  `config.schedule_tick_seconds` every known schedule is synced, which is
  what starts runs on time.

A sync reads the schedule and its PruneJobs fresh from the API, parses the
spec once, asks the pure `plan.reconcile` what to do, deletes, creates (409 =
created before: the names are deterministic), writes the status only when it
changed, and posts Events. Handlers reach the API through `memo.kube`
(prune_operator.kube.Kube).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

import kopf

from prune_job import spec as api
from prune_operator import conditions, parents
from prune_operator.kube import Kube, object_path
from prune_operator.resync import Key, Resync
from prune_operator.schedule import plan

KNOWN_INDEX = "known_schedules"  # the index's id is also the name of the handlers' keyword argument


# ---------------------------------------------------------------- API calls


def schedule_path(namespace: str, name: str, subresource: str = "") -> str:
    return object_path(api.API_VERSION, api.SCHEDULE_PLURAL, namespace, name, subresource)


def list_children(kube: Kube, schedule: dict[str, Any]) -> list[dict[str, Any]]:
    return parents.list_children(kube, schedule, plan.SCHEDULE_LABEL, api.SCHEDULE_KIND)


def write_status(kube: Kube, schedule: dict[str, Any], status: api.PruneScheduleStatus) -> bool:
    """Merge-patch the status when it differs; False when nothing changed."""
    meta = schedule["metadata"]
    return parents.write_status(kube, schedule_path(meta["namespace"], meta["name"], "status"), schedule,
                                api.parse_schedule_status(schedule.get("status")), status)


# ---------------------------------------------------------------- one sync


LOCKS = parents.KeyedLocks()


def sync(kube: Kube, namespace: str, name: str, logger: Any) -> Optional[plan.Plan]:
    """Bring one schedule up to date. None when it is gone or invalid."""
    return parents.sync_fresh(kube, schedule_path(namespace, name), LOCKS, (namespace, name),
                              lambda schedule: sync_once(kube, schedule, conditions.now(), logger))


def parse(schedule: dict[str, Any]) -> api.PruneScheduleSpec:
    """The spec, parsed once per sync; SpecError names each bad field (the name's length included)."""
    spec = api.parse_schedule_spec(schedule.get("spec") or {})
    if len(schedule["metadata"]["name"]) > api.MAX_SCHEDULE_NAME:
        raise api.SpecError([("metadata.name", f"at most {api.MAX_SCHEDULE_NAME} characters (PruneJob names add 11)")])
    return spec


def sync_once(kube: Kube, schedule: dict[str, Any], at: datetime, logger: Any) -> Optional[plan.Plan]:
    meta = schedule["metadata"]
    status = api.parse_schedule_status(schedule.get("status"))
    try:
        spec = parse(schedule)
    except api.SpecError as err:
        refused = plan.refused_status(status, err.problems, at, meta.get("generation"))
        if not write_status(kube, schedule, refused):
            return None  # refused before, for this very spec: said once, not on every tick
        conditions.post_events(kube, api.SCHEDULE_KIND, schedule,
                               (conditions.Event("Warning", "InvalidSpec", str(err)),), at)
        raise
    children = [plan.child_from_object(o) for o in list_children(kube, schedule)]
    created = conditions.parse_time(meta.get("creationTimestamp")) or plan.first_seen(status, at)
    decided = plan.reconcile(meta["name"], spec, status, created, children, at, meta.get("generation"))
    for child in decided.delete:
        parents.delete_prunejob(kube, meta["namespace"], child)
    if decided.create is not None:
        fresh = kube.create(plan.prunejob_for_run(schedule, decided.create))
        logger.info(f"PruneJob {decided.create.name}: {'created' if fresh else 'existed already'}")
        if not fresh:
            warn_if_foreign(kube, schedule, decided.create.name, logger)
    write_status(kube, schedule, decided.status)
    conditions.post_events(kube, api.SCHEDULE_KIND, schedule, decided.events, at)
    return decided


def warn_if_foreign(kube: Kube, schedule: dict[str, Any], name: str, logger: Any) -> None:
    """A same-named PruneJob that is not this schedule's is left alone (never adopted); say so."""
    meta = schedule["metadata"]
    existing = kube.get_or_none(object_path(api.API_VERSION, api.PLURAL, meta["namespace"], name))
    if existing is not None and not plan.owned_by(existing, meta.get("uid"), meta["name"]):
        logger.warning(f"PruneJob {meta['namespace']}/{name} exists and is not this schedule's; "
                       "it is left untouched and this run is not started")



sync_logged = parents.sync_logged(api.SCHEDULE_KIND, lambda memo, *key: sync(memo.kube, *key),
                                  lambda config: config.schedule_tick_seconds)


RESYNC = Resync(
    name="pruneschedule-resync",
    index=KNOWN_INDEX,
    interval=lambda config: config.schedule_tick_seconds,
    due=lambda known_schedules: list(known_schedules),
    sync=sync_logged,
)


# ---------------------------------------------------------------- handlers


def known_schedule(namespace: str, name: str, **_: Any) -> dict[Key, bool]:
    return {(namespace, name): True}


def register(registry: kopf.OperatorRegistry) -> None:
    """Attach the PruneSchedule handlers to `registry` (every one with an explicit id)."""
    parents.register_parent(registry, kind=api.SCHEDULE_KIND, plural=api.SCHEDULE_PLURAL, label=plan.SCHEDULE_LABEL,
                            index=KNOWN_INDEX, index_fn=known_schedule, sync=sync_logged, resync=RESYNC)
