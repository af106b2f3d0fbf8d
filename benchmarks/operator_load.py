"""Operator under load: N PruneJobs created at once against the API emulator.

    python benchmarks/operator_load.py [--count 200] [--json out.json]

The operator runs as its own process (`prune-operator`, as in its Deployment,
with a kubeconfig pointing at the emulator), so that its peak RSS is its own.
Measured: seconds from the first create until every PruneJob has its Job (and
until every one has its status written), Jobs created (must equal N), create
requests that hit 409 (repeats), and the operator's peak RSS (VmHWM).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "operator"))

from emulator import EmulatorThread  # noqa: E402
from kubernetes.client import Configuration  # noqa: E402

from prune_operator.kube import Kube, collection_path  # noqa: E402


def prunejob(name: str, namespace: str) -> dict:
    return {
        "apiVersion": "pruning.dev/v1alpha1", "kind": "PruneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"model": {"uri": "s3://models/llama-3-8b/"}, "pruning": {"method": "wanda", "sparsity": 0.5},
                 "output": {"uri": f"s3://pruned/{name}/", "credentialsSecret": "s3"}},
    }


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (its cost, whatever else the machine runs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the operator exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--workers", type=int, default=16, help="client threads creating PruneJobs")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    server = EmulatorThread(sorted((ROOT / "crds").glob("*.yaml"))).start()
    namespace = "load"
    configuration = Configuration()
    configuration.host = server.url
    kube = Kube(configuration)
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    kubeconfig = Path(os.environ.get("TMPDIR", "/tmp")) / f"operator-load-{os.getpid()}.kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": server.url}}],
        "users": [{"name": "operator", "user": {"token": "operator"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "operator"}}],
    }))
    liveness = f"http://127.0.0.1:{free_port()}/healthz"
    operator_bin = Path(sys.executable).with_name("prune-operator")
    env = dict(os.environ, KUBERNETES_SERVICE_HOST="")  # not in a pod: use the kubeconfig
    log_path = kubeconfig.with_suffix(".log")
    log_file = log_path.open("w")
    proc = subprocess.Popen([str(operator_bin), "--kubeconfig", str(kubeconfig), "--namespace", namespace,
                             "--metrics-port", "0", "--liveness", liveness],
                            env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    try:
        wait_http(liveness, 60, proc)
        rss_idle = peak_rss(proc.pid)
        cpu_idle = cpu_seconds(proc.pid)
        emulator_cpu_idle = cpu_seconds(os.getpid())
        names = [f"pj-{i:04d}" for i in range(args.count)]
        started = time.monotonic()
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(lambda n: kube.request("POST", collection_path("pruning.dev/v1alpha1", "prunejobs",
                                                                          namespace), body=prunejob(n, namespace)),
                          names))
        created_in = time.monotonic() - started
        jobs_at = statuses_at = None
        peak = rss_idle
        while time.monotonic() - started < args.timeout:
            peak = max(peak, peak_rss(proc.pid))
            jobs = kube.get(collection_path("batch/v1", "jobs", namespace))["items"]
            if jobs_at is None and len(jobs) >= args.count:
                jobs_at = time.monotonic() - started
            if jobs_at is not None:
                items = kube.get(collection_path("pruning.dev/v1alpha1", "prunejobs", namespace))["items"]
                if all((i.get("status") or {}).get("phase") == "Pending" for i in items):
                    statuses_at = time.monotonic() - started
                    break
            time.sleep(0.2)
        peak = max(peak, peak_rss(proc.pid))
        cpu_load = cpu_seconds(proc.pid) - cpu_idle
        emulator_cpu = cpu_seconds(os.getpid()) - emulator_cpu_idle
        jobs = kube.get(collection_path("batch/v1", "jobs", namespace))["items"]
        requests = server.requests()
        job_posts = [r for r in requests if str(r.method.value) == "POST" and r.url.path.endswith("/jobs")]
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        server.stop()
        log_file.close()
        kubeconfig.unlink(missing_ok=True)

    figures = {
        "prunejobs": args.count,
        "seconds_to_create_all_prunejobs": round(created_in, 2),
        "seconds_until_every_prunejob_has_its_job": None if jobs_at is None else round(jobs_at, 2),
        "seconds_until_every_status_is_written": None if statuses_at is None else round(statuses_at, 2),
        "jobs_created": len(jobs),
        "job_create_requests": len(job_posts),
        "operator_cpu_seconds_for_the_load": round(cpu_load, 2),
        "emulator_and_client_cpu_seconds": round(emulator_cpu, 2),
        "operator_peak_rss_mib": round(peak / 2**20, 1),
        "operator_rss_before_load_mib": round(rss_idle / 2**20, 1),
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    for key, value in figures.items():
        print(f"{key:42s} {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    ok = figures["jobs_created"] == args.count and jobs_at is not None
    if not ok:
        print(f"FAILED: not every PruneJob got exactly one Job (operator log: {log_path})", file=sys.stderr)
    else:
        log_path.unlink(missing_ok=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
