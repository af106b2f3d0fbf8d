"""PruneSchedule reconciliation as a pure function: what to create, delete and
write, given the schedule, the PruneJobs it owns and the time.

The rules are the Kubernetes CronJob controller's (pkg/controller/cronjob,
`syncCronJob` and `mostRecentScheduleTime`):

- The earliest time considered is `lastScheduleTime`, or the schedule's
  creation time; with `startingDeadlineSeconds`, never earlier than
  now - startingDeadlineSeconds.
- Of all the times missed since then, only the most recent one is started
  (one run, not a burst). More than 100 missed times still start that one
  run, with a Warning event `TooManyMissedTimes` asking to set or decrease
  startingDeadlineSeconds or to check clock skew.
- A time later than its deadline is skipped with a Warning `MissSchedule`.
- A time whose PruneJob already exists, or that equals `lastScheduleTime`, is
  done (names are deterministic: "<schedule>-<minutes since epoch>", so an
  operator restart or a lost status write never starts a run twice).
- Forbid: skip while a run is active, without recording the time, so the run
  starts late once the active one finishes if the deadline still allows it.
  Replace: delete the active runs, then start the new one.
- Finished runs beyond `successfulJobsHistoryLimit` / `failedJobsHistoryLimit`
  are deleted, oldest first; this happens even while suspended.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from croniter import croniter

from prune_job.spec import API_VERSION, ActiveRef, PruneScheduleSpec, PruneScheduleStatus
from prune_operator import parents
from prune_operator.conditions import Event, describe_problems, format_time, parse_time

SCHEDULE_LABEL = "pruning.dev/schedule"
SCHEDULED_AT_ANNOTATION = "pruning.dev/scheduled-at"
TOO_MANY_MISSED = 100
FINISHED = ("Succeeded", "Failed")


# ---------------------------------------------------------------- values


@dataclass(frozen=True)
class Child:
    """What the schedule needs to know of one PruneJob it owns."""

    name: str
    phase: Optional[str] = None
    scheduled_time: Optional[datetime] = None
    completion_time: Optional[datetime] = None
    uid: Optional[str] = None
    namespace: Optional[str] = None
    deleting: bool = False

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED


@dataclass(frozen=True)
class Run:
    name: str
    scheduled_time: datetime


@dataclass(frozen=True)
class Plan:
    """What one reconciliation decided. Deletions come before the creation."""

    status: PruneScheduleStatus
    create: Optional[Run] = None
    delete: tuple[str, ...] = ()
    events: tuple[Event, ...] = ()
    requeue_after: Optional[float] = None  # seconds until the next scheduled time


@dataclass
class _Draft:
    status: PruneScheduleStatus
    delete: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


# ---------------------------------------------------------------- time


def run_name(schedule_name: str, scheduled: datetime) -> str:
    """Deterministic child name: the schedule's name and the scheduled minute."""
    return f"{schedule_name}-{int(scheduled.timestamp()) // 60}"


def next_time(spec: PruneScheduleSpec, after: datetime) -> datetime:
    """The first scheduled time strictly after `after`, in UTC.

    When clocks go back (end of daylight saving time) a local time such as
    02:30 happens twice; a schedule at fixed hours runs at the first one only,
    as Vixie cron does (a nightly run must not cost two GPU runs once a year).
    Schedules with a wildcard hour (every N minutes, hourly) run at both."""
    it = croniter(spec.schedule, after.astimezone(spec.zone))
    while True:
        t = it.get_next(datetime)
        if not (_fixed_hours(spec.schedule) and _second_occurrence(t)):
            return t.astimezone(timezone.utc)


def _fixed_hours(schedule: str) -> bool:
    fields = schedule.split()
    if len(fields) == 1:  # a macro: only @hourly has no fixed hour
        return fields[0].lower() != "@hourly"
    return not fields[1].startswith("*")


def _second_occurrence(local: datetime) -> bool:
    """Whether `local` (aware, in the schedule's zone) is the repeat of an ambiguous wall-clock time."""
    first = local.replace(fold=0)
    return local.fold == 1 and first.utcoffset() != local.utcoffset()


def latest_time(spec: PruneScheduleSpec, now: datetime) -> datetime:
    """The last scheduled time at or before `now`, in UTC."""
    start = now.replace(microsecond=0) + timedelta(seconds=1)
    return croniter(spec.schedule, start.astimezone(spec.zone)).get_prev(datetime).astimezone(timezone.utc)


