"""The Job's podFailurePolicy and grace period (docs/resume.md): disruptions do not count against
backoffLimit, the worker's permanent exit codes fail the Job at once."""
from __future__ import annotations

import kubernetes_validate
import pytest

from prune_job import exit_codes
from prune_job import spec as api
from prune_operator.prunejob import builders
from test_builders import build_job, container


def test_pod_failure_policy_ignores_disruptions_and_fails_on_permanent_codes():
    job = build_job()
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    fail = rules[1]
    assert fail["action"] == "FailJob" and fail["onExitCodes"]["operator"] == "In"
    assert sorted(fail["onExitCodes"]["values"]) == [exit_codes.BAD_SPEC, exit_codes.PERMANENT]
    assert fail["onExitCodes"]["containerName"] == container(job)["name"]
    assert rules[2]["action"] == "Ignore" and rules[2]["onExitCodes"]["values"] == [exit_codes.INTERRUPTED]
    assert exit_codes.FAILED not in [v for r in rules for v in r.get("onExitCodes", {}).get("values", [])]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it
    kubernetes_validate.validate(job, "1.31.0", strict=True)


@pytest.mark.parametrize("grace", [None, 5, 600])
def test_grace_period_comes_from_run_policy(grace):
    policy = {"backoffLimit": 1} if grace is None else {"terminationGracePeriodSeconds": grace}
    job = build_job(runPolicy=policy)
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == (grace or 30)


def test_grace_period_out_of_range_is_named():
    with pytest.raises(api.SpecError, match="spec.runPolicy.terminationGracePeriodSeconds"):
        api.parse_spec({"model": {"uri": "builtin:smollm2-135m"}, "output": {"uri": "/tmp/x"},
                        "runPolicy": {"terminationGracePeriodSeconds": 0}})


def test_worker_exit_codes_are_distinct():
    codes = [exit_codes.DONE, exit_codes.FAILED, exit_codes.BAD_SPEC, exit_codes.INTERRUPTED, exit_codes.PERMANENT]
    assert len(set(codes)) == len(codes) and builders.CONTAINER


def test_resumed_event_once_per_resume():
    from prune_operator.prunejob.status import resume_events

    progress = {"stage": "pruning", "blocksTotal": 30, "resumedFromBlock": 20, "resumes": 1}
    [event] = resume_events({"progress": progress})
    assert (event.type, event.reason) == ("Normal", "Resumed")
    assert event.message.startswith("Resumed from block 20 of 30")
    assert resume_events({"progress": progress, "resumesAnnounced": 1}) == []
    assert len(resume_events({"progress": {**progress, "resumes": 2}, "resumesAnnounced": 1})) == 1
    assert resume_events({"progress": {"stage": "pruning", "blocksTotal": 30}}) == []
