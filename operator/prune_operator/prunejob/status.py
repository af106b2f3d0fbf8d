"""Level-based status of a PruneJob, computed from what exists now.

`desired_status(prunejob, parsed, job, pods, now)` is pure: it looks at the
PruneJob (generation, current status) and its spec as parsed once for this
reconcile, its Job (or None) and, for a failed Job, its pods, and returns the
controller-owned status fields plus the Events to post for a transition. It
never returns `progress` or `results`: those are the worker's.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Optional

from prune_job import gate as quality
from prune_job import spec as api
from prune_operator.conditions import MAX_MESSAGE, Event, condition, describe_problems

CONTROLLER_FIELDS = ("phase", "observedGeneration", "conditions", "jobName", "startTime", "completionTime",
                     "resumesAnnounced")
CONDITION_TYPES = ("Accepted", "Running", "Succeeded", "Failed", "QualityMet")
TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class ParsedSpec:
    """A PruneJob's spec, parsed once per reconcile: the model, or the problems that refused it."""

    spec: Optional[api.PruneJobSpec]
    problems: list[tuple[str, str]] = field(default_factory=list)


def parse(raw_spec: Any) -> ParsedSpec:
    try:
        return ParsedSpec(api.parse_spec(raw_spec or {}))
    except api.SpecError as err:
        return ParsedSpec(None, err.problems)


@dataclass(frozen=True)
class Outcome:
    phase: str
    conditions: dict[str, tuple[str, str, str]]  # type -> (status, reason, message)
    job_name: Optional[str] = None
    start_time: Optional[str] = None
    completion_time: Optional[str] = None


# ---------------------------------------------------------------- Job -> outcome


def job_condition(job: dict[str, Any], kind: str) -> Optional[dict[str, Any]]:
    """The Job's condition of this type when it is True (Complete, Failed)."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def termination_details(pods: list[dict[str, Any]], memory: str) -> str:
    """What the failed container(s) said: reason, exit code, termination message, advice."""
    notes = []
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            state = (status.get("state") or {}).get("terminated") or (status.get("lastState") or {}).get("terminated")
            if not state or state.get("exitCode", 0) == 0:
                continue
            note = f"pod {pod['metadata']['name']}: {state.get('reason', 'Error')} (exit code {state.get('exitCode')})"
            if state.get("message"):
                note += f": {state['message'].strip()[-600:]}"
            if state.get("reason") == "OOMKilled":
                note += (
                    f". Advice: the worker exceeded its memory limit ({memory}); raise spec.resources.memory, "
                    "or lower spec.calibration.samples / spec.calibration.sequenceLength"
                )
            notes.append(note)
    return " | ".join(dict.fromkeys(notes))


def job_outcome(spec: api.PruneJobSpec, job: Optional[dict[str, Any]], pods: list[dict[str, Any]]) -> Outcome:
    accepted = ("True", "Valid", "the spec is valid")
    if job is None:
        return Outcome("Pending", {"Accepted": accepted, "Running": ("False", "Creating", "creating the Job")})
    name = job["metadata"]["name"]
    status = job.get("status") or {}
    start = status.get("startTime")
    if (done := job_condition(job, "Complete")) is not None:
        end = status.get("completionTime") or done.get("lastTransitionTime")
        return Outcome("Succeeded", {
            "Accepted": accepted,
            "Running": ("False", "Completed", f"Job {name} completed"),
            "Succeeded": ("True", "Completed", f"Job {name} completed; results are in status.results"),
            "Failed": ("False", "Completed", ""),
        }, name, start, end)
    if (failed := job_condition(job, "Failed")) is not None:
        reason = failed.get("reason") or "JobFailed"
        message = f"Job {name} failed: {failed.get('message') or reason}"
        if reason == "DeadlineExceeded":
            message += ". Advice: raise spec.runPolicy.activeDeadlineSeconds"
        details = termination_details(pods, spec.resources.memory)
        if details:
            message += f". {details}"
        return Outcome("Failed", {
            "Accepted": accepted,
            "Running": ("False", reason, f"Job {name} failed"),
            "Succeeded": ("False", reason, ""),
            "Failed": ("True", reason, message[:MAX_MESSAGE]),
        }, name, start, failed.get("lastTransitionTime"))
    if (job.get("spec") or {}).get("suspend"):
        queue = spec.run_policy.queue_name
        if spec.run_policy.suspend or not queue:
            running = ("False", "Suspended", f"Job {name} is suspended (spec.runPolicy.suspend)")
            return Outcome("Suspended", {"Accepted": accepted, "Running": running}, name, start)
        running = ("False", "Queued", f"Job {name} waits for admission by Kueue queue {queue!r}")
        return Outcome("Pending", {"Accepted": accepted, "Running": running}, name, start)
    # `ready` (pods running, Kubernetes >= 1.24) tells a started pod from one waiting for a GPU node;
    # `active` counts both, so it decides only where `ready` is not reported.
    started = status["ready"] > 0 if status.get("ready") is not None else bool(status.get("active"))
    if started:
        running = ("True", "JobRunning", f"Job {name} has {status.get('active', 0)} active pod(s)")
        return Outcome("Running", {"Accepted": accepted, "Running": running}, name, start)
    if status.get("active"):
        running = ("False", "PodPending", f"Job {name}: its pod is waiting to be scheduled or to start")
        return Outcome("Pending", {"Accepted": accepted, "Running": running}, name, start)
    running = ("False", "PodPending", f"Job {name} was created; its pod is not running yet")
    return Outcome("Pending", {"Accepted": accepted, "Running": running}, name, start)


def job_deleted_outcome(job_name: str) -> Outcome:
    """The Job we created (status.jobName) is gone before it finished: the run is lost,
    and a PruneJob runs once, so it is not re-created."""
    message = f"Job {job_name} was deleted before it finished; create a new PruneJob to run again"
    return Outcome("Failed", {
        "Accepted": ("True", "Valid", "the spec is valid"),
        "Running": ("False", "JobDeleted", message),
        "Succeeded": ("False", "JobDeleted", ""),
        "Failed": ("True", "JobDeleted", message),
    }, job_name)


def invalid_outcome(problems: list[tuple[str, str]]) -> Outcome:
    message = describe_problems(problems)
    return Outcome("Failed", {
        "Accepted": ("False", "InvalidSpec", message),
        "Failed": ("True", "InvalidSpec", f"nothing was run: {message}"),
    })


def refused_outcome(reason: str, message: str) -> Outcome:
    """Nothing is run: the spec asks for what the operator does not allow (NotAllowed), or a child's
    name is taken by an object this PruneJob does not own (NameConflict)."""
    return Outcome("Failed", {
        "Accepted": ("False", reason, message[:MAX_MESSAGE]),
        "Failed": ("True", reason, f"nothing was run: {message}"[:MAX_MESSAGE]),
    })


# ---------------------------------------------------------------- outcome -> status


def conditions_list(outcome: Outcome, previous: list[dict[str, Any]], generation: Optional[int],
                    now: datetime) -> list[dict]:
    """The outcome's metav1.Conditions, in CONDITION_TYPES order."""
    before = {c.get("type"): c for c in previous or []}
    return [condition(kind, *outcome.conditions[kind], before.get(kind), generation, now)
            for kind in CONDITION_TYPES if kind in outcome.conditions]


