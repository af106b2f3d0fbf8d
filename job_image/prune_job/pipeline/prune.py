"""The block-sequential pruning loop: one decoder block in memory at a time.

For each block: load its tensors, gather statistics over the calibration
activations, prune, recompute the block's outputs with the pruned weights
(the next block's inputs), hand the tensors to the writer, free the block.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import torch

from prune_job import algorithms
from prune_job.algorithms import recipe
from prune_job.checkpoint.sparsity import overall_sparsity
from prune_job.pipeline.allocation import owl_block_sparsities
from prune_job.pipeline.forward import MicroBatch, advance, capture_block_inputs
from prune_job.pipeline.model import ModelHandle, Target, select_targets
from prune_job.pipeline.permute import ChannelPermuter
from prune_job.pipeline.stages import StageClock, stage, timed
from prune_job.pipeline.statistics import Group, GroupCollector
from prune_job.spec import LayerSparsity, Pattern, Pruning, SpecError


class TensorSink(Protocol):
    """Where finished tensors go (the checkpoint writer). For a pruned weight it returns the
    zeros it counted while encoding: the one count of measured sparsity."""

    def add(self, name: str, tensor: torch.Tensor, pattern: Optional[Pattern] = None, pruned: bool = False,
            transposed: bool = False) -> Optional[LayerSparsity]: ...


@dataclass
class PruneResult:
    """The pruned layers, as counted by the sink while writing them."""

    layers: list[LayerSparsity] = field(default_factory=list)
    clock: Optional[StageClock] = None  # where the seconds went (pipeline/stages.py)

    @property
    def sparsity(self) -> float:
        return overall_sparsity(self.layers) or 0.0


BlockCallback = Callable[[int, int, float], None]  # (blocks done, blocks total, seconds of this block)


class Journal(Protocol):
    """Resume after an interruption (resume.BlockJournal): where to start, how to rebuild that block's
    inputs from the finished blocks, and the commit after each block."""

    start_block: int
    layers: list[LayerSparsity]

    def replay(self, handle: ModelHandle, inputs: list[MicroBatch]) -> None: ...

    def commit(self, i: int, layers: list[LayerSparsity]) -> None: ...


def block_targets(handle: ModelHandle, i: int, pruning: Pruning) -> list[Target]:
    return select_targets(handle.blocks[i], handle.block_prefix(i), pruning.targets.include, pruning.targets.exclude)


def check_targets(handle: ModelHandle, pruning: Pruning) -> None:
    """Refuse what cannot run before any tensor is read: N:M widths, empty selections."""
    targets = [t for i in range(handle.num_blocks) for t in block_targets(handle, i, pruning)]
    if not targets:
        raise SpecError([("spec.pruning.targets", "selects no Linear layer inside the decoder blocks")])
    nm = pruning.nm
    if nm is not None:
        bad = sorted({t.in_features for t in targets if t.in_features % nm.m})
        if bad:
            raise SpecError([(
                "spec.pruning.pattern",
                f"{nm} needs input widths divisible by {nm.m}; this model has layers of width {bad}",
            )])


class Method:
    """The method's statistics and its per-group prune, over pure algorithm functions."""

    def __init__(self, pruning: Pruning):
        self.pruning = pruning
        self.sparsity = pruning.sparsity  # this block's (allocation owl: set per block by prune_model)
        self.block_sparsity: Optional[list[float]] = None
        self.permuter: Optional[ChannelPermuter] = None

    reduce_norms = None  # OWL's norms summed over ranks (distributed.DistributedMethod)

    def make_stats(self, in_features: int, device: torch.device):
        if not recipe.needs_hessian(self.pruning):
            return algorithms.WandaStats(in_features, device=device)
        return algorithms.HessianStats(in_features, device=device)

    def prune_group(self, group: Group) -> None:
        p = self.pruning
        if self.permuter is not None:
            with stage("solve"):  # the permutation search is part of choosing the mask
                self.permuter.fold(group.members, group.stats)
        with stage("factorise"):
            factor = recipe.layer_factor(p, group.stats.H) if p.method == "sparsegpt" else None
        weights = [t.get_weight() for t in group.members]
        with stage("solve"):
            swept = recipe.obs_sweeps(weights, p, self.sparsity, factor)  # the group's weights in one sweep
        for t, W, obs in zip(group.members, weights, swept):
            try:
                with stage("solve"):
                    new = recipe.prune_weight(W, p, self.sparsity, group.stats, factor, obs)
            except algorithms.FactorizationError as err:
                raise algorithms.FactorizationError(f"{t.name}: {err}") from None
            t.set_weight(new)
        group.stats = None

    def prune_groups(self, groups: list[Group]) -> None:
        """Prune these groups (one process; pipeline/distributed.py spreads them over ranks)."""
        for g in groups:
            self.prune_group(g)


