"""The PruneSchedule handlers under real Kopf, in the operator as shipped
(main.run, which registers prune_operator.schedule.handlers), against the
stateful API emulator of tests/operator, with the PruneJob controller running
beside them. The clock is injected (conditions.now) and the resync ticks every
0.1 s, so that hours pass in seconds; the test plays the Job controller by
writing Job statuses."""
from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import Configuration

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "operator"))

from emulator import EmulatorThread  # noqa: E402
from operator_harness import TEST_AGENT, OperatorThread as Operator, operator_permissions, wait_for  # noqa: E402
from prune_operator import chartfiles, conditions, rbac  # noqa: E402
from prune_operator.config import OperatorConfig  # noqa: E402
from prune_operator.kube import Kube, collection_path, object_path  # noqa: E402
from prune_operator.schedule.plan import run_name  # noqa: E402

NS = "sched"
PJ = ("pruning.dev/v1alpha1", "prunejobs")
PJS = ("pruning.dev/v1alpha1", "pruneschedules")
TEMPLATE = {"spec": {"model": {"uri": "s3://models/tiny/"}, "pruning": {"method": "magnitude", "sparsity": 0.5},
                     "output": {"uri": "s3://pruned/tiny/", "credentialsSecret": "minio-credentials"},
                     "resources": {"gpus": 0, "cpu": "1", "memory": "1Gi"}}}
FAST = OperatorConfig(job_image="example.test/prune-job:test", schedule_tick_seconds=0.1)
# What the schedule controller does through the API: Kopf lists and watches PruneSchedules
# and the labelled PruneJobs, a sync GETs the schedule, patches its status, creates and
# deletes PruneJobs and posts core/v1 Events; owner references with blockOwnerDeletion
# need `update` on the owner's finalizers.
SCHEDULE_CONTROLLER_NEEDS = {
    *(("pruning.dev", "pruneschedules", verb, "") for verb in ("get", "list", "watch")),
    ("pruning.dev", "pruneschedules/status", "patch", ""),
    ("pruning.dev", "pruneschedules/finalizers", "update", ""),
    *(("pruning.dev", "prunejobs", verb, "") for verb in ("list", "watch", "create", "delete")),
    ("", "events", "create", ""),
}


class Clock:
    def __init__(self, t: datetime):
        self.t = t

    def __call__(self) -> datetime:
        return self.t


@pytest.fixture(scope="module")
def api_server():
    server = EmulatorThread([ROOT / "crds" / "prunejob.yaml", ROOT / "crds" / "pruneschedule.yaml"]).start()
    yield server
    server.stop()


@pytest.fixture
def kube(api_server):
    configuration = Configuration()
    configuration.host = api_server.url
    client = Kube(configuration)
    client.client.user_agent = TEST_AGENT  # to tell the test's own requests from the operator's
    yield client
    client.close()


@pytest.fixture
def clock(monkeypatch):
    fake = Clock(datetime.now(timezone.utc))
    monkeypatch.setattr(conditions, "now", fake)
    return fake


def create_schedule(kube: Kube, name: str, schedule: str, **spec: Any) -> dict[str, Any]:
    body = {"apiVersion": "pruning.dev/v1alpha1", "kind": "PruneSchedule",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"schedule": schedule, "jobTemplate": TEMPLATE, **spec}}
    return kube.request("POST", collection_path(*PJS, NS), body=body)


def get_schedule(kube: Kube, name: str) -> dict[str, Any]:
    return kube.get_or_none(object_path(*PJS, NS, name)) or {}


def prunejobs(kube: Kube, schedule: str) -> dict[str, dict[str, Any]]:
    items = kube.get(collection_path(*PJ, NS), query={"labelSelector": f"pruning.dev/schedule={schedule}"})["items"]
    return {o["metadata"]["name"]: o for o in items}


def complete_job(kube: Kube, name: str) -> None:
    """Play the Job controller: the PruneJob's Job succeeded."""
    condition = {"type": "Complete", "status": "True", "reason": "", "message": "",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}
    wait_for(lambda: kube.get_or_none(object_path("batch/v1", "jobs", NS, name)), what=f"Job {name}")
    kube.merge_patch(object_path("batch/v1", "jobs", NS, name, "status"),
                     {"status": {"active": 0, "succeeded": 1, "conditions": [condition]}})


def reasons(kube: Kube, name: str) -> list[str]:
    items = kube.get(collection_path("v1", "events", NS))["items"]
    return [e["reason"] for e in items if e["involvedObject"]["name"] == name]


def boundary(t: datetime, minutes: int = 5) -> datetime:
    """The first multiple of `minutes` strictly after t."""
    base = t.replace(second=0, microsecond=0)
    return base + timedelta(minutes=minutes - base.minute % minutes)


