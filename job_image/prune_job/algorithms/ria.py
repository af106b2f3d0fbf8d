"""RIA (Zhang et al., 2024, "Plug-and-Play"): relative importance times activation norm.

score_ij = (|W_ij| / sum_k |W_ik| + |W_ij| / sum_k |W_kj|) * ||X_j||_2 ** a
(row sum over the row's inputs, column sum over the outputs reading input j).
"""
from __future__ import annotations

import torch

RIA_POWER = 0.5


def ria_scores(W: torch.Tensor, col_sq_norm: torch.Tensor, power: float = RIA_POWER) -> torch.Tensor:
    """W [out, in], col_sq_norm [in] (sum over tokens of x_j^2) -> scores [out, in] fp32, higher keeps."""
    if col_sq_norm.shape != (W.shape[1],):
        raise ValueError(f"column norms of shape {tuple(col_sq_norm.shape)} do not fit a weight of shape {tuple(W.shape)}")
    A = W.abs().float()
    tiny = torch.finfo(torch.float32).tiny
    relative = A / A.sum(dim=1, keepdim=True).clamp_min(tiny) + A / A.sum(dim=0, keepdim=True).clamp_min(tiny)
    return relative.mul_(col_sq_norm.to(device=W.device, dtype=torch.float32).sqrt().pow(power))
