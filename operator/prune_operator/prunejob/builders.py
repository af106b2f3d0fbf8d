"""Pure manifest builders: a PruneJob in, Kubernetes objects (dicts) out.

No API calls here; handlers.py sends what these return. Every child is
owned by its PruneJob (garbage-collected with it) and has a deterministic
name, so creating it twice is a 409 that means "already done".
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Optional

import yaml

from prune_job import exit_codes
from prune_job import spec as api
from prune_job.sources.uris import DEFAULT_PVC_ROOT, parse_uri
from prune_operator.config import OperatorConfig
from prune_operator.prunejob import ranks

LABEL_PRUNEJOB = f"{api.GROUP}/prunejob"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
ANNOTATION_SUSPENDED_BY = f"{api.GROUP}/suspended-by"  # "operator": we suspended it, so we may resume it
SPEC_FILE = "prunejob.yaml"
CONTAINER = "prune-job"
WORKER_COMMAND = ["prune-job"]  # the job image's ENTRYPOINT (checked against job_image/Dockerfile)
PVC_ROOT = DEFAULT_PVC_ROOT  # where the worker finds pvc:// claims
GPU_RESOURCE = "nvidia.com/gpu"
# Secret key -> environment variable of the worker (the S3 client's settings).
SECRET_ENV = {
    "accessKey": ("AWS_ACCESS_KEY_ID", False),
    "secretKey": ("AWS_SECRET_ACCESS_KEY", False),
    "endpoint": ("AWS_ENDPOINT_URL", True),
    "region": ("AWS_REGION", True),
}
MAX_NAME = 63  # a Job's name ends up in a label value


@dataclass(frozen=True)
class Owner:
    """The PruneJob as its children refer to it."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def from_body(cls, body: Any) -> "Owner":
        meta = body["metadata"]
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


def child_name(name: str, suffix: str = "") -> str:
    """`name` + `suffix`, cut to a DNS label with a stable hash when too long."""
    full = f"{name}{suffix}"
    if len(full) <= MAX_NAME:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    return f"{full[: MAX_NAME - 9].rstrip('-.')}-{digest}"


def job_name(owner: Owner) -> str:
    return child_name(owner.name)


def worker_name(owner: Owner) -> str:
    """ServiceAccount, Role, RoleBinding and ConfigMap share this name."""
    return child_name(owner.name, "-prune-job")


def service_name(owner: Owner) -> str:
    """The headless Service of a multi-pod PruneJob (a DNS-1035 label: starts with a letter)."""
    return child_name(owner.name if owner.name[:1].isalpha() else f"pj-{owner.name}", "-ranks")


def rendezvous_host(owner: Owner) -> str:
    """Pod 0's stable name: an Indexed Job names its pods <job>-<index>, under the Service's subdomain."""
    return f"{job_name(owner)}-0.{service_name(owner)}"


def labels(owner: Owner) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "prune-job",
        "app.kubernetes.io/managed-by": "prune-operator",
        LABEL_PRUNEJOB: child_name(owner.name),
    }


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(owner: Owner, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner),
        "ownerReferences": [owner_reference(owner)],
        **extra,
    }


# ---------------------------------------------------------------- identity of the worker


def service_account(owner: Owner) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(owner, worker_name(owner))}


def status_rules(owner: Owner) -> list[dict[str, Any]]:
    """All the worker may do: read and patch the status of its own PruneJob."""
    return [
        {
            "apiGroups": [api.GROUP],
            "resources": [f"{api.PLURAL}/status"],
            "resourceNames": [owner.name],
            "verbs": ["get", "patch"],
        }
    ]


def role(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(owner, worker_name(owner)),
        "rules": status_rules(owner),
    }


def role_binding(owner: Owner) -> dict[str, Any]:
    name = worker_name(owner)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(owner, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
    }


def spec_config_map(owner: Owner, spec: dict[str, Any]) -> dict[str, Any]:
    """The PruneJob document the worker reads (`prune-job run FILE`)."""
    document = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": owner.name, "namespace": owner.namespace},
        "spec": spec,
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, worker_name(owner)),
        "data": {SPEC_FILE: yaml.safe_dump(document, sort_keys=False)},
    }


# ---------------------------------------------------------------- the Job


def worker_args(config: OperatorConfig) -> list[str]:
    return ["run", f"{config.spec_dir}/{SPEC_FILE}", "--report", "kubernetes", "--workdir", config.scratch_dir]