def transition_events(old_phase: Optional[str], outcome: Outcome) -> list[Event]:
    if old_phase == outcome.phase:
        return []
    phase = outcome.phase
    if phase == "Failed":
        status, reason, message = outcome.conditions["Failed"]
        return [Event("Warning", reason, message)]
    running = outcome.conditions.get("Running", ("", "", ""))
    if phase == "Succeeded":
        return [Event("Normal", "Succeeded", outcome.conditions["Succeeded"][2])]
    if phase == "Pending" and old_phase is None:
        return [Event("Normal", "Accepted", "the spec is valid; " + running[2])]
    return [Event("Normal", phase, running[2])]


def desired_status(
    prunejob: dict[str, Any], parsed: ParsedSpec, job: Optional[dict[str, Any]], pods: list[dict[str, Any]],
    now: datetime, refusal: Optional[tuple[str, str]] = None,
) -> tuple[dict[str, Any], list[Event]]:
    """(the controller-owned status fields, Events to post) for this PruneJob; `refusal`
    (reason, message) fails it without a run."""
    meta = prunejob.get("metadata") or {}
    current = prunejob.get("status") or {}
    if current.get("phase") in TERMINAL and job is None:
        return {k: current[k] for k in CONTROLLER_FIELDS if k in current}, []  # finished; its Job may be gone (TTL)
    if refusal is not None:
        outcome = refused_outcome(*refusal)
    elif parsed.spec is None:
        outcome = invalid_outcome(parsed.problems)
    elif job is None and current.get("jobName"):
        outcome = job_deleted_outcome(current["jobName"])
    else:
        outcome = job_outcome(parsed.spec, job, pods)
    outcome = with_quality(outcome, parsed.spec, current.get("results"))
    generation = meta.get("generation")
    status = {
        "phase": outcome.phase,
        "observedGeneration": generation,
        "conditions": conditions_list(outcome, current.get("conditions") or [], generation, now),
        "jobName": outcome.job_name,
        "startTime": current.get("startTime") or outcome.start_time,
        "completionTime": current.get("completionTime") or outcome.completion_time,
    }
    status = {k: v for k, v in status.items() if v is not None}
    resumed = resume_events(current)
    if resumed:
        status["resumesAnnounced"] = (current.get("progress") or {}).get("resumes")
    return status, resumed + transition_events(current.get("phase"), outcome) + quality_events(current, outcome)


def resume_events(current: dict[str, Any]) -> list[Event]:
    """"Resumed from block k of n" once per resume the worker reported (status.progress, docs/resume.md)."""
    progress = current.get("progress") or {}
    resumes, start = progress.get("resumes") or 0, progress.get("resumedFromBlock")
    if start is None or resumes <= (current.get("resumesAnnounced") or 0):
        return []
    return [Event("Normal", "Resumed", f"Resumed from block {start} of {progress.get('blocksTotal') or '?'} "
                                       f"(resume {resumes}; the finished blocks were kept)")]


def with_quality(outcome: Outcome, spec: Optional[api.PruneJobSpec], results: Any) -> Outcome:
    """A Succeeded run with `evaluation.gate` gets QualityMet from the measured figures (gate.judge)."""
    if outcome.phase != "Succeeded" or spec is None:
        return outcome
    verdict = quality.judge(spec.evaluation.gate, results)
    if verdict is None:
        return outcome
    met = ("True", "WithinLimits") if verdict.met else ("False", "LimitsExceeded")
    return replace(outcome, conditions={**outcome.conditions, "QualityMet": (*met, verdict.message)})


def quality_events(current: dict[str, Any], outcome: Outcome) -> list[Event]:
    """One Event when QualityMet is first set or changes."""
    if "QualityMet" not in outcome.conditions:
        return []
    status, reason, message = outcome.conditions["QualityMet"]
    before = next((c for c in current.get("conditions") or [] if c.get("type") == "QualityMet"), None)
    if before is not None and before.get("status") == status:
        return []
    return [Event("Normal" if status == "True" else "Warning", reason, f"quality gate: {message}")]


def status_changes(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The merge patch of `status` that turns current into desired (controller fields only)."""
    return {key: value for key, value in desired.items() if current.get(key) != value}
