"""Where the pruning seconds go: one clock, stages named where the work is done.

`prune_model` makes a `StageClock` and makes it the active one; code anywhere below it
marks its work with `stage("solve")` (a no-op when no clock is active, e.g. in tests
that call the algorithms directly). Stages do not nest: while one is open, an inner
`stage(...)` is charged to the outer one (the trim inside a replayed block is replay),
so the stages never add up to more than the wall time, and "other" is the rest.
Only the thread that owns the clock is timed; work overlapped on another thread is
not pruning wall time and is not charged.

Beside the wall seconds, each stage records the process's CPU seconds (all its
threads) over the same interval: CPU over wall per stage is how many cores that
stage kept busy, which says where a core sat idle.
"""
from __future__ import annotations

import contextlib
import functools
import threading
import time
from typing import Any, Callable, Iterator, Optional, TypeVar

R = TypeVar("R")
STAGES = ("capture", "read", "statistics", "factorise", "solve", "propagate", "write", "trim", "replay")


class StageClock:
    """perf_counter seconds (and process CPU seconds) per stage, on the owning thread,
    outermost stage wins."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.cpu_seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._thread = threading.get_ident()
        self._open: Optional[str] = None
        self._cpu_start = time.process_time()
        self.cpu_total: Optional[float] = None  # set by `stop`

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if name not in self.seconds:
            raise ValueError(f"unknown stage {name!r}; one of {', '.join(STAGES)}")
        if self._open is not None or threading.get_ident() != self._thread:
            yield
            return
        self._open, t0, c0 = name, time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0
            self.cpu_seconds[name] += time.process_time() - c0
            self._open = None

    def stop(self) -> None:
        """Record the process CPU seconds since the clock was made (the total `cpu_breakdown` splits)."""
        self.cpu_total = time.process_time() - self._cpu_start

    def breakdown(self, total: float) -> dict[str, float]:
        """The stages plus `other` = total - their sum (never negative)."""
        return _with_other(self.seconds, total)

    def cpu_breakdown(self) -> Optional[dict[str, float]]:
        """CPU seconds per stage plus `other`, once `stop` has run."""
        return None if self.cpu_total is None else _with_other(self.cpu_seconds, self.cpu_total)


def cores_busy(wall: dict[str, float], cpu: dict[str, float], least: float = 0.05) -> dict[str, float]:
    """CPU over wall seconds per stage (how many cores it kept busy), for stages of at least
    `least` wall seconds (shorter ones say nothing)."""
    return {k: cpu.get(k, 0.0) / v for k, v in wall.items() if v >= least}


def _with_other(seconds: dict[str, float], total: float) -> dict[str, float]:
    out = {k: round(v, 4) for k, v in seconds.items()}
    out["other"] = round(max(0.0, total - sum(seconds.values())), 4)
    return out


_active: Optional[StageClock] = None


@contextlib.contextmanager
def active(clock: StageClock) -> Iterator[StageClock]:
    """Make `clock` the one `stage()` charges, for the duration of the block."""
    global _active
    previous, _active = _active, clock
    try:
        yield clock
    finally:
        _active = previous


def stage(name: str) -> contextlib.AbstractContextManager:
    """Charge the enclosed work to `name` on the active clock (nothing when none is active)."""
    clock = _active
    return clock.stage(name) if clock is not None else contextlib.nullcontext()


def timed(fn: Callable[..., R]) -> Callable[..., R]:
    """Run `fn` with a fresh clock active and attach it to what it returns (as `.clock`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        clock = StageClock()
        with active(clock):
            result = fn(*args, **kwargs)
        clock.stop()
        result.clock = clock
        return result

    return wrapper
