"""The controller acts only on what it owns, and only as the operator's configuration allows
(issue 12): same-named objects are never adopted or changed, long names stay unique, allow-lists
refuse, and no credential reaches a condition or an Event."""
from __future__ import annotations

import kopf
import pytest

from operator_harness import OperatorThread, wait_for
from kubeutil import PJ, condition, create_prunejob, events, get_job, jobs, job_condition, phase_of, prunejob, \
    set_job_status, status_of
from prune_operator import ownership
from prune_operator.config import OperatorConfig
from prune_operator.kube import collection_path, object_path
from prune_operator.policy import policy_problems
from prune_operator.prunejob import builders
from prune_job import spec as api

SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
FOREIGN = {
    "ServiceAccount": ("v1", "serviceaccounts", "{}-prune-job", {}),
    "Role": ("rbac.authorization.k8s.io/v1", "roles", "{}-prune-job", {"rules": []}),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "rolebindings", "{}-prune-job",
                    {"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "other"},
                     "subjects": []}),
    "ConfigMap": ("v1", "configmaps", "{}-prune-job", {"data": {"keep": "me"}}),
    "Job": ("batch/v1", "jobs", "{}", {"spec": {"suspend": False, "template": {"spec": {"containers": []}}}}),
}


def _foreign(kube, namespace, kind, name, owner_refs=None):
    api_version, plural, pattern, body = FOREIGN[kind]
    manifest = {"apiVersion": api_version, "kind": kind,
                "metadata": {"name": pattern.format(name), "namespace": namespace,
                             **({"ownerReferences": owner_refs} if owner_refs else {})}, **body}
    kube.request("POST", collection_path(api_version, plural, namespace), body=manifest)
    return kube.get(object_path(api_version, plural, namespace, pattern.format(name)))


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_a_same_named_object_that_is_not_ours_fails_the_prunejob_and_is_left_alone(operator, kube, namespace, kind):
    before = _foreign(kube, namespace, kind, "victim")
    create_prunejob(kube, prunejob("victim", namespace, runPolicy={"suspend": True}))
    wait_for(lambda: phase_of(kube, namespace, "victim") == "Failed", what="Failed")
    failed = condition(status_of(kube, namespace, "victim"), "Failed")
    assert failed["reason"] == "NameConflict"
    assert f"{kind} {namespace}/{before['metadata']['name']} already exists and is not this PruneJob's" in failed["message"]
    api_version, plural, _, _ = FOREIGN[kind]
    after = kube.get(object_path(api_version, plural, namespace, before["metadata"]["name"]))
    assert after["metadata"].get("ownerReferences") is None  # not adopted
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]  # not changed
    if kind != "Job":
        assert jobs(kube, namespace) == []  # nothing run on someone else's identity or spec
    wait_for(lambda: any(e["reason"] == "NameConflict" for e in events(kube, namespace)), what="a Warning Event")


