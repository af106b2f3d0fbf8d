"""SparseGPT (Frantar & Alistarh, 2023): OBS-compensated pruning from the layer Hessian.

Three verbs, as in the paper's method: accumulate H = 2/n sum x x^T (HessianStats),
factorise it once per distinct input (factorise -> Factor, shared by q/k/v or
gate/up), prune each weight against the factor (sparsegpt_prune).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from prune_job.algorithms.masks import check_nm_width, is_noop, keep_top_n, select_mask
from prune_job.spec import Pattern

SUB_BLOCK = 16  # columns solved with rank-1 updates before one GEMM onto the rest of the block

ADVICE = (
    "raise spec.pruning.dampening (e.g. 0.01 -> 0.1) or use more calibration samples "
    "(spec.calibration.samples / sequenceLength)"
)


class FactorizationError(RuntimeError):
    """The damped Hessian could not be factorised; the message says what to change."""


class HessianStats:
    """Running mean H = 2/n sum_t x_t x_t^T in fp32 over n tokens (rescaled per batch, so
    its magnitude never grows with the number of batches).

    H is symmetric, so `add` computes only its upper block triangle, in slabs of SLAB rows
    (about half the flops of the full product; each upper entry has the same bits as the
    full product's); reading `H` mirrors it into the lower triangle once.
    """

    SLAB = 192  # rows per product: narrower products lose more speed than the skipped half gains

    def __init__(self, in_features: int, device: Optional[torch.device] = None):
        self.in_features = in_features
        self.device = device
        self._H: Optional[torch.Tensor] = None
        self._mirrored = True
        self.n = 0

    def add(self, X: torch.Tensor) -> None:
        """X [..., in_features] in any float dtype."""
        x = X.detach().reshape(-1, self.in_features)
        if self._H is None:
            device = self.device or x.device
            self._H = torch.zeros(self.in_features, self.in_features, dtype=torch.float32, device=device)
        x = x.to(device=self._H.device, dtype=torch.float32)
        t = x.shape[0]
        if t == 0:
            return
        n = self.n + t
        for s in range(0, self.in_features, self.SLAB):
            e = min(s + self.SLAB, self.in_features)
            self._H[s:e, s:].addmm_(x[:, s:e].T, x[:, s:], beta=self.n / n, alpha=2.0 / n)
        self.n = n
        self._mirrored = False

    @property
    def H(self) -> Optional[torch.Tensor]:
        if not self._mirrored:
            _mirror_upper(self._H, self.SLAB)
            self._mirrored = True
        return self._H

    @H.setter
    def H(self, value: Optional[torch.Tensor]) -> None:
        self._H, self._mirrored = value, True

    @property
    def col_sq_norm(self) -> Optional[torch.Tensor]:
        """sum_t x_j^2 from diag(H): lets Wanda run from the same statistics."""
        return None if self._H is None else torch.diagonal(self._H) * (self.n / 2.0)

    def free(self) -> None:
        self.H = None


def _mirror_upper(H: torch.Tensor, slab: int) -> None:
    """Lower triangle of H := its upper triangle, transposed (a slab at a time, small scratch)."""
    n = H.shape[0]
    for s in range(0, n, slab):
        e = min(s + slab, n)
        D = H[s:e, s:e]
        D.copy_(torch.where(torch.ones_like(D, dtype=torch.bool).tril_(-1), D.T, D))
        H[e:, s:e].copy_(H[s:e, e:].T)


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
    """Damped Hessian -> Factor. H is left untouched unless `overwrite` (then it is used as
    scratch space and the peak is 2 n^2 floats instead of 3).

    Dead inputs get H_ii = 1; `dampening` * mean(diag H) is added to the diagonal. U, the
    upper Cholesky factor of H^-1, is computed without forming H^-1: with J the reversal
    permutation and J H J = M M^T (lower Cholesky), H^-1 = (J M^-1 J)^T (J M^-1 J), so
    U = J M^-1 J: one Cholesky and one triangular solve, about 3x fewer flops than
    cholesky -> cholesky_inverse -> cholesky, and no explicit inverse. Raises FactorizationError.
    """
    if H is None:
        raise FactorizationError("no calibration activations reached this layer; check the calibration data")
    if H.dim() != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"H must be square, got shape {tuple(H.shape)}")
    if dampening < 0:
        raise ValueError(f"dampening must be >= 0, got {dampening}")
    if not bool(torch.isfinite(torch.diagonal(H)).all()):
        raise FactorizationError(f"the Hessian has NaN or infinite entries (overflowing activations?); {ADVICE}")
    dead = torch.diagonal(H) == 0
    A = torch.empty(H.shape, dtype=torch.float32, device=H.device)
    _flip_into(H, A)  # A = J H J
    diag = torch.diagonal(A)
    diag.masked_fill_(dead.flip(0), 1.0)
    damp = dampening * float(diag.mean())
    diag.add_(damp)
    _cholesky(A)  # in place: A = M
    B = H if overwrite and H.dtype == torch.float32 else torch.empty_like(A)
    torch.eye(A.shape[0], out=B)
    torch.linalg.solve_triangular(A, B, upper=False, out=B)  # B = M^-1
    _flip_into(B, A)  # A = J M^-1 J = U
    if not bool(torch.isfinite(torch.diagonal(A)).all()):
        raise FactorizationError(f"the inverse Hessian is not finite (numerically singular); {ADVICE}")
    return Factor(U=A, dead=dead, damp=damp)


def _flip_into(src: torch.Tensor, dst: torch.Tensor) -> None:
    """dst = J src J (both axes reversed), a slab at a time so the scratch stays small."""
    n = src.shape[0]
    step = max(1, -(-n // 8))
    for s in range(0, n, step):
        e = min(s + step, n)
        dst[n - e : n - s].copy_(src[s:e].flip((0, 1)))


def _cholesky(A: torch.Tensor) -> None:
    """Lower Cholesky factor of A, written over A."""
    info = torch.empty((), dtype=torch.int32, device=A.device)
    torch.linalg.cholesky_ex(A, out=(A, info))
    if int(info) != 0 or not bool(torch.isfinite(torch.diagonal(A)).all()):
        where = f" (leading minor {int(info)} is not positive)" if int(info) > 0 else ""
        raise FactorizationError(f"the damped Hessian is not positive definite{where}; {ADVICE}")


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
    return sparsegpt_prune_shared([W], factor, sparsity, pattern, block_size)[0]


def sparsegpt_prune_shared(
    weights: list[torch.Tensor], factor: Factor, sparsity: float, pattern: Optional[Pattern], block_size: int = 128
) -> list[torch.Tensor]:
    """`sparsegpt_prune` of every weight that reads the factor's input (q/k/v, gate/up) in one sweep.

    The OBS updates of a row depend only on that row and U, so the weights' rows are stacked
    and swept together: the same maths in fewer, larger operations. Unstructured masks are
    still chosen per weight (each weight's own floor(s * out * blockcols) per block).
    """
    if is_noop(sparsity, pattern):
        return list(weights)
    cols = factor.in_features
    for W in weights:
        if W.dim() != 2 or W.shape[1] != cols:
            raise ValueError(f"factor is for {cols} inputs, weight has shape {tuple(W.shape)}")
        if pattern is not None:
            check_nm_width(W.shape, pattern)
    if pattern is not None:
        block_size = -(-block_size // pattern.m) * pattern.m
    device = weights[0].device
    U = factor.U.to(device)
    spans, rows = [], 0
    for W in weights:
        spans.append((rows, rows + W.shape[0]))
        rows += W.shape[0]
    WT = torch.empty(cols, rows, dtype=torch.float32, device=device)
    for W, (r0, r1) in zip(weights, spans):
        WT[:, r0:r1].copy_(W.T)  # transposed working copy: column j of W is the contiguous row WT[j, r0:r1]
    WT[factor.dead.to(device)] = 0
    step = SUB_BLOCK if pattern is None else -(-SUB_BLOCK // pattern.m) * pattern.m
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        with _one_cpu_thread(device):
            ErrT = _prune_block(WT[i1:i2], U[i1:i2, i1:i2], sparsity, pattern, step, spans)
        if i2 < cols:
            WT[i2:].addmm_(U[i1:i2, i2:].T, ErrT, alpha=-1.0)
    return [torch.empty(W.shape, dtype=W.dtype, device=device).copy_(WT[:, r0:r1].T)
            for W, (r0, r1) in zip(weights, spans)]


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """A column block's many small operations on one CPU thread: splitting them over threads
    costs more than it gains, and far more on a loaded machine, where each split waits for a
    descheduled thread (SmolLM2 q/k/v sweep at load 4 on 2 CPUs: 0.09 s on one thread against
    0.9-1.9 s on two). The same bits: no product here is split along its sums."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class _BlockMask:
    """Columns to remove in one block, and remove / [U]_jj (the error of column j is w_j * scale_j)."""

    remove: torch.Tensor
    scale: torch.Tensor


def _prune_block(
    WT1: torch.Tensor, U1: torch.Tensor, sparsity: float, pattern: Optional[Pattern], step: int,
    spans: list[tuple[int, int]],
) -> torch.Tensor:
    """Prune the column block WT1 [count, rows] in place; returns the scaled errors Err^T.
    `spans`: each weight's rows (an unstructured mask is chosen within each).

    The block is itself solved in sub-blocks of `step` columns: rank-1 OBS updates inside a
    sub-block, one matrix product onto the rest of the block after it (same maths, mostly GEMM).
    """
    count = WT1.shape[0]
    d = torch.diagonal(U1)
    ErrT = torch.empty_like(WT1)
    if pattern is None:
        scores = WT1.square().div_(d.square().unsqueeze(1))
        remove = torch.empty(WT1.shape, dtype=torch.bool, device=WT1.device)
        for r0, r1 in spans:
            own = scores[:, r0:r1]
            remove[:, r0:r1] = ~select_mask(own.reshape(1, -1), sparsity, None, group="row").view(own.shape)
        mask = _BlockMask(remove, remove / d.unsqueeze(1))
    else:
        mask = _BlockMask(torch.zeros(WT1.shape, dtype=torch.bool, device=WT1.device), torch.empty_like(WT1))
    for j1 in range(0, count, step):
        j2 = min(j1 + step, count)
        _solve_columns(WT1, U1, d, ErrT, mask, pattern, j1, j2)
        if j2 < count:
            WT1[j2:].addmm_(U1[j1:j2, j2:].T, ErrT[j1:j2], alpha=-1.0)
    WT1.masked_fill_(mask.remove, 0)
    return ErrT


def _solve_columns(
    WT1: torch.Tensor,
    U1: torch.Tensor,
    d: torch.Tensor,
    ErrT: torch.Tensor,
    mask: _BlockMask,
    pattern: Optional[Pattern],
    j1: int,
    j2: int,
) -> None:
    """Columns j1..j2 one at a time: choose N:M groups at their start, record the error,
    push it onto the following columns of the sub-block."""
    for i in range(j1, j2):
        if pattern is not None and i % pattern.m == 0:
            _select_group(WT1, d, i, pattern, mask)
        torch.mul(WT1[i], mask.scale[i], out=ErrT[i])
        if i + 1 < j2:
            WT1[i + 1 : j2].addmm_(U1[i, i + 1 : j2, None], ErrT[i : i + 1], alpha=-1.0)


def _select_group(WT1: torch.Tensor, d: torch.Tensor, i: int, pattern: Pattern, mask: _BlockMask) -> None:
    """N:M choice for columns i..i+m of the block, from the weights as updated so far."""
    j = i + pattern.m
    scores = WT1[i:j].square().div_(d[i:j].square().unsqueeze(1))
    remove = ~keep_top_n(scores, pattern.n, dim=0)
    mask.remove[i:j] = remove
    torch.div(remove, d[i:j].unsqueeze(1), out=mask.scale[i:j])