def prune_block(handle: ModelHandle, i: int, inputs: list[MicroBatch], method: Method) -> list[Group]:
    """Prune block i in place (its tensors must be loaded); return its target layers in their groups."""
    pruning = method.pruning
    targets = block_targets(handle, i, pruning)
    block = handle.blocks[i]
    method.sparsity = method.block_sparsity[i] if method.block_sparsity else pruning.sparsity
    if method.sparsity == 0:
        groups: list[Group] = [Group([t]) for t in targets]
    elif not pruning.needs_calibration:
        groups = [Group([t]) for t in targets]
        method.prune_groups(groups)
    elif pruning.sequential:
        groups, remaining = [], list(targets)
        while remaining:  # each pass sees the layers pruned so far
            found = GroupCollector(remaining, method.make_stats, first_group_only=True).run(block, inputs, handle.device)
            if not found:
                raise RuntimeError(f"layers never ran in block {i}'s forward: {[t.name for t in remaining]}")
            method.prune_groups(found[:1])
            groups.append(found[0])
            done = {id(t) for t in found[0].members}
            remaining = [t for t in remaining if id(t) not in done]
    else:
        groups = GroupCollector(targets, method.make_stats).run(block, inputs, handle.device)
        missing = {id(t) for t in targets} - {id(t) for g in groups for t in g.members}
        if missing:
            raise RuntimeError(f"some target layers never ran in block {i}'s forward")
        method.prune_groups(groups)
    return groups


def write_block(handle: ModelHandle, i: int, groups: list[Group], pattern: Optional[Pattern],
                sink: TensorSink) -> list[LayerSparsity]:
    """The block's tensors, under the keys the source checkpoint used; the pruned layers as the sink counted them."""
    prefix = handle.block_prefix(i)
    pruned = {f"{t.name}.weight": (t, g) for g in groups for t in g.members}
    state = handle.model.get_submodule(prefix).state_dict()
    layers: list[LayerSparsity] = []
    for name, key in handle.state_keys(prefix):
        tensor = state[name.removeprefix(prefix + ".")]
        target, group = pruned.get(name, (None, None))
        counted = sink.add(key, tensor, pattern=pattern if target is not None else None, pruned=target is not None,
                           transposed=target is not None and target.transposed)
        if target is not None and counted is not None:
            layers.append(counted.model_copy(update={"name": target.name, "block": i, "group": group.names}))
    return layers


def write_outer(handle: ModelHandle, sink: TensorSink) -> None:
    """Tensors outside the blocks (embeddings, norms, head), copied one at a time."""
    block_prefix = handle.blocks_path + "."
    for key in sorted(handle.index.location):
        if key.startswith(block_prefix):
            continue
        tensor = handle.index.read([key])[key]
        sink.add(key, tensor.to(handle.dtype) if tensor.is_floating_point() else tensor)


@timed
def prune_model(
    handle: ModelHandle,
    pruning: Pruning,
    batches: list[torch.Tensor],
    sink: Optional[TensorSink],
    on_block: Optional[BlockCallback] = None,
    start_block: int = 0,
    journal: Optional[Journal] = None,
    method: Optional[Method] = None,
) -> PruneResult:
    """Prune every block in order. `batches` are micro-batches of token ids; the targets must
    have passed `check_targets`. With a `journal`, start after its finished blocks. `method`:
    how groups are pruned (default: in this process); no `sink`: nothing is written (a rank
    other than the writer)."""
    method = method or Method(pruning)
    method.permuter = ChannelPermuter(handle, pruning) if pruning.permute else None
    result = PruneResult(journal.layers if journal is not None else [])
    start_block = journal.start_block if journal is not None else start_block
    inputs: list[MicroBatch] = []
    if pruning.needs_calibration:
        with stage("capture"):
            inputs = capture_block_inputs(handle, batches)
            handle.release_outer()  # the embeddings are not needed again until write_outer reads them from disk
        if pruning.allocation == "owl":  # from the dense model's activations, before any replay
            with stage("statistics"):
                method.block_sparsity = owl_block_sparsities(handle, pruning, inputs, method.reduce_norms)
        if journal is not None:
            with stage("replay"):
                journal.replay(handle, inputs)
    for i in range(start_block, handle.num_blocks):
        t0 = time.perf_counter()
        prefix = handle.block_prefix(i)
        with stage("read"):
            handle.load_tree(prefix)
        groups = prune_block(handle, i, inputs, method)
        if inputs and i + 1 < handle.num_blocks:
            with stage("propagate"):
                advance(handle.blocks[i], inputs, handle.device)
        if sink is not None:
            with stage("write"):
                result.layers += write_block(handle, i, groups, pruning.nm, sink)
        handle.release_tree(prefix)
        if journal is not None:
            with stage("write"):
                journal.commit(i, result.layers)
        if on_block:
            on_block(i + 1, handle.num_blocks, time.perf_counter() - t0)
    if sink is not None:
        with stage("write"):
            write_outer(handle, sink)
    return result
