"""Pure manifest builders: what the controller sends for one PruneJob."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from prune_job import spec as api
from prune_operator import rbac
from prune_operator.prunejob import builders
from prune_operator.config import OperatorConfig

ROOT = Path(__file__).resolve().parents[2]
OWNER = builders.Owner(name="smollm2-sparsegpt-50", namespace="ml", uid="0b4e-uid")
CONFIG = OperatorConfig(job_image="registry.example/prune-job:1.2.3")


def raw_spec(**overrides):
    spec = {
        "model": {"uri": "builtin:smollm2-135m"},
        "pruning": {"method": "sparsegpt", "sparsity": 0.5, "pattern": "2:4"},
        "output": {"uri": "s3://pruned/smollm2-50/", "credentialsSecret": "minio-credentials"},
        "resources": {"gpus": 2, "cpu": "8", "memory": "64Gi", "nodeSelector": {"gpu": "h100"},
                      "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
        "runPolicy": {"backoffLimit": 1, "activeDeadlineSeconds": 3600, "ttlSecondsAfterFinished": 60,
                      "priorityClassName": "batch-high"},
    }
    spec.update(overrides)
    return spec


def build_job(**overrides):
    return builders.job(OWNER, api.parse_spec(raw_spec(**overrides)), CONFIG)


def container(job):
    return job["spec"]["template"]["spec"]["containers"][0]


def test_job_snapshot():
    job = build_job()
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert job["metadata"]["name"] == "smollm2-sparsegpt-50"
    assert job["metadata"]["ownerReferences"] == [{
        "apiVersion": "pruning.dev/v1alpha1", "kind": "PruneJob", "name": "smollm2-sparsegpt-50",
        "uid": "0b4e-uid", "controller": True, "blockOwnerDeletion": True,
    }]
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (1, 3600, 60)
    assert spec["suspend"] is False
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "smollm2-sparsegpt-50-prune-job"
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "batch-high"
    assert pod["securityContext"]["runAsNonRoot"] is True
    c = container(job)
    assert c["image"] == "registry.example/prune-job:1.2.3"
    # two GPUs in one pod: two ranks under torchrun (docs/scaling.md)
    assert c["command"] + c["args"] == ["torchrun", "--standalone", "--max-restarts=0", "-m", "prune_job",
                                        "run", "/etc/prune-job/prunejob.yaml",
                                        "--report", "kubernetes", "--workdir", "/scratch"]
    assert c["resources"] == {"requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"},
                              "limits": {"memory": "64Gi", "nvidia.com/gpu": "2"}}
    assert c["securityContext"] == {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "privileged": False,
                                    "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/prune-job"]["readOnly"] is True
    assert {"/scratch", "/tmp"} <= set(mounts)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["spec"] == {"name": "spec", "configMap": {"name": "smollm2-sparsegpt-50-prune-job"}}
    assert "emptyDir" in volumes["scratch"] and "emptyDir" in volumes["tmp"]


def test_credentials_come_from_the_secret_only():
    job = build_job()
    env = {e["name"]: e for e in container(job)["env"]}
    assert env["PRUNEJOB_NAME"]["value"] == "smollm2-sparsegpt-50"
    assert env["PRUNEJOB_NAMESPACE"]["value"] == "ml"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {"secretKeyRef": {"name": "minio-credentials", "key": "accessKey"}}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "minio-credentials", "key": "secretKey"}}
    assert env["AWS_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"]["optional"] is True
    for name in ("HOME", "XDG_CACHE_HOME", "HF_HOME"):
        assert env[name]["value"].startswith("/scratch/")
    assert all("value" not in e for e in env.values() if e["name"].startswith("AWS_"))
    assert "minio-credentials" not in " ".join(container(job)["args"])


def test_no_secret_no_aws_env():
    job = build_job(output={"uri": "pvc://results/run1"})
    names = {e["name"] for e in container(job)["env"]}
    assert not any(n.startswith("AWS_") for n in names)


def test_default_s3_endpoint_precedes_the_secrets_own():
    config = OperatorConfig.from_env({"PRUNE_OPERATOR_S3_ENDPOINT": "http://minio.storage:9000"})
    env = builders.job(OWNER, api.parse_spec(raw_spec()), config)["spec"]["template"]["spec"]["containers"][0]["env"]
    endpoints = [e for e in env if e["name"] == "AWS_ENDPOINT_URL"]
    # The kubelet skips the optional Secret key when absent, so the default stands; when present it wins (later).
    assert endpoints[0] == {"name": "AWS_ENDPOINT_URL", "value": "http://minio.storage:9000"}
    assert endpoints[1]["valueFrom"]["secretKeyRef"] == {"name": "minio-credentials", "key": "endpoint", "optional": True}
    assert "AWS_ENDPOINT_URL" not in {e["name"] for e in builders.job(OWNER, api.parse_spec(raw_spec()), CONFIG)
                                      ["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}


def test_pvc_claims_are_mounted_under_the_pvc_root():
    job = build_job(model={"uri": "pvc://models/llama"}, output={"uri": "pvc://results/run1"})
    pod = job["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
              for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"models": True, "results": False}
    paths = {m["mountPath"] for m in container(job)["volumeMounts"]}
    assert {"/mnt/pvc/models", "/mnt/pvc/results"} <= paths


@pytest.mark.parametrize("policy, suspended, queue_label, ours", [
    ({}, False, None, False),
    ({"suspend": True}, True, None, True),
    ({"queueName": "gpu-queue"}, True, "gpu-queue", False),
    ({"queueName": "gpu-queue", "suspend": True}, True, "gpu-queue", True),
])
def test_suspend_and_kueue(policy, suspended, queue_label, ours):
    job = build_job(runPolicy=policy)
    assert job["spec"]["suspend"] is suspended
    assert job["metadata"]["labels"].get("kueue.x-k8s.io/queue-name") == queue_label
    assert (job["metadata"].get("annotations", {}).get(builders.ANNOTATION_SUSPENDED_BY) == "operator") is ours


def test_cpu_only_job_requests_no_gpu():
    job = build_job(resources={"gpus": 0, "cpu": "2", "memory": "4Gi"})
    resources = container(job)["resources"]
    assert "nvidia.com/gpu" not in resources["requests"] and "nvidia.com/gpu" not in resources["limits"]


@pytest.mark.parametrize("job_body, want, queued, patch", [
    ({"spec": {"suspend": False}}, True, False,
     {"metadata": {"annotations": {builders.ANNOTATION_SUSPENDED_BY: "operator"}}, "spec": {"suspend": True}}),
    ({"spec": {"suspend": False}}, False, False, None),
    ({"metadata": {"annotations": {builders.ANNOTATION_SUSPENDED_BY: "operator"}}, "spec": {"suspend": True}},
     False, False, {"metadata": {"annotations": {builders.ANNOTATION_SUSPENDED_BY: None}}, "spec": {"suspend": False}}),
    ({"spec": {"suspend": True}}, False, True, None),  # Kueue's: never resumed by us
    ({"spec": {"suspend": True}}, False, False, None),  # someone else's: never resumed by us
    ({"metadata": {"annotations": {builders.ANNOTATION_SUSPENDED_BY: "operator"}}, "spec": {"suspend": True}},
     False, True, {"metadata": {"annotations": {builders.ANNOTATION_SUSPENDED_BY: None}}}),  # Kueue re-admits
])
def test_suspend_patch(job_body, want, queued, patch):
    assert builders.suspend_patch(job_body, want, queued) == patch


def test_scoped_role_allows_exactly_two_verbs_on_one_object():
    role = builders.role(OWNER)
    assert role["rules"] == [{"apiGroups": ["pruning.dev"], "resources": ["prunejobs/status"],
                              "resourceNames": ["smollm2-sparsegpt-50"], "verbs": ["get", "patch"]}]
    assert rbac.allows(role["rules"], "patch", "pruning.dev", "prunejobs/status", "smollm2-sparsegpt-50")
    assert not rbac.allows(role["rules"], "patch", "pruning.dev", "prunejobs/status", "another")
    assert not rbac.allows(role["rules"], "patch", "pruning.dev", "prunejobs", "smollm2-sparsegpt-50")
    assert not rbac.allows(role["rules"], "update", "pruning.dev", "prunejobs/status", "smollm2-sparsegpt-50")
    binding = builders.role_binding(OWNER)
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "smollm2-sparsegpt-50-prune-job", "namespace": "ml"}]


def test_operator_rules_cover_what_it_grants_and_does():
    # RBAC forbids granting what one does not hold: the operator must hold the worker's rules.
    for rule in builders.status_rules(OWNER):
        for verb in rule["verbs"]:
            assert rbac.allows(rbac.RULES, verb, rule["apiGroups"][0], rule["resources"][0])
    for kind, group, resource in [("Job", "batch", "jobs"), ("ServiceAccount", "", "serviceaccounts"),
                                  ("ConfigMap", "", "configmaps"), ("Role", "rbac.authorization.k8s.io", "roles"),
                                  ("RoleBinding", "rbac.authorization.k8s.io", "rolebindings")]:
        assert rbac.allows(rbac.RULES, "create", group, resource), kind
    assert rbac.allows(rbac.RULES, "patch", "batch", "jobs")
    assert rbac.allows(rbac.RULES, "watch", "pruning.dev", "prunejobs")
    assert rbac.allows(rbac.RULES, "update", "pruning.dev", "prunejobs/finalizers")


def test_children_are_owned_and_named_deterministically():
    spec = raw_spec()
    kids = builders.children(OWNER, spec, api.parse_spec(spec), CONFIG)
    assert [k["kind"] for k in kids] == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job"]
    again = builders.children(OWNER, spec, api.parse_spec(spec), CONFIG)
    assert kids == again
    for kid in kids:
        assert kid["metadata"]["ownerReferences"][0]["uid"] == "0b4e-uid"
        assert kid["metadata"]["namespace"] == "ml"
        assert kid["metadata"]["labels"][builders.LABEL_PRUNEJOB] == "smollm2-sparsegpt-50"


def test_config_map_holds_a_document_the_worker_parses():
    import yaml

    spec = raw_spec()
    cm = builders.spec_config_map(OWNER, spec)
    document = yaml.safe_load(cm["data"]["prunejob.yaml"])
    job = api.parse_prunejob(document)
    assert job.metadata.name == "smollm2-sparsegpt-50" and job.spec.pruning.pattern == "2:4"


@pytest.mark.parametrize("name", ["a", "x" * 63, "x" * 64, "long-" * 50])
def test_child_names_are_dns_labels(name):
    for child in (builders.child_name(name), builders.child_name(name, "-prune-job")):
        assert len(child) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", child), child
    assert builders.child_name(name, "-prune-job") == builders.child_name(name, "-prune-job")


def test_dockerfile_entrypoint_is_the_command_the_job_runs():
    text = (ROOT / "job_image" / "Dockerfile").read_text()
    entrypoint = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)
    assert entrypoint, "job_image/Dockerfile needs an exec-form ENTRYPOINT"
    import json

    assert json.loads(entrypoint.group(1)) == builders.WORKER_COMMAND
    assert re.search(r"^USER\s+1000", text, re.M), "the image runs as the non-root user the Job expects"