def test_schedule_runs_forbids_trims_history_and_survives_a_restart(api_server, kube, clock):
    operator = Operator(api_server.url, FAST).start()
    try:
        created = create_schedule(kube, "every5", "*/5 * * * *", concurrencyPolicy="Forbid",
                                  successfulJobsHistoryLimit=1)
        uid = created["metadata"]["uid"]
        t0 = datetime.fromisoformat(created["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
        b1 = boundary(t0)
        b2, b3, b4 = (b1 + timedelta(minutes=5 * i) for i in (1, 2, 3))
        status = wait_for(lambda: (get_schedule(kube, "every5").get("status") or {}).get("nextScheduleTime"),
                          what="the schedule's status")
        assert status == b1.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert prunejobs(kube, "every5") == {}

        # 1. on time: one PruneJob, owned by the schedule, and the PruneJob controller makes its Job
        clock.t = b1 + timedelta(seconds=2)
        first = run_name("every5", b1)
        wait_for(lambda: first in prunejobs(kube, "every5"), what="the first run")
        child = prunejobs(kube, "every5")[first]
        assert child["metadata"]["ownerReferences"][0]["uid"] == uid
        assert child["metadata"]["annotations"]["pruning.dev/scheduled-at"] == b1.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert child["spec"]["model"]["uri"] == TEMPLATE["spec"]["model"]["uri"]
        wait_for(lambda: kube.get_or_none(object_path("batch/v1", "jobs", NS, first)), what="its Job")
        wait_for(lambda: [a["name"] for a in get_schedule(kube, "every5")["status"].get("active", [])] == [first],
                 what="status.active")

        # 2. Forbid: the next time passes while the first still runs
        clock.t = b2 + timedelta(seconds=2)
        wait_for(lambda: "JobAlreadyActive" in reasons(kube, "every5"), what="JobAlreadyActive")
        time.sleep(0.5)
        assert list(prunejobs(kube, "every5")) == [first]

        # 3. the first finishes: the skipped run starts late (no deadline), history keeps 1 success
        complete_job(kube, first)
        second = run_name("every5", b2)
        wait_for(lambda: second in prunejobs(kube, "every5"), what="the late second run")
        complete_job(kube, second)
        wait_for(lambda: list(prunejobs(kube, "every5")) == [second], what="history trimmed to the newest success")
        wait_for(lambda: get_schedule(kube, "every5")["status"].get("lastSuccessfulTime"), what="lastSuccessfulTime")
        wait_for(lambda: get_schedule(kube, "every5")["status"].get("active", []) == [], what="no active run")
    finally:
        operator.stop()

    # 4. the operator is down across b3 and b4; a new one starts exactly one run (b4), never two
    clock.t = b4 + timedelta(seconds=30)
    operator = Operator(api_server.url, FAST).start()
    try:
        fourth = run_name("every5", b4)
        wait_for(lambda: fourth in prunejobs(kube, "every5"), what="the run missed during the restart")
        time.sleep(1.0)  # ~10 more ticks
        assert sorted(prunejobs(kube, "every5")) == sorted([second, fourth])
        assert get_schedule(kube, "every5")["status"]["lastScheduleTime"] == b4.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert run_name("every5", b3) not in prunejobs(kube, "every5")

        # no finalizers anywhere: a stopped operator never blocks deletion
        assert not get_schedule(kube, "every5")["metadata"].get("finalizers")
        assert not any(o["metadata"].get("finalizers") for o in prunejobs(kube, "every5").values())

        # 5. an invalid cron expression is refused, with the field and the reason
        create_schedule(kube, "broken", "61 * * * *")
        accepted = wait_for(lambda: next((c for c in (get_schedule(kube, "broken").get("status") or {}).get(
            "conditions", []) if c["type"] == "Accepted"), None), what="Accepted condition")
        assert accepted["status"] == "False" and accepted["reason"] == "InvalidSpec"
        assert "spec.schedule" in accepted["message"] and "out of range" in accepted["message"]
        wait_for(lambda: "InvalidSpec" in reasons(kube, "broken"), what="a Warning event")
        assert prunejobs(kube, "broken") == {}

        # 6. deleting the schedule deletes its PruneJobs (owner references)
        kube.request("DELETE", object_path(*PJS, NS, "every5"))
        wait_for(lambda: prunejobs(kube, "every5") == {}, what="children garbage-collected")
    finally:
        operator.stop()

    # 7. RBAC: every request the operator made is granted by the chart's rules, every schedule rule was used
    used = operator_permissions(api_server)
    assert used - chartfiles.permissions(rbac.RULES) == set()
    finalizers = {("pruning.dev", "pruneschedules/finalizers", "update", "")}  # checked by admission, not a request
    assert SCHEDULE_CONTROLLER_NEEDS - finalizers <= used


def test_the_one_rbac_list_grants_what_the_schedule_controller_needs():
    assert SCHEDULE_CONTROLLER_NEEDS <= chartfiles.permissions(rbac.RULES)


def test_replace_deletes_the_running_prunejob_and_its_job(api_server, kube, clock):
    operator = Operator(api_server.url, FAST).start()
    try:
        created = create_schedule(kube, "replace5", "*/5 * * * *", concurrencyPolicy="Replace")
        b1 = boundary(datetime.fromisoformat(created["metadata"]["creationTimestamp"].replace("Z", "+00:00")))
        b2 = b1 + timedelta(minutes=5)
        clock.t = b1 + timedelta(seconds=1)
        first, second = run_name("replace5", b1), run_name("replace5", b2)
        wait_for(lambda: kube.get_or_none(object_path("batch/v1", "jobs", NS, first)), what="the first run's Job")
        clock.t = b2 + timedelta(seconds=1)
        wait_for(lambda: list(prunejobs(kube, "replace5")) == [second], what="the first replaced by the second")
        wait_for(lambda: kube.get_or_none(object_path("batch/v1", "jobs", NS, first)) is None,
                 what="the replaced run's Job garbage-collected")
        status = get_schedule(kube, "replace5")["status"]
        assert [a["name"] for a in status["active"]] == [second]
        assert "SuccessfulDelete" in reasons(kube, "replace5")
    finally:
        operator.stop()
