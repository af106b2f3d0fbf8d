"""The PruneSchedule rules (CronJob's) under a controlled clock."""
from __future__ import annotations

from datetime import timedelta

import pytest

from prune_operator.schedule.plan import (
    Child, Run, child_from_object, most_recent_missed, owned_by, prunejob_for_run, reconcile, run_name,
)
from prune_job.spec import MAX_SCHEDULE_NAME, PruneScheduleStatus
from world import TEMPLATE, World, make_spec, utc

MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)


def run_times(world: World):
    return [utc(1970, 1, 1) + timedelta(minutes=int(name.rsplit("-", 1)[1])) for _, name in world.created_runs]


def test_runs_at_the_right_times_in_its_time_zone():
    # 02:00 in Berlin is 01:00 UTC in winter; the operator ticks every minute for three days.
    world = World(make_spec("0 2 * * *", timeZone="Europe/Berlin"), created=utc(2026, 11, 28, 12))
    world.run(utc(2026, 11, 28, 12, 0, 7), utc(2026, 12, 1, 12), step=MIN, duration=30 * MIN)
    assert run_times(world) == [utc(2026, 11, 29, 1), utc(2026, 11, 30, 1), utc(2026, 12, 1, 1)]
    lags = [when - t for (when, _), t in zip(world.created_runs, run_times(world))]
    assert all(timedelta(0) <= lag < MIN for lag in lags)
    assert world.status.last_schedule_time == "2026-12-01T01:00:00Z"
    assert world.status.last_successful_time == "2026-12-01T01:30:07Z"
    assert world.status.next_schedule_time == "2026-12-02T01:00:00Z"
    assert world.status.active == []


def test_time_zone_follows_daylight_saving():
    world = World(make_spec("30 9 * * *", timeZone="America/New_York"), created=utc(2026, 3, 6))
    world.run(utc(2026, 3, 6), utc(2026, 3, 10), step=5 * MIN, duration=MIN)
    # 09:30 EST = 14:30 UTC before 8 March, 09:30 EDT = 13:30 UTC after.
    assert run_times(world) == [utc(2026, 3, 6, 14, 30), utc(2026, 3, 7, 14, 30),
                                utc(2026, 3, 8, 13, 30), utc(2026, 3, 9, 13, 30)]


def test_every_fifteen_minutes_names_are_deterministic():
    world = World(make_spec("*/15 * * * *"), created=utc(2026, 1, 1))
    world.run(utc(2026, 1, 1), utc(2026, 1, 1, 1), duration=5 * MIN)
    assert [n for _, n in world.created_runs] == [
        run_name("nightly", utc(2026, 1, 1, 0, m)) for m in (15, 30, 45)] + [run_name("nightly", utc(2026, 1, 1, 1))]
    assert world.created_runs[0][1] == f"nightly-{int(utc(2026, 1, 1, 0, 15).timestamp()) // 60}"


def test_a_new_schedule_does_not_run_times_before_its_creation():
    world = World(make_spec("0 * * * *"), created=utc(2026, 1, 1, 5, 30))
    world.tick(utc(2026, 1, 1, 5, 31))
    assert world.created_runs == []
    assert world.status.next_schedule_time == "2026-01-01T06:00:00Z"


def test_forbid_skips_while_a_run_is_active_then_starts_the_missed_one_late():
    world = World(make_spec("0 * * * *", concurrencyPolicy="Forbid"), created=utc(2026, 1, 1))
    world.run(utc(2026, 1, 1), utc(2026, 1, 1, 3), duration=90 * MIN)
    # 01:00 runs until 02:30; the 02:00 run is skipped while it runs, then starts at 02:30
    # (no startingDeadlineSeconds: CronJob starts a missed run late).
    assert [w for w, _ in world.created_runs] == [utc(2026, 1, 1, 1), utc(2026, 1, 1, 2, 30)]
    assert run_times(world) == [utc(2026, 1, 1, 1), utc(2026, 1, 1, 2)]
    assert "JobAlreadyActive" in world.reasons()
    assert max(len([c for c in world.children.values() if not c.finished]), 0) <= 1


def test_forbid_with_a_deadline_skips_the_missed_run_entirely():
    world = World(make_spec("0 * * * *", concurrencyPolicy="Forbid", startingDeadlineSeconds=600),
                  created=utc(2026, 1, 1))
    world.run(utc(2026, 1, 1), utc(2026, 1, 1, 3, 1), duration=90 * MIN)
    assert run_times(world) == [utc(2026, 1, 1, 1), utc(2026, 1, 1, 3)]


