"""Kopf handlers for PruneJobs: thin, each over the pure modules.

- prunejob-create / prunejob-resume / prunejob-suspend: validate, ensure the
  children (ServiceAccount, Role, RoleBinding, ConfigMap, Job; 409 = done),
  make the Job follow runPolicy.suspend, then sync the status.
- job-status: every change of a Job we own syncs its PruneJob's status.
- prunejob-phase: keeps the by-phase metric.
- prunejob-resync-start/-stop: a background task that re-syncs unfinished
  PruneJobs every `config.resync_seconds` (a Job event whose sync failed).

Handlers are sync functions (Kopf runs them in its thread pool) and reach the
API through `memo.kube` (kube.Kube); `memo.config` is the OperatorConfig.
Status is read-modify-written with the object's resourceVersion as a
precondition, and only the controller's fields are written (reconcile.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import fnmatch
from typing import Any, Optional

import kopf

from prune_job import spec as api
from prune_operator import builders, metrics, reconcile
from prune_operator.kube import ApiError, Kube, collection_path, object_path

STATUS_ATTEMPTS = 5


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def prunejob_path(namespace: str, name: str, subresource: str = "") -> str:
    return object_path(api.API_VERSION, api.PLURAL, namespace, name, subresource)


def job_path(namespace: str, name: str) -> str:
    return object_path("batch/v1", "jobs", namespace, name)


# ---------------------------------------------------------------- operations


def ensure_children(kube: Kube, owner: builders.Owner, raw_spec: dict[str, Any], spec: api.PruneJobSpec,
                    config: Any, logger: Any) -> None:
    for manifest in builders.children(owner, raw_spec, spec, config):
        if kube.create(manifest):
            logger.info(f"created {manifest['kind']} {manifest['metadata']['name']}")
            if manifest["kind"] == "Job":
                metrics.JOBS_CREATED.inc()


def follow_suspend(kube: Kube, owner: builders.Owner, spec: api.PruneJobSpec, logger: Any) -> None:
    path = job_path(owner.namespace, builders.job_name(owner))
    job = kube.get_or_none(path)
    if job is None:
        return
    patch = builders.suspend_patch(job, spec.run_policy.suspend, queued=bool(spec.run_policy.queue_name))
    if patch is not None:
        kube.merge_patch(path, patch)
        logger.info(f"Job {builders.job_name(owner)}: {'suspended' if spec.run_policy.suspend else 'resumed'}")


def _failed_pods(kube: Kube, namespace: str, job: Optional[dict[str, Any]]) -> list[dict[str, Any]]:
    if job is None or reconcile.job_condition(job, "Failed") is None:
        return []
    selector = f"batch.kubernetes.io/job-name={job['metadata']['name']}"
    pods = kube.get(collection_path("v1", "pods", namespace), query={"labelSelector": selector})
    return pods.get("items") or []


def sync_status(kube: Kube, namespace: str, name: str, logger: Any) -> Optional[str]:
    """Write the PruneJob's controller-owned status from what exists now; post
    Events on a transition. Returns the phase (None if the PruneJob is gone)."""
    for _ in range(STATUS_ATTEMPTS):
        prunejob = kube.get_or_none(prunejob_path(namespace, name))
        if prunejob is None:
            return None
        job = kube.get_or_none(job_path(namespace, builders.child_name(name)))
        if job is not None and not _owned_by(job, prunejob):
            job = None  # a same-named Job of an earlier PruneJob: not ours
        desired, events = reconcile.desired_status(prunejob, job, _failed_pods(kube, namespace, job), _now())
        changes = reconcile.status_changes(prunejob.get("status") or {}, desired)
        if not changes:
            return desired["phase"]
        patch = {"metadata": {"resourceVersion": prunejob["metadata"].get("resourceVersion")}, "status": changes}
        try:
            kube.merge_patch(prunejob_path(namespace, name, "status"), patch)
        except ApiError as err:
            if err.status == 409:  # someone (the worker) wrote in between: read again
                continue
            if err.status == 404:  # deleted meanwhile
                return None
            raise
        for event in events:
            kopf.event(prunejob, type=event.type, reason=event.reason, message=event.message)
            metrics.EVENTS_POSTED.labels(event.type, event.reason).inc()
        if "phase" in changes:
            logger.info(f"PruneJob {namespace}/{name}: phase {desired['phase']}")
        return desired["phase"]
    raise kopf.TemporaryError("the status kept changing while being written", delay=1)


def _owned_by(child: dict[str, Any], owner: dict[str, Any]) -> bool:
    uid = owner["metadata"].get("uid")
    return any(ref.get("uid") == uid for ref in child["metadata"].get("ownerReferences") or [])


def _owner_name(job: dict[str, Any]) -> Optional[str]:
    for ref in job["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == api.KIND and ref.get("apiVersion", "").startswith(f"{api.GROUP}/"):
            return ref.get("name")
    return None


# ---------------------------------------------------------------- handlers


def reconcile_prunejob(body: Any, memo: Any, logger: Any, **_: Any) -> None:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        body = memo.kube.get_or_none(prunejob_path(namespace, name))  # fresh: a retry may come after a delete
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        raw_spec = dict(body.get("spec") or {})
        problems = reconcile.spec_problems(raw_spec)
        if problems:
            sync_status(memo.kube, namespace, name, logger)
            raise kopf.PermanentError(f"invalid spec: {reconcile.describe_problems(problems)}")
        status = body.get("status") or {}
        if status.get("phase") in reconcile.TERMINAL:
            return  # ran once; never re-create a Job that its TTL has removed
        spec = api.parse_spec(raw_spec)
        owner = builders.Owner.from_body(body)
        if not status.get("jobName"):  # once the Job was seen, a missing Job means it was deleted: not re-created
            ensure_children(memo.kube, owner, raw_spec, spec, memo.config, logger)
        follow_suspend(memo.kube, owner, spec, logger)
        sync_status(memo.kube, namespace, name, logger)
    except ApiError as err:
        if 400 <= err.status < 500 and err.status not in (404, 409, 429):
            raise kopf.PermanentError(f"the API server refused: {err}") from None
        raise kopf.TemporaryError(f"API trouble: {err}", delay=memo.config.retry_delay) from None


def job_changed(body: Any, memo: Any, logger: Any, type: Optional[str] = None, **_: Any) -> None:
    owner = _owner_name(body)
    if owner is None:
        return
    namespace = body["metadata"]["namespace"]
    for attempt in range(3):  # Kopf does not retry event handlers
        try:
            sync_status(memo.kube, namespace, owner, logger)
            return
        except (ApiError, kopf.TemporaryError) as err:
            logger.warning(f"could not sync PruneJob {namespace}/{owner} (attempt {attempt + 1}): {err}")


def listing_paths(namespaces: list[str]) -> list[str]:
    """Where to list PruneJobs: each named namespace, or the cluster (also for glob patterns)."""
    if namespaces and not any(set(ns) & set("*?[!") for ns in namespaces):
        return [collection_path(api.API_VERSION, api.PLURAL, ns) for ns in namespaces]
    return [collection_path(api.API_VERSION, api.PLURAL, None)]


def resync_all(kube: Kube, namespaces: list[str], logger: Any) -> int:
    """Sync the status of every unfinished PruneJob: the safety net for a Job
    event whose sync failed (e.g. the API server was unreachable)."""
    synced = 0
    for path in listing_paths(namespaces):
        for item in kube.get(path).get("items") or []:
            meta = item["metadata"]
            if namespaces and not any(fnmatch.fnmatchcase(meta["namespace"], ns) for ns in namespaces):
                continue
            if (item.get("status") or {}).get("phase") in reconcile.TERMINAL:
                continue
            sync_status(kube, meta["namespace"], meta["name"], logger)
            synced += 1
    return synced


async def _resync_forever(memo: Any, logger: Any) -> None:
    while True:
        await asyncio.sleep(memo.config.resync_seconds)
        try:
            await asyncio.to_thread(resync_all, memo.kube, memo.namespaces, logger)
        except Exception as err:  # API trouble: the next round tries again
            metrics.HANDLER_ERRORS.labels("prunejob-resync", type(err).__name__).inc()
            logger.warning(f"resync of PruneJob statuses failed: {err}")


async def start_resync(memo: Any, logger: Any, **_: Any) -> None:
    """A task, not a Kopf timer: timers need a finalizer on every PruneJob, and a
    finalizer lets a stopped operator block deletions."""
    memo.resync = asyncio.get_running_loop().create_task(_resync_forever(memo, logger))


async def stop_resync(memo: Any, **_: Any) -> None:
    task = getattr(memo, "resync", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def observe_phase(body: Any, memo: Any, type: Optional[str] = None, **_: Any) -> None:
    meta = body.get("metadata") or {}
    phase = None if type == "DELETED" else (body.get("status") or {}).get("phase") or "Pending"
    memo.phases.observe(meta.get("namespace", ""), meta.get("name", ""), phase)


def register(registry: kopf.OperatorRegistry) -> None:
    """Attach the PruneJob handlers to `registry` (every one with an explicit id)."""
    resource = (api.GROUP, api.VERSION, api.PLURAL)
    for decorator, handler_id in ((kopf.on.create, "prunejob-create"), (kopf.on.resume, "prunejob-resume")):
        decorator(*resource, id=handler_id, registry=registry)(metrics.instrumented(handler_id)(reconcile_prunejob))
    kopf.on.update(*resource, id="prunejob-suspend", field="spec.runPolicy.suspend", registry=registry)(
        metrics.instrumented("prunejob-suspend")(reconcile_prunejob)
    )
    kopf.on.event("batch", "v1", "jobs", id="job-status", labels={builders.LABEL_PRUNEJOB: kopf.PRESENT},
                  registry=registry)(metrics.instrumented("job-status")(job_changed))
    kopf.on.event(*resource, id="prunejob-phase", registry=registry)(observe_phase)
    kopf.on.startup(id="prunejob-resync-start", registry=registry)(start_resync)
    kopf.on.cleanup(id="prunejob-resync-stop", registry=registry)(stop_resync)