def most_recent_missed(spec: PruneScheduleSpec, earliest: datetime, now: datetime) -> tuple[Optional[datetime], int]:
    """The most recent scheduled time in (earliest, now] and how many there were
    (counting stops at TOO_MANY_MISSED + 1, like the CronJob controller's)."""
    t = next_time(spec, earliest)
    if t > now:
        return None, 0
    latest, count = t, 1
    while count <= TOO_MANY_MISSED:
        t = next_time(spec, t)
        if t > now:
            return latest, count
        latest, count = t, count + 1
    return latest_time(spec, now), count


def earliest_time(spec: PruneScheduleSpec, status: PruneScheduleStatus, created: datetime, now: datetime) -> datetime:
    earliest = parse_time(status.last_schedule_time) or created
    if spec.starting_deadline_seconds is not None:
        earliest = max(earliest, now - timedelta(seconds=spec.starting_deadline_seconds))
    return earliest


# ---------------------------------------------------------------- conditions


set_condition = parents.set_condition


# ---------------------------------------------------------------- the reconciliation


def reconcile(
    name: str,
    spec: PruneScheduleSpec,
    status: PruneScheduleStatus,
    created: datetime,
    children: list[Child],
    now: datetime,
    generation: Optional[int] = None,
) -> Plan:
    """Decide, from the observed state only, what this schedule does now."""
    draft = _Draft(status=status.model_copy(deep=True))
    draft.status.observed_generation = generation
    draft.status.conditions = set_condition(status.conditions, "Accepted", "True", "Valid", "", now, generation)
    live = [c for c in children if not c.deleting]
    _track_active(draft, live)
    _trim_history(draft, spec, live)
    if spec.suspend:
        draft.status.next_schedule_time = None
        return _plan(draft)
    run = _due_run(draft, name, spec, created, live, now)
    following = next_time(spec, now)
    draft.status.next_schedule_time = format_time(following)
    return _plan(draft, run, (following - now).total_seconds())


def _plan(draft: _Draft, run: Optional[Run] = None, requeue: Optional[float] = None) -> Plan:
    return Plan(status=draft.status, create=run, delete=tuple(draft.delete),
                events=tuple(draft.events), requeue_after=requeue)


def _track_active(draft: _Draft, live: list[Child]) -> None:
    """status.active := the unfinished children; lastSuccessfulTime := latest success."""
    was_active = {ref.name for ref in draft.status.active}
    for c in live:
        if c.finished and c.name in was_active:
            draft.events.append(Event("Normal", "SawCompletedJob", f"Saw completed PruneJob: {c.name}, phase: {c.phase}"))
    draft.status.active = [
        ActiveRef(api_version=API_VERSION, kind="PruneJob", name=c.name, namespace=c.namespace, uid=c.uid)
        for c in sorted(live, key=_age_key) if not c.finished
    ]
    successes = [c.completion_time for c in live if c.phase == "Succeeded" and c.completion_time]
    known = parse_time(draft.status.last_successful_time)
    latest = max([t for t in [known, *successes] if t is not None], default=None)
    draft.status.last_successful_time = format_time(latest) if latest else None


def _age_key(c: Child) -> tuple[datetime, str]:
    return (c.scheduled_time or c.completion_time or datetime.min.replace(tzinfo=timezone.utc), c.name)


def _trim_history(draft: _Draft, spec: PruneScheduleSpec, live: list[Child]) -> None:
    for phase, limit in (("Succeeded", spec.successful_jobs_history_limit), ("Failed", spec.failed_jobs_history_limit)):
        done = sorted((c for c in live if c.phase == phase), key=_age_key)
        for c in done[: max(0, len(done) - limit)]:
            draft.delete.append(c.name)
            draft.events.append(Event("Normal", "SuccessfulDelete", f"Deleted PruneJob {c.name} (history limit {limit} for {phase})"))


