"""OWL's pre-pass: per-block outlier ratios of the dense model, before any block is pruned.

OWL allocates sparsity by block from the outlier ratios of all blocks at once, and the
model-wide mean must be exactly the target, so the ratios are needed before block 0 is
pruned. This pass streams the blocks once more (load, Wanda norms over the calibration
activations, count outliers, advance, release), on a copy of the block-0 inputs, through
the dense blocks: the ratios are those of the dense model, as in OWL's own code. It costs
one dense forward of the calibration data and one extra read of every block, and holds a
second copy of the calibration activations on the host while it runs.
"""
from __future__ import annotations

from prune_job.algorithms.owl import OutlierCount, owl_sparsities
from prune_job.algorithms.wanda import WandaStats
from typing import Callable, Optional

from prune_job.pipeline.forward import MicroBatch, advance
from prune_job.pipeline.model import ModelHandle, select_targets
from prune_job.pipeline.statistics import GroupCollector
from prune_job.spec import Pruning


def owl_block_sparsities(handle: ModelHandle, pruning: Pruning, inputs: list[MicroBatch],
                         reduce: Optional[Callable[[list], None]] = None) -> list[float]:
    """One sparsity per decoder block; `inputs` (block 0's) are left untouched. `reduce`: sums each
    block's groups' norms over the ranks' calibration shares (pipeline/distributed.py), so every rank
    computes the allocation of the whole calibration."""
    hidden = [MicroBatch(mb.hidden.clone(), mb.args, mb.kwargs, mb.hidden_in_kwargs) for mb in inputs]
    ratios, sizes = [], []
    for i in range(handle.num_blocks):
        prefix = handle.block_prefix(i)
        handle.load_tree(prefix)
        block = handle.blocks[i]
        targets = select_targets(block, prefix, pruning.targets.include, pruning.targets.exclude)
        groups = GroupCollector(targets, lambda n, device: WandaStats(n, device=device)).run(block, hidden, handle.device)
        if reduce is not None:
            reduce(groups)
        count = OutlierCount(pruning.owl_m)
        for group in groups:
            for t in group.members:
                count.add(t.get_weight(), group.stats.col_sq_norm)
        ratios.append(count.ratio)
        sizes.append(count.total)
        if i + 1 < handle.num_blocks:
            advance(block, hidden, handle.device)
        handle.release_tree(prefix)
    return owl_sparsities(ratios, sizes, pruning.sparsity, pruning.owl_lambda)
