"""Wanda: score |W_ij| * ||X_j||_2, compared within each output row."""
from __future__ import annotations

from typing import Optional, Union

import torch

from prune_job.algorithms.masks import is_noop, select_mask
from prune_job.spec import Pattern


class WandaStats:
    """Accumulates, per input feature j, sum over tokens of x_j^2 and the token count. Each
    micro-batch's squares are summed in fp32, the micro-batches in fp64: the total then rounds to
    the same fp32 whatever the order and grouping of the micro-batches, so several ranks (each
    summing its share, then reduced in fp64) score exactly as one process does, and a rounding
    difference cannot flip a near-tie whose change would grow through the later blocks."""

    def __init__(self, in_features: int, device: Optional[torch.device] = None):
        self.in_features = in_features
        self.device = device
        self.col_sq_norm: Optional[torch.Tensor] = None
        self.n = 0

    def add(self, X: torch.Tensor) -> None:
        """X [..., in_features] in any float dtype; squares are summed in fp32 without a full copy."""
        x = X.detach().reshape(-1, self.in_features)
        sq = torch.linalg.vector_norm(x, ord=2, dim=0, dtype=torch.float32).square_()
        if self.col_sq_norm is None:
            self.col_sq_norm = torch.zeros(self.in_features, dtype=torch.float64, device=self.device or x.device)
        self.col_sq_norm += sq.to(self.col_sq_norm.device, torch.float64)
        self.n += x.shape[0]


ColumnNorms = Union[WandaStats, torch.Tensor]


def column_sq_norms(stats: ColumnNorms) -> torch.Tensor:
    """||X_j||^2 from WandaStats (or anything with .col_sq_norm) or a tensor [in_features]."""
    norms = stats if isinstance(stats, torch.Tensor) else stats.col_sq_norm
    if norms is None:
        raise ValueError("no activations were accumulated for this layer (its statistics are empty)")
    return norms


def wanda_prune(W: torch.Tensor, sparsity: float, pattern: Optional[Pattern], stats: ColumnNorms) -> torch.Tensor:
    """W [out, in] -> W' (same dtype/device): unstructured removes exactly floor(s * in) per
    output row; N:M keeps n per m consecutive inputs of each row. Sparsity 0 returns W itself."""
    if is_noop(sparsity, pattern):
        return W
    norms = column_sq_norms(stats).to(device=W.device, dtype=torch.float32)
    if norms.shape != (W.shape[1],):
        raise ValueError(f"column norms of shape {tuple(norms.shape)} do not fit a weight of shape {tuple(W.shape)}")
    scores = W.abs().float().mul_(norms.sqrt())
    keep = select_mask(scores, sparsity, pattern, group="row")
    return W.masked_fill(~keep, 0)
