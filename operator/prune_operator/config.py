"""The operator's own settings: one typed object, built once from the command
line and environment in main.py and handed to handlers through Kopf's memo."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Optional

DEFAULT_JOB_IMAGE = "ghcr.io/prune-operator/prune-job:0.1.0"


@dataclass(frozen=True)
class OperatorConfig:
    job_image: str = DEFAULT_JOB_IMAGE
    image_pull_policy: str = "IfNotPresent"
    # In-pod paths of the worker (its command line: prunejob.builders.worker_args).
    spec_dir: str = "/etc/prune-job"
    scratch_dir: str = "/scratch"
    run_as_user: int = 1000
    scratch_size_limit: Optional[str] = None  # emptyDir sizeLimit, e.g. "200Gi"
    extra_env: Mapping[str, str] = field(default_factory=dict)  # e.g. proxies; never secrets
    s3_endpoint: Optional[str] = None  # default AWS_ENDPOINT_URL when the credentials Secret has no `endpoint`
    retry_delay: float = 5.0  # seconds before a handler that met API trouble runs again
    resync_seconds: float = 60.0  # how often unfinished PruneJobs are re-synced from their Jobs
    schedule_tick_seconds: float = 10.0  # how often every PruneSchedule is synced: what starts runs on time
    # Allow-lists (policy.py); empty: no restriction.
    allowed_secrets: tuple[str, ...] = ()
    allowed_priority_classes: tuple[str, ...] = ()
    allowed_node_selectors: tuple[str, ...] = ()  # "key=value" or "key=*"
    allowed_toleration_keys: tuple[str, ...] = ()  # "*": also a toleration without a key

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "OperatorConfig":
        return cls(
            job_image=environ.get("PRUNE_OPERATOR_JOB_IMAGE", DEFAULT_JOB_IMAGE),
            image_pull_policy=environ.get("PRUNE_OPERATOR_IMAGE_PULL_POLICY", "IfNotPresent"),
            scratch_size_limit=environ.get("PRUNE_OPERATOR_SCRATCH_SIZE_LIMIT") or None,
            s3_endpoint=environ.get("PRUNE_OPERATOR_S3_ENDPOINT") or None,
            allowed_secrets=_names(environ.get("PRUNE_OPERATOR_ALLOWED_SECRETS")),
            allowed_priority_classes=_names(environ.get("PRUNE_OPERATOR_ALLOWED_PRIORITY_CLASSES")),
            allowed_node_selectors=_names(environ.get("PRUNE_OPERATOR_ALLOWED_NODE_SELECTORS")),
            allowed_toleration_keys=_names(environ.get("PRUNE_OPERATOR_ALLOWED_TOLERATION_KEYS")),
        )


def _names(text: Optional[str]) -> tuple[str, ...]:
    """A comma-separated list (as the chart writes it); blanks dropped."""
    return tuple(item.strip() for item in (text or "").split(",") if item.strip())
