"""A tiny simulated cluster for the schedule logic: a controlled clock, the
PruneJobs a schedule owns, and an operator that ticks (or is down)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from prune_job.spec import PruneScheduleSpec, PruneScheduleStatus, parse_schedule_spec
from prune_operator.conditions import Event
from prune_operator.schedule.plan import Child, Plan, reconcile

TEMPLATE = {"spec": {"model": {"uri": "builtin:smollm2-135m"}, "output": {"uri": "s3://pruned/nightly/"}}}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def make_spec(schedule: str = "0 * * * *", **fields: Any) -> PruneScheduleSpec:
    return parse_schedule_spec({"schedule": schedule, "jobTemplate": TEMPLATE, **fields})


@dataclass
class World:
    spec: PruneScheduleSpec
    created: datetime
    name: str = "nightly"
    status: PruneScheduleStatus = field(default_factory=PruneScheduleStatus)
    children: dict[str, Child] = field(default_factory=dict)
    created_runs: list[tuple[datetime, str]] = field(default_factory=list)  # (when, name)
    deleted: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def tick(self, now: datetime, save_status: bool = True) -> Plan:
        plan = reconcile(self.name, self.spec, self.status, self.created, list(self.children.values()), now)
        for name in plan.delete:
            if self.children.pop(name, None) is not None:
                self.deleted.append(name)
        if plan.create and plan.create.name not in self.children:  # the API server's 409
            self.children[plan.create.name] = Child(plan.create.name, "Pending", plan.create.scheduled_time)
            self.created_runs.append((now, plan.create.name))
        if save_status:
            self.status = plan.status
        self.events.extend(plan.events)
        return plan

    def run(self, start: datetime, end: datetime, step: timedelta = timedelta(seconds=10),
            duration: Optional[timedelta] = None, phase: str = "Succeeded") -> None:
        """Tick from start to end; every run finishes `duration` after it was created."""
        now = start
        while now <= end:
            if duration is not None:
                self.finish_due(now, duration, phase)
            self.tick(now)
            now += step

    def finish_due(self, now: datetime, duration: timedelta, phase: str) -> None:
        started = {name: when for when, name in self.created_runs}
        for name, c in list(self.children.items()):
            if not c.finished and name in started and started[name] + duration <= now:
                self.finish(name, phase, now)

    def finish(self, name: str, phase: str, at: datetime) -> None:
        self.children[name] = replace(self.children[name], phase=phase, completion_time=at)

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]
