"""The sweep report in the cluster, as pure manifests: a ConfigMap holding the
finished sweep (spec and status: the table) and a batch/v1 Job that runs
`prune-job sweep-report` on it, writing report.md, sweep.json and pareto.png
under `<template output>/sweep/` (uploaded like a checkpoint for s3://).

Both are owned by the sweep and share one deterministic name
(`<sweep>-report`, hashed when too long), so a second create is a 409. The
pod is a worker pod (prunejob.builders): the same image, user, read-only root
filesystem and scratch, the S3 credentials only from the template's Secret as
env; it needs no API access, so it mounts no ServiceAccount token.
"""
from __future__ import annotations

from typing import Any, Optional

import yaml

from prune_job import spec as api
from prune_job.sweep.grid import report_output
from prune_job.sources.uris import parse_uri
from prune_operator import parents
from prune_operator.config import OperatorConfig
from prune_operator.prunejob import builders

TABLE_FILE = "sweep.yaml"
SUFFIX = "-report"
RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}
DEADLINE_SECONDS = 1800
BACKOFF_LIMIT = 2


def report_name(sweep: str) -> str:
    """The Job's and the ConfigMap's name."""
    return builders.child_name(sweep, SUFFIX)


def report_uri(spec: api.PruneSweepSpec) -> str:
    return report_output(spec.template.output.uri)


def _metadata(sweep: dict[str, Any], label: str) -> dict[str, Any]:
    meta = sweep["metadata"]
    return {
        "name": report_name(meta["name"]),
        "namespace": meta["namespace"],
        "labels": {"app.kubernetes.io/name": "prune-job-sweep-report", "app.kubernetes.io/managed-by": "prune-operator",
                   label: meta["name"]},
        "ownerReferences": [parents.owner_reference(api.SWEEP_KIND, meta)],
    }


def table_config_map(sweep: dict[str, Any], status: api.PruneSweepStatus, label: str) -> dict[str, Any]:
    """The sweep as `prune-job sweep-report` reads it (what `kubectl get pjsw NAME -o yaml` shows)."""
    meta = sweep["metadata"]
    document = {"apiVersion": api.API_VERSION, "kind": api.SWEEP_KIND,
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "spec": sweep["spec"], "status": parents.status_document(status)}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(sweep, label),
            "data": {TABLE_FILE: yaml.safe_dump(document, sort_keys=False)}}


def report_args(config: OperatorConfig) -> list[str]:
    return ["sweep-report", f"{config.spec_dir}/{TABLE_FILE}", "--workdir", config.scratch_dir]


def report_job(sweep: dict[str, Any], spec: api.PruneSweepSpec, config: OperatorConfig, label: str) -> dict[str, Any]:
    """The batch/v1 Job that writes and uploads the report."""
    template = spec.template
    output = parse_uri(template.output.uri)
    claims = {output.authority: True} if output.scheme == "pvc" else {}
    volumes, mounts = builders.worker_volumes(config, report_name(sweep["metadata"]["name"]), claims)
    container = {
        "name": builders.CONTAINER,
        "image": config.job_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": list(builders.WORKER_COMMAND),
        "args": report_args(config),
        "env": builders.scratch_env(config) + builders.output_env(template, config),
        "resources": RESOURCES,
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": builders.container_security(),
    }
    pod = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # it writes files, never the API
        "securityContext": builders.pod_security(config),
        "containers": [container],
        "volumes": volumes,
    }
    meta = _metadata(sweep, label)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {"backoffLimit": BACKOFF_LIMIT, "activeDeadlineSeconds": DEADLINE_SECONDS,
                 "template": {"metadata": {"labels": dict(meta["labels"])}, "spec": pod}},
    }


def job_phase(job: Optional[dict[str, Any]]) -> Optional[tuple[str, Optional[str]]]:
    """(phase, message) of the report Job from its status; None when there is no Job."""
    if job is None:
        return None
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            if cond["type"] == "Complete":
                return "Succeeded", None
            return "Failed", " ".join(x for x in (cond.get("reason"), cond.get("message")) if x) or None
    return ("Running", None) if status.get("active") else ("Pending", None)
