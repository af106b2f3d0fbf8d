"""Small helpers the operator tests share: manifests and API shortcuts."""
from __future__ import annotations

import copy
from typing import Any, Optional

from prune_operator.kube import Kube, collection_path, object_path

PJ = ("pruning.dev/v1alpha1", "prunejobs")


def prunejob(name: str, namespace: str, **spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": "s3://models/tiny-llama/"},
        "pruning": {"method": "magnitude", "sparsity": 0.5},
        "output": {"uri": "s3://pruned/tiny/", "credentialsSecret": "minio-credentials"},
        "resources": {"gpus": 1, "cpu": "4", "memory": "16Gi"},
    }
    for key, value in spec_overrides.items():
        spec[key] = value
    return {"apiVersion": "pruning.dev/v1alpha1", "kind": "PruneJob",
            "metadata": {"name": name, "namespace": namespace}, "spec": copy.deepcopy(spec)}


def create_prunejob(kube: Kube, manifest: dict[str, Any]) -> dict[str, Any]:
    ns = manifest["metadata"]["namespace"]
    return kube.request("POST", collection_path(*PJ, ns), body=manifest)


def get_prunejob(kube: Kube, namespace: str, name: str) -> Optional[dict[str, Any]]:
    return kube.get_or_none(object_path(*PJ, namespace, name))


def status_of(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return (get_prunejob(kube, namespace, name) or {}).get("status") or {}


def phase_of(kube: Kube, namespace: str, name: str) -> Optional[str]:
    return status_of(kube, namespace, name).get("phase")


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def jobs(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    return kube.get(collection_path("batch/v1", "jobs", namespace)).get("items") or []


def get_job(kube: Kube, namespace: str, name: str) -> Optional[dict[str, Any]]:
    return kube.get_or_none(object_path("batch/v1", "jobs", namespace, name))


def set_job_status(kube: Kube, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    """Play the Job controller: write a Job's status."""
    return kube.merge_patch(object_path("batch/v1", "jobs", namespace, name, "status"), {"status": status})


def events(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    return kube.get(collection_path("v1", "events", namespace)).get("items") or []


def job_condition(kind: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": "True", "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z"}


def requests_with_token(requests: list[Any], token: str) -> list[Any]:
    """The emulator's recorded requests made with this bearer token."""
    return [r for r in requests if r.headers.get("Authorization", "").lower() == f"bearer {token}".lower()]