def test_forbid_never_has_two_active():
    world = World(make_spec("*/5 * * * *", concurrencyPolicy="Forbid"), created=utc(2026, 1, 1))
    now = utc(2026, 1, 1)
    while now < utc(2026, 1, 1, 2):
        world.finish_due(now, 12 * MIN, "Succeeded")
        world.tick(now)
        assert len([c for c in world.children.values() if not c.finished]) <= 1
        now += timedelta(seconds=10)
    assert len(world.created_runs) >= 8


def test_allow_lets_runs_overlap():
    world = World(make_spec("0 * * * *"), created=utc(2026, 1, 1))
    world.run(utc(2026, 1, 1), utc(2026, 1, 1, 3, 1), duration=150 * MIN)
    assert run_times(world) == [utc(2026, 1, 1, h) for h in (1, 2, 3)]
    assert [a.name for a in world.status.active] == [n for _, n in world.created_runs]  # 01:00 runs till 03:30


def test_replace_deletes_the_running_one_and_starts_the_new_one():
    world = World(make_spec("0 * * * *", concurrencyPolicy="Replace"), created=utc(2026, 1, 1))
    world.run(utc(2026, 1, 1), utc(2026, 1, 1, 2, 0, 5), duration=90 * MIN)
    first, second = (n for _, n in world.created_runs)
    assert world.deleted == [first]
    assert list(world.children) == [second]
    assert [a.name for a in world.status.active] == [second]
    plan_events = [e for e in world.events if e.reason == "SuccessfulDelete"]
    assert plan_events and f"replaced by {second}" in plan_events[0].message


def test_replace_deletes_before_it_creates_in_one_plan():
    spec = make_spec("0 * * * *", concurrencyPolicy="Replace")
    running = Child("nightly-a", "Running", utc(2026, 1, 1, 1))
    status = PruneScheduleStatus(last_schedule_time="2026-01-01T01:00:00Z")
    plan = reconcile("nightly", spec, status, utc(2026, 1, 1), [running], utc(2026, 1, 1, 2, 0, 1))
    assert plan.delete == ("nightly-a",)
    assert plan.create is not None and plan.create.scheduled_time == utc(2026, 1, 1, 2)
    assert [a.name for a in plan.status.active] == [plan.create.name]


@pytest.mark.parametrize("succeeded_limit,failed_limit", [(3, 1), (0, 0), (2, 2)])
def test_history_limits_delete_the_oldest_finished(succeeded_limit, failed_limit):
    spec = make_spec("0 * * * *", successfulJobsHistoryLimit=succeeded_limit, failedJobsHistoryLimit=failed_limit)
    world = World(spec, created=utc(2026, 1, 1))
    now = utc(2026, 1, 1)
    while now <= utc(2026, 1, 2, 0, 30):
        for when, name in world.created_runs:
            c = world.children.get(name)
            if c and not c.finished and when + 20 * MIN <= now:
                world.finish(name, "Failed" if when.hour % 3 == 0 else "Succeeded", now)
        world.tick(now)
        now += MIN
    ok = sorted(c.scheduled_time for c in world.children.values() if c.phase == "Succeeded")
    bad = sorted(c.scheduled_time for c in world.children.values() if c.phase == "Failed")
    assert len(ok) == succeeded_limit and len(bad) == failed_limit
    every = run_times(world)
    assert ok == ([t for t in every if t.hour % 3 != 0][-succeeded_limit:] if succeeded_limit else [])
    assert bad == ([t for t in every if t.hour % 3 == 0][-failed_limit:] if failed_limit else [])
    assert len(world.created_runs) == 24


def test_history_is_trimmed_while_suspended_and_nothing_starts():
    spec = make_spec("0 * * * *", suspend=True, successfulJobsHistoryLimit=1)
    kids = [Child(f"n-{i}", "Succeeded", utc(2026, 1, 1, i), utc(2026, 1, 1, i, 10)) for i in range(3)]
    plan = reconcile("n", spec, PruneScheduleStatus(), utc(2026, 1, 1), kids, utc(2026, 1, 2))
    assert plan.create is None and plan.delete == ("n-0", "n-1")
    assert plan.status.next_schedule_time is None and plan.requeue_after is None


