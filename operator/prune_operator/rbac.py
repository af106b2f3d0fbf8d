"""Every permission the controller needs (every controller: PruneJob,
PruneSchedule, PruneSweep), in one list: the Helm chart's rules are generated from it
(chartfiles.py), and tests check that it grants every request the operator
makes against the API emulator.

Why each is here:
- prunejobs: watch and index (Kopf), patch (Kopf's progress annotations);
  create and delete: the schedule controller's runs (and their history) and
  the sweep controller's children.
- prunejobs/status: the controller writes phase/conditions. Holding get+patch
  on prunejobs/status is also what lets it grant them to the worker's Role
  (RBAC forbids granting what one does not hold).
- pruneschedules, prunesweeps: watch and index (Kopf), get (a sync reads it
  fresh); their status: patch.
- prunejobs/finalizers, pruneschedules/finalizers, prunesweeps/finalizers: update, needed to set
  blockOwnerDeletion on children (OwnerReferencesPermissionEnforcement).
- serviceaccounts, roles, rolebindings, configmaps: the worker's identity and
  spec, created per PruneJob (a ConfigMap also holds a finished sweep's table
  for its report Job); services: the headless Service of a multi-pod
  PruneJob (docs/scaling.md).
- jobs: create, watch, and patch (runPolicy.suspend); a sweep's report Job.
- pods: read a failed pod's termination reason (e.g. OOMKilled).
- events: the controllers (conditions.post_events) and Kopf post Events.
- namespaces, customresourcedefinitions: Kopf's discovery and namespace watch.
"""
from __future__ import annotations

from typing import Any

from prune_job import spec as api

RULES: list[dict[str, Any]] = [
    {"apiGroups": [api.GROUP], "resources": [api.PLURAL],
     "verbs": ["get", "list", "watch", "patch", "create", "delete"]},
    {"apiGroups": [api.GROUP], "resources": [f"{api.PLURAL}/status"], "verbs": ["get", "patch", "update"]},
    {"apiGroups": [api.GROUP], "resources": [f"{api.PLURAL}/finalizers"], "verbs": ["update"]},
    {"apiGroups": [api.GROUP], "resources": [api.SCHEDULE_PLURAL], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [api.GROUP], "resources": [f"{api.SCHEDULE_PLURAL}/status"], "verbs": ["patch"]},
    {"apiGroups": [api.GROUP], "resources": [f"{api.SCHEDULE_PLURAL}/finalizers"], "verbs": ["update"]},
    {"apiGroups": [api.GROUP], "resources": [api.SWEEP_PLURAL], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [api.GROUP], "resources": [f"{api.SWEEP_PLURAL}/status"], "verbs": ["patch"]},
    {"apiGroups": [api.GROUP], "resources": [f"{api.SWEEP_PLURAL}/finalizers"], "verbs": ["update"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create", "patch"]},
    {"apiGroups": [""], "resources": ["serviceaccounts", "configmaps", "services"], "verbs": ["get", "create"]},
    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["get", "create"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["get", "list", "watch"]},
]


def allows(rules: list[dict[str, Any]], verb: str, group: str, resource: str, name: str | None = None) -> bool:
    """Whether RBAC `rules` allow `verb` on `group`/`resource` (e.g. "prunejobs/status"), for object `name`."""
    for rule in rules:
        if group not in rule.get("apiGroups", []) and "*" not in rule.get("apiGroups", []):
            continue
        if resource not in rule.get("resources", []) and "*" not in rule.get("resources", []):
            continue
        if verb not in rule.get("verbs", []) and "*" not in rule.get("verbs", []):
            continue
        names = rule.get("resourceNames")
        if names and name not in names:
            continue
        return True
    return False
