"""The examples users copy: each document is valid for what it is (PruneJob and
PruneSchedule by the API model and the CRD schema; Argo CD and Flux objects
point at paths that exist and carry chart values the chart's schema accepts),
and the GitOps rules hold: re-applying an unchanged PruneJob passes the CRD's
transition rules, a changed spec is refused with a message that says to
create a new PruneJob (evaluated with a CEL interpreter, as the API server does)."""
from __future__ import annotations

import copy
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import celpy
import helm_python as helm
import jsonschema
import pytest
import yaml

from prune_job.spec import parse_prunejob, parse_schedule_spec
from prune_operator.schedule.plan import next_time

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CRDS = {yaml.safe_load(p.read_text())["spec"]["names"]["kind"]: yaml.safe_load(p.read_text())
        for p in (ROOT / "crds").glob("*.yaml")}


def documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((str(path.relative_to(ROOT)), doc))
    return out


DOCS = documents()


def of_kind(kind: str) -> list[Any]:
    return [pytest.param(doc, id=f"{where}:{doc['metadata']['name'] if 'metadata' in doc else kind}")
            for where, doc in DOCS if doc.get("kind") == kind]


def crd_schema(kind: str) -> dict[str, Any]:
    return CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_every_example_kind_is_known():
    kinds = {doc["kind"] for _, doc in DOCS}
    assert kinds <= {"PruneJob", "PruneSchedule", "PruneSweep", "Application", "GitRepository", "HelmRelease",
                     "Kustomization"}
    assert {"PruneJob", "PruneSchedule", "PruneSweep", "Application", "HelmRelease", "Kustomization"} <= kinds


@pytest.mark.parametrize("doc", of_kind("PruneJob"))
def test_prunejobs_are_valid(doc):
    parse_prunejob(doc)
    jsonschema.Draft4Validator(crd_schema("PruneJob")).validate(doc)  # OpenAPI v3.0 bounds are draft-4 style


@pytest.mark.parametrize("doc", of_kind("PruneSchedule"))
def test_pruneschedules_are_valid(doc):
    spec = parse_schedule_spec(doc["spec"])
    jsonschema.Draft4Validator(crd_schema("PruneSchedule")).validate(doc)
    assert len(doc["metadata"]["name"]) <= 52
    assert next_time(spec, datetime(2026, 1, 1, tzinfo=timezone.utc)) > datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize("doc", of_kind("PruneSweep"))
def test_prunesweeps_are_valid(doc):
    from prune_job.spec import parse_sweep
    from prune_job.sweep.grid import plan_grid

    sweep = parse_sweep(doc)
    jsonschema.Draft4Validator(crd_schema("PruneSweep")).validate(doc)
    grid = plan_grid(sweep.metadata.name, sweep.spec.template, sweep.spec.matrix)
    assert grid.children and all(len(c.name) <= 63 for c in grid.children)


