"""Slow, obviously-correct references for the algorithm tests (small matrices only)."""
from __future__ import annotations

import itertools
import math

import torch


def best_removal(scores: list[float], k: int) -> set[int]:
    """k lowest scores, ties to the lower index. Brute force while small (the sorted order
    otherwise: it is the same set, see best_removal_exhaustive)."""
    if math.comb(len(scores), k) > 20_000:
        return set(sorted(range(len(scores)), key=lambda i: (scores[i], i))[:k])
    return best_removal_exhaustive(scores, k)


def best_removal_exhaustive(scores: list[float], k: int) -> set[int]:
    """Brute force over every k-subset: least total score removed; among equal sums the
    lexicographically smallest index tuple (= lower index removed first among ties)."""
    best = min(itertools.combinations(range(len(scores)), k), key=lambda c: (sum(scores[i] for i in c), c))
    return set(best)


def best_kept(scores: list[float], n: int) -> set[int]:
    """Brute force: the n-subset of largest total score; ties to the smallest index tuple."""
    best = min(itertools.combinations(range(len(scores)), n), key=lambda c: (-sum(scores[i] for i in c), c))
    return set(best)


def keep_mask(scores: torch.Tensor, sparsity: float, pattern, group: str) -> torch.Tensor:
    """Reference keep-mask by exhaustive search (rows / layer / N:M groups)."""
    rows, cols = scores.shape
    keep = torch.ones(rows, cols, dtype=torch.bool)
    if pattern is not None:
        for r in range(rows):
            for g in range(0, cols, pattern.m):
                kept = best_kept(scores[r, g : g + pattern.m].tolist(), pattern.n)
                for j in range(pattern.m):
                    keep[r, g + j] = j in kept
        return keep
    if group == "layer":
        flat = scores.flatten().tolist()
        for i in best_removal(flat, math.floor(sparsity * len(flat) + 1e-9)):
            keep.view(-1)[i] = False
        return keep
    for r in range(rows):
        for j in best_removal(scores[r].tolist(), math.floor(sparsity * cols + 1e-9)):
            keep[r, j] = False
    return keep


def damped_hessian(H: torch.Tensor, dampening: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp64 copy with dead inputs set to 1 on the diagonal, then the relative dampening."""
    H = H.double().clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    H += dampening * torch.diagonal(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    return H, dead


def sparsegpt_naive(W, H, dampening, sparsity, pattern, block_size):
    """SparseGPT from its definition, in fp64, no Cholesky tricks and no lazy updates: column j
    is pruned with the explicit inverse of H restricted to the columns j.. not yet processed
    (OBS: delta = -w_j / [H_F^-1]_jj * [H_F^-1]_j,:), and the update is applied at once to
    every later column. Masks: per column block (unstructured, from the weights at the block
    start) or per N:M group (at the group start), score w^2 / [H_F^-1]_jj, chosen by brute force."""
    H, dead = damped_hessian(H, dampening)
    W = W.double().clone()
    W[:, dead] = 0
    rows, cols = W.shape
    first_rows = [torch.linalg.inv(H[j:, j:])[0] for j in range(cols)]  # row j of (H_F)^-1, F = {j, ...}
    d = torch.stack([r[0] for r in first_rows])
    keep = torch.ones(rows, cols, dtype=torch.bool)
    for j in range(cols):
        if pattern is None and j % block_size == 0:
            block = slice(j, min(j + block_size, cols))
            scores = (W[:, block] ** 2 / d[block]).T.reshape(1, -1)  # block in column-major order
            mask = keep_mask(scores, sparsity, None, "row").reshape(block.stop - j, rows).T
            keep[:, block] = mask
        if pattern is not None and j % pattern.m == 0:
            group = slice(j, j + pattern.m)
            keep[:, group] = keep_mask(W[:, group] ** 2 / d[group], 0.0, pattern, "row")
        err = torch.where(keep[:, j], 0.0, W[:, j]) / d[j]
        W[:, j:] -= err[:, None] * first_rows[j][None, :]
        W[:, j] = torch.where(keep[:, j], W[:, j], 0.0)
    return W, keep
