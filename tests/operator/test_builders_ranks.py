"""Builders for one PruneJob over several processes and pods: torchrun in one pod, an
Indexed Job + headless Service across pods, the PET_* env, GPUs per pod, the CEL rules."""
from __future__ import annotations

import pytest

from prune_job import spec as api
from prune_operator import rbac
from prune_operator.crdgen import prunejob_crd
from prune_operator.prunejob import builders
from test_builders import CONFIG, OWNER, raw_spec
from test_crd import evaluate, schema_of


def parts(**resources):
    spec = api.parse_spec(raw_spec(resources={"cpu": "8", "memory": "64Gi", **resources}))
    kids = builders.children(OWNER, raw_spec(), spec, CONFIG)
    job = kids[-1]
    return kids, job, job["spec"]["template"]["spec"]


def env_of(pod):
    return {e["name"]: e for e in pod["containers"][0]["env"]}


WORKER = ["run", "/etc/prune-job/prunejob.yaml", "--report", "kubernetes", "--workdir", "/scratch"]


def test_one_gpu_one_pod_is_todays_job():
    kids, job, pod = parts(gpus=1)
    assert [k["kind"] for k in kids] == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job"]
    assert "completionMode" not in job["spec"] and "subdomain" not in pod
    c = pod["containers"][0]
    assert c["command"] + c["args"] == ["prune-job", *WORKER]
    assert not any(name.startswith("PET_") for name in env_of(pod))
    assert "dshm" not in {v["name"] for v in pod["volumes"]}


def test_cpu_processes_in_one_pod_run_torchrun_standalone():
    _, job, pod = parts(gpus=0, processesPerNode=4)
    c = pod["containers"][0]
    assert c["command"] + c["args"] == ["torchrun", "--standalone", "--max-restarts=0", "-m", "prune_job", *WORKER]
    env = env_of(pod)
    assert (env["PET_NNODES"]["value"], env["PET_NPROC_PER_NODE"]["value"]) == ("1", "4")
    assert "PET_MASTER_ADDR" not in env and "completionMode" not in job["spec"]
    assert "nvidia.com/gpu" not in c["resources"]["requests"]


def test_several_pods_make_an_indexed_job_and_a_headless_service():
    kids, job, pod = parts(gpus=8, nodes=3)
    assert [k["kind"] for k in kids] == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service", "Job"]
    service = kids[4]
    assert service["metadata"]["name"] == "smollm2-sparsegpt-50-ranks"
    assert service["metadata"]["ownerReferences"][0]["uid"] == "0b4e-uid"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == pod_labels(job)
    assert service["spec"]["ports"] == [{"name": "rendezvous", "port": 29500, "targetPort": 29500}]
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert pod["subdomain"] == "smollm2-sparsegpt-50-ranks"
    c = pod["containers"][0]
    assert c["command"] + c["args"] == ["torchrun", "--max-restarts=0", "-m", "prune_job", *WORKER]
    env = env_of(pod)
    assert env["PET_NNODES"]["value"] == "3" and env["PET_NPROC_PER_NODE"]["value"] == "8"
    assert env["PET_NODE_RANK"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
    assert env["PET_MASTER_ADDR"]["value"] == "smollm2-sparsegpt-50-0.smollm2-sparsegpt-50-ranks"
    assert env["PET_MASTER_PORT"]["value"] == "29500"
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "8" == c["resources"]["limits"]["nvidia.com/gpu"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]  # NCCL between a pod's GPUs


def pod_labels(job):
    return job["spec"]["template"]["metadata"]["labels"]


def test_kueue_admits_the_indexed_job_as_one_workload():
    spec = api.parse_spec(raw_spec(resources={"gpus": 1, "nodes": 2}, runPolicy={"queueName": "gpu-queue"}))
    job = builders.job(OWNER, spec, CONFIG)
    assert job["metadata"]["labels"][builders.LABEL_QUEUE] == "gpu-queue" and job["spec"]["suspend"] is True
    assert job["spec"]["parallelism"] == 2  # Kueue's one podset of 2 pods


def test_service_name_is_a_dns_1035_label():
    owner = builders.Owner(name="7b-sweep", namespace="ml", uid="u")
    assert builders.service_name(owner) == "pj-7b-sweep-ranks"
    assert builders.rendezvous_host(owner) == "7b-sweep-0.pj-7b-sweep-ranks"


def test_hf_token_comes_from_the_named_secret():
    spec = api.parse_spec(raw_spec(model={"uri": "hf://meta-llama/Llama-3.1-8B", "credentialsSecret": "hf"}))
    env = env_of(builders.job(OWNER, spec, CONFIG)["spec"]["template"]["spec"])
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    plain = env_of(builders.job(OWNER, api.parse_spec(raw_spec()), CONFIG)["spec"]["template"]["spec"])
    assert "HF_TOKEN" not in plain


def test_the_operator_may_create_services():
    assert rbac.allows(rbac.RULES, "create", "", "services", "x")


@pytest.mark.parametrize("resources, problem", [
    ({"nodes": 0}, "spec.resources.nodes"),
    ({"nodes": 129}, "spec.resources.nodes"),
    ({"gpus": 0, "processesPerNode": 0}, "spec.resources.processesPerNode"),
    ({"gpus": 2, "processesPerNode": 2}, "spec.resources"),
    ({"gpus": 64, "nodes": 17}, "spec.resources"),
])
def test_bad_layouts_are_refused_with_the_field(resources, problem):
    with pytest.raises(api.SpecError) as err:
        api.parse_spec(raw_spec(resources=resources))
    assert problem in [p for p, _ in err.value.problems]


def test_samples_must_cover_the_ranks():
    with pytest.raises(api.SpecError, match="calibration.samples"):
        api.parse_spec(raw_spec(resources={"gpus": 8, "nodes": 2}, calibration={"samples": 8}))
    api.parse_spec(raw_spec(resources={"gpus": 8, "nodes": 2}, calibration={"samples": 16}))


@pytest.mark.parametrize("resources, ok", [
    ({"gpus": 1, "processesPerNode": 1, "nodes": 1}, True),
    ({"gpus": 0, "processesPerNode": 4, "nodes": 8}, True),
    ({"gpus": 2, "processesPerNode": 2, "nodes": 1}, False),
    ({"gpus": 64, "processesPerNode": 1, "nodes": 17}, False),
    ({"gpus": 8, "processesPerNode": 1, "nodes": 128}, True),
])
def test_cel_rules_agree_with_the_model(resources, ok):
    rules = [r for r in schema_of(prunejob_crd(), "spec", "resources")["x-kubernetes-validations"]
             if "oldSelf" not in r["rule"]]
    assert all(evaluate(r["rule"], self=resources) for r in rules) is ok
    try:
        api.parse_spec(raw_spec(resources=resources, calibration={"samples": 2048}))
        accepted = True
    except api.SpecError:
        accepted = False
    assert accepted is ok
