"""The controller acts only on objects it owns. A child found by name (ServiceAccount, Role,
RoleBinding, ConfigMap, Job) is used or changed only when one of its ownerReferences carries the
PruneJob's uid; a same-named object that is not ours is never adopted or patched. Creation meets
such an object as a 409: `check_owned` then reads it and says whose it is.

- owned by this PruneJob: fine (a repeat of an earlier create);
- owned by an earlier PruneJob of the same name (deleted, its children not yet garbage
  collected): `kopf.TemporaryError`, try again once the garbage collector has removed it;
- anything else (no owner, another owner, another kind of owner): `Conflict`, which fails the
  PruneJob with a condition naming the object.
"""
from __future__ import annotations

from typing import Any, Mapping

import kopf

from prune_job import spec as api
from prune_operator.kube import PLURALS, Kube, object_path

GC_RETRY_SECONDS = 5.0


class Conflict(Exception):
    """A same-named object that this PruneJob does not own; the message names it."""

    def __init__(self, kind: str, namespace: str, name: str, whose: str):
        self.kind, self.namespace, self.name = kind, namespace, name
        super().__init__(f"{kind} {namespace}/{name} already exists and is not this PruneJob's ({whose}); "
                         f"it was left untouched. Delete or rename that {kind}, or give the PruneJob another name")


def owned_by(child: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in (child.get("metadata") or {}).get("ownerReferences") or [])


def _prunejob_refs(child: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [ref for ref in (child.get("metadata") or {}).get("ownerReferences") or []
            if ref.get("kind") == api.KIND and str(ref.get("apiVersion", "")).startswith(f"{api.GROUP}/")]


def whose(child: Mapping[str, Any]) -> str:
    refs = (child.get("metadata") or {}).get("ownerReferences") or []
    if not refs:
        return "it has no owner"
    return "owned by " + ", ".join(f"{r.get('kind')} {r.get('name')}" for r in refs)


def check_child(child: Mapping[str, Any], owner_name: str, uid: str) -> None:
    """Return if `child` is ours; wait for an earlier same-named PruneJob's child; else Conflict."""
    if owned_by(child, uid):
        return
    meta = child.get("metadata") or {}
    kind, namespace, name = child.get("kind") or "object", meta.get("namespace", ""), meta.get("name", "")
    refs = _prunejob_refs(child)
    if refs and all(r.get("name") == owner_name for r in refs):
        raise kopf.TemporaryError(f"{kind} {namespace}/{name} belongs to an earlier PruneJob {owner_name} "
                                  "(another uid); waiting for the garbage collector to remove it",
                                  delay=GC_RETRY_SECONDS)
    raise Conflict(kind, namespace, name, whose(child))


def check_owned(kube: Kube, manifest: Mapping[str, Any], owner_name: str, uid: str) -> None:
    """After a create answered 409: read the existing object and check it is ours."""
    meta = manifest["metadata"]
    plural = PLURALS.get(manifest["kind"]) or manifest["kind"].lower() + "s"
    existing = kube.get_or_none(object_path(manifest["apiVersion"], plural, meta["namespace"], meta["name"]))
    if existing is None:  # deleted in between: the next reconcile creates it
        raise kopf.TemporaryError(f"{manifest['kind']} {meta['name']} vanished after a conflict", delay=1)
    existing = {"kind": manifest["kind"], **existing}
    check_child(existing, owner_name, uid)
