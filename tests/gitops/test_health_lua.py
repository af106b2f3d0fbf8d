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

from prune_job.spec import PruneJobStatus, PruneSchedule, parse_prunejob

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


@pytest.mark.parametrize("kind,case", cases("PruneJob") + cases("PruneSchedule"))
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


@pytest.mark.parametrize("kind", ["PruneJob", "PruneSchedule"])
def test_samples_are_valid_objects_of_the_api(kind):
    for path in sorted((CUSTOM / kind / "testdata").glob("*.yaml")):
        obj = yaml.safe_load(path.read_text())
        if kind == "PruneJob":
            parse_prunejob(obj)
            PruneJobStatus.model_validate(obj.get("status") or {})
        else:
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
    for kind in ("PruneJob", "PruneSchedule"):
        assert data[f"resource.customizations.health.pruning.dev_{kind}"] == (CUSTOM / kind / "health.lua").read_text()
