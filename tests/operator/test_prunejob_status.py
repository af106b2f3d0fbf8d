"""Pure status computation: PruneJob + Job (+ pods) -> phase, conditions, Events."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from prune_operator.prunejob import status as prunejob_status

NOW = datetime(2026, 5, 1, 12, tzinfo=timezone.utc)
SPEC = {"model": {"uri": "builtin:smollm2-135m"}, "output": {"uri": "s3://b/p/"},
        "resources": {"memory": "16Gi"}}


def prunejob(status=None, spec=None, generation=1):
    body = {"metadata": {"name": "pj", "namespace": "ns", "uid": "u1", "generation": generation},
            "spec": spec or SPEC}
    if status is not None:
        body["status"] = status
    return body


def job(status=None, suspend=False, conditions=()):
    st = dict(status or {})
    if conditions:
        st["conditions"] = [{"type": t, "status": "True", "reason": r, "message": m,
                             "lastTransitionTime": "2026-05-01T11:00:00Z"} for t, r, m in conditions]
    return {"metadata": {"name": "pj", "namespace": "ns"}, "spec": {"suspend": suspend}, "status": st}


def desired(body, job_body, pods, now):
    """The status and Events, with the spec parsed once as the handlers do."""
    return prunejob_status.desired_status(body, prunejob_status.parse(body.get("spec")), job_body, pods, now)


def conds(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_no_job_yet_is_pending_and_accepted():
    status, events = desired(prunejob(), None, [], NOW)
    assert status["phase"] == "Pending" and status["observedGeneration"] == 1
    assert conds(status)["Accepted"] == ("True", "Valid")
    assert [e.reason for e in events] == ["Accepted"]
    assert "progress" not in status and "results" not in status


@pytest.mark.parametrize("job_body, phase, running", [
    (job({"active": 1, "startTime": "2026-05-01T11:30:00Z"}), "Running", ("True", "JobRunning")),
    (job({}), "Pending", ("False", "PodPending")),
    (job({"active": 1, "ready": 0}), "Pending", ("False", "PodPending")),  # waiting for a GPU node
    (job({"active": 1, "ready": 1}), "Running", ("True", "JobRunning")),
    (job({"startTime": "t"}, conditions=[("Complete", "", "")]), "Succeeded", ("False", "Completed")),
    (job({}, conditions=[("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")]),
     "Failed", ("False", "BackoffLimitExceeded")),
    (job({}, conditions=[("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")]),
     "Failed", ("False", "DeadlineExceeded")),
    (job({}, suspend=True), "Suspended", ("False", "Suspended")),
])
def test_job_state_maps_to_phase(job_body, phase, running):
    status, _ = desired(prunejob(), job_body, [], NOW)
    assert status["phase"] == phase
    assert conds(status)["Running"] == running
    assert status["jobName"] == "pj"


def test_queued_by_kueue_is_pending_not_suspended():
    spec = dict(SPEC, runPolicy={"queueName": "gpus"})
    status, _ = desired(prunejob(spec=spec), job({}, suspend=True), [], NOW)
    assert status["phase"] == "Pending" and conds(status)["Running"] == ("False", "Queued")


def test_failure_names_the_reason_and_the_pod_termination_with_advice():
    pods = [{"metadata": {"name": "pj-abcde"}, "status": {"containerStatuses": [
        {"state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}}]
    failed = job({}, conditions=[("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")])
    status, events = desired(prunejob(status={"phase": "Running"}), failed, pods, NOW)
    failed_condition = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed_condition["status"] == "True" and failed_condition["reason"] == "BackoffLimitExceeded"
    assert "OOMKilled" in failed_condition["message"] and "spec.resources.memory" in failed_condition["message"]
    assert "16Gi" in failed_condition["message"]
    assert [(e.type, e.reason) for e in events] == [("Warning", "BackoffLimitExceeded")]
    assert status["completionTime"] == "2026-05-01T11:00:00Z"


def test_succeeded_keeps_start_and_completion_times():
    done = job({"startTime": "2026-05-01T10:00:00Z", "completionTime": "2026-05-01T11:00:00Z"},
               conditions=[("Complete", "", "")])
    status, events = desired(prunejob(status={"phase": "Running"}), done, [], NOW)
    assert (status["startTime"], status["completionTime"]) == ("2026-05-01T10:00:00Z", "2026-05-01T11:00:00Z")
    assert conds(status)["Succeeded"] == ("True", "Completed")
    assert [e.reason for e in events] == ["Succeeded"]


def test_transition_time_kept_while_status_unchanged():
    first, _ = desired(prunejob(), job({"active": 1}), [], datetime(2026, 5, 1, tzinfo=timezone.utc))
    again, events = desired(prunejob(status=first), job({"active": 1}), [], datetime(2026, 5, 2, tzinfo=timezone.utc))
    assert again == first and events == []
    assert prunejob_status.status_changes(first, again) == {}


def test_invalid_spec_fails_and_names_fields():
    bad = {"model": {"uri": "ftp://x"}, "output": {"uri": "s3://b/p/"}, "pruning": {"pattern": "4:2"}}
    status, events = desired(prunejob(spec=bad), None, [], NOW)
    assert status["phase"] == "Failed"
    accepted = next(c for c in status["conditions"] if c["type"] == "Accepted")
    assert accepted["status"] == "False" and accepted["reason"] == "InvalidSpec"
    assert "spec.model.uri" in accepted["message"] and "spec.pruning.pattern" in accepted["message"]
    assert [(e.type, e.reason) for e in events] == [("Warning", "InvalidSpec")]


def test_finished_prunejob_whose_job_expired_stays_finished():
    done = {"phase": "Succeeded", "jobName": "pj", "completionTime": "t", "conditions": []}
    status, events = desired(prunejob(status=done), None, [], NOW)
    assert prunejob_status.status_changes(done, status) == {} and events == []


def test_worker_fields_are_never_written():
    current = {"phase": "Running", "progress": {"stage": "pruning"}, "results": {"sparsity": 0.5}}
    status, _ = desired(prunejob(status=current), job({"active": 1}), [], NOW)
    assert set(status) <= set(prunejob_status.CONTROLLER_FIELDS)


def test_a_deleted_job_fails_the_prunejob():
    running = {"phase": "Running", "jobName": "pj", "conditions": []}
    status, events = desired(prunejob(status=running), None, [], NOW)
    assert status["phase"] == "Failed" and conds(status)["Failed"] == ("True", "JobDeleted")
    assert [(e.type, e.reason) for e in events] == [("Warning", "JobDeleted")]
