"""Kopf handlers for PruneJobs: thin, each over plain functions.

- prunejob-create / prunejob-resume / prunejob-suspend: read the PruneJob,
  parse its spec once, ensure the children (ServiceAccount, Role,
  RoleBinding, ConfigMap, Job; 409 = done), make the Job follow
  runPolicy.suspend, then sync the status.
- job-status: every change of a Job we own syncs its PruneJob's status.
- prunejob_phases (a Kopf index): the phase of every PruneJob, as watched;
  prunejob-phase keeps the by-phase metric from it.
- prunejob-resync-start/-stop (resync.Resync): every `config.resync_seconds`
  the unfinished PruneJobs of the index are synced again (the safety net for
  a Job event whose sync failed).

Handlers are sync functions (Kopf runs them in its thread pool) and reach the
API through `memo.kube` (kube.Kube); `memo.config` is the OperatorConfig.
Status is read-modify-written with the object's resourceVersion as a
precondition, and only the controller's fields are written (status.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import kopf

from prune_job import spec as api
from prune_operator import conditions, metrics, ownership
from prune_operator.kube import ApiError, Kube, collection_path, object_path
from prune_operator.policy import policy_problems
from prune_operator.prunejob import builders, status
from prune_operator.resync import Key, Resync

STATUS_ATTEMPTS = 5
PHASES_INDEX = "prunejob_phases"  # the index's id is also the name of the handlers' keyword argument


def prunejob_path(namespace: str, name: str, subresource: str = "") -> str:
    return object_path(api.API_VERSION, api.PLURAL, namespace, name, subresource)


def job_path(namespace: str, name: str) -> str:
    return object_path("batch/v1", "jobs", namespace, name)


# ---------------------------------------------------------------- operations


@dataclass(frozen=True)
class Observed:
    """A PruneJob as read for one reconcile, with its spec parsed once."""

    prunejob: dict[str, Any]
    parsed: status.ParsedSpec


def observe(kube: Kube, namespace: str, name: str) -> Optional[Observed]:
    prunejob = kube.get_or_none(prunejob_path(namespace, name))
    return None if prunejob is None else Observed(prunejob, status.parse(prunejob.get("spec")))


def ensure_children(kube: Kube, owner: builders.Owner, raw_spec: dict[str, Any], spec: api.PruneJobSpec,
                    config: Any, logger: Any) -> None:
    for manifest in builders.children(owner, raw_spec, spec, config):
        if kube.create(manifest):
            logger.info(f"created {manifest['kind']} {manifest['metadata']['name']}")
            if manifest["kind"] == "Job":
                metrics.JOBS_CREATED.inc()
        else:  # 409: ours from an earlier attempt, or someone else's (ownership.Conflict)
            ownership.check_owned(kube, manifest, owner.name, owner.uid)


def follow_suspend(kube: Kube, owner: builders.Owner, spec: api.PruneJobSpec, logger: Any) -> None:
    path = job_path(owner.namespace, builders.job_name(owner))
    job = kube.get_or_none(path)
    if job is None:
        return
    ownership.check_child({"kind": "Job", **job}, owner.name, owner.uid)  # never patch a Job that is not ours
    patch = builders.suspend_patch(job, spec.run_policy.suspend, queued=bool(spec.run_policy.queue_name))
    if patch is not None:
        kube.merge_patch(path, patch)
        logger.info(f"Job {builders.job_name(owner)}: {'suspended' if spec.run_policy.suspend else 'resumed'}")


def _failed_pods(kube: Kube, namespace: str, job: Optional[dict[str, Any]]) -> list[dict[str, Any]]:
    if job is None or status.job_condition(job, "Failed") is None:
        return []
    selector = f"batch.kubernetes.io/job-name={job['metadata']['name']}"
    pods = kube.get(collection_path("v1", "pods", namespace), query={"labelSelector": selector})
    return pods.get("items") or []


def sync_status(kube: Kube, namespace: str, name: str, logger: Any, observed: Optional[Observed] = None,
                refusal: Optional[tuple[str, str]] = None) -> Optional[str]:
    """Write the PruneJob's controller-owned status from what exists now (from
    `observed` when the caller has just read it); post Events on a transition.
    Returns the phase (None if the PruneJob is gone)."""
    for _ in range(STATUS_ATTEMPTS):
        observed = observed or observe(kube, namespace, name)
        if observed is None:
            return None
        try:
            return write_status(kube, observed, logger, refusal)
        except ApiError as err:
            if err.status == 409:  # someone (the worker) wrote in between: read again
                observed = None
                continue
            if err.status == 404:  # deleted meanwhile
                return None
            raise
    raise kopf.TemporaryError("the status kept changing while being written", delay=1)


def write_status(kube: Kube, observed: Observed, logger: Any, refusal: Optional[tuple[str, str]] = None) -> str:
    """One attempt: the status patch, with the resourceVersion read as its precondition."""
    prunejob = observed.prunejob
    namespace, name = prunejob["metadata"]["namespace"], prunejob["metadata"]["name"]
    job = kube.get_or_none(job_path(namespace, builders.child_name(name)))
    if job is not None and not _owned_by(job, prunejob):
        job = None  # a same-named Job of an earlier PruneJob: not ours
    at = conditions.now()
    desired, events = status.desired_status(prunejob, observed.parsed, job, _failed_pods(kube, namespace, job), at,
                                            refusal)
    changes = status.status_changes(prunejob.get("status") or {}, desired)
    if not changes:
        return desired["phase"]
    patch = {"metadata": {"resourceVersion": prunejob["metadata"].get("resourceVersion")}, "status": changes}
    kube.merge_patch(prunejob_path(namespace, name, "status"), patch)
    conditions.post_events(kube, api.KIND, prunejob, events, at)
    if "phase" in changes:
        logger.info(f"PruneJob {namespace}/{name}: phase {desired['phase']}")
    return desired["phase"]


def _owned_by(child: dict[str, Any], owner: dict[str, Any]) -> bool:
    uid = owner["metadata"].get("uid")
    return any(ref.get("uid") == uid for ref in child["metadata"].get("ownerReferences") or [])


def _owner_name(job: dict[str, Any]) -> Optional[str]:
    for ref in job["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == api.KIND and ref.get("apiVersion", "").startswith(f"{api.GROUP}/"):
            return ref.get("name")
    return None


def reconcile(kube: Kube, config: Any, namespace: str, name: str, logger: Any) -> None:
    """Children and status of one PruneJob, from one fresh read (a retry may come after a delete)."""
    observed = observe(kube, namespace, name)
    if observed is None or observed.prunejob["metadata"].get("deletionTimestamp"):
        return
    spec = observed.parsed.spec
    if spec is None:
        sync_status(kube, namespace, name, logger, observed)
        raise kopf.PermanentError(f"invalid spec: {conditions.describe_problems(observed.parsed.problems)}")
    current = observed.prunejob.get("status") or {}
    if current.get("phase") in status.TERMINAL:
        return  # ran once; never re-create a Job that its TTL has removed
    owner = builders.Owner.from_body(observed.prunejob)
    not_allowed = policy_problems(spec, config)
    if not_allowed:
        refuse(kube, namespace, name, logger, observed, "NotAllowed", conditions.describe_problems(not_allowed))
    try:
        if not current.get("jobName"):  # once the Job was seen, a missing Job means it was deleted: not re-created
            ensure_children(kube, owner, dict(observed.prunejob.get("spec") or {}), spec, config, logger)
        follow_suspend(kube, owner, spec, logger)
    except ownership.Conflict as err:
        refuse(kube, namespace, name, logger, observed, "NameConflict", str(err))
    sync_status(kube, namespace, name, logger, observed)


def refuse(kube: Kube, namespace: str, name: str, logger: Any, observed: Observed, reason: str, message: str) -> None:
    """Fail the PruneJob without a run (a Failed condition with `reason`), then stop for good."""
    sync_status(kube, namespace, name, logger, observed, refusal=(reason, message))
    raise kopf.PermanentError(message)


def unfinished(prunejob_phases: kopf.Index) -> list[Key]:
    return [key for key, phases in prunejob_phases.items() if not any(p in status.TERMINAL for p in phases)]


RESYNC = Resync(
    name="prunejob-resync",
    index=PHASES_INDEX,
    interval=lambda config: config.resync_seconds,
    due=unfinished,
    sync=lambda memo, namespace, name, logger: sync_status(memo.kube, namespace, name, logger),
)


# ---------------------------------------------------------------- handlers


def reconcile_prunejob(body: Any, memo: Any, logger: Any, **_: Any) -> None:
    try:
        reconcile(memo.kube, memo.config, body["metadata"]["namespace"], body["metadata"]["name"], logger)
    except ApiError as err:
        if 400 <= err.status < 500 and err.status not in (404, 409, 429):
            raise kopf.PermanentError(f"the API server refused: {err}") from None
        raise kopf.TemporaryError(f"API trouble: {err}", delay=memo.config.retry_delay) from None


def job_changed(body: Any, memo: Any, logger: Any, **_: Any) -> None:
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


def prunejob_phase(body: Any, **_: Any) -> dict[Key, str]:
    """The index entry of one PruneJob: its phase (Pending until the controller wrote one)."""
    meta = body["metadata"]
    return {(meta["namespace"], meta["name"]): (body.get("status") or {}).get("phase") or "Pending"}


async def count_phases(prunejob_phases: kopf.Index, **_: Any) -> None:
    """On the event loop, where Kopf writes the index: never read while it changes."""
    metrics.count_phases(phase for phases in prunejob_phases.values() for phase in phases)


def register(registry: kopf.OperatorRegistry) -> None:
    """Attach the PruneJob handlers to `registry` (every one with an explicit id)."""
    resource = (api.GROUP, api.VERSION, api.PLURAL)
    kopf.index(*resource, id=PHASES_INDEX, registry=registry)(prunejob_phase)
    for decorator, handler_id in ((kopf.on.create, "prunejob-create"), (kopf.on.resume, "prunejob-resume")):
        decorator(*resource, id=handler_id, registry=registry)(metrics.instrumented(handler_id)(reconcile_prunejob))
    kopf.on.update(*resource, id="prunejob-suspend", field="spec.runPolicy.suspend", registry=registry)(
        metrics.instrumented("prunejob-suspend")(reconcile_prunejob)
    )
    kopf.on.event("batch", "v1", "jobs", id="job-status", labels={builders.LABEL_PRUNEJOB: kopf.PRESENT},
                  registry=registry)(metrics.instrumented("job-status")(job_changed))
    kopf.on.event(*resource, id="prunejob-phase", registry=registry)(count_phases)
    RESYNC.register(registry)
