"""One PruneJob over several processes and pods: what the Job gains for torch.distributed.

- One pod, one rank: today's Job, the plain `prune-job run` command.
- One pod, N ranks (N GPUs, or `processesPerNode` on CPU): the same Job runs
  `torchrun --standalone` with N local ranks.
- Several pods: an Indexed Job (`completionMode: Indexed`, parallelism =
  completions = nodes) whose pods are `<job>-<index>.<service>` under a headless
  Service; every pod runs torchrun with the node rank from its completion index
  and the rendezvous endpoint at pod 0's stable name.

torchrun reads its settings from the `PET_*` variables, the names Kubeflow
Trainer's PyTorch runtime uses (docs/scaling.md).
"""
from __future__ import annotations

from typing import Any

from prune_job import spec as api

RENDEZVOUS_PORT = 29500
LAUNCHER = ["torchrun"]
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
SHM_VOLUME = {"name": "dshm", "emptyDir": {"medium": "Memory"}}
SHM_MOUNT = {"name": "dshm", "mountPath": "/dev/shm"}


def distributed(spec: api.PruneJobSpec) -> bool:
    return spec.resources.world_size > 1


def command(spec: api.PruneJobSpec, worker: list[str]) -> list[str]:
    return list(LAUNCHER) if distributed(spec) else worker


def args(spec: api.PruneJobSpec, worker_args: list[str]) -> list[str]:
    """torchrun's own flags, then the worker module and its arguments."""
    if not distributed(spec):
        return worker_args
    own = ["--standalone"] if spec.resources.nodes == 1 else []
    return own + ["--max-restarts=0", "-m", "prune_job", *worker_args]


def env(spec: api.PruneJobSpec, rendezvous_host: str) -> list[dict[str, Any]]:
    """PET_NNODES, PET_NPROC_PER_NODE; on several pods PET_NODE_RANK (the completion index),
    PET_MASTER_ADDR and PET_MASTER_PORT (pod 0)."""
    if not distributed(spec):
        return []
    res = spec.resources
    out: list[dict[str, Any]] = [
        {"name": "PET_NNODES", "value": str(res.nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(res.ranks_per_node)},
    ]
    if res.nodes > 1:
        out += [
            {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}},
            {"name": "PET_MASTER_ADDR", "value": rendezvous_host},
            {"name": "PET_MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
        ]
    return out


def shared_memory_needed(spec: api.PruneJobSpec) -> bool:
    """NCCL between the GPUs of one pod needs more /dev/shm than a container's default 64 MiB."""
    return spec.resources.gpus > 0 and spec.resources.ranks_per_node > 1


def indexed(spec: api.PruneJobSpec) -> dict[str, Any]:
    """The Job spec fields of a multi-pod PruneJob (none for one pod)."""
    nodes = spec.resources.nodes
    if nodes == 1:
        return {}
    return {"completionMode": "Indexed", "completions": nodes, "parallelism": nodes}


def service(metadata: dict[str, Any], selector: dict[str, str]) -> dict[str, Any]:
    """Headless: DNS names for the pods only, published before they are ready (rendezvous comes first)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "clusterIP": "None",
            "selector": dict(selector),
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }
