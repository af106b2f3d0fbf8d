"""Suspend then resume a PruneJob mid-run (docs/resume.md): the operator suspends the Job, the test plays
the Job controller and the kubelet (SIGTERM to the worker, pod gone; a new pod on resume), and the run
continues from its journal: Running -> Suspended -> Running -> Succeeded, resumedFromBlock > 0, and the
Event "Resumed from block k of n"."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid

import pytest

from kubeutil import (create_prunejob, events, get_job, job_condition, phase_of, prunejob, set_job_status,
                      status_of)
from operator_harness import ROOT, OperatorThread, configuration, pod_identity, wait_for
from prune_job import exit_codes
from prune_operator.kube import Kube, object_path
from test_e2e import SECRET, pod_process, secret

sys.path.insert(0, str(ROOT / "tests"))
from storage.conftest import NanioServer  # noqa: E402

NAME, LAYERS = "tiny-resume", 4


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = NanioServer(tmp_path_factory.mktemp("nanio")).start()
    yield server
    server.stop()


def journal_blocks(s3, bucket):
    from minio import Minio
    from minio.error import S3Error

    client = Minio(f"127.0.0.1:{s3.port}", s3.env()["AWS_ACCESS_KEY_ID"], s3.env()["AWS_SECRET_ACCESS_KEY"],
                   secure=False)
    try:
        resp = client.get_object(bucket, f"{NAME}/journal.json")
    except S3Error:
        return 0
    try:
        return json.loads(resp.read())["blocksDone"]
    finally:
        resp.close()


def set_suspend(kube, namespace, value):
    kube.merge_patch(object_path("pruning.dev/v1alpha1", "prunejobs", namespace, NAME),
                     {"spec": {"runPolicy": {"suspend": value, "terminationGracePeriodSeconds": 2}}})


def test_suspend_mid_run_then_resume_continues_from_the_journal(tls_api_server, tls_files, s3, tiny_model_factory,
                                                               tmp_path):
    kube = Kube(configuration(tls_api_server.url))
    namespace = "resume"
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    bucket = s3.make_bucket()
    kube.create(secret(namespace, {"accessKey": s3.env()["AWS_ACCESS_KEY_ID"],
                                   "secretKey": s3.env()["AWS_SECRET_ACCESS_KEY"],
                                   "endpoint": s3.endpoint, "region": "us-east-1"}))
    ids = tmp_path / "calib.jsonl"
    ids.write_text("\n".join(json.dumps({"input_ids": list(range(i, i + 16))}) for i in range(8)))
    manifest = prunejob(NAME, namespace, model={"uri": str(tiny_model_factory("llama", layers=LAYERS))},
                        pruning={"method": "sparsegpt", "sparsity": 0.5, "blockSize": 16},
                        calibration={"uri": str(ids), "samples": 8, "sequenceLength": 16},
                        output={"uri": f"s3://{bucket}/{NAME}/", "credentialsSecret": SECRET},
                        evaluation={"enabled": False}, resources={"gpus": 0, "cpu": "1", "memory": "2Gi"},
                        runPolicy={"terminationGracePeriodSeconds": 2})
    operator = OperatorThread(tls_api_server.url, namespaces=[namespace]).start()
    try:
        create_prunejob(kube, manifest)
        job = wait_for(lambda: get_job(kube, namespace, NAME), what="the Job")
        assert job["spec"]["podFailurePolicy"]["rules"][0]["onPodConditions"][0]["type"] == "DisruptionTarget"
        assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 2
        token = f"sa-token-{uuid.uuid4().hex[:8]}"
        identity = pod_identity(tmp_path / "serviceaccount", tls_api_server, tls_files[0], token)

        # First pod: it runs until block 1 is committed, then its block takes long (the fault point).
        set_job_status(kube, namespace, NAME, {"active": 1, "startTime": "2026-01-01T00:00:00Z"})
        wait_for(lambda: phase_of(kube, namespace, NAME) == "Running", what="Running")
        command, env = pod_process(kube, namespace, job, tmp_path / "pod1", identity)
        env["PRUNE_JOB_FAULT"] = "block-committed:1:sleep120"
        pod = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: journal_blocks(s3, bucket) == 2 or pod.poll() is not None, timeout=120, what="2 blocks")
        assert pod.poll() is None, pod.communicate()[1][-3000:]

        # Suspend: the operator suspends the Job; the Job controller deletes the pod (SIGTERM).
        set_suspend(kube, namespace, True)
        wait_for(lambda: get_job(kube, namespace, NAME)["spec"].get("suspend") is True, what="Job suspended")
        t0 = time.monotonic()
        pod.send_signal(signal.SIGTERM)
        _, stderr = pod.communicate(timeout=60)
        assert pod.returncode == exit_codes.INTERRUPTED, stderr[-3000:]
        assert time.monotonic() - t0 < 2, stderr[-3000:]
        set_job_status(kube, namespace, NAME, {"active": 0, "conditions": [job_condition("Suspended")]})
        wait_for(lambda: phase_of(kube, namespace, NAME) == "Suspended", what="Suspended")

        # Resume: the operator un-suspends the Job; a new pod (empty scratch) continues from the journal.
        set_suspend(kube, namespace, False)
        job = wait_for(lambda: (j := get_job(kube, namespace, NAME))["spec"].get("suspend") is False and j,
                       what="Job resumed")
        set_job_status(kube, namespace, NAME, {"active": 1, "conditions": []})
        wait_for(lambda: phase_of(kube, namespace, NAME) == "Running", what="Running again")
        command, env = pod_process(kube, namespace, job, tmp_path / "pod2", identity)
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"resuming from block 2 of {LAYERS}" in result.stderr
        set_job_status(kube, namespace, NAME, {"active": 0, "succeeded": 1,
                                               "conditions": [job_condition("Complete")]})
        wait_for(lambda: phase_of(kube, namespace, NAME) == "Succeeded", what="Succeeded")
        resumed = wait_for(lambda: [e for e in events(kube, namespace) if e["reason"] == "Resumed"], what="Event")
    finally:
        operator.stop()
    status = status_of(kube, namespace, NAME)
    assert status["progress"]["resumedFromBlock"] == 2 and status["progress"]["resumes"] == 1
    assert status["resumesAnnounced"] == 1
    assert len(resumed) == 1 and resumed[0]["message"].startswith(f"Resumed from block 2 of {LAYERS}")
    phases = [e["reason"] for e in sorted(events(kube, namespace), key=lambda e: e.get("firstTimestamp") or "")]
    assert {"Running", "Suspended", "Succeeded"} <= set(phases)
    kube.close()
