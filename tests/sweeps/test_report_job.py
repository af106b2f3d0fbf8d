"""The sweep report's ConfigMap and Job as pure manifests (report_job.py): the worker pod's security,
the template's credentials Secret as env only, the table the command reads, deterministic names."""
from __future__ import annotations

import yaml

from prune_job.spec import PruneSweepStatus, SweepRow, parse_sweep, parse_sweep_spec
from prune_operator.config import OperatorConfig
from prune_operator.prunejob import builders
from prune_operator.sweep.plan import SWEEP_LABEL
from prune_operator.sweep.report_job import job_phase, report_job, report_name, table_config_map

CONFIG = OperatorConfig(job_image="registry.test/prune-job:1.2", run_as_user=4242, s3_endpoint="http://s3.test")
TEMPLATE = {"model": {"uri": "s3://models/tiny/"}, "output": {"uri": "s3://pruned/grid/", "credentialsSecret": "s3"},
            "resources": {"gpus": 1}}


def sweep(name="grid", template=TEMPLATE):
    return {"metadata": {"name": name, "namespace": "ml", "uid": "u-9"},
            "spec": {"template": template, "matrix": {"sparsity": [0.3, 0.5]}}}


def test_the_job_is_a_worker_pod_that_only_writes_files():
    body = sweep()
    job = report_job(body, parse_sweep_spec(body["spec"]), CONFIG, SWEEP_LABEL)
    assert job["metadata"]["name"] == "grid-report" and job["metadata"]["labels"][SWEEP_LABEL] == "grid"
    assert job["metadata"]["ownerReferences"] == [{"apiVersion": "pruning.dev/v1alpha1", "kind": "PruneSweep",
                                                   "name": "grid", "uid": "u-9", "controller": True,
                                                   "blockOwnerDeletion": True}]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"] == builders.pod_security(CONFIG) and pod["securityContext"]["runAsUser"] == 4242
    assert container["securityContext"] == builders.container_security()
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    assert container["image"] == CONFIG.job_image and container["command"] == builders.WORKER_COMMAND
    assert container["args"] == ["sweep-report", "/etc/prune-job/sweep.yaml", "--workdir", "/scratch"]
    assert "nvidia.com/gpu" not in container["resources"]["requests"]  # the template's GPU is not the report's
    values = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert values["AWS_ENDPOINT_URL"] == "http://s3.test" and values["HOME"] == "/scratch/home"
    refs = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e]
    assert {r["name"] for r in refs} == {"s3"} and {r["key"] for r in refs} == set(builders.SECRET_ENV)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["spec"]["configMap"]["name"] == "grid-report" and "emptyDir" in volumes["tmp"]
    assert {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}["/etc/prune-job"] is True


def test_a_pvc_output_is_mounted_writable_and_long_names_are_hashed():
    template = {**TEMPLATE, "output": {"uri": "pvc://results/sweeps/"}}
    name = "a-sweep-with-a-name-long-enough-that-the-suffix-would-not-fit-x"
    body = sweep(name, template)
    job = report_job(body, parse_sweep_spec(body["spec"]), CONFIG, SWEEP_LABEL)
    assert len(job["metadata"]["name"]) <= 63 and job["metadata"]["name"] == report_name(name) != report_name(name[:-1])
    mounts = job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "pvc-0", "mountPath": f"{builders.PVC_ROOT}/results", "readOnly": False} in mounts
    assert not any("valueFrom" in e for e in job["spec"]["template"]["spec"]["containers"][0]["env"])


def test_the_config_map_holds_the_sweep_as_sweep_report_reads_it():
    status = PruneSweepStatus(total=2, completed=2, rows=[SweepRow(child="grid-30", phase="Succeeded", sparsity=0.3),
                                                          SweepRow(child="grid-50", phase="Failed", message="OOM")])
    cm = table_config_map(sweep(), status, SWEEP_LABEL)
    assert cm["metadata"]["name"] == "grid-report" and cm["metadata"]["ownerReferences"][0]["kind"] == "PruneSweep"
    document = parse_sweep(yaml.safe_load(cm["data"]["sweep.yaml"]))
    assert document.metadata.name == "grid" and [r.child for r in document.status.rows] == ["grid-30", "grid-50"]
    assert document.spec.template.output.uri == "s3://pruned/grid/"


def test_job_phase():
    assert job_phase(None) is None
    assert job_phase({"status": {}}) == ("Pending", None)
    assert job_phase({"status": {"active": 1}}) == ("Running", None)
    assert job_phase({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}) == ("Succeeded", None)
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                         "message": "too long"}]}}
    assert job_phase(failed) == ("Failed", "DeadlineExceeded too long")
