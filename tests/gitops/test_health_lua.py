"""The Argo CD health checks, run as Argo CD runs them: Lua 5.1 (Argo's
gopher-lua speaks 5.1) with the object as the global `obj`, over the sample
objects of health_test.yaml (Argo CD's own test layout) and over statuses the
controller itself computes."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from prune_job.spec import PruneJobStatus, PruneSchedule, PruneSweep, parse_prunejob

ROOT = Path(__file__).resolve().parents[2]
CUSTOM = ROOT / "gitops" / "argocd" / "resource_customizations" / "pruning.dev"


def health(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    # Argo CD runs the script body; `return hs` at top level is its result.
    result = lua.execute((CUSTOM / kind / "health.lua").read_text())
    return dict(result.items())


def cases(kind: str):
    tests = yaml.safe_load((CUSTOM / kind / "health_test.yaml").read_text())["tests"]
    return [pytest.param(kind, t, id=f"{kind}-{Path(t['inputPath']).stem}") for t in tests]


@pytest.mark.parametrize("kind,case", cases("PruneJob") + cases("PruneSchedule") + cases("PruneSweep"))
def test_health_of_the_samples(kind, case):
    obj = yaml.safe_load((CUSTOM / kind / case["inputPath"]).read_text())
    assert health(kind, obj) == case["healthStatus"]


def test_samples_cover_every_phase_and_stale_generation():
    tests = yaml.safe_load((CUSTOM / "PruneJob" / "health_test.yaml").read_text())["tests"]
    seen = {}
    for t in tests:
        obj = yaml.safe_load((CUSTOM / "PruneJob" / t["inputPath"]).read_text())
        seen[(obj.get("status") or {}).get("phase"), Path(t["inputPath"]).stem] = t["healthStatus"]["status"]
    assert seen[("Succeeded", "succeeded")] == "Healthy"
    assert seen[("Failed", "failed")] == "Degraded"
    assert seen[("Pending", "pending")] == "Progressing"
    assert seen[("Running", "running")] == "Progressing"
    assert seen[("Suspended", "suspended")] == "Suspended"
    assert seen[("Succeeded", "stale_generation")] == "Progressing"


@pytest.mark.parametrize("kind", ["PruneJob", "PruneSchedule", "PruneSweep"])
def test_samples_are_valid_objects_of_the_api(kind):
    for path in sorted((CUSTOM / kind / "testdata").glob("*.yaml")):
        obj = yaml.safe_load(path.read_text())
        if kind == "PruneJob":
            parse_prunejob(obj)
            PruneJobStatus.model_validate(obj.get("status") or {})
        elif kind == "PruneSweep" and "lasso" not in str(obj["spec"]["matrix"]):  # invalid.yaml is refused on purpose
            PruneSweep.model_validate(obj)
        elif kind == "PruneSchedule":
            PruneSchedule.model_validate(obj)


def test_no_metadata_generation_is_not_stale():
    obj = yaml.safe_load((CUSTOM / "PruneJob" / "testdata" / "succeeded.yaml").read_text())
    del obj["metadata"]["generation"]
    assert health("PruneJob", obj)["status"] == "Healthy"


def test_failed_without_a_message_names_the_reason():
    obj = yaml.safe_load((CUSTOM / "PruneJob" / "testdata" / "failed.yaml").read_text())
    for c in obj["status"]["conditions"]:
        c["message"] = ""
    assert health("PruneJob", obj) == {"status": "Degraded", "message": "BackoffLimitExceeded"}


def test_unknown_phase_is_unknown():
    obj = yaml.safe_load((CUSTOM / "PruneJob" / "testdata" / "pending.yaml").read_text())
    obj["status"]["phase"] = "Exploded"
    assert health("PruneJob", obj)["status"] == "Unknown"


def test_argocd_cm_snippet_carries_the_same_lua():
    """The install snippet (a ConfigMap patch) must embed health.lua verbatim."""
    patch = yaml.safe_load((ROOT / "gitops" / "argocd" / "argocd-cm-patch.yaml").read_text())
    data = patch["data"]
    for kind in ("PruneJob", "PruneSchedule", "PruneSweep"):
        assert data[f"resource.customizations.health.pruning.dev_{kind}"] == (CUSTOM / kind / "health.lua").read_text()


def test_sweep_health_of_statuses_the_controller_computes():
    """The sweep's own plan, fed finished children, yields a status the Lua reads as Healthy / Degraded."""
    from datetime import datetime, timezone

    from prune_job.spec import PruneSweepStatus, parse_sweep_spec
    from prune_operator.parents import status_document
    from prune_operator.sweep.plan import Observed, reconcile

    obj = yaml.safe_load((CUSTOM / "PruneSweep" / "testdata" / "new.yaml").read_text())
    spec = parse_sweep_spec(obj["spec"])
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    names = ["smollm2-grid-sparsegpt-30", "smollm2-grid-sparsegpt-50", "smollm2-grid-wanda-30", "smollm2-grid-wanda-50"]
    for increase, expected in ((3.0, "Healthy"), (30.0, "Degraded")):
        done = [Observed(n, "Succeeded", {"sparsity": 0.5, "perplexity": {"increasePercent": increase}}) for n in names]
        plan = reconcile("smollm2-grid", spec, PruneSweepStatus(), done, now, 1)
        assert health("PruneSweep", {**obj, "status": status_document(plan.status)})["status"] == expected

