"""SIGTERM (pod deletion, eviction, Kueue suspend) stops a run at a block boundary (docs/resume.md).

On SIGTERM the block in flight may finish if it can within half the grace period; the
journal is written after it and the run stops there. If it cannot, SIGALRM abandons it
(its partial shard is dropped; the journal still names the blocks before it). Either way
`Interrupted` is raised in the main thread, the finished blocks' uploads are awaited, and
the worker exits with `exit_codes.INTERRUPTED`.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import time
from typing import Iterator, Optional

log = logging.getLogger(__name__)
FINISH_SHARE = 0.5  # of the grace period, for the block in flight; the rest makes the uploads durable


class Interrupted(Exception):
    """The run was stopped by SIGTERM; the journal names the finished blocks."""


class _Stop:
    def __init__(self, grace_seconds: float):
        self.grace_seconds = grace_seconds
        self.requested_at: Optional[float] = None

    def on_term(self, _signum: int, _frame: object) -> None:
        if self.requested_at is not None:
            return
        self.requested_at = time.monotonic()
        budget = max(0.5, self.grace_seconds * FINISH_SHARE)
        log.warning("SIGTERM: finishing the block in flight if it ends within %.1f s, else abandoning it", budget)
        signal.setitimer(signal.ITIMER_REAL, budget)

    def on_alarm(self, _signum: int, _frame: object) -> None:
        raise Interrupted("SIGTERM: the block in flight was abandoned (it could not finish within the grace period)")


_current: Optional[_Stop] = None


@contextlib.contextmanager
def stop_on_sigterm(grace_seconds: float) -> Iterator[None]:
    """Within this block, SIGTERM stops the run at the next block boundary or abandons the block in flight."""
    global _current
    stop = _Stop(grace_seconds)
    old_term = signal.signal(signal.SIGTERM, stop.on_term)
    old_alarm = signal.signal(signal.SIGALRM, stop.on_alarm)
    _current = stop
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGALRM, old_alarm)
        _current = None


def stop_requested() -> bool:
    return _current is not None and _current.requested_at is not None


def check_stop(where: str) -> None:
    """Called at a block boundary, once the journal is durable: raise Interrupted if SIGTERM came."""
    if stop_requested():
        signal.setitimer(signal.ITIMER_REAL, 0)
        raise Interrupted(f"SIGTERM: stopped after {where}")


def disarm() -> None:
    """No abandoning any more (the run is making its uploads durable before exiting)."""
    if _current is not None:
        signal.setitimer(signal.ITIMER_REAL, 0)
