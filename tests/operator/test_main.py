"""`prune-operator` as its Deployment runs it: a process with a kubeconfig,
serving Prometheus metrics and the liveness probe, stopping on SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from operator_harness import wait_for
from kubeutil import create_prunejob, get_job, prunejob


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except OSError:
        return None


def test_process_serves_metrics_and_liveness_and_stops_on_sigterm(api_server, kube, namespace, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "e",
        "clusters": [{"name": "e", "cluster": {"server": api_server.url}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "e", "context": {"cluster": "e", "user": "u"}}],
    }))
    metrics_port, liveness_port = free_port(), free_port()
    env = dict(os.environ, KUBERNETES_SERVICE_HOST="", PRUNE_OPERATOR_JOB_IMAGE="registry.example/prune-job:9")
    log = (tmp_path / "operator.log").open("w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("prune-operator")), "--kubeconfig", str(kubeconfig), "-n", namespace,
         "--metrics-port", str(metrics_port), "--liveness", f"http://127.0.0.1:{liveness_port}/healthz"],
        env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: proc.poll() is not None or fetch(f"http://127.0.0.1:{liveness_port}/healthz"),
                 timeout=60, what="the liveness probe")
        assert proc.poll() is None, (tmp_path / "operator.log").read_text()
        create_prunejob(kube, prunejob("via-process", namespace))
        job = wait_for(lambda: get_job(kube, namespace, "via-process"), timeout=60, what="the Job")
        assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/prune-job:9"
        def metrics():
            answer = fetch(f"http://127.0.0.1:{metrics_port}/metrics")
            return answer if answer and "prune_operator_jobs_created_total 1.0" in answer[1] else None

        status, text = wait_for(metrics, what="/metrics counting the Job")  # counted just after the create
        assert status == 200
        for name in ("prune_operator_prunejobs", "prune_operator_handler_duration_seconds",
                     "prune_operator_handler_errors_total", "prune_operator_jobs_created_total 1.0"):
            assert name in text, name
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
