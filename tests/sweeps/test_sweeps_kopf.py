"""The PruneSweep controller under real Kopf, in the operator as shipped
(main.run, with the PruneJob controller beside it), against the stateful API
emulator of tests/operator. The test plays the worker (it writes a child's
status.results) and the Job controller (it marks the child's Job Complete or
Failed); the PruneJob controller turns that into the child's phase, and the
sweep controller follows. Once the sweep is Complete the test plays the
kubelet for the report Job: it runs the Job's container command as a local
process against the nanio S3 server."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "operator"))

sys.path.insert(0, str(ROOT / "tests" / "storage"))

from emulator import EmulatorThread  # noqa: E402
from nanio_server import NanioServer  # noqa: E402
from operator_harness import (  # noqa: E402
    TEST_AGENT, OperatorThread as Operator, configuration, kubeconfig, operator_permissions, wait_for,
)
from prune_operator import chartfiles, rbac  # noqa: E402
from prune_operator.config import OperatorConfig  # noqa: E402
from prune_operator.kube import Kube, collection_path, object_path  # noqa: E402

NS = "sweeps"
PJ = ("pruning.dev/v1alpha1", "prunejobs")
PJSW = ("pruning.dev/v1alpha1", "prunesweeps")
TEMPLATE = {"model": {"uri": "s3://models/tiny/"}, "output": {"uri": "s3://pruned/grid/"},
            "resources": {"gpus": 0, "cpu": "1", "memory": "1Gi"}}
FAST = OperatorConfig(job_image="example.test/prune-job:test", resync_seconds=0.2)
CRDS = [ROOT / "crds" / f"{kind}.yaml" for kind in ("prunejob", "pruneschedule", "prunesweep")]


@pytest.fixture(scope="module")
def api_server():
    server = EmulatorThread(CRDS).start()
    yield server
    server.stop()


@pytest.fixture
def kube(api_server):
    client = Kube(configuration(api_server.url))
    client.client.user_agent = TEST_AGENT  # to tell the test's own requests from the operator's
    yield client
    client.close()


def children(kube: Kube, sweep: str) -> dict[str, dict[str, Any]]:
    items = kube.get(collection_path(*PJ, NS), query={"labelSelector": f"pruning.dev/sweep={sweep}"})["items"]
    return {o["metadata"]["name"]: o for o in items}


def sweep_status(kube: Kube, name: str) -> dict[str, Any]:
    return (kube.get_or_none(object_path(*PJSW, NS, name)) or {}).get("status") or {}


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def finish(kube: Kube, name: str, ok: bool = True, ppl: float = 10.0, sparsity: float = 0.5) -> None:
    """Play the worker (results) and the Job controller (Complete / Failed)."""
    wait_for(lambda: kube.get_or_none(object_path("batch/v1", "jobs", NS, name)), what=f"Job {name}")
    if ok:
        results = {"sparsity": sparsity, "perplexity": {"dense": 20.0, "sparse": 20.0 * (1 + ppl / 100),
                                                        "increasePercent": ppl},
                   "costPerMillionTokens": {"dense": 2.0, "sparse": 2.0 - sparsity},
                   "generation": {"sparse": {"tokensPerSecond": 100 * (1 + sparsity)}},
                   "artifact": {"bytes": int(1000 * (1 - sparsity))}}
        kube.merge_patch(object_path(*PJ, NS, name, "status"), {"status": {"results": results}})
    kind = "Complete" if ok else "Failed"
    cond = {"type": kind, "status": "True", "reason": "" if ok else "BackoffLimitExceeded",
            "message": "" if ok else "exit code 1", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    kube.merge_patch(object_path("batch/v1", "jobs", NS, name, "status"),
                     {"status": {"active": 0, "succeeded" if ok else "failed": 1, "conditions": [cond]}})
    phase = "Succeeded" if ok else "Failed"
    wait_for(lambda: (kube.get(object_path(*PJ, NS, name)).get("status") or {}).get("phase") == phase,
             what=f"{name} {phase}")


class Watcher:
    """Samples the children every 10 ms: the most ever unfinished at once."""

    def __init__(self, kube: Kube, sweep: str):
        self.kube, self.sweep, self.most, self.stop = kube, sweep, 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> "Watcher":
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop.set()
        self.thread.join(5)

    def run(self) -> None:
        while not self.stop.is_set():
            objs = children(self.kube, self.sweep).values()
            unfinished = [o for o in objs if (o.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
            self.most = max(self.most, len(unfinished))
            time.sleep(0.01)


def play_report_pod(job: dict[str, Any], config_map: dict[str, Any], root: Path, secret: dict[str, str]) -> None:
    """Run the report Job's container as the kubelet would: its ConfigMap mounted, its scratch and /tmp
    (here folders under `root`), its env, the credentials Secret's keys resolved from `secret`."""
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: root / m["name"] for m in container["volumeMounts"]}
    for path in mounts.values():
        path.mkdir(parents=True, exist_ok=True)
    spec_dir = next(path for where, path in mounts.items() if where == FAST.spec_dir)
    for name, text in config_map["data"].items():
        (spec_dir / name).write_text(text)

    def local(value: str) -> str:
        where = next((w for w in sorted(mounts, key=len, reverse=True) if value.startswith(w)), None)
        return value if where is None else str(mounts[where]) + value[len(where):]

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = local(item["value"])
        elif item["name"] in secret:
            env[item["name"]] = secret[item["name"]]
    assert container["command"] == ["prune-job"]
    done = subprocess.run([sys.executable, "-m", "prune_job", *map(local, container["args"])], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def events(kube: Kube, name: str, reason: str) -> list[dict[str, Any]]:
    items = kube.get(collection_path("v1", "events", NS))["items"]
    return [e for e in items if e["involvedObject"]["name"] == name and e["reason"] == reason]


def test_two_by_two_sweep_parallelism_restart_a_failed_child_and_the_report(api_server, kube, tmp_path):
    template = {**TEMPLATE, "output": {"uri": "s3://pruned/grid/", "credentialsSecret": "s3"}}
    body = {"apiVersion": "pruning.dev/v1alpha1", "kind": "PruneSweep", "metadata": {"name": "grid", "namespace": NS},
            "spec": {"template": template, "matrix": {"method": ["magnitude", "wanda"], "sparsity": [0.3, 0.5]},
                     "parallelism": 2, "select": {"objective": "maxSparsity", "maxPerplexityIncreasePercent": 25}}}
    names = ["grid-magnitude-30", "grid-magnitude-50", "grid-wanda-30", "grid-wanda-50"]
    with Watcher(kube, "grid") as watcher:
        operator = Operator(api_server.url, FAST).start()
        kube.request("POST", collection_path(*PJSW, NS), body=body)
        try:
            wait_for(lambda: len(children(kube, "grid")) == 1, what="the first child")
            time.sleep(0.6)  # a few resyncs: no second child before the dense perplexity is known
            assert sorted(children(kube, "grid")) == names[:1]
            first = children(kube, "grid")[names[0]]
            assert first["metadata"]["ownerReferences"][0]["kind"] == "PruneSweep"
            assert first["spec"]["output"]["uri"] == "s3://pruned/grid/grid-magnitude-30/"
            assert (first["spec"]["pruning"]["method"], first["spec"]["pruning"]["sparsity"]) == ("magnitude", 0.3)
            assert first["spec"]["evaluation"]["measureDenseFirst"] is True  # the one that measures dense
            assert sweep_status(kube, "grid")["done"] == "0/4"

            # play the worker: the dense perplexity, posted before pruning; the second child starts beside it
            kube.merge_patch(object_path(*PJ, NS, names[0], "status"), {"status": {"denseBaseline": {
                "perplexity": 20.0, "nll": 2.9957, "source": f"PruneJob {names[0]}"}}})
            wait_for(lambda: names[1] in children(kube, "grid"), what="the second child")
            second = children(kube, "grid")[names[1]]["spec"]["evaluation"]
            baseline = second["denseBaseline"]  # measured once, shared
            assert not second["measureDenseFirst"]
            assert baseline == {"perplexity": 20.0, "nll": 2.9957, "source": f"PruneJob {names[0]} (sweep grid)"}
            time.sleep(0.6)  # no third child while two run
            assert sorted(children(kube, "grid")) == names[:2]

            finish(kube, names[0], ppl=5.0, sparsity=0.3)
            wait_for(lambda: names[2] in children(kube, "grid"), what="the third child")
            assert children(kube, "grid")[names[2]]["spec"]["evaluation"]["denseBaseline"] == baseline
        finally:
            operator.stop()

        # while the operator is down the second child fails; a new operator creates the fourth, and no duplicate
        kube.merge_patch(object_path("batch/v1", "jobs", NS, names[1], "status"), {"status": {
            "active": 0, "failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                                      "message": "exit code 1",
                                                      "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
        operator = Operator(api_server.url, FAST).start()
        try:
            wait_for(lambda: names[3] in children(kube, "grid"), what="the fourth child after the restart")
            finish(kube, names[2], ppl=12.0, sparsity=0.3)
            finish(kube, names[3], ppl=20.0, sparsity=0.5)
            status = wait_for(lambda: (s := sweep_status(kube, "grid")) and condition(s, "Complete").get("status") == "True"
                              and s, what="Complete")
            report_job = wait_for(lambda: kube.get_or_none(object_path("batch/v1", "jobs", NS, "grid-report")),
                                  what="the report Job")
            table = kube.get(object_path("v1", "configmaps", NS, "grid-report"))
            s3 = NanioServer(tmp_path / "nanio").start()
            try:
                s3.make_bucket("pruned")
                play_report_pod(report_job, table, tmp_path / "pod", s3.env())
                from minio import Minio
                client = Minio(s3.endpoint.removeprefix("http://"), s3.env()["AWS_ACCESS_KEY_ID"],
                               s3.env()["AWS_SECRET_ACCESS_KEY"], secure=False)
                written = {o.object_name for o in client.list_objects("pruned", prefix="grid/sweep/", recursive=True)}
                png = client.get_object("pruned", "grid/sweep/pareto.png").read(8)
            finally:
                s3.stop()
            kube.merge_patch(object_path("batch/v1", "jobs", NS, "grid-report", "status"), {"status": {
                "active": 0, "succeeded": 1, "conditions": [{"type": "Complete", "status": "True",
                                                              "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
            reported = wait_for(lambda: (s := sweep_status(kube, "grid")) and (s.get("report") or {}).get("phase")
                                == "Succeeded" and s, what="the report written")
        finally:
            operator.stop()
    assert {"grid/sweep/report.md", "grid/sweep/sweep.json", "grid/sweep/pareto.png"} <= written
    assert png.startswith(b"\x89PNG")
    assert reported["report"] == {"job": "grid-report", "uri": "s3://pruned/grid/sweep/", "phase": "Succeeded"}
    assert condition(reported, "ReportWritten")["status"] == "True"
    assert len(events(kube, "grid", "ReportStarted")) == 1 and events(kube, "grid", "ReportWritten")
    pod = report_job["spec"]["template"]["spec"]
    assert report_job["metadata"]["ownerReferences"][0]["kind"] == "PruneSweep"
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["containers"][0]["image"] == FAST.job_image
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in pod["containers"][0]["env"] if "valueFrom" in e}
    assert secrets == {"s3"}
    assert watcher.most <= 2
    assert sorted(children(kube, "grid")) == names
    assert len(events(kube, "grid", "ChildCreated")) == 4  # each created once, restart included
    assert status["done"] == "4/4" and status["completed"] == status["total"] == 4
    rows = {r["child"]: r for r in status["rows"]}
    assert sorted(rows) == names and rows[names[1]]["phase"] == "Failed" and "exit code 1" in rows[names[1]]["message"]
    assert [rows[n]["phase"] for n in (names[0], names[2], names[3])] == ["Succeeded"] * 3
    assert rows[names[3]]["sparsity"] == 0.5 and rows[names[3]]["checkpointBytes"] == 500
    assert status["best"]["child"] == names[3] and "highest sparsity" in status["best"]["why"]
    assert condition(status, "Failed")["status"] == "False"
    assert events(kube, "grid", "ChildFailed")

    if shutil.which("kubectl"):  # the printer columns: Done, Best, Best PPL Δ%, Age
        table = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig(api_server.url, tmp_path, NS)), "get",
                                "pjsw"], capture_output=True, text=True, timeout=60)
        assert table.returncode == 0, table.stderr
        header, row = table.stdout.splitlines()[:2]
        assert header.split() == ["NAME", "DONE", "BEST", "BEST", "PPL", "Δ%", "AGE"]
        assert row.split()[:4] == ["grid", "4/4", names[3], "20"]

    # the same RBAC list covers every request
    used = operator_permissions(api_server)
    assert used - chartfiles.permissions(rbac.RULES) == set()
    assert {("pruning.dev", "prunesweeps/status", "patch", ""), ("pruning.dev", "prunejobs", "create", "")} <= used


def test_no_child_within_the_limits_names_the_closest(api_server, kube):
    body = {"apiVersion": "pruning.dev/v1alpha1", "kind": "PruneSweep", "metadata": {"name": "strict", "namespace": NS},
            "spec": {"template": TEMPLATE, "matrix": {"method": ["magnitude"], "sparsity": [0.3, 0.5]},
                     "parallelism": 2, "select": {"maxPerplexityIncreasePercent": 1}}}
    operator = Operator(api_server.url, FAST).start()
    try:
        kube.request("POST", collection_path(*PJSW, NS), body=body)
        wait_for(lambda: len(children(kube, "strict")) == 1, what="the child that measures dense")
        finish(kube, "strict-magnitude-30", ppl=3.0, sparsity=0.3)  # its results' dense figure starts the next
        finish(kube, "strict-magnitude-50", ppl=9.0, sparsity=0.5)
        status = wait_for(lambda: (s := sweep_status(kube, "strict")) and condition(s, "Complete").get("status") == "True"
                          and s, what="Complete")
    finally:
        operator.stop()
    assert status["best"].get("child") is None and status["best"]["closest"] == "strict-magnitude-30"
    assert "no child meets the limits" in status["best"]["why"]


def test_quality_gate_on_a_single_prunejob(api_server, kube, tmp_path):
    spec = {**TEMPLATE, "pruning": {"method": "magnitude", "sparsity": 0.5},
            "evaluation": {"gate": {"maxPerplexityIncreasePercent": 10, "minSparsity": 0.5}}}
    operator = Operator(api_server.url, FAST).start()
    try:
        kube.request("POST", collection_path(*PJ, NS), body={
            "apiVersion": "pruning.dev/v1alpha1", "kind": "PruneJob", "metadata": {"name": "gated", "namespace": NS},
            "spec": spec})
        finish(kube, "gated", ppl=14.0, sparsity=0.5)
        met = wait_for(lambda: condition(kube.get(object_path(*PJ, NS, "gated"))["status"], "QualityMet"),
                       what="QualityMet")
        if shutil.which("kubectl"):
            done = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig(api_server.url, tmp_path, NS)), "wait",
                                   "--for=condition=QualityMet=False", "pj/gated", "--timeout=20s"],
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
    finally:
        operator.stop()
    assert (met["status"], met["reason"]) == ("False", "LimitsExceeded")
    assert "perplexity +14.00% > 10%" in met["message"] and "sparsity 0.5000 >= 0.5" in met["message"]
    assert kube.get(object_path(*PJ, NS, "gated"))["status"]["phase"] == "Succeeded"  # the checkpoint is kept
    assert events(kube, "gated", "LimitsExceeded")
