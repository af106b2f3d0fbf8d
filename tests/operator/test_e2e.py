"""End to end: a PruneJob for a tiny random Llama, output to a real S3 server
(nanio). The operator (Kopf) creates the Job; the test plays the Job
controller and the kubelet: it runs the Job's own container command and env
as a local process, with the pod's API server address (TLS) and its
ServiceAccount identity. The worker prunes, uploads, patches progress and
results; the controller ends at Succeeded. `kubectl get pj` shows the columns.
"""
from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from operator_harness import ROOT, OperatorThread, configuration, kubeconfig, pod_identity, wait_for
from kubeutil import (create_prunejob, get_job, job_condition, phase_of, prunejob, requests_with_token,
                      set_job_status, status_of)
from prune_operator import rbac
from prune_operator.kube import Kube, object_path

sys.path.insert(0, str(ROOT / "tests"))
from storage.conftest import NanioServer  # noqa: E402  (the storage tests' S3 server)

SECRET = "minio-credentials"
WORKER = shutil.which("prune-job", path=str(Path(sys.executable).parent)) or "prune-job"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = NanioServer(tmp_path_factory.mktemp("nanio")).start()
    yield server
    server.stop()


def secret(namespace: str, values: dict[str, str]) -> dict[str, Any]:
    data = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": namespace}, "data": data}


