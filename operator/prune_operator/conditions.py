"""What both controllers write the same way: times, metav1.Conditions and Events.

- Times are RFC 3339 in UTC at second precision, as Kubernetes writes
  metav1.Time. `now` is the clock of every decision of both controllers;
  tests replace it (an injected clock, not a test branch).
- A condition keeps its lastTransitionTime while its status stays, and
  carries the generation it was computed for.
- Events are core/v1 Events about the object, posted by `post_events` from
  whichever thread a sync runs in (a handler or the periodic resync: Kopf's
  `kopf.event` needs the context of a resource handler). An Event is a
  courtesy: losing one never stops a sync.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Optional

from prune_job import spec as api
from prune_job.sources.uris import redact
from prune_operator import metrics
from prune_operator.kube import ApiError, Kube, collection_path

COMPONENT = "prune-operator"  # an Event's source, the "From" of `kubectl describe`
MAX_MESSAGE = 2000  # a condition's message
MAX_EVENT_MESSAGE = 1024  # what the API server accepts in an Event's message
CUT = "..."


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


# The clock of every decision; tests replace it.
now: Callable[[], datetime] = utc_now


def format_time(t: datetime) -> str:
    """RFC 3339 in UTC, second precision, as Kubernetes writes metav1.Time."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Optional[str]) -> Optional[datetime]:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


def describe_problems(problems: Iterable[tuple[str, str]]) -> str:
    """The fields a spec was refused for, as one message (a condition's, an Event's)."""
    return "; ".join(f"{path}: {reason}" for path, reason in problems)[:MAX_MESSAGE]


def condition(kind: str, status: str, reason: str, message: str, previous: Optional[Mapping[str, Any]],
              generation: Optional[int], at: datetime) -> dict[str, Any]:
    """A metav1.Condition; it keeps the `previous` one's lastTransitionTime while its status stays."""
    since = (previous or {}).get("lastTransitionTime") if (previous or {}).get("status") == status else None
    result = {"type": kind, "status": status, "reason": reason, "message": redact(message),
              "lastTransitionTime": since or format_time(at)}
    if generation is not None:
        result["observedGeneration"] = generation
    return result


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


def event_message(message: str) -> str:
    """At most MAX_EVENT_MESSAGE characters, cut in the middle: the end often holds the advice;
    credentials (a pod's termination message may quote a URI) cut out."""
    message = redact(message)
    if len(message) <= MAX_EVENT_MESSAGE:
        return message
    head = MAX_EVENT_MESSAGE // 2 - len(CUT) // 2
    tail = MAX_EVENT_MESSAGE - head - len(CUT)
    return f"{message[:head]}{CUT}{message[-tail:]}"


def event_manifest(kind: str, obj: Mapping[str, Any], event: Event, at: datetime) -> dict[str, Any]:
    """A core/v1 Event about `obj`, an object of `kind` in our API group."""
    meta = obj["metadata"]
    stamp = format_time(at)
    involved = {"apiVersion": api.API_VERSION, "kind": kind, "name": meta["name"], "namespace": meta["namespace"]}
    if meta.get("uid"):
        involved["uid"] = meta["uid"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": involved,
        "type": event.type,
        "reason": event.reason,
        "message": event_message(event.message),
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def post_events(kube: Kube, kind: str, obj: Mapping[str, Any], events: Iterable[Event], at: datetime) -> None:
    for event in events:
        path = collection_path("v1", "events", obj["metadata"]["namespace"])
        try:
            kube.request("POST", path, body=event_manifest(kind, obj, event, at))
        except ApiError:
            continue  # an Event is a courtesy; losing one must not stop the sync
        metrics.EVENTS_POSTED.labels(event.type, event.reason).inc()
