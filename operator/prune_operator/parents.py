"""What the controllers that own PruneJobs (schedule/, sweep/) share: one lock
per parent, the owner reference and label they put on a child, the children
they list back, conditions on a status model, and the status written as a
merge patch only when it changed (with the parent's resourceVersion as a
precondition), the whole sync retried on a 409."""
from __future__ import annotations

import threading
from datetime import datetime
from typing import Any, Callable, Iterable, Optional, TypeVar

import kopf
from pydantic import BaseModel

from prune_job import spec as api
from prune_operator.conditions import condition
from prune_operator.kube import ApiError, Kube, collection_path, object_path
from prune_operator.resync import Key

T = TypeVar("T")


class KeyedLocks:
    """One lock per parent, so that an event and the resync never sync the same parent at once."""

    def __init__(self) -> None:
        self._locks: dict[Key, threading.Lock] = {}
        self._guard = threading.Lock()

    def __call__(self, key: Key) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())


def owner_reference(kind: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The controller owner reference of a child of the parent `meta` (uid where the server gave one)."""
    owner = {"apiVersion": api.API_VERSION, "kind": kind, "name": meta["name"],
             "controller": True, "blockOwnerDeletion": True}
    if meta.get("uid"):
        owner["uid"] = meta["uid"]
    return owner


def owned_by(obj: dict[str, Any], label: str, kind: str, parent_uid: Optional[str], parent_name: str) -> bool:
    """A child carries the parent's label and, where uids exist, an owner reference to it."""
    meta = obj.get("metadata", {})
    if (meta.get("labels") or {}).get(label) != parent_name:
        return False
    if not parent_uid:
        return True
    return any(r.get("kind") == kind and r.get("uid") == parent_uid for r in meta.get("ownerReferences") or [])


def list_children(kube: Kube, parent: dict[str, Any], label: str, kind: str) -> list[dict[str, Any]]:
    """The PruneJobs the parent (of `kind`) owns, found by its label."""
    meta = parent["metadata"]
    listing = kube.get(collection_path(api.API_VERSION, api.PLURAL, meta["namespace"]),
                       query={"labelSelector": f"{label}={meta['name']}"})
    return [o for o in listing.get("items") or [] if owned_by(o, label, kind, meta.get("uid"), meta["name"])]


def delete_prunejob(kube: Kube, namespace: str, name: str) -> None:
    try:
        kube.request("DELETE", object_path(api.API_VERSION, api.PLURAL, namespace, name),
                     body={"propagationPolicy": "Background"})
    except ApiError as err:
        if err.status != 404:
            raise


def set_condition(
    conditions: Iterable[api.Condition], type_: str, status: str, reason: str, message: str, now: datetime,
    generation: Optional[int] = None,
) -> list[api.Condition]:
    """Replace the condition of `type_` (conditions.condition: lastTransitionTime changes only with status)."""
    conditions = list(conditions)
    others = [c for c in conditions if c.type != type_]
    previous = next((c.model_dump(by_alias=True) for c in conditions if c.type == type_), None)
    return [*others, api.Condition.model_validate(condition(type_, status, reason, message, previous, generation, now))]


def status_document(status: BaseModel) -> dict[str, Any]:
    """A status as stored in the object (camelCase, no nulls)."""
    return status.model_dump(by_alias=True, mode="json", exclude_none=True)


def status_patch(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from `current` to `desired` (null deletes a field; lists are replaced)."""
    return {**{key: None for key in current if key not in desired}, **desired}


def write_status(kube: Kube, path: str, parent: dict[str, Any], current: BaseModel, desired: BaseModel) -> bool:
    """Merge-patch the status subresource at `path` when it differs; False when nothing changed."""
    before, after = status_document(current), status_document(desired)
    if before == after:
        return False
    patch: dict[str, Any] = {"status": status_patch(before, after)}
    if parent["metadata"].get("resourceVersion"):
        patch["metadata"] = {"resourceVersion": parent["metadata"]["resourceVersion"]}  # 409 if it changed meanwhile
    kube.merge_patch(path, patch)
    return True


def sync_fresh(kube: Kube, path: str, locks: KeyedLocks, key: Key, once: Callable[[dict[str, Any]], T],
               attempts: int = 3) -> Optional[T]:
    """Under the parent's lock: read it fresh and run `once(parent)`, again on a 409 (it changed
    meanwhile). None when it is gone or being deleted."""
    with locks(key):
        for _ in range(attempts):
            parent = kube.get_or_none(path)
            if parent is None or parent["metadata"].get("deletionTimestamp"):
                return None
            try:
                return once(parent)
            except ApiError as err:
                if err.status != 409:
                    raise
        raise kopf.TemporaryError(f"{path} kept changing while its status was written", delay=1)


SyncLogged = Callable[[Any, str, str, Any], None]  # (memo, namespace, name, logger); never raises


def sync_logged(kind: str, sync: SyncLogged, interval: Callable[[Any], float]) -> SyncLogged:
    """A sync (memo, namespace, name, logger) for event handlers, which Kopf does not retry: log trouble,
    and let the resync try again."""
    def run(memo: Any, namespace: str, name: str, logger: Any) -> None:
        try:
            sync(memo, namespace, name, logger)
        except api.SpecError as err:
            logger.warning(f"{kind} {namespace}/{name} refused: {err}")
        except (ApiError, kopf.TemporaryError) as err:
            logger.warning(f"{kind} {namespace}/{name}: {err}; retrying within {interval(memo.config):g}s")
    return run


def register_parent(registry: kopf.OperatorRegistry, *, kind: str, plural: str, label: str, index: str,
                    index_fn: Callable[..., Any], sync: SyncLogged, resync: Any) -> None:
    """The handlers of a controller that owns PruneJobs: `index` (every parent, as watched), an event
    of the parent syncs it, an event of a PruneJob carrying `label` syncs its parent, and the resync."""
    def parent_event(body: Any, memo: Any, logger: Any, type: Optional[str] = None, **_: Any) -> None:
        if type != "DELETED":
            sync(memo, body["metadata"]["namespace"], body["metadata"]["name"], logger)

    def child_event(body: Any, memo: Any, logger: Any, **kwargs: Any) -> None:
        meta = body.get("metadata") or {}
        parent = (meta.get("labels") or {}).get(label)
        if parent and (meta.get("namespace", ""), parent) in kwargs[index]:
            sync(memo, meta.get("namespace", ""), parent, logger)

    resource = (api.GROUP, api.VERSION, plural)
    kopf.index(*resource, id=index, registry=registry)(index_fn)
    kopf.on.event(*resource, id=f"{kind.lower()}-event", registry=registry)(parent_event)
    kopf.on.event(api.GROUP, api.VERSION, api.PLURAL, id=f"{kind.lower()}-child", labels={label: kopf.PRESENT},
                  registry=registry)(child_event)
    resync.register(registry)