def test_an_object_of_another_owner_is_a_conflict_and_of_an_earlier_same_named_prunejob_a_wait():
    theirs = {"kind": "Job", "metadata": {"name": "x", "namespace": "ns", "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d1"}]}}
    with pytest.raises(ownership.Conflict, match="owned by Deployment web"):
        ownership.check_child(theirs, "x", "u-new")
    earlier = {"kind": "Job", "metadata": {"name": "x", "namespace": "ns", "ownerReferences": [
        {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": "x", "uid": "u-old"}]}}
    with pytest.raises(kopf.TemporaryError, match="garbage collector"):
        ownership.check_child(earlier, "x", "u-new")
    ours = {"kind": "Job", "metadata": {"ownerReferences": [{"uid": "u-new"}]}}
    ownership.check_child(ours, "x", "u-new")


def test_long_names_stay_unique_and_a_collision_is_detected(operator, kube, namespace):
    base = "a" * 60
    first, second = builders.Owner(base + "-one", namespace, "u1"), builders.Owner(base + "-two", namespace, "u2")
    assert builders.job_name(first) != builders.job_name(second)
    assert builders.worker_name(first) != builders.worker_name(second)
    assert all(len(n) <= 63 for n in (builders.job_name(first), builders.worker_name(second)))
    # someone took the shortened name of the second's Job: detected, not assumed away
    _, plural, _, body = FOREIGN["Job"]
    kube.request("POST", collection_path("batch/v1", "jobs", namespace), body={
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": builders.job_name(second), "namespace": namespace},
        **body})
    create_prunejob(kube, prunejob(second.name, namespace))
    wait_for(lambda: phase_of(kube, namespace, second.name) == "Failed", what="Failed")
    assert condition(status_of(kube, namespace, second.name), "Failed")["reason"] == "NameConflict"


def test_allow_lists_refuse_what_the_operator_does_not_allow(api_server, kube, namespace):
    config = OperatorConfig(job_image="example.test/prune-job:test", allowed_secrets=("minio-credentials",),
                            allowed_priority_classes=("batch-low",))
    running = OperatorThread(api_server.url, config=config, namespaces=[namespace]).start()
    try:
        create_prunejob(kube, prunejob("greedy", namespace,
                                       output={"uri": "s3://pruned/x/", "credentialsSecret": "db-admin-password"},
                                       runPolicy={"priorityClassName": "system-cluster-critical"}))
        create_prunejob(kube, prunejob("modest", namespace, runPolicy={"priorityClassName": "batch-low"}))
        wait_for(lambda: phase_of(kube, namespace, "greedy") == "Failed", what="Failed")
        wait_for(lambda: get_job(kube, namespace, "modest"), what="the allowed one's Job")
    finally:
        running.stop()
    failed = condition(status_of(kube, namespace, "greedy"), "Failed")
    assert failed["reason"] == "NotAllowed"
    assert "spec.output.credentialsSecret: Secret 'db-admin-password' is not among" in failed["message"]
    assert "spec.runPolicy.priorityClassName: 'system-cluster-critical' is not an allowed" in failed["message"]
    assert [j["metadata"]["name"] for j in jobs(kube, namespace)] == ["modest"]


def test_policy_problems_for_node_selectors_and_tolerations():
    spec = api.parse_spec({"model": {"uri": "builtin:smollm2-135m"}, "output": {"uri": "s3://b/p/"},
                           "resources": {"nodeSelector": {"pool": "gpu", "zone": "a"},
                                         "tolerations": [{"key": "gpu", "operator": "Exists"}, {"operator": "Exists"}]}})
    config = OperatorConfig(allowed_node_selectors=("pool=gpu",), allowed_toleration_keys=("gpu",))
    fields = [f for f, _ in policy_problems(spec, config)]
    assert fields == ["spec.resources.nodeSelector.zone", "spec.resources.tolerations[1]"]
    assert policy_problems(spec, OperatorConfig()) == []  # no lists: no restriction
    relaxed = OperatorConfig(allowed_node_selectors=("pool=gpu", "zone=*"), allowed_toleration_keys=("gpu", "*"))
    assert policy_problems(spec, relaxed) == []


def test_allow_lists_come_from_the_environment():
    config = OperatorConfig.from_env({"PRUNE_OPERATOR_ALLOWED_SECRETS": "a, b,,",
                                      "PRUNE_OPERATOR_ALLOWED_NODE_SELECTORS": "pool=gpu"})
    assert config.allowed_secrets == ("a", "b") and config.allowed_node_selectors == ("pool=gpu",)
    assert config.allowed_priority_classes == ()


def test_credentials_in_a_termination_message_never_reach_status_or_events(operator, kube, namespace):
    create_prunejob(kube, prunejob("leaky", namespace))
    wait_for(lambda: get_job(kube, namespace, "leaky"), what="the Job")
    kube.request("POST", collection_path("v1", "pods", namespace), body={
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "leaky-abcde", "namespace": namespace, "labels": {"batch.kubernetes.io/job-name": "leaky"}},
        "spec": {"containers": [{"name": "prune-job", "image": "i"}]},
    })
    message = f"error: cannot read s3://AKIAEXAMPLE:{SECRET}@models/x/ (AccessDenied)"
    kube.merge_patch(object_path("v1", "pods", namespace, "leaky-abcde", "status"), {"status": {"containerStatuses": [
        {"name": "prune-job", "state": {"terminated": {"reason": "Error", "exitCode": 1, "message": message}}}]}})
    set_job_status(kube, namespace, "leaky", {"failed": 1, "conditions": [job_condition("Failed", "BackoffLimitExceeded",
                                                                                        "limit")]})
    wait_for(lambda: phase_of(kube, namespace, "leaky") == "Failed", what="Failed")
    failed = condition(status_of(kube, namespace, "leaky"), "Failed")
    assert "s3://***@models/x/" in failed["message"] and SECRET not in str(status_of(kube, namespace, "leaky"))
    wait_for(lambda: any(e["type"] == "Warning" for e in events(kube, namespace)), what="the Warning Event")
    assert SECRET not in str(events(kube, namespace))


def test_a_schedule_leaves_a_foreign_same_named_prunejob_alone_and_says_so(caplog):
    import logging

    from prune_operator.schedule import handlers as schedule_handlers

    class Stub:
        def __init__(self, existing):
            self.existing, self.patched = existing, []

        def get_or_none(self, path):
            return self.existing

        def merge_patch(self, path, patch):
            self.patched.append(path)

    schedule = {"metadata": {"name": "nightly", "namespace": "ns", "uid": "s1"}}
    stub = Stub({"metadata": {"name": "nightly-1", "labels": {}, "ownerReferences": []}})
    log = logging.getLogger("schedule-test")
    with caplog.at_level(logging.WARNING, logger="schedule-test"):
        schedule_handlers.warn_if_foreign(stub, schedule, "nightly-1", log)
    assert "PruneJob ns/nightly-1 exists and is not this schedule's" in caplog.text and stub.patched == []