def _due_run(
    draft: _Draft, name: str, spec: PruneScheduleSpec, created: datetime, live: list[Child], now: datetime
) -> Optional[Run]:
    earliest = earliest_time(spec, draft.status, created, now)
    scheduled, missed = most_recent_missed(spec, earliest, now)
    if scheduled is None:
        return None
    if missed > TOO_MANY_MISSED:
        draft.events.append(Event("Warning", "TooManyMissedTimes",
                                  f"too many missed start times: >{TOO_MANY_MISSED}. "
                                  "Set or decrease .spec.startingDeadlineSeconds or check clock skew"))
    deadline = spec.starting_deadline_seconds
    if deadline is not None and scheduled + timedelta(seconds=deadline) < now:
        draft.events.append(Event("Warning", "MissSchedule", f"Missed scheduled time to start a PruneJob: {format_time(scheduled)}"))
        return None
    run = Run(run_name(name, scheduled), scheduled)
    if any(c.name == run.name for c in live):
        # Created before a status write was lost (or by a peer): record it, never repeat it.
        draft.status.last_schedule_time = format_time(scheduled)
        return None
    if draft.status.last_schedule_time == format_time(scheduled):
        return None
    if draft.status.active and spec.concurrency_policy == "Forbid":
        draft.events.append(Event("Normal", "JobAlreadyActive",
                                  "Not starting PruneJob because a prior run is still active and concurrencyPolicy is Forbid"))
        return None
    if spec.concurrency_policy == "Replace":
        for ref in draft.status.active:
            draft.delete.append(ref.name)
            draft.events.append(Event("Normal", "SuccessfulDelete", f"Deleted PruneJob {ref.name}: replaced by {run.name}"))
        draft.status.active = []
    draft.status.active.append(ActiveRef(name=run.name))
    draft.status.last_schedule_time = format_time(scheduled)
    draft.events.append(Event("Normal", "SuccessfulCreate", f"Created PruneJob {run.name} for {format_time(scheduled)}"))
    return run


# ---------------------------------------------------------------- objects in and out


def child_from_object(obj: dict[str, Any]) -> Child:
    """A PruneJob object (as listed from the API) → Child."""
    meta = obj.get("metadata", {})
    status = obj.get("status") or {}
    annotations = meta.get("annotations") or {}
    return Child(
        name=meta["name"],
        namespace=meta.get("namespace"),
        uid=meta.get("uid"),
        phase=status.get("phase"),
        scheduled_time=parse_time(annotations.get(SCHEDULED_AT_ANNOTATION)) or parse_time(meta.get("creationTimestamp")),
        completion_time=parse_time(status.get("completionTime")),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def owned_by(obj: dict[str, Any], schedule_uid: Optional[str], schedule_name: str) -> bool:
    """A child carries the schedule label and, where uids exist, an owner reference to it."""
    return parents.owned_by(obj, SCHEDULE_LABEL, "PruneSchedule", schedule_uid, schedule_name)


def prunejob_for_run(schedule: dict[str, Any], run: Run) -> dict[str, Any]:
    """The PruneJob a run creates: the template's spec as written, labels and
    annotations from the template plus the schedule's, owned by the schedule."""
    meta = schedule["metadata"]
    template = schedule["spec"]["jobTemplate"]
    tmeta = template.get("metadata") or {}
    owner = parents.owner_reference("PruneSchedule", meta)
    return {
        "apiVersion": API_VERSION,
        "kind": "PruneJob",
        "metadata": {
            "name": run.name,
            "namespace": meta.get("namespace"),
            "labels": {**(tmeta.get("labels") or {}), SCHEDULE_LABEL: meta["name"]},
            "annotations": {**(tmeta.get("annotations") or {}), SCHEDULED_AT_ANNOTATION: format_time(run.scheduled_time)},
            "ownerReferences": [owner],
        },
        "spec": template["spec"],
    }


# ---------------------------------------------------------------- status as a document


status_document = parents.status_document
status_patch = parents.status_patch


def refused_status(status: PruneScheduleStatus, problems: list[tuple[str, str]], now: datetime,
                   generation: Optional[int] = None) -> PruneScheduleStatus:
    """Accepted=False naming every bad field; no next run."""
    refused = status.model_copy(deep=True)
    message = describe_problems(problems)
    refused.conditions = set_condition(status.conditions, "Accepted", "False", "InvalidSpec", message, now, generation)
    refused.observed_generation = generation
    refused.next_schedule_time = None
    return refused


def first_seen(status: PruneScheduleStatus, now: datetime) -> datetime:
    """Where the API server gives no creationTimestamp: since the schedule was accepted."""
    for c in status.conditions:
        if c.type == "Accepted" and c.status == "True" and c.last_transition_time:
            return parse_time(c.last_transition_time) or now
    return now