def test_suspend_then_resume_runs_only_the_most_recent_missed_time():
    world = World(make_spec("0 * * * *", suspend=True), created=utc(2026, 1, 1))
    world.run(utc(2026, 1, 1), utc(2026, 1, 1, 5, 30), step=MIN)
    assert world.created_runs == []
    world.spec = make_spec("0 * * * *")
    world.tick(utc(2026, 1, 1, 5, 31))
    assert run_times(world) == [utc(2026, 1, 1, 5)]


def test_operator_restart_neither_misses_nor_doubles():
    world = World(make_spec("0 * * * *"), created=utc(2026, 1, 1))
    world.run(utc(2026, 1, 1), utc(2026, 1, 1, 1, 59, 50), duration=10 * MIN)
    # down from 01:59:50 to 02:00:40: the 02:00 run is started when it comes back
    world.run(utc(2026, 1, 1, 2, 0, 40), utc(2026, 1, 1, 2, 30), duration=10 * MIN)
    assert run_times(world) == [utc(2026, 1, 1, 1), utc(2026, 1, 1, 2)]
    # two operator processes (old and new) tick at the same instant: still one run
    world.tick(utc(2026, 1, 1, 3, 0, 1))
    world.tick(utc(2026, 1, 1, 3, 0, 1))
    world.tick(utc(2026, 1, 1, 3, 0, 2))
    assert run_times(world)[-1] == utc(2026, 1, 1, 3) and len(world.created_runs) == 3


def test_restart_after_a_lost_status_write_does_not_double():
    world = World(make_spec("0 * * * *"), created=utc(2026, 1, 1))
    world.tick(utc(2026, 1, 1, 1, 0, 3), save_status=False)  # created the PruneJob, crashed before the status patch
    assert len(world.created_runs) == 1 and world.status.last_schedule_time is None
    plan = world.tick(utc(2026, 1, 1, 1, 0, 30))  # restarted operator
    assert plan.create is None and len(world.created_runs) == 1
    assert world.status.last_schedule_time == "2026-01-01T01:00:00Z"
    assert [a.name for a in world.status.active] == [world.created_runs[0][1]]


def test_long_outage_starts_one_run_not_a_burst():
    world = World(make_spec("0 * * * *"), created=utc(2026, 1, 1))
    world.run(utc(2026, 1, 1), utc(2026, 1, 1, 1, 5), duration=10 * MIN)
    world.run(utc(2026, 1, 1, 5, 10), utc(2026, 1, 1, 5, 20), duration=10 * MIN)  # down 01:05 → 05:10
    assert run_times(world) == [utc(2026, 1, 1, 1), utc(2026, 1, 1, 5)]
    assert "TooManyMissedTimes" not in world.reasons()


def test_more_than_100_missed_warns_and_still_starts_the_latest():
    world = World(make_spec("* * * * *"), created=utc(2026, 1, 1))
    plan = world.tick(utc(2026, 1, 1, 3, 0, 30))  # 180 minutes missed
    assert plan.create is not None and plan.create.scheduled_time == utc(2026, 1, 1, 3)
    warning = [e for e in plan.events if e.reason == "TooManyMissedTimes"]
    assert warning and warning[0].type == "Warning" and "startingDeadlineSeconds" in warning[0].message
    assert most_recent_missed(make_spec("* * * * *"), utc(2026, 1, 1), utc(2026, 1, 1, 3, 0, 30))[1] == 101


def test_exactly_100_missed_does_not_warn():
    spec = make_spec("* * * * *")
    t, count = most_recent_missed(spec, utc(2026, 1, 1), utc(2026, 1, 1, 1, 40, 59))
    assert (t, count) == (utc(2026, 1, 1, 1, 40), 100)


def test_starting_deadline_limits_how_late_a_run_may_start():
    world = World(make_spec("0 * * * *", startingDeadlineSeconds=120), created=utc(2026, 1, 1))
    world.tick(utc(2026, 1, 1, 1, 1, 59))   # within 120 s: starts
    world.tick(utc(2026, 1, 1, 2, 2, 1))    # 121 s late: skipped
    world.tick(utc(2026, 1, 1, 3, 0, 0))    # on time
    assert run_times(world) == [utc(2026, 1, 1, 1), utc(2026, 1, 1, 3)]


def test_requeue_after_points_at_the_next_time():
    plan = reconcile("n", make_spec("*/10 * * * *"), PruneScheduleStatus(), utc(2026, 1, 1), [],
                     utc(2026, 1, 1, 0, 3, 30))
    assert plan.requeue_after == pytest.approx(390.0)


