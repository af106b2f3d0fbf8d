"""End to end, two pods: a PruneJob with `resources.nodes: 2` against the emulated API
server. The operator creates the Indexed Job and its headless Service; the test plays the
Job controller and the kubelet, starting both pods' container commands (torchrun) as local
processes with the env each pod would have (its completion index as PET_NODE_RANK; the
rendezvous at 127.0.0.1 in place of pod 0's DNS name). Rank 0 prunes, uploads to S3 and
reports; the PruneJob ends Succeeded with its results."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from operator_harness import OperatorThread, configuration, pod_identity, wait_for
from kubeutil import create_prunejob, get_job, job_condition, phase_of, prunejob, set_job_status, status_of
from prune_operator.kube import Kube, object_path
from test_e2e import SECRET, s3, secret  # noqa: F401  (s3: the S3 server fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from multirank.group import free_port  # noqa: E402


def pod_env(kube: Kube, namespace: str, env: list[dict[str, Any]], index: int) -> dict[str, str]:
    """The kubelet's view: values, secretKeyRefs from the Secret, the completion-index fieldRef."""
    out = {}
    for item in env:
        if "value" in item:
            out[item["name"]] = item["value"]
        elif "fieldRef" in item["valueFrom"]:
            assert "job-completion-index" in item["valueFrom"]["fieldRef"]["fieldPath"]
            out[item["name"]] = str(index)
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            data = kube.get(object_path("v1", "secrets", namespace, ref["name"])).get("data") or {}
            if ref["key"] in data:
                out[item["name"]] = base64.b64decode(data[ref["key"]]).decode()
    return out


def start_pod(kube, namespace, job, index, root: Path, identity, port):
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    local = {}
    for mount in container["volumeMounts"]:
        folder = root / mount["name"]
        folder.mkdir(parents=True, exist_ok=True)
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        if "configMap" in volume:
            cm = kube.get(object_path("v1", "configmaps", namespace, volume["configMap"]["name"]))
            for key, text in cm["data"].items():
                (folder / key).write_text(text)
        local[mount["mountPath"]] = str(folder)

    def localise(value: str) -> str:
        for path, folder in sorted(local.items(), key=lambda item: -len(item[0])):
            if value == path or value.startswith(path + "/"):
                return folder + value[len(path):]
        return value

    env = {k: localise(v) for k, v in pod_env(kube, namespace, container["env"], index).items()}
    env.update(identity)
    assert env["PET_MASTER_ADDR"] == f"{job['metadata']['name']}-0.{pod['subdomain']}"
    env.update(PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(port),  # pod 0's DNS name, here
               PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
               PYTHONPATH=os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [str(Path(sys.executable).parent / container["command"][0])] + [localise(a) for a in container["args"]]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root)


def test_two_pod_prunejob_end_to_end(tls_api_server, tls_files, s3, tiny_model_factory, tmp_path):
    kube = Kube(configuration(tls_api_server.url))
    namespace = "e2e-ranks"
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    bucket = s3.make_bucket()
    kube.create(secret(namespace, {"accessKey": s3.env()["AWS_ACCESS_KEY_ID"],
                                   "secretKey": s3.env()["AWS_SECRET_ACCESS_KEY"],
                                   "endpoint": s3.endpoint, "region": "us-east-1"}))
    ids = tmp_path / "ids.jsonl"
    ids.write_text("\n".join(json.dumps({"input_ids": [(5 * i + j) % 256 for j in range(16)]}) for i in range(6)))
    name = "tiny-two-pods"
    manifest = prunejob(name, namespace, model={"uri": str(tiny_model_factory("llama", layers=2, hidden=64))},
                        pruning={"method": "wanda", "sparsity": 0.5},
                        calibration={"uri": str(ids), "samples": 6, "sequenceLength": 16},
                        output={"uri": f"s3://{bucket}/{name}/", "credentialsSecret": SECRET},
                        evaluation={"perplexity": {"uri": str(ids), "samples": 6, "sequenceLength": 16},
                                    "generation": {"batchSizes": [1], "promptTokens": 4, "newTokens": 2,
                                                   "repeats": 1}},
                        resources={"gpus": 0, "cpu": "1", "memory": "2Gi", "nodes": 2})
    operator = OperatorThread(tls_api_server.url, namespaces=[namespace]).start()
    procs = []
    try:
        create_prunejob(kube, manifest)
        job = wait_for(lambda: get_job(kube, namespace, name), what="the Job")
        assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["parallelism"] == 2
        service = kube.get(object_path("v1", "services", namespace, f"{name}-ranks"))
        assert service["spec"]["clusterIP"] == "None"

        token = f"sa-token-{uuid.uuid4().hex[:8]}"
        identity = pod_identity(tmp_path / "serviceaccount", tls_api_server, tls_files[0], token)
        set_job_status(kube, namespace, name, {"active": 2, "startTime": "2026-01-01T00:00:00Z"})
        wait_for(lambda: phase_of(kube, namespace, name) == "Running", what="Running")
        port = free_port()
        procs = [start_pod(kube, namespace, job, i, tmp_path / f"pod{i}", identity, port) for i in range(2)]
        outputs = [p.communicate(timeout=400) for p in procs]
        for i, (p, (out, err)) in enumerate(zip(procs, outputs)):
            assert p.returncode == 0, f"pod {i}:\n{out[-2000:]}\n{err[-3000:]}"
        assert "phase: Succeeded" in outputs[0][0] and "phase: Succeeded" not in outputs[1][0]
        set_job_status(kube, namespace, name, {"active": 0, "succeeded": 2,
                                               "conditions": [job_condition("Complete")]})
        wait_for(lambda: phase_of(kube, namespace, name) == "Succeeded", what="Succeeded")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        operator.stop()

    results = status_of(kube, namespace, name)["results"]
    assert abs(results["sparsity"] - 0.5) < 1e-9
    assert results["perplexity"]["dense"] > 1 and results["perplexity"]["sparse"] > 1
    assert results["artifact"]["uri"] == f"s3://{bucket}/{name}/"
    # pod 1 evaluated from its own replica of the checkpoint; only pod 0 wrote the real one
    assert (tmp_path / "pod1" / "scratch" / "replica-checkpoint" / "manifest.json").is_file()
    assert not (tmp_path / "pod0" / "scratch" / "replica-checkpoint").exists()
    kube.close()
