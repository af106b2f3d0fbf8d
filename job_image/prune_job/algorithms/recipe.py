"""The recipe: which score chooses the mask, which refinement improves it, which update
recomputes the kept weights. It maps the fields of `spec.pruning` onto the pure functions
of this package; the pipeline calls it once per layer with the layer's statistics.

    method     mask from                          update (default)   statistics
    magnitude  |W| (one threshold per layer)      none               none
    wanda      score: wanda |W|·||X|| or ria      none | admm        ||X_j||^2 (Hessian for admm/dsnot)
    sparsegpt  SparseGPT's OBS sweep              obs | admm         Hessian

`refine: dsnot` swaps entries of the chosen mask before the update (with sparsegpt it
needs `update: admm`, since OBS chooses its mask while it updates the weights).
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from prune_job.algorithms.admm import admm_update
from prune_job.algorithms.dsnot import dsnot_refine
from prune_job.algorithms.magnitude import magnitude_prune
from prune_job.algorithms.masks import is_noop, select_mask
from prune_job.algorithms.ria import ria_scores
from prune_job.algorithms.sparsegpt import Factor, factorise, sparsegpt_prune, sparsegpt_prune_shared
from prune_job.algorithms.wanda import column_sq_norms
from prune_job.spec import Pruning


def needs_hessian(pruning: Pruning) -> bool:
    """Whether the layer statistics must be the full Hessian (not only its diagonal)."""
    return pruning.method == "sparsegpt" or pruning.effective_update == "admm" or pruning.refine == "dsnot"


def layer_factor(pruning: Pruning, H: Optional[torch.Tensor]) -> Optional[Factor]:
    """SparseGPT's factor of a group's Hessian (None for other methods). H is kept intact
    when the recipe still needs it after the OBS sweep (admm update or dsnot)."""
    if pruning.method != "sparsegpt":
        return None
    keep_H = pruning.effective_update == "admm" or pruning.refine == "dsnot"
    return factorise(H, pruning.dampening, overwrite=not keep_H)


def obs_sweeps(weights: list[torch.Tensor], pruning: Pruning, sparsity: float,
               factor: Optional[Factor]) -> list[Optional[torch.Tensor]]:
    """SparseGPT's OBS sweep of all the weights that share `factor`, in one pass (one None
    per weight for other methods); each result goes to `prune_weight` as `swept`."""
    if pruning.method != "sparsegpt" or is_noop(sparsity, pruning.nm):
        return [None] * len(weights)
    return sparsegpt_prune_shared(weights, factor, sparsity, pruning.nm, pruning.block_size)


def prune_weight(W: torch.Tensor, pruning: Pruning, sparsity: float, stats: Any,
                 factor: Optional[Factor] = None, swept: Optional[torch.Tensor] = None) -> torch.Tensor:
    """W [out, in] -> W' (same dtype/device) at `sparsity` (the block's, under OWL allocation).
    `stats`: WandaStats or HessianStats of the layer's input (None for magnitude); `swept`:
    W's OBS sweep when `obs_sweeps` already made it."""
    nm = pruning.nm
    if is_noop(sparsity, nm):
        return W
    if pruning.method == "magnitude":
        return magnitude_prune(W, sparsity, nm)
    if pruning.method == "sparsegpt":
        pruned = swept if swept is not None else sparsegpt_prune(W, factor, sparsity, nm, pruning.block_size)
        if pruning.effective_update == "obs":
            return pruned
        keep = pruned != 0
    else:
        keep = select_mask(mask_scores(W, pruning, stats), sparsity, nm, group="row")
    H = getattr(stats, "H", None)
    if pruning.refine == "dsnot":
        keep = dsnot_refine(W, keep, H, nm, pruning.refine_cycles)
    if pruning.effective_update == "admm":
        return admm_update(W, keep, H, pruning.dampening, pruning.admm_iterations)
    return W.masked_fill(~keep, 0)


def mask_scores(W: torch.Tensor, pruning: Pruning, stats: Any) -> torch.Tensor:
    """The Wanda family's scores (higher keeps): wanda |W_ij| ||X_j|| or RIA."""
    norms = column_sq_norms(stats).to(device=W.device, dtype=torch.float32)
    if norms.shape != (W.shape[1],):
        raise ValueError(f"column norms of shape {tuple(norms.shape)} do not fit a weight of shape {tuple(W.shape)}")
    if pruning.score == "ria":
        return ria_scores(W, norms, pruning.ria_power)
    return W.abs().float().mul_(norms.sqrt())
