"""The real operator (Kopf in its own thread) against the stateful API emulator.
The tests play the Job controller: they write the Job's status themselves."""
from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from operator_harness import OperatorThread, wait_for
from kubeutil import (PJ, condition, create_prunejob, events, get_job, get_prunejob, job_condition, jobs,
                      phase_of, prunejob, set_job_status, status_of)
from prune_operator.kube import collection_path, object_path


def created(kube, namespace, name, **spec):
    body = create_prunejob(kube, prunejob(name, namespace, **spec))
    wait_for(lambda: phase_of(kube, namespace, name), what=f"{name} to get a phase")
    return body


def test_create_makes_exactly_one_job_and_a_scoped_identity(operator, kube, namespace):
    body = created(kube, namespace, "llama-50", runPolicy={"queueName": "gpu-queue"})
    wait_for(lambda: jobs(kube, namespace), what="the Job")
    [job] = jobs(kube, namespace)
    uid = body["metadata"]["uid"]
    assert job["metadata"]["ownerReferences"][0]["uid"] == uid
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["spec"]["suspend"] is True  # Kueue admits it, not us
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "minio-credentials", "key": "secretKey"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False

    role = kube.get(object_path("rbac.authorization.k8s.io/v1", "roles", namespace, "llama-50-prune-job"))
    assert role["rules"] == [{"apiGroups": ["pruning.dev"], "resources": ["prunejobs/status"],
                              "resourceNames": ["llama-50"], "verbs": ["get", "patch"]}]
    for api_version, plural in [("v1", "serviceaccounts"), ("v1", "configmaps"),
                                ("rbac.authorization.k8s.io/v1", "rolebindings")]:
        child = kube.get(object_path(api_version, plural, namespace, "llama-50-prune-job"))
        assert child["metadata"]["ownerReferences"][0]["uid"] == uid

    status = status_of(kube, namespace, "llama-50")
    assert status["phase"] == "Pending" and condition(status, "Running")["reason"] == "Queued"
    assert condition(status, "Accepted")["status"] == "True"
    assert status["observedGeneration"] == 1 and status["jobName"] == "llama-50"


def test_job_lifecycle_maps_to_phases_and_events(operator, kube, namespace):
    created(kube, namespace, "run")
    wait_for(lambda: get_job(kube, namespace, "run"), what="the Job")
    set_job_status(kube, namespace, "run", {"active": 1, "startTime": "2026-01-01T00:00:00Z"})
    wait_for(lambda: phase_of(kube, namespace, "run") == "Running", what="Running")
    # The worker's own writes (progress) are never overwritten by the controller.
    kube.merge_patch(object_path(*PJ, namespace, "run", "status"),
                     {"status": {"progress": {"stage": "pruning", "blocksDone": 3, "blocksTotal": 30, "blocks": "3/30"}}})
    set_job_status(kube, namespace, "run", {"active": 0, "succeeded": 1, "completionTime": "2026-01-01T01:00:00Z",
                                            "conditions": [job_condition("Complete")]})
    wait_for(lambda: phase_of(kube, namespace, "run") == "Succeeded", what="Succeeded")
    status = status_of(kube, namespace, "run")
    assert status["progress"]["blocks"] == "3/30"
    assert status["startTime"] == "2026-01-01T00:00:00Z" and status["completionTime"] == "2026-01-01T01:00:00Z"
    assert condition(status, "Succeeded")["status"] == "True"
    reasons = wait_for(lambda: {e["reason"] for e in events(kube, namespace)} >= {"Accepted", "Running", "Succeeded"}
                       and {e["reason"] for e in events(kube, namespace)}, what="events")
    assert {"Accepted", "Running", "Succeeded"} <= reasons