def scratch_env(config: OperatorConfig) -> list[dict[str, Any]]:
    """Where a worker pod (read-only root) keeps its home, caches and temporary files, and the operator's extra env."""
    scratch = config.scratch_dir
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": f"{scratch}/home"},
        {"name": "XDG_CACHE_HOME", "value": f"{scratch}/cache"},
        {"name": "HF_HOME", "value": f"{scratch}/cache/huggingface"},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "PRUNE_JOB_PVC_ROOT", "value": PVC_ROOT},
    ]
    return env + [{"name": k, "value": v} for k, v in sorted(config.extra_env.items())]


def output_env(spec: api.PruneJobSpec, config: OperatorConfig) -> list[dict[str, Any]]:
    """The S3 client's settings for spec.output: the operator's endpoint, then the credentials Secret's keys."""
    env: list[dict[str, Any]] = []
    if config.s3_endpoint:
        # Listed before the Secret's optional `endpoint`: the kubelet skips a missing
        # optional key, so this default stands unless the Secret names its own.
        env.append({"name": "AWS_ENDPOINT_URL", "value": config.s3_endpoint})
    secret = spec.output.credentials_secret
    if secret:
        for key, (variable, optional) in SECRET_ENV.items():
            ref: dict[str, Any] = {"name": secret, "key": key}
            if optional:
                ref["optional"] = True
            env.append({"name": variable, "valueFrom": {"secretKeyRef": ref}})
    return env


def _env(owner: Owner, spec: api.PruneJobSpec, config: OperatorConfig) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "PRUNEJOB_NAME", "value": owner.name},
        {"name": "PRUNEJOB_NAMESPACE", "value": owner.namespace},
        *scratch_env(config),
    ]
    env += ranks.env(spec, rendezvous_host(owner))
    if spec.model.credentials_secret:  # hf:// token for gated models; read by huggingface_hub, never printed
        env.append({"name": "HF_TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": spec.model.credentials_secret, "key": "token"}}})
    return env + output_env(spec, config)


def _resources(spec: api.PruneJobSpec) -> dict[str, Any]:
    wanted = spec.resources
    requests: dict[str, Any] = {"cpu": wanted.cpu, "memory": wanted.memory}
    limits: dict[str, Any] = {"memory": wanted.memory}
    if wanted.gpus:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(wanted.gpus)
    return {"requests": requests, "limits": limits}


def pvc_claims(spec: api.PruneJobSpec) -> dict[str, bool]:
    """Claims named by pvc:// URIs -> whether the worker writes to it."""
    readers = [spec.model.uri, spec.calibration.uri, spec.evaluation.perplexity.uri]
    claims: dict[str, bool] = {}
    for uri, writes in [(u, False) for u in readers] + [(spec.output.uri, True)]:
        parsed = parse_uri(uri)
        if parsed.scheme == "pvc":
            claims[parsed.authority] = claims.get(parsed.authority, False) or writes
    return claims


