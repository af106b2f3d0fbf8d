"""The documents the schedule handlers send: status merge patches and Events."""
from __future__ import annotations

import kubernetes_validate

from prune_job.spec import ActiveRef, PruneScheduleStatus
from prune_operator.conditions import Event, event_manifest
from prune_operator.schedule.plan import first_seen, refused_status, status_document, status_patch
from world import utc

SCHEDULE = {"metadata": {"name": "nightly", "namespace": "ml", "uid": "u-1"}}


def test_status_patch_deletes_what_is_gone_and_replaces_lists():
    current = status_document(PruneScheduleStatus(active=[ActiveRef(name="a", uid="1")],
                                                  next_schedule_time="2026-01-01T02:00:00Z"))
    desired = status_document(PruneScheduleStatus(last_schedule_time="2026-01-01T02:00:00Z"))
    assert status_patch(current, desired) == {
        "active": [], "nextScheduleTime": None, "lastScheduleTime": "2026-01-01T02:00:00Z", "conditions": []}
    assert "namespace" not in current["active"][0]  # no nulls inside list items


def test_refused_status_names_the_fields_and_clears_the_next_run():
    status = PruneScheduleStatus(next_schedule_time="2026-01-01T02:00:00Z")
    refused = refused_status(status, [("spec.schedule", "'61 * * * *' is not a valid cron expression")],
                             utc(2026, 1, 1), generation=3)
    [c] = refused.conditions
    assert (c.type, c.status, c.reason, c.observed_generation) == ("Accepted", "False", "InvalidSpec", 3)
    assert c.message == "spec.schedule: '61 * * * *' is not a valid cron expression"
    assert refused.next_schedule_time is None and refused.observed_generation == 3


def test_first_seen_is_when_the_schedule_was_accepted():
    status = PruneScheduleStatus()
    assert first_seen(status, utc(2026, 1, 2)) == utc(2026, 1, 2)
    accepted = refused_status(status, [], utc(2026, 1, 1))
    accepted.conditions[0].status = "True"
    assert first_seen(accepted, utc(2026, 1, 2)) == utc(2026, 1, 1)


def test_event_manifest():
    event = event_manifest("PruneSchedule", SCHEDULE, Event("Warning", "MissSchedule", "x" * 2000), utc(2026, 1, 1))
    assert event["involvedObject"] == {"apiVersion": "pruning.dev/v1alpha1", "kind": "PruneSchedule",
                                       "name": "nightly", "namespace": "ml", "uid": "u-1"}
    assert event["metadata"] == {"generateName": "nightly.", "namespace": "ml"}
    assert (event["type"], event["reason"], len(event["message"])) == ("Warning", "MissSchedule", 1024)
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2026-01-01T00:00:00Z"
    kubernetes_validate.validate(event, "1.31.0", strict=True)


def test_a_long_event_message_keeps_its_end():
    message = "Job pj failed: " + "x" * 3000 + ". Advice: raise spec.resources.memory"
    event = event_manifest("PruneJob", SCHEDULE, Event("Warning", "BackoffLimitExceeded", message), utc(2026, 1, 1))
    assert len(event["message"]) == 1024 and event["message"].endswith("Advice: raise spec.resources.memory")
    assert event["involvedObject"]["kind"] == "PruneJob"
    kubernetes_validate.validate(event, "1.31.0", strict=True)
