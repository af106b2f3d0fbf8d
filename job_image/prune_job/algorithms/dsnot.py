"""DSnoT-style mask refinement (Zhang et al., 2024, "Dynamic Sparse No Training").

Training-free prune-and-grow: in each cycle every output row may swap one removed weight
back in (grow) for one kept weight out (prune), when the swap lowers the row's expected
reconstruction error e = d^T H d, d = w - w' (the removed part of the row, H = the layer's
second moment of inputs). DSnoT approximates this error from per-input means and
variances; with the Hessian at hand the change of a swap is computed exactly:
grow j:  -2 w_j (Hd)_j + w_j^2 H_jj;   then prune k:  2 w_k (Hd')_k + w_k^2 H_kk.
A swap is taken only when their sum is negative, so the error never rises; each row keeps
its count of weights, and under N:M the pair lies in one group of M, so validity is exact.
"""
from __future__ import annotations

from typing import Optional

import torch

from prune_job.spec import Pattern

DSNOT_CYCLES = 100


def reconstruction_error(W: torch.Tensor, keep: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Per-row error d^T H d of removing W outside `keep` (no update of the kept weights), fp64 [out]."""
    d = W.double() * (~keep)
    return ((d @ H.double()) * d).sum(dim=1)


def dsnot_refine(W: torch.Tensor, keep: torch.Tensor, H: torch.Tensor, pattern: Optional[Pattern] = None,
                 cycles: int = DSNOT_CYCLES) -> torch.Tensor:
    """W [out, in], keep [out, in] bool, H [in, in] -> a refined keep-mask (new tensor) with the
    same count per row (and per N:M group) whose per-row error is never higher."""
    if keep.shape != W.shape or H.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"shapes do not fit: W {tuple(W.shape)}, keep {tuple(keep.shape)}, H {tuple(H.shape)}")
    Hd = H.to(device=W.device, dtype=torch.float64)
    w = W.to(torch.float64)
    keep = keep.clone()
    G = (w * (~keep)) @ Hd  # H d per row
    hdiag = torch.diagonal(Hd)
    group = torch.arange(W.shape[1], device=W.device) // (pattern.m if pattern else W.shape[1])
    active = torch.arange(W.shape[0], device=W.device)  # rows still swapping: a row that found no
    for _ in range(cycles):  # improving swap keeps its state, so it never finds one later
        if active.numel() == 0:
            break
        active = _swap(w, keep, G, Hd, hdiag, active, group)
    return keep


def _swap(w, keep, G, Hd, hdiag, active, group) -> torch.Tensor:
    """One prune-and-grow step in each active row (in place); returns the rows that swapped."""
    inf = torch.tensor(float("inf"), dtype=w.dtype, device=w.device)
    wa, ka, Ga = w[active], keep[active], G[active]
    local = torch.arange(active.numel(), device=w.device)
    grow = torch.where(ka, inf, wa * (wa * hdiag - 2 * Ga))
    j = grow.argmin(dim=1)
    wj = wa[local, j]
    G_after = Ga - wj.unsqueeze(1) * Hd[j]
    allowed = ka & (group.unsqueeze(0) == group[j].unsqueeze(1))
    prune = torch.where(allowed, wa * (wa * hdiag + 2 * G_after), inf)
    k = prune.argmin(dim=1)
    gain = grow[local, j] + prune[local, k]
    scale = (wa * wa * hdiag).sum(dim=1)
    take = torch.isfinite(gain) & (gain < -1e-12 * scale)
    r, j, k = active[take], j[take], k[take]
    keep[r, j] = True
    keep[r, k] = False
    G[r] = G_after[take] + w[r, k].unsqueeze(1) * Hd[k]
    return r
