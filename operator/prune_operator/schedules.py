"""Kopf handlers for PruneSchedules: thin, over schedule_logic.reconcile.

- pruneschedule-event: every event of a PruneSchedule (the initial listing
  included) records it as known and syncs it at once (validation, status).
- pruneschedule-child: an event of a PruneJob carrying the schedule label
  syncs its schedule (a finished run frees a Forbid schedule promptly).
- pruneschedule-clock (startup) / pruneschedule-clock-stop (cleanup): one
  thread that syncs every known schedule every TICK_SECONDS, which is what
  starts runs on time.

Why a clock thread and not `@kopf.timer`: Kopf puts a finalizer on every
object that has a timer or daemon, so a stopped (or uninstalled) operator
would block the deletion of every PruneSchedule and of its namespace. Event
handlers need no finalizer; children go away through owner references.

A sync reads the schedule and its PruneJobs fresh from the API, asks the pure
`reconcile` what to do, deletes, creates (409 = created before: the names are
deterministic), writes the status only when it changed, and posts Events.
Handlers reach the API through `memo.kube` (prune_operator.kube.Kube).
"""
from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import kopf

from prune_job import spec as api
from prune_job.schedule_spec import (
    MAX_SCHEDULE_NAME, SCHEDULE_PLURAL, PruneScheduleStatus, parse_schedule_spec, parse_schedule_status,
)
from prune_job.spec import SpecError
from prune_operator import schedule_logic as logic
from prune_operator.kube import ApiError, Kube, collection_path, object_path

TICK_SECONDS = 10.0
STATUS_ATTEMPTS = 3
COMPONENT = "prune-operator"

# The clock of every decision; tests replace it (an injected clock, not a test branch).
now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)  # noqa: E731


# ---------------------------------------------------------------- API calls


def schedule_path(namespace: str, name: str, subresource: str = "") -> str:
    return object_path(api.API_VERSION, SCHEDULE_PLURAL, namespace, name, subresource)


def list_children(kube: Kube, schedule: dict[str, Any]) -> list[dict[str, Any]]:
    meta = schedule["metadata"]
    listing = kube.get(collection_path(api.API_VERSION, api.PLURAL, meta["namespace"]),
                       query={"labelSelector": f"{logic.SCHEDULE_LABEL}={meta['name']}"})
    return [o for o in listing.get("items") or [] if logic.owned_by(o, meta.get("uid"), meta["name"])]


def delete_prunejob(kube: Kube, namespace: str, name: str) -> None:
    try:
        kube.request("DELETE", object_path(api.API_VERSION, api.PLURAL, namespace, name),
                     body={"propagationPolicy": "Background"})
    except ApiError as err:
        if err.status != 404:
            raise


def write_status(kube: Kube, schedule: dict[str, Any], status: PruneScheduleStatus) -> bool:
    """Merge-patch the status when it differs; False when nothing changed."""
    desired = logic.status_document(status)
    current = logic.status_document(parse_schedule_status(schedule.get("status")))
    if desired == current:
        return False
    meta = schedule["metadata"]
    patch: dict[str, Any] = {"status": logic.status_patch(current, desired)}
    if meta.get("resourceVersion"):
        patch["metadata"] = {"resourceVersion": meta["resourceVersion"]}  # 409 if it changed meanwhile
    kube.merge_patch(schedule_path(meta["namespace"], meta["name"], "status"), patch)
    return True


def post_events(kube: Kube, schedule: dict[str, Any], events: tuple[logic.Event, ...], at: datetime) -> None:
    for event in events:
        manifest = logic.event_manifest(schedule, event, at, COMPONENT)
        try:
            kube.request("POST", collection_path("v1", "events", schedule["metadata"]["namespace"]), body=manifest)
        except ApiError:
            pass  # an Event is a courtesy; losing one must not stop the schedule


# ---------------------------------------------------------------- one sync


_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault((namespace, name), threading.Lock())


def sync(kube: Kube, namespace: str, name: str, logger: Any) -> Optional[logic.Plan]:
    """Bring one schedule up to date. None when it is gone or invalid."""
    with _lock(namespace, name):
        for _ in range(STATUS_ATTEMPTS):
            schedule = kube.get_or_none(schedule_path(namespace, name))
            if schedule is None or schedule["metadata"].get("deletionTimestamp"):
                return None
            try:
                return _sync_once(kube, schedule, now(), logger)
            except ApiError as err:
                if err.status != 409:
                    raise
        raise kopf.TemporaryError("the schedule kept changing while its status was written", delay=1)


