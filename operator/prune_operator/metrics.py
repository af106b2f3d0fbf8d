"""Prometheus metrics: PruneJobs by phase, handler latency and errors, Jobs created, Events.

Served by `prometheus_client.start_http_server` on --metrics-port (main.py).
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, Iterable, TypeVar

from prometheus_client import Counter, Gauge, Histogram

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")

PRUNEJOBS = Gauge("prune_operator_prunejobs", "PruneJobs seen by the operator, by phase", ["phase"])
HANDLER_SECONDS = Histogram(
    "prune_operator_handler_duration_seconds", "Handler wall time", ["handler"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
HANDLER_ERRORS = Counter("prune_operator_handler_errors_total", "Handler invocations that raised", ["handler", "error"])
JOBS_CREATED = Counter("prune_operator_jobs_created_total", "batch/v1 Jobs created for PruneJobs")
EVENTS_POSTED = Counter("prune_operator_events_total", "Events posted on PruneJob and PruneSchedule transitions",
                        ["type", "reason"])

F = TypeVar("F", bound=Callable[..., Any])


def count_phases(phases: Iterable[str]) -> None:
    """Set the by-phase gauge from the phase of every PruneJob known now (phases not seen count 0)."""
    counts = {phase: 0 for phase in PHASES}
    for phase in phases:
        counts[phase] = counts.get(phase, 0) + 1
    for phase, count in counts.items():
        PRUNEJOBS.labels(phase).set(count)


count_phases(())  # every phase is reported from the start, at 0


def instrumented(handler_id: str) -> Callable[[F], F]:
    """Time a handler and count its errors (the exception's class name)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            except Exception as err:
                HANDLER_ERRORS.labels(handler_id, type(err).__name__).inc()
                raise
            finally:
                HANDLER_SECONDS.labels(handler_id).observe(time.perf_counter() - started)

        return timed  # type: ignore[return-value]

    return wrap
