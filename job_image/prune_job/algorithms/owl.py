"""OWL (Yin et al., 2024, "Outlier Weighed Layerwise sparsity"): per-block sparsity.

A block's outlier ratio is the fraction of its activation-weighted scores |W_ij| ||X_j||
above `m` times their mean over the whole block (all its layers' scores together, as OWL's
code concatenates them). Blocks with more outliers are pruned less. The
ratios are centred on their parameter-weighted mean and scaled so the largest deviation is
`lam`: sparsity_l = target - lam * c_l / max|c|. So every block lies in [target - lam,
target + lam] and the parameter-weighted mean of the sparsities is exactly the target (the
model-wide sparsity, up to the per-row rounding of each layer's count).
"""
from __future__ import annotations

from typing import Sequence

import torch

OWL_M = 5.0
OWL_LAMBDA = 0.08


class OutlierCount:
    """Counts of outlier scores over the layers of one block: the threshold is m times the mean
    over all the block's scores, so the count is taken once every layer has been added."""

    def __init__(self, m: float = OWL_M):
        self.m = m
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.total = 0

    def add(self, W: torch.Tensor, col_sq_norm: torch.Tensor) -> None:
        self.layers.append((W, col_sq_norm))
        self.total += W.numel()

    @staticmethod
    def _scores(W: torch.Tensor, col_sq_norm: torch.Tensor) -> torch.Tensor:
        return W.abs().float() * col_sq_norm.to(device=W.device, dtype=torch.float32).sqrt()

    @property
    def ratio(self) -> float:
        if not self.total:
            return 0.0
        mean = sum(float(self._scores(W, n).sum(dtype=torch.float64)) for W, n in self.layers) / self.total
        outliers = sum(int((self._scores(W, n) > self.m * mean).sum()) for W, n in self.layers)
        return outliers / self.total


def owl_sparsities(ratios: Sequence[float], sizes: Sequence[int], target: float, lam: float) -> list[float]:
    """Per-block sparsity from outlier ratios and block sizes (weights pruned in each block)."""
    if len(ratios) != len(sizes) or not ratios:
        raise ValueError("owl_sparsities needs one ratio and one size per block")
    if not 0 <= lam <= min(target, 1 - target):
        raise ValueError(f"lambda {lam} must lie in [0, min(sparsity, 1 - sparsity)] for sparsity {target}")
    r = torch.tensor(ratios, dtype=torch.float64)
    n = torch.tensor(sizes, dtype=torch.float64)
    c = r - (r * n).sum() / n.sum()
    spread = float(c.abs().max())
    if spread == 0.0:
        return [target] * len(ratios)
    s = target - lam * c / spread
    return [float(min(max(v, 0.0), 1.0 - 1e-9)) for v in s]