def test_deleting_children_are_not_active():
    kids = [Child("n-1", "Running", utc(2026, 1, 1, 1), deleting=True)]
    plan = reconcile("n", make_spec("0 * * * *", concurrencyPolicy="Forbid"),
                     PruneScheduleStatus(last_schedule_time="2026-01-01T01:00:00Z"), utc(2026, 1, 1), kids,
                     utc(2026, 1, 1, 2, 0, 1))
    assert plan.create is not None


def test_accepted_condition_keeps_its_transition_time():
    spec = make_spec("0 * * * *")
    first = reconcile("n", spec, PruneScheduleStatus(), utc(2026, 1, 1), [], utc(2026, 1, 1, 0, 1), generation=1)
    again = reconcile("n", spec, first.status, utc(2026, 1, 1), [], utc(2026, 1, 1, 0, 2), generation=2)
    [c] = again.status.conditions
    assert (c.type, c.status, c.last_transition_time, c.observed_generation) == ("Accepted", "True", "2026-01-01T00:01:00Z", 2)
    assert again.status.observed_generation == 2


# ---------------------------------------------------------------- objects


SCHEDULE = {
    "apiVersion": "pruning.dev/v1alpha1", "kind": "PruneSchedule",
    "metadata": {"name": "nightly", "namespace": "ml", "uid": "u-1"},
    "spec": {"schedule": "0 2 * * *", "jobTemplate": {"metadata": {"labels": {"team": "a"}}, **TEMPLATE}},
}


def test_prunejob_for_run_snapshot():
    run = Run(run_name("nightly", utc(2026, 1, 1, 2)), utc(2026, 1, 1, 2))
    assert prunejob_for_run(SCHEDULE, run) == {
        "apiVersion": "pruning.dev/v1alpha1",
        "kind": "PruneJob",
        "metadata": {
            "name": "nightly-29453880",
            "namespace": "ml",
            "labels": {"team": "a", "pruning.dev/schedule": "nightly"},
            "annotations": {"pruning.dev/scheduled-at": "2026-01-01T02:00:00Z"},
            "ownerReferences": [{"apiVersion": "pruning.dev/v1alpha1", "kind": "PruneSchedule", "name": "nightly",
                                 "uid": "u-1", "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": TEMPLATE["spec"],
    }


def test_child_from_object_and_ownership():
    run = Run("nightly-29453880", utc(2026, 1, 1, 2))
    job = prunejob_for_run(SCHEDULE, run)
    job["metadata"]["uid"] = "c-1"
    job["status"] = {"phase": "Succeeded", "completionTime": "2026-01-01T02:40:00Z"}
    child = child_from_object(job)
    assert child == Child("nightly-29453880", "Succeeded", run.scheduled_time, utc(2026, 1, 1, 2, 40), "c-1", "ml")
    assert owned_by(job, "u-1", "nightly")
    assert not owned_by(job, "u-other", "nightly")
    assert not owned_by(job, "u-1", "weekly")


def test_longest_schedule_name_gives_a_valid_job_name():
    name = run_name("a" * MAX_SCHEDULE_NAME, utc(2099, 12, 31, 23, 59))
    assert len(name) <= 63


def test_daylight_saving_end_runs_a_fixed_hour_once_and_wildcards_at_both():
    nightly = World(make_spec("30 2 * * *", timeZone="Europe/Berlin"), created=utc(2026, 10, 24, 12))
    nightly.run(utc(2026, 10, 24, 12), utc(2026, 10, 26, 12), step=5 * MIN, duration=10 * MIN)
    # 02:30 happens twice on 25 October (CEST 00:30Z, then CET 01:30Z): one run
    assert run_times(nightly) == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]
    halfhourly = World(make_spec("*/30 * * * *", timeZone="Europe/Berlin"), created=utc(2026, 10, 25, 0, 10))
    halfhourly.run(utc(2026, 10, 25, 0, 10), utc(2026, 10, 25, 2, 0), step=MIN, duration=5 * MIN)
    assert run_times(halfhourly) == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1), utc(2026, 10, 25, 1, 30),
                                     utc(2026, 10, 25, 2)]


def test_daylight_saving_start_runs_a_skipped_time_at_the_next_valid_one():
    nightly = World(make_spec("30 2 * * *", timeZone="Europe/Berlin"), created=utc(2026, 3, 28, 12))
    nightly.run(utc(2026, 3, 28, 12), utc(2026, 3, 30, 12), step=5 * MIN, duration=10 * MIN)
    # 02:30 does not exist on 29 March: the run starts at 03:00 CEST (01:00Z)
    assert run_times(nightly) == [utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)]