def resolve_env(kube: Kube, namespace: str, env: list[dict[str, Any]]) -> dict[str, str]:
    """What the kubelet does with a container's env: values, and secretKeyRefs read from the Secret."""
    out = {}
    for item in env:
        if "value" in item:
            out[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        data = kube.get(object_path("v1", "secrets", namespace, ref["name"])).get("data") or {}
        if ref["key"] in data:
            out[item["name"]] = base64.b64decode(data[ref["key"]]).decode()
        elif not ref.get("optional"):
            raise AssertionError(f"the pod would not start: Secret {ref['name']} has no key {ref['key']}")
    return out


def run_pod(kube: Kube, namespace: str, job: dict[str, Any], root: Path, identity: dict[str, str]):
    """Play the kubelet: the Job's container command, args and env as a local process; the
    in-pod paths (the spec volume, /scratch) become folders under `root`."""
    command, env = pod_process(kube, namespace, job, root, identity)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def pod_process(kube: Kube, namespace: str, job: dict[str, Any], root: Path, identity: dict[str, str]):
    """(command, env) of the Job's container as a local process (see run_pod)."""
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    local: dict[str, str] = {}
    for name, path in mounts.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        if "configMap" in volumes[name]:
            config_map = kube.get(object_path("v1", "configmaps", namespace, volumes[name]["configMap"]["name"]))
            for key, text in config_map["data"].items():
                (folder / key).write_text(text)
        local[path] = str(folder)

    def localise(value: str) -> str:
        for path, folder in sorted(local.items(), key=lambda item: -len(item[0])):
            if value == path or value.startswith(path + "/"):
                return folder + value[len(path):]
        return value

    env = {k: localise(v) for k, v in resolve_env(kube, namespace, container["env"]).items()}
    env.update(identity)
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    if os.environ.get("PYTHONPATH"):  # the code under test, not another installed copy
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    command = [WORKER if container["command"] == ["prune-job"] else container["command"][0]]
    command += [localise(arg) for arg in container["args"]]
    return command, env


def allowed(role_rules: list[dict[str, Any]], request: Any) -> bool:
    verb = {"GET": "get", "PATCH": "patch", "PUT": "update", "POST": "create", "DELETE": "delete"}[str(request.method.value)]
    parts = request.url.path.strip("/").split("/")  # apis/GROUP/VERSION/namespaces/NS/PLURAL/NAME[/SUB]
    resource = "/".join([parts[5]] + parts[7:8])
    return rbac.allows(role_rules, verb, parts[1], resource, parts[6])


def kubectl_get_pj(server_url: str, namespace: str, directory: Path) -> str:
    config = kubeconfig(server_url, directory, namespace)
    result = subprocess.run(["kubectl", "--kubeconfig", str(config), "get", "pj"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_prunejob_end_to_end(tls_api_server, tls_files, s3, tiny_model_factory, tmp_path):
    kube = Kube(configuration(tls_api_server.url))
    namespace = "e2e"
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    bucket = s3.make_bucket()
    kube.create(secret(namespace, {"accessKey": s3.env()["AWS_ACCESS_KEY_ID"],
                                   "secretKey": s3.env()["AWS_SECRET_ACCESS_KEY"],
                                   "endpoint": s3.endpoint, "region": "us-east-1"}))
    model_dir = tiny_model_factory("llama", layers=2, hidden=64)
    manifest = prunejob("tiny-llama-50", namespace,
                        model={"uri": str(model_dir)},
                        pruning={"method": "magnitude", "sparsity": 0.5},
                        calibration={"samples": 2, "sequenceLength": 32},
                        output={"uri": f"s3://{bucket}/tiny-llama-50/", "credentialsSecret": SECRET},
                        evaluation={"enabled": False},
                        resources={"gpus": 0, "cpu": "1", "memory": "2Gi"})
    operator = OperatorThread(tls_api_server.url, namespaces=[namespace]).start()
    try:
        create_prunejob(kube, manifest)
        job = wait_for(lambda: get_job(kube, namespace, "tiny-llama-50"), what="the Job")
        role = kube.get(object_path("rbac.authorization.k8s.io/v1", "roles", namespace, "tiny-llama-50-prune-job"))

        # The kubelet starts the pod: the Job is active, the worker runs with the pod's identity.
        token = f"sa-token-{uuid.uuid4().hex[:8]}"
        identity = pod_identity(tmp_path / "serviceaccount", tls_api_server, tls_files[0], token)
        set_job_status(kube, namespace, "tiny-llama-50", {"active": 1, "startTime": "2026-01-01T00:00:00Z"})
        wait_for(lambda: phase_of(kube, namespace, "tiny-llama-50") == "Running", what="Running")
        result = run_pod(kube, namespace, job, tmp_path / "pod", identity)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        set_job_status(kube, namespace, "tiny-llama-50", {"active": 0, "succeeded": 1,
                                                          "conditions": [job_condition("Complete")]})
        wait_for(lambda: phase_of(kube, namespace, "tiny-llama-50") == "Succeeded", what="Succeeded")
    finally:
        operator.stop()

    status = status_of(kube, namespace, "tiny-llama-50")
    results = status["results"]
    assert abs(results["sparsity"] - 0.5) < 0.01
    assert results["artifact"]["uri"] == f"s3://{bucket}/tiny-llama-50/"
    assert results["artifact"]["manifest"].endswith("manifest.json")
    assert 0 < results["artifact"]["bytes"] < results["artifact"]["denseBytes"]
    assert status["progress"]["blocksTotal"] == 2 and status["progress"]["blocks"] == "2/2"

    from minio import Minio

    objects = {o.object_name for o in Minio(f"127.0.0.1:{s3.port}", s3.env()["AWS_ACCESS_KEY_ID"],
                                            s3.env()["AWS_SECRET_ACCESS_KEY"], secure=False)
               .list_objects(bucket, prefix="tiny-llama-50/", recursive=True)}
    assert "tiny-llama-50/manifest.json" in objects and any(o.endswith(".safetensors") for o in objects)

    # The worker used only its scoped identity, and only for what its Role allows.
    worker = requests_with_token(tls_api_server.requests(), token)
    assert worker, "the worker never reached the API server"
    assert all(allowed(role["rules"], r) for r in worker), [f"{r.method} {r.url.path}" for r in worker]
    assert s3.env()["AWS_SECRET_ACCESS_KEY"] not in result.stdout + result.stderr

    if shutil.which("kubectl"):
        table = kubectl_get_pj(tls_api_server.url, namespace, tmp_path)
        print("\n$ kubectl get pj -n e2e\n" + table)
        row = table.splitlines()[1].split()
        assert row[:7] == ["tiny-llama-50", str(model_dir), "magnitude", "unstructured", "0.5", "Succeeded", "2/2"]
    kube.close()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_get_pj_shows_the_printer_columns(api_server, kube, namespace, tmp_path):
    create_prunejob(kube, prunejob("smollm2-sparsegpt-50", namespace, pruning={"method": "sparsegpt", "pattern": "2:4"}))
    kube.merge_patch(object_path("pruning.dev/v1alpha1", "prunejobs", namespace, "smollm2-sparsegpt-50", "status"),
                     {"status": {"phase": "Running", "progress": {"stage": "pruning", "blocksDone": 12,
                                                                  "blocksTotal": 30, "blocks": "12/30"},
                                 "results": {"perplexity": {"increasePercent": 15.7}}}})
    table = kubectl_get_pj(api_server.url, namespace, tmp_path)
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "MODEL", "METHOD", "PATTERN", "SPARSITY", "PHASE", "PROGRESS", "PPL", "Δ%", "AGE"]
    assert row.split()[:8] == ["smollm2-sparsegpt-50", "s3://models/tiny-llama/", "sparsegpt", "2:4", "0.5",
                               "Running", "12/30", "15.7"]