@pytest.mark.parametrize("reason, message", [
    ("BackoffLimitExceeded", "Job has reached the specified backoff limit"),
    ("DeadlineExceeded", "Job was active longer than specified deadline"),
])
def test_failed_job_gives_failed_with_reason_and_pod_termination(operator, kube, namespace, reason, message):
    created(kube, namespace, "oom")
    wait_for(lambda: get_job(kube, namespace, "oom"), what="the Job")
    kube.request("POST", collection_path("v1", "pods", namespace), body={
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "oom-x1y2z", "namespace": namespace, "labels": {"batch.kubernetes.io/job-name": "oom"}},
        "spec": {"containers": [{"name": "prune-job", "image": "i"}]},
    })
    kube.merge_patch(object_path("v1", "pods", namespace, "oom-x1y2z", "status"), {"status": {"containerStatuses": [
        {"name": "prune-job", "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}})
    set_job_status(kube, namespace, "oom", {"failed": 3, "conditions": [job_condition("Failed", reason, message)]})
    wait_for(lambda: phase_of(kube, namespace, "oom") == "Failed", what="Failed")
    failed = condition(status_of(kube, namespace, "oom"), "Failed")
    assert failed["reason"] == reason and message in failed["message"]
    assert "OOMKilled" in failed["message"] and "spec.resources.memory" in failed["message"]
    wait_for(lambda: any(e["reason"] == reason and e["type"] == "Warning" for e in events(kube, namespace)),
             what="a Warning event")


def test_suspend_and_resume(operator, kube, namespace):
    created(kube, namespace, "pausable")
    wait_for(lambda: get_job(kube, namespace, "pausable"), what="the Job")
    set_job_status(kube, namespace, "pausable", {"active": 1})
    wait_for(lambda: phase_of(kube, namespace, "pausable") == "Running", what="Running")
    kube.merge_patch(object_path(*PJ, namespace, "pausable"), {"spec": {"runPolicy": {"suspend": True}}})
    wait_for(lambda: get_job(kube, namespace, "pausable")["spec"]["suspend"] is True, what="Job suspended")
    set_job_status(kube, namespace, "pausable", {"active": 0})  # the Job controller stops the pod
    wait_for(lambda: phase_of(kube, namespace, "pausable") == "Suspended", what="Suspended")
    assert status_of(kube, namespace, "pausable")["observedGeneration"] == 2
    kube.merge_patch(object_path(*PJ, namespace, "pausable"), {"spec": {"runPolicy": {"suspend": False}}})
    wait_for(lambda: get_job(kube, namespace, "pausable")["spec"]["suspend"] is False, what="Job resumed")
    set_job_status(kube, namespace, "pausable", {"active": 1})
    wait_for(lambda: phase_of(kube, namespace, "pausable") == "Running", what="Running again")
    assert len(jobs(kube, namespace)) == 1


def test_restart_mid_job_creates_no_second_job_and_loses_no_status(api_server, kube, namespace):
    first = OperatorThread(api_server.url, namespaces=[namespace]).start()
    try:
        created(kube, namespace, "long")
        wait_for(lambda: get_job(kube, namespace, "long"), what="the Job")
        set_job_status(kube, namespace, "long", {"active": 1, "startTime": "2026-01-01T00:00:00Z"})
        wait_for(lambda: phase_of(kube, namespace, "long") == "Running", what="Running")
    finally:
        first.stop()
    # While the operator is down the worker reports progress and the Job finishes.
    kube.merge_patch(object_path(*PJ, namespace, "long", "status"),
                     {"status": {"progress": {"stage": "evaluating", "blocksDone": 30, "blocksTotal": 30},
                                 "results": {"sparsity": 0.5, "perplexity": {"increasePercent": 12.5}}}})
    before = status_of(kube, namespace, "long")
    second = OperatorThread(api_server.url, namespaces=[namespace]).start()
    try:
        wait_for(lambda: phase_of(kube, namespace, "long") == "Running" and len(jobs(kube, namespace)) == 1,
                 what="resumed")
        set_job_status(kube, namespace, "long", {"active": 0, "succeeded": 1, "conditions": [job_condition("Complete")]})
        wait_for(lambda: phase_of(kube, namespace, "long") == "Succeeded", what="Succeeded after restart")
    finally:
        second.stop()
    after = status_of(kube, namespace, "long")
    assert len(jobs(kube, namespace)) == 1
    assert after["results"] == before["results"] and after["progress"] == before["progress"]
    assert after["startTime"] == before["startTime"]
    assert condition(after, "Accepted")["lastTransitionTime"] == condition(before, "Accepted")["lastTransitionTime"]


INVALID = {
    "unsupported model scheme": ({"model": {"uri": "ftp://host/model"}}, "spec.model.uri"),
    "unknown builtin model": ({"model": {"uri": "builtin:gpt-17"}}, "spec.model.uri"),
    "sparsity out of range": ({"pruning": {"sparsity": 1.5}}, "spec.pruning.sparsity"),
    "N >= M": ({"pruning": {"pattern": "4:2"}}, "spec.pruning.pattern"),
    "pattern syntax": ({"pruning": {"pattern": "2-4"}}, "spec.pruning.pattern"),
    "sparsity inconsistent with N:M": ({"pruning": {"pattern": "2:4", "sparsity": 0.6}}, "spec.pruning"),
    "unknown method": ({"pruning": {"method": "obs"}}, "spec.pruning.method"),
    "unknown field": ({"pruning": {"method": "wanda", "sparsty": 0.5}}, "spec.pruning.sparsty"),
    "bad dtype": ({"model": {"uri": "s3://m/x/", "dtype": "int8"}}, "spec.model.dtype"),
    "zero calibration samples": ({"calibration": {"samples": 0}}, "spec.calibration.samples"),
    "output to a builtin": ({"output": {"uri": "builtin:pydoc"}}, "spec.output.uri"),
    "invalid target regex": ({"pruning": {"targets": {"include": ["(unclosed"]}}}, "spec.pruning.targets.include"),
    "cpu not a quantity": ({"resources": {"cpu": "lots"}}, "spec.resources.cpu"),
    "batch size zero": ({"evaluation": {"generation": {"batchSizes": [0]}}}, "spec.evaluation.generation.batchSizes"),
}


def test_invalid_specs_fail_naming_the_field_and_others_keep_running(operator, kube, namespace):
    names = {}
    for i, (kind, (override, field)) in enumerate(INVALID.items()):
        name = f"bad-{i}"
        names[name] = (kind, field)
        create_prunejob(kube, prunejob(name, namespace, **override))
    create_prunejob(kube, prunejob("good", namespace))
    for name, (kind, field) in names.items():
        wait_for(lambda: phase_of(kube, namespace, name) == "Failed", what=f"{kind} to fail")
        accepted = condition(status_of(kube, namespace, name), "Accepted")
        assert accepted["status"] == "False" and accepted["reason"] == "InvalidSpec", kind
        assert field in accepted["message"], (kind, accepted["message"])
    wait_for(lambda: get_job(kube, namespace, "good"), what="the valid PruneJob's Job")
    assert [j["metadata"]["name"] for j in jobs(kube, namespace)] == ["good"]
    warnings = {e["involvedObject"]["name"] for e in events(kube, namespace) if e["reason"] == "InvalidSpec"}
    assert warnings >= set(names)
    for api_version, plural in [("v1", "serviceaccounts"), ("rbac.authorization.k8s.io/v1", "roles")]:
        children = kube.get(collection_path(api_version, plural, namespace))["items"]
        assert [c["metadata"]["name"] for c in children] == ["good-prune-job"]


def test_delete_removes_children_through_owner_references(operator, kube, namespace):
    created(kube, namespace, "gone")
    wait_for(lambda: get_job(kube, namespace, "gone"), what="the Job")
    kube.request("DELETE", object_path(*PJ, namespace, "gone"))
    assert get_prunejob(kube, namespace, "gone") is None  # no finalizer: a stopped operator never blocks this
    assert jobs(kube, namespace) == []
    for api_version, plural in [("v1", "serviceaccounts"), ("v1", "configmaps"),
                                ("rbac.authorization.k8s.io/v1", "roles"), ("rbac.authorization.k8s.io/v1", "rolebindings")]:
        assert kube.get(collection_path(api_version, plural, namespace))["items"] == []


def test_metrics_count_phases_and_time_handlers(operator, kube, namespace):
    created(kube, namespace, "measured")
    wait_for(lambda: get_job(kube, namespace, "measured"), what="the Job")
    set_job_status(kube, namespace, "measured", {"active": 1})
    wait_for(lambda: phase_of(kube, namespace, "measured") == "Running", what="Running")
    wait_for(lambda: (REGISTRY.get_sample_value("prune_operator_prunejobs", {"phase": "Running"}) or 0) >= 1,
             what="the by-phase gauge")
    assert REGISTRY.get_sample_value("prune_operator_handler_duration_seconds_count",
                                     {"handler": "prunejob-create"}) >= 1
    assert REGISTRY.get_sample_value("prune_operator_jobs_created_total") >= 1


def test_api_trouble_is_a_temporary_error_and_is_retried(api_server, kube, namespace):
    from kmock import action

    from prune_operator.config import OperatorConfig

    api_server.call(api_server.emulator.fail, "jobs", action.CREATE, 2, 500)
    before = REGISTRY.get_sample_value("prune_operator_handler_errors_total",
                                       {"handler": "prunejob-create", "error": "TemporaryError"}) or 0
    running = OperatorThread(api_server.url, OperatorConfig(job_image="i", retry_delay=0.2), [namespace]).start()
    try:
        created(kube, namespace, "flaky-api")
        wait_for(lambda: get_job(kube, namespace, "flaky-api"), what="the Job after two failed creates")
    finally:
        running.stop()
    after = REGISTRY.get_sample_value("prune_operator_handler_errors_total",
                                      {"handler": "prunejob-create", "error": "TemporaryError"})
    assert after - before == 2
    assert len(jobs(kube, namespace)) == 1


def test_a_status_sync_that_failed_is_repaired_by_the_resync(api_server, kube, namespace):
    from kmock import action

    from prune_operator.config import OperatorConfig

    running = OperatorThread(api_server.url, OperatorConfig(job_image="i", resync_seconds=0.3), [namespace]).start()
    try:
        created(kube, namespace, "missed")
        wait_for(lambda: get_job(kube, namespace, "missed"), what="the Job")
        wait_for(lambda: phase_of(kube, namespace, "missed") == "Pending", what="Pending")
        # The API server refuses more status writes than the Job event handler's 3 attempts.
        before = REGISTRY.get_sample_value("prune_operator_handler_errors_total",
                                           {"handler": "prunejob-resync", "error": "ApiError"}) or 0
        api_server.call(api_server.emulator.fail, "prunejobs", action.UPDATE, 5, 503, "status")
        set_job_status(kube, namespace, "missed", {"active": 1, "ready": 1})
        wait_for(lambda: phase_of(kube, namespace, "missed") == "Running", timeout=20, what="Running after resync")
    finally:
        running.stop()
    after = REGISTRY.get_sample_value("prune_operator_handler_errors_total",
                                      {"handler": "prunejob-resync", "error": "ApiError"})
    assert after - before >= 1  # the Job event handler gave up; the resync met the rest of the outage


def test_a_job_deleted_mid_run_fails_the_prunejob_and_is_not_recreated(api_server, kube, namespace):
    first = OperatorThread(api_server.url, namespaces=[namespace]).start()
    try:
        for name in ("cut", "cut-offline"):
            created(kube, namespace, name)
            wait_for(lambda: status_of(kube, namespace, name).get("jobName"), what="jobName")
        kube.request("DELETE", object_path("batch/v1", "jobs", namespace, "cut"))  # while the operator runs
        wait_for(lambda: phase_of(kube, namespace, "cut") == "Failed", what="Failed")
    finally:
        first.stop()
    kube.request("DELETE", object_path("batch/v1", "jobs", namespace, "cut-offline"))  # while it is down
    second = OperatorThread(api_server.url, namespaces=[namespace]).start()
    try:
        wait_for(lambda: phase_of(kube, namespace, "cut-offline") == "Failed", what="Failed after restart")
    finally:
        second.stop()
    for name in ("cut", "cut-offline"):
        assert condition(status_of(kube, namespace, name), "Failed")["reason"] == "JobDeleted"
    assert jobs(kube, namespace) == []


def test_the_controller_never_resumes_a_job_that_kueue_suspended(operator, kube, namespace):
    created(kube, namespace, "queued", runPolicy={"queueName": "gpus"})
    wait_for(lambda: get_job(kube, namespace, "queued"), what="the Job")
    job_path = object_path("batch/v1", "jobs", namespace, "queued")
    assert get_job(kube, namespace, "queued")["spec"]["suspend"] is True
    assert condition(status_of(kube, namespace, "queued"), "Running")["reason"] == "Queued"
    kube.merge_patch(job_path, {"spec": {"suspend": False}})  # Kueue admits the workload
    set_job_status(kube, namespace, "queued", {"active": 1, "ready": 1})
    wait_for(lambda: phase_of(kube, namespace, "queued") == "Running", what="Running once admitted")
    pj_path = object_path(*PJ, namespace, "queued")
    kube.merge_patch(pj_path, {"spec": {"runPolicy": {"suspend": True}}})  # the user pauses it
    wait_for(lambda: get_job(kube, namespace, "queued")["spec"]["suspend"] is True, what="suspended by us")
    set_job_status(kube, namespace, "queued", {"active": 0, "ready": 0})
    wait_for(lambda: phase_of(kube, namespace, "queued") == "Suspended", what="Suspended")
    kube.merge_patch(pj_path, {"spec": {"runPolicy": {"suspend": False}}})  # ...and resumes: Kueue re-admits
    wait_for(lambda: "pruning.dev/suspended-by" not in (get_job(kube, namespace, "queued")["metadata"]
                                                        .get("annotations") or {}), what="our mark dropped")
    assert get_job(kube, namespace, "queued")["spec"]["suspend"] is True  # not un-suspended by the controller
    wait_for(lambda: condition(status_of(kube, namespace, "queued"), "Running").get("reason") == "Queued",
             what="Pending in the queue again")
    assert phase_of(kube, namespace, "queued") == "Pending"
