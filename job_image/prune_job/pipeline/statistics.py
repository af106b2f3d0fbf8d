"""Calibration statistics gathered by tiny hooks on the target layers.

Layers that read the very same input tensor (q/k/v; gate/up) are found from
the hooks, not from names: they form one group with one accumulator, so
SparseGPT builds one Hessian and one factorisation for all of them.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from prune_job.pipeline.forward import MicroBatch, StopForward
from prune_job.pipeline.model import Target
from prune_job.pipeline.stages import stage


@dataclass
class Group:
    """Targets that share one input, in the order the forward calls them."""

    members: list[Target]
    stats: Any = None

    @property
    def leader(self) -> Target:
        return self.members[0]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.members]


def _input_key(x: torch.Tensor) -> tuple:
    return (x.data_ptr(), tuple(x.shape), tuple(x.stride()))


@dataclass
class GroupCollector:
    """Hooks that learn the groups on the first micro-batch and then feed each
    group's accumulator. After the first micro-batch, each forward is stopped as soon
    as every leader has seen its input (the block's output is not needed: the
    propagation forward computes it with the pruned weights). With `first_group_only`,
    the forward is stopped as soon as a layer outside the first group is reached
    (sequential pruning)."""

    targets: list[Target]
    make_stats: Optional[Callable[[int, torch.device], Any]]
    first_group_only: bool = False
    groups: list[Group] = field(default_factory=list)
    _group_of: dict[int, Group] = field(default_factory=dict)
    _learning: bool = True
    _seen: dict[tuple, tuple[torch.Tensor, Group]] = field(default_factory=dict)
    _calls: int = 0  # leader inputs seen in this micro-batch
    _needed: int = 0  # leader inputs of the first micro-batch: once seen, the rest of a forward is not needed

    def _hook(self, target: Target) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0]
            group = self._group_of.get(id(target.module))
            if self._learning and group is None:
                group = self._learn(target, x)
            if group is None or (self.first_group_only and group is not self.groups[0]):
                raise StopForward
            if target is group.leader:
                if group.stats is not None:
                    group.stats.add(x)
                self._calls += 1
                if not self._learning and self._calls == self._needed:
                    raise StopForward  # the members are known and every leader has its input

        return hook

    def _learn(self, target: Target, x: torch.Tensor) -> Optional[Group]:
        key = _input_key(x)
        if key in self._seen:
            group = self._seen[key][1]
            group.members.append(target)
        else:
            if self.first_group_only and self.groups:
                return None
            stats = self.make_stats(target.in_features, x.device) if self.make_stats else None
            group = Group([target], stats)
            self.groups.append(group)
            self._seen[key] = (x, group)  # holding x keeps its address from being reused
        self._group_of[id(target.module)] = group
        return group

    @contextlib.contextmanager
    def hooked(self) -> Iterator[None]:
        hooks = [t.module.register_forward_pre_hook(self._hook(t)) for t in self.targets]
        try:
            yield
        finally:
            for h in hooks:
                h.remove()

    def run(self, block: nn.Module, inputs: list[MicroBatch], device: torch.device) -> list[Group]:
        with stage("statistics"), self.hooked(), torch.no_grad():
            for mb in inputs:
                self._calls = 0
                with contextlib.suppress(StopForward):
                    mb.call(block, device)
                if self._learning:
                    self._needed, self._learning = self._calls, False
                self._seen.clear()
        return self.groups[:1] if self.first_group_only else self.groups
