"""SparseGPT (Frantar & Alistarh, 2023): OBS-compensated pruning from the layer Hessian.

Three verbs, as in the paper's method: accumulate H = 2/n sum x x^T (HessianStats),
factorise it once per distinct input (factorise -> Factor, shared by q/k/v or
gate/up), prune each weight against the factor (sparsegpt_prune).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from prune_job.algorithms.masks import check_nm_width, is_noop, removed_count, select_mask
from prune_job.spec import Pattern

ADVICE = (
    "raise spec.pruning.dampening (e.g. 0.01 -> 0.1) or use more calibration samples "
    "(spec.calibration.samples / sequenceLength)"
)


class FactorizationError(RuntimeError):
    """The damped Hessian could not be factorised; the message says what to change."""


class HessianStats:
    """Running mean H = 2/n sum_t x_t x_t^T in fp32 over n tokens (rescaled per batch, so
    its magnitude never grows with the number of batches)."""

    def __init__(self, in_features: int, device: Optional[torch.device] = None):
        self.in_features = in_features
        self.device = device
        self.H: Optional[torch.Tensor] = None
        self.n = 0

    def add(self, X: torch.Tensor) -> None:
        """X [..., in_features] in any float dtype."""
        x = X.detach().reshape(-1, self.in_features)
        if self.H is None:
            device = self.device or x.device
            self.H = torch.zeros(self.in_features, self.in_features, dtype=torch.float32, device=device)
        x = x.to(device=self.H.device, dtype=torch.float32)
        t = x.shape[0]
        if t == 0:
            return
        n = self.n + t
        self.H.addmm_(x.T, x, beta=self.n / n, alpha=2.0 / n)
        self.n = n

    @property
    def col_sq_norm(self) -> Optional[torch.Tensor]:
        """sum_t x_j^2 from diag(H): lets Wanda run from the same statistics."""
        return None if self.H is None else torch.diagonal(self.H) * (self.n / 2.0)

    def free(self) -> None:
        self.H = None


@dataclass(frozen=True)
class Factor:
    """Upper Cholesky factor U of the damped inverse Hessian (H^-1 = U^T U), fp32.

    `dead` marks inputs that were never active (diag H == 0): their weight columns are
    zeroed. Read-only: one Factor serves every weight that reads the same input.
    """

    U: torch.Tensor
    dead: torch.Tensor
    damp: float

    @property
    def in_features(self) -> int:
        return self.U.shape[0]


def factorise(H: torch.Tensor, dampening: float, overwrite: bool = False) -> Factor:
    """Damped Hessian -> Factor. H is left untouched unless `overwrite` (saves one n^2 buffer).

    Dead inputs get H_ii = 1; `dampening` * mean(diag H) is added to the diagonal; then
    U = cholesky(cholesky_inverse(cholesky(H)), upper). Raises FactorizationError.
    """
    if H is None:
        raise FactorizationError("no calibration activations reached this layer; check the calibration data")
    if H.dim() != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"H must be square, got shape {tuple(H.shape)}")
    if dampening < 0:
        raise ValueError(f"dampening must be >= 0, got {dampening}")
    A = H if overwrite and H.dtype == torch.float32 else H.to(torch.float32, copy=True)
    if not bool(torch.isfinite(A).all()):
        raise FactorizationError(f"the Hessian has NaN or infinite entries (overflowing activations?); {ADVICE}")
    diag = torch.diagonal(A)
    dead = diag == 0
    diag.masked_fill_(dead, 1.0)
    damp = dampening * float(diag.mean())
    diag.add_(damp)
    L = _cholesky(A, "the damped Hessian")
    torch.cholesky_inverse(L, out=A)
    U = _cholesky(A, "its inverse", upper=True, out=L)
    return Factor(U=U, dead=dead, damp=damp)


def _cholesky(A: torch.Tensor, what: str, upper: bool = False, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    if out is None:
        L, info = torch.linalg.cholesky_ex(A, upper=upper)
    else:
        info = torch.empty((), dtype=torch.int32, device=A.device)
        L, info = torch.linalg.cholesky_ex(A, upper=upper, out=(out, info))
    if int(info) != 0 or not bool(torch.isfinite(torch.diagonal(L)).all()):
        raise FactorizationError(
            f"Cholesky factorisation of {what} failed (not positive definite at column {int(info)}); {ADVICE}"
        )
    return L


def sparsegpt_prune(
    W: torch.Tensor, factor: Factor, sparsity: float, pattern: Optional[Pattern], block_size: int = 128
) -> torch.Tensor:
    """W [out, in] -> W' (same dtype/device), pruned with OBS compensation of the kept weights.

    Columns are processed in blocks of `block_size` (rounded up to a multiple of M for N:M)
    with lazy batch updates of the later columns. Unstructured: the mask is chosen per
    column block from w^2 / [U]_jj^2, exactly floor(s * out * blockcols) removed per block.
    N:M: at each group start the n best of the m next columns are kept, row by row.
    Sparsity 0 returns W itself. `factor` is not modified.
    """
    if is_noop(sparsity, pattern):
        return W
    rows, cols = W.shape
    if factor.in_features != cols:
        raise ValueError(f"factor is for {factor.in_features} inputs, weight has shape {tuple(W.shape)}")
    if pattern is not None:
        check_nm_width(W.shape, pattern)
        block_size = -(-block_size // pattern.m) * pattern.m
    U = factor.U.to(W.device)
    WT = torch.empty(cols, rows, dtype=torch.float32, device=W.device)
    WT.copy_(W.T)  # transposed working copy: column j of W is the contiguous row WT[j]
    WT[factor.dead.to(W.device)] = 0
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        ErrT = _prune_block(WT[i1:i2], U[i1:i2, i1:i2], sparsity, pattern)
        if i2 < cols:
            WT[i2:].addmm_(U[i1:i2, i2:].T, ErrT, alpha=-1.0)
    out = torch.empty(W.shape, dtype=W.dtype, device=W.device)
    return out.copy_(WT.T)


def _prune_block(WT1: torch.Tensor, U1: torch.Tensor, sparsity: float, pattern: Optional[Pattern]) -> torch.Tensor:
    """Prune the column block WT1 [count, rows] in place; returns the scaled errors Err^T."""
    count = WT1.shape[0]
    d = torch.diagonal(U1)
    remove = torch.zeros(WT1.shape, dtype=torch.bool, device=WT1.device)
    scale = torch.zeros_like(WT1)  # remove / d: the error of column i is w_i * scale_i
    ErrT = torch.empty_like(WT1)
    if pattern is None:
        scores = WT1.square() / d.square().unsqueeze(1)
        remove = ~select_mask(scores.view(1, -1), sparsity, None, group="row").view(WT1.shape)
        torch.div(remove, d.unsqueeze(1), out=scale)
    for i in range(count):
        if pattern is not None and i % pattern.m == 0:
            _select_group(WT1, d, i, pattern, remove, scale)
        torch.mul(WT1[i], scale[i], out=ErrT[i])
        if i + 1 < count:
            WT1[i + 1 :].addr_(U1[i, i + 1 :], ErrT[i], alpha=-1.0)
    WT1.masked_fill_(remove, 0)
    return ErrT


def _select_group(
    WT1: torch.Tensor, d: torch.Tensor, i: int, pattern: Pattern, remove: torch.Tensor, scale: torch.Tensor
) -> None:
    """N:M choice for columns i..i+m of the block, from the weights as updated so far."""
    j = i + pattern.m
    scores = WT1[i:j].square() / d[i:j].square().unsqueeze(1)
    keep = select_mask(scores.T, pattern.sparsity, pattern)
    remove[i:j] = ~keep.T
    torch.div(remove[i:j], d[i:j].unsqueeze(1), out=scale[i:j])