def test_nightly_example_runs_at_two_in_berlin():
    doc = yaml.safe_load((EXAMPLES / "pruneschedule-nightly.yaml").read_text())
    spec = parse_schedule_spec(doc["spec"])
    assert next_time(spec, datetime(2026, 1, 1, 12, tzinfo=timezone.utc)) == datetime(2026, 1, 2, 1, tzinfo=timezone.utc)
    assert next_time(spec, datetime(2026, 7, 1, 12, tzinfo=timezone.utc)) == datetime(2026, 7, 2, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(ROOT / "charts" / "prune-operator") as loaded:
        yield loaded


def chart_values(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] == "Application":
        return doc["spec"]["source"].get("helm", {}).get("valuesObject")
    return doc["spec"].get("values")


@pytest.mark.parametrize("doc", of_kind("Application") + of_kind("HelmRelease"))
def test_gitops_sources_exist_and_chart_values_are_accepted(chart, doc):
    path = doc["spec"]["source"]["path"] if doc["kind"] == "Application" else doc["spec"]["chart"]["spec"]["chart"]
    assert (ROOT / path).is_dir(), f"{path} does not exist in the repository"
    values = chart_values(doc)
    if (ROOT / path / "Chart.yaml").exists():
        chart.validate_schema(chart.merge_values(values or {}))
        assert chart.render(values or {}, name="prune-operator", namespace="prune-system")


@pytest.mark.parametrize("doc", [d for d in of_kind("Kustomization") if d.values[0]["apiVersion"].startswith("kustomize.toolkit")])
def test_flux_kustomization_points_at_a_kustomize_dir_and_never_forces(doc):
    path = ROOT / doc["spec"]["path"]
    assert (path / "kustomization.yaml").exists()
    assert doc["spec"].get("force", False) is False, "force would delete and recreate (rerun) a refused PruneJob"


def test_kustomize_resources_exist():
    for kustomization in EXAMPLES.rglob("kustomization.yaml"):
        for resource in yaml.safe_load(kustomization.read_text())["resources"]:
            assert (kustomization.parent / resource).exists()


def test_gitops_prunejobs_are_kept_when_removed_from_git():
    for path in (EXAMPLES / "gitops").rglob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        if doc.get("kind") == "PruneJob":
            annotations = doc["metadata"]["annotations"]
            assert annotations["argocd.argoproj.io/sync-options"] == "Prune=false"
            assert annotations["kustomize.toolkit.fluxcd.io/prune"] == "disabled"


# ---------------------------------------------------------------- immutability, as the API server checks it


def transition_failures(schema: dict[str, Any], old: Any, new: Any, path: str = "") -> Iterator[str]:
    """Messages of every CEL transition rule (one using oldSelf) that the change old → new breaks."""
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" not in rule["rule"]:
            continue
        program = env.program(env.compile(rule["rule"]))
        result = program.evaluate({"self": celpy.json_to_cel(new), "oldSelf": celpy.json_to_cel(old)})
        if not bool(result):
            yield f"{path}: {rule['message']}"
    if isinstance(old, dict) and isinstance(new, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name in old and name in new:
                yield from transition_failures(sub, old[name], new[name], f"{path}.{name}")


@pytest.fixture(scope="module")
def gitops_prunejob():
    return yaml.safe_load((EXAMPLES / "gitops" / "prunejobs" / "llama-8b-ft-r42-wanda-2of4.yaml").read_text())


def test_reapplying_an_unchanged_prunejob_is_accepted(gitops_prunejob):
    assert list(transition_failures(crd_schema("PruneJob"), gitops_prunejob, copy.deepcopy(gitops_prunejob))) == []


@pytest.mark.parametrize("change", [
    ("model", "uri", "s3://models/llama-8b-ft/r43/"),
    ("pruning", "sparsity", 0.6),
    ("output", "uri", "s3://pruned/elsewhere/"),
])
def test_a_changed_spec_is_refused_saying_to_create_a_new_prunejob(gitops_prunejob, change):
    section, field, value = change
    changed = copy.deepcopy(gitops_prunejob)
    changed["spec"][section][field] = value
    failures = list(transition_failures(crd_schema("PruneJob"), gitops_prunejob, changed))
    assert failures and all("create a new PruneJob" in f for f in failures)


def test_suspending_a_running_prunejob_is_allowed(gitops_prunejob):
    changed = copy.deepcopy(gitops_prunejob)
    changed["spec"]["runPolicy"] = {"suspend": True}
    old = copy.deepcopy(gitops_prunejob)
    old["spec"]["runPolicy"] = {"suspend": False}
    assert list(transition_failures(crd_schema("PruneJob"), old, changed)) == []


def test_a_schedule_may_change():
    """PruneSchedules are mutable (as CronJobs): Git edits apply to future runs."""
    schema = crd_schema("PruneSchedule")
    doc = yaml.safe_load((EXAMPLES / "gitops" / "prunejobs" / "nightly-schedule.yaml").read_text())
    changed = copy.deepcopy(doc)
    changed["spec"]["schedule"] = "0 3 * * *"
    changed["spec"]["jobTemplate"]["spec"]["pruning"]["sparsity"] = 0.6
    assert list(transition_failures(schema, doc, changed)) == []