def _sync_once(kube: Kube, schedule: dict[str, Any], at: datetime, logger: Any) -> Optional[logic.Plan]:
    meta = schedule["metadata"]
    status = parse_schedule_status(schedule.get("status"))
    try:
        spec = parse_schedule_spec(schedule.get("spec") or {})
        if len(meta["name"]) > MAX_SCHEDULE_NAME:
            raise SpecError([("metadata.name", f"at most {MAX_SCHEDULE_NAME} characters (PruneJob names add 11)")])
    except SpecError as err:
        refused = logic.refused_status(status, err.problems, at, meta.get("generation"))
        if not write_status(kube, schedule, refused):
            return None  # refused before, for this very spec: said once, not on every tick
        post_events(kube, schedule, (logic.Event("Warning", "InvalidSpec", str(err)),), at)
        raise
    children = [logic.child_from_object(o) for o in list_children(kube, schedule)]
    created = logic.parse_time(meta.get("creationTimestamp")) or logic.first_seen(status, at)
    plan = logic.reconcile(meta["name"], spec, status, created, children, at, meta.get("generation"))
    for child in plan.delete:
        delete_prunejob(kube, meta["namespace"], child)
    if plan.create is not None:
        fresh = kube.create(logic.prunejob_for_run(schedule, plan.create))
        logger.info(f"PruneJob {plan.create.name}: {'created' if fresh else 'existed already'}")
    write_status(kube, schedule, plan.status)
    post_events(kube, schedule, plan.events, at)
    return plan


# ---------------------------------------------------------------- handlers


def schedule_event(body: Any, memo: Any, logger: Any, type: Optional[str] = None, **_: Any) -> None:
    meta = body.get("metadata") or {}
    key = (meta.get("namespace", ""), meta.get("name", ""))
    known = _known(memo)
    if type == "DELETED":
        known.discard(key)
        return
    known.add(key)
    _sync_logged(memo.kube, *key, logger)


def child_event(body: Any, memo: Any, logger: Any, **_: Any) -> None:
    meta = body.get("metadata") or {}
    parent = (meta.get("labels") or {}).get(logic.SCHEDULE_LABEL)
    if parent and (meta.get("namespace", ""), parent) in _known(memo):
        _sync_logged(memo.kube, meta.get("namespace", ""), parent, logger)


def _known(memo: Any) -> set[tuple[str, str]]:
    if getattr(memo, "schedules", None) is None:
        memo.schedules = set()
    return memo.schedules


def _sync_logged(kube: Kube, namespace: str, name: str, logger: Any) -> None:
    """Event handlers are not retried by Kopf: log, and let the clock try again."""
    try:
        sync(kube, namespace, name, logger)
    except SpecError as err:
        logger.warning(f"PruneSchedule {namespace}/{name} refused: {err}")
    except (ApiError, kopf.TemporaryError) as err:
        logger.warning(f"PruneSchedule {namespace}/{name}: {err}; retrying within {TICK_SECONDS:g}s")


class Clock:
    """Syncs every known schedule every `tick` seconds, in its own thread."""

    def __init__(self, memo: Any, logger: Any, tick: float = TICK_SECONDS):
        self.memo, self.logger, self.tick = memo, logger, tick
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name="pruneschedule-clock", daemon=True)

    def run(self) -> None:
        while not self.stopped.wait(self.tick):
            for namespace, name in sorted(_known(self.memo)):
                if self.stopped.is_set():
                    return
                try:
                    _sync_logged(self.memo.kube, namespace, name, self.logger)
                except Exception as err:  # noqa: BLE001 - the clock must outlive any one schedule's trouble
                    self.logger.exception(f"PruneSchedule {namespace}/{name}: unexpected error: {err}")


def start_clock(memo: Any, logger: Any, **_: Any) -> None:
    _known(memo)
    memo.schedule_clock = Clock(memo, logger, TICK_SECONDS)
    memo.schedule_clock.thread.start()


def stop_clock(memo: Any, **_: Any) -> None:
    clock = getattr(memo, "schedule_clock", None)
    if clock is not None:
        clock.stopped.set()
        clock.thread.join(timeout=30)


def register(registry: kopf.OperatorRegistry) -> None:
    """Attach the PruneSchedule handlers to `registry` (every one with an explicit id)."""
    kopf.on.startup(id="pruneschedule-clock", registry=registry)(start_clock)
    kopf.on.cleanup(id="pruneschedule-clock-stop", registry=registry)(stop_clock)
    kopf.on.event(api.GROUP, api.VERSION, SCHEDULE_PLURAL, id="pruneschedule-event", registry=registry)(schedule_event)
    kopf.on.event(api.GROUP, api.VERSION, api.PLURAL, id="pruneschedule-child",
                  labels={logic.SCHEDULE_LABEL: kopf.PRESENT}, registry=registry)(child_event)
