"""Magnitude pruning: remove the weights of smallest |W|."""
from __future__ import annotations

from typing import Optional

import torch

from prune_job.algorithms.masks import is_noop, select_mask
from prune_job.spec import Pattern


def magnitude_prune(W: torch.Tensor, sparsity: float, pattern: Optional[Pattern]) -> torch.Tensor:
    """W [out, in] -> W' of the same dtype and device, the smallest |W_ij| set to zero.

    Unstructured: the comparison group is the whole layer (one global threshold per
    weight matrix, as in classic magnitude pruning): exactly floor(s * out * in) zeros.
    N:M: exactly n kept per m consecutive inputs of each row. Sparsity 0 returns W itself.
    """
    if is_noop(sparsity, pattern):
        return W
    keep = select_mask(W.abs(), sparsity, pattern, group="layer")
    return W.masked_fill(~keep, 0)