def worker_volumes(config: OperatorConfig, config_map: str, claims: dict[str, bool],
                   shared_memory: bool = False) -> tuple[list[dict], list[dict]]:
    """A worker pod's volumes and mounts: its document (a ConfigMap, read-only), scratch, /tmp
    (the root filesystem is read-only) and the pvc:// claims (read-only unless written)."""
    scratch: dict[str, Any] = {"sizeLimit": config.scratch_size_limit} if config.scratch_size_limit else {}
    volumes = [
        {"name": "spec", "configMap": {"name": config_map}},
        {"name": "scratch", "emptyDir": scratch},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts = [
        {"name": "spec", "mountPath": config.spec_dir, "readOnly": True},
        {"name": "scratch", "mountPath": config.scratch_dir},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if shared_memory:
        volumes.append(ranks.SHM_VOLUME)
        mounts.append(ranks.SHM_MOUNT)
    for i, (claim, writes) in enumerate(sorted(claims.items())):
        volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": not writes}})
        mounts.append({"name": f"pvc-{i}", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": not writes})
    return volumes, mounts


def _volumes(spec: api.PruneJobSpec, config: OperatorConfig, owner: Owner) -> tuple[list[dict], list[dict]]:
    return worker_volumes(config, worker_name(owner), pvc_claims(spec), ranks.shared_memory_needed(spec))


def _container(owner: Owner, spec: api.PruneJobSpec, config: OperatorConfig, mounts: list[dict]) -> dict[str, Any]:
    return {
        "name": CONTAINER,
        "image": config.job_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ranks.command(spec, list(WORKER_COMMAND)),
        "args": ranks.args(spec, worker_args(config)),
        "env": _env(owner, spec, config),
        "resources": _resources(spec),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security(),
    }


def container_security() -> dict[str, Any]:
    """Every worker container: non-root, read-only root filesystem, no privilege, no capability."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_security(config: OperatorConfig) -> dict[str, Any]:
    """Every worker pod: the configured non-root user, the runtime's default seccomp profile."""
    return {
        "runAsNonRoot": True,
        "runAsUser": config.run_as_user,
        "runAsGroup": config.run_as_user,
        "fsGroup": config.run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_spec(owner: Owner, spec: api.PruneJobSpec, config: OperatorConfig) -> dict[str, Any]:
    volumes, mounts = _volumes(spec, config, owner)
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # also what podFailurePolicy requires
        "terminationGracePeriodSeconds": spec.run_policy.termination_grace_period_seconds,
        "serviceAccountName": worker_name(owner),
        "automountServiceAccountToken": True,
        "securityContext": pod_security(config),
        "containers": [_container(owner, spec, config, mounts)],
        "volumes": volumes,
    }
    if spec.resources.node_selector:
        pod["nodeSelector"] = dict(spec.resources.node_selector)
    if spec.resources.tolerations:
        pod["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.resources.tolerations]
    if spec.run_policy.priority_class_name:
        pod["priorityClassName"] = spec.run_policy.priority_class_name
    if spec.resources.nodes > 1:
        pod["subdomain"] = service_name(owner)  # stable names <job>-<index>.<service>
    return pod


def job(owner: Owner, spec: api.PruneJobSpec, config: OperatorConfig) -> dict[str, Any]:
    """The batch/v1 Job. Created suspended when the user asks (runPolicy.suspend;
    marked as ours so that we may resume it) or when Kueue admits it (queueName;
    Kueue alone un-suspends it)."""
    policy = spec.run_policy
    meta = _metadata(owner, job_name(owner))
    if policy.queue_name:
        meta["labels"][LABEL_QUEUE] = policy.queue_name
    if policy.suspend:
        meta["annotations"] = {ANNOTATION_SUSPENDED_BY: "operator"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": policy.backoff_limit,
            "activeDeadlineSeconds": policy.active_deadline_seconds,
            "ttlSecondsAfterFinished": policy.ttl_seconds_after_finished,
            "suspend": bool(policy.suspend or policy.queue_name),
            "podFailurePolicy": pod_failure_policy(),
            **ranks.indexed(spec),
            "template": {"metadata": {"labels": labels(owner)}, "spec": _pod_spec(owner, spec, config)},
        },
    }


def pod_failure_policy() -> dict[str, Any]:
    """Disruptions (preemption, eviction, drain: pod condition DisruptionTarget) and a SIGTERM'd worker
    (exit_codes.INTERRUPTED, its journal durable) do not count against backoffLimit; a bad spec or a
    permanent failure fails the Job at once; any other failure counts (docs/resume.md)."""
    return {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                              "values": list(exit_codes.PERMANENT_CODES)}},
        {"action": "Ignore", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                             "values": [exit_codes.INTERRUPTED]}},
    ]}


def children(owner: Owner, raw_spec: dict[str, Any], spec: api.PruneJobSpec, config: OperatorConfig) -> list[dict]:
    """Everything a PruneJob needs, in creation order (the Job last: its pod
    needs the others)."""
    return [
        service_account(owner),
        role(owner),
        role_binding(owner),
        spec_config_map(owner, raw_spec),
        *([ranks.service(_metadata(owner, service_name(owner)), labels(owner))] if spec.resources.nodes > 1 else []),
        job(owner, spec, config),
    ]


def suspend_patch(job_body: Any, want_suspended: bool, queued: bool) -> Optional[dict[str, Any]]:
    """The merge patch that makes an existing Job follow runPolicy.suspend, or
    None. We never resume a Job we did not suspend (Kueue's, or someone else's);
    for a queued Job we only drop our mark and let Kueue re-admit it."""
    suspended = bool((job_body.get("spec") or {}).get("suspend"))
    ours = ((job_body.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_SUSPENDED_BY) == "operator"
    if want_suspended and not ours:
        return {"metadata": {"annotations": {ANNOTATION_SUSPENDED_BY: "operator"}}, "spec": {"suspend": True}}
    if not want_suspended and ours:
        patch: dict[str, Any] = {"metadata": {"annotations": {ANNOTATION_SUSPENDED_BY: None}}}
        if suspended and not queued:
            patch["spec"] = {"suspend": False}
        return patch
    return None

