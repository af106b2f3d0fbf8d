"""The one periodic resync of both controllers.

Each controller keeps the objects it knows in a Kopf index (`@kopf.index`, fed
by the watch stream: no listing, no hand-kept set) and registers a `Resync`:
a task, started with the operator, that every `interval` seconds syncs each
due object of that index in a worker thread, one after the other. It is what
starts PruneSchedule runs on time, and the safety net for a PruneJob whose
Job event met an unreachable API server.

Why a task and not `@kopf.timer`: Kopf puts a finalizer on every object that
has a timer or daemon, so a stopped (or uninstalled) operator would block the
deletion of every PruneJob and PruneSchedule, and of their namespaces. Event
handlers and indices need no finalizer.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import kopf

from prune_operator import metrics
from prune_operator.config import OperatorConfig

Key = tuple[str, str]  # (namespace, name): the key of both controllers' indices


@dataclass(frozen=True)
class Resync:
    name: str  # handler ids `<name>-start`/`-stop`, and the metric label of its errors
    index: str  # the id of the Kopf index of known objects
    interval: Callable[[OperatorConfig], float]
    due: Callable[[kopf.Index], Iterable[Key]]  # read on the event loop, where Kopf writes the index
    sync: Callable[[Any, str, str, Any], Any]  # (memo, namespace, name, logger)

    def register(self, registry: kopf.OperatorRegistry) -> None:
        kopf.on.startup(id=f"{self.name}-start", registry=registry)(self.start)
        kopf.on.cleanup(id=f"{self.name}-stop", registry=registry)(self.stop)

    async def start(self, memo: Any, logger: Any, **indices: Any) -> None:
        stopped = threading.Event()
        task = asyncio.get_running_loop().create_task(self.forever(indices[self.index], memo, logger, stopped))
        memo[self.name] = (task, stopped)

    async def stop(self, memo: Any, **_: Any) -> None:
        task, stopped = memo.get(self.name) or (None, None)
        if task is not None:
            stopped.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def forever(self, index: kopf.Index, memo: Any, logger: Any, stopped: threading.Event) -> None:
        while True:
            await asyncio.sleep(self.interval(memo.config))
            keys = sorted(self.due(index))
            one_round = asyncio.ensure_future(asyncio.to_thread(self.sync_all, keys, memo, logger, stopped))
            try:
                await asyncio.shield(one_round)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await one_round  # the round in flight ends at its next object (`stopped` is set)
                raise

    def sync_all(self, keys: list[Key], memo: Any, logger: Any, stopped: threading.Event) -> None:
        for namespace, name in keys:
            if stopped.is_set():
                return
            try:
                self.sync(memo, namespace, name, logger)
            except Exception as err:  # noqa: BLE001 - one object's trouble must not stop the others' resync
                metrics.HANDLER_ERRORS.labels(self.name, type(err).__name__).inc()
                logger.warning(f"{self.name}: {namespace}/{name}: {err}")
