"""What a PruneJob may use, as the operator's configuration allows (Helm values `policy.*` →
environment → OperatorConfig). Each list is optional: empty means no restriction.

- credential Secrets: a PruneJob's Job reads `spec.output.credentialsSecret` from its own
  namespace, so whoever may create PruneJobs there may have any Secret of that namespace read into
  a pod; `allowed_secrets` narrows it to named ones;
- priority classes (`spec.runPolicy.priorityClassName`);
- node selectors (`spec.resources.nodeSelector`): `key=value` pairs, or `key=*` for any value;
- tolerations (`spec.resources.tolerations`): by key; `*` also allows a toleration without a key
  (which tolerates every taint).
"""
from __future__ import annotations

from prune_job import spec as api
from prune_operator.config import OperatorConfig

Problems = list[tuple[str, str]]


def _listing(allowed: tuple[str, ...]) -> str:
    return ", ".join(allowed)


def policy_problems(spec: api.PruneJobSpec, config: OperatorConfig) -> Problems:
    """The fields that use what the operator's configuration does not allow, or []."""
    problems: Problems = []
    secret = spec.output.credentials_secret
    if secret and config.allowed_secrets and secret not in config.allowed_secrets:
        problems.append(("spec.output.credentialsSecret",
                         f"Secret {secret!r} is not among the operator's allowed credential Secrets "
                         f"({_listing(config.allowed_secrets)})"))
    priority = spec.run_policy.priority_class_name
    if priority and config.allowed_priority_classes and priority not in config.allowed_priority_classes:
        problems.append(("spec.runPolicy.priorityClassName",
                         f"{priority!r} is not an allowed priority class ({_listing(config.allowed_priority_classes)})"))
    if config.allowed_node_selectors:
        for key, value in sorted(spec.resources.node_selector.items()):
            if f"{key}={value}" not in config.allowed_node_selectors and f"{key}=*" not in config.allowed_node_selectors:
                problems.append((f"spec.resources.nodeSelector.{key}",
                                 f"{key}={value} is not allowed ({_listing(config.allowed_node_selectors)})"))
    if config.allowed_toleration_keys:
        for i, t in enumerate(spec.resources.tolerations):
            key = t.key or "*"
            if key not in config.allowed_toleration_keys:
                what = f"key {t.key!r}" if t.key else "a toleration without a key (tolerates every taint)"
                problems.append((f"spec.resources.tolerations[{i}]",
                                 f"{what} is not allowed ({_listing(config.allowed_toleration_keys)})"))
    return problems
