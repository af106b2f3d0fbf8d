"""Input-channel permutations for N:M: which inputs share a group of M decides what N:M can keep.

Permuting a layer's inputs costs nothing at inference when the same permutation is applied
to the outputs of the layer that produces them (folded into both weights). This module
searches such a permutation for a score matrix; the folding lives in the pipeline.

Search: greedy swaps between groups. Each round pairs the groups of M at random and, for
every pair, tries all M x M swaps of one channel of each, taking the best swap when it
raises the kept score (the sum over rows of the N best scores of each group). The kept
score never falls, and a round costs O(rows x in x M) in tensor operations.
"""
from __future__ import annotations

import torch

from prune_job.spec import Pattern

PERMUTE_ROUNDS = 100
STALE_ROUNDS = 8


def kept_score(S: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Sum over rows and groups of the n largest scores in each group of m consecutive inputs."""
    return S.reshape(S.shape[0], -1, pattern.m).topk(pattern.n, dim=-1).values.sum()


def search_permutation(S: torch.Tensor, pattern: Pattern, rounds: int = PERMUTE_ROUNDS, seed: int = 0,
                       chunk_elements: int = 1 << 24) -> torch.Tensor:
    """S [rows, in] scores (higher keeps) -> perm [in] (long, on S's device) such that S[:, perm]
    keeps at least as much score under N:M as S. Deterministic for a given seed."""
    rows, cols = S.shape
    m = pattern.m
    if cols % m:
        raise ValueError(f"{pattern} needs the input width to be divisible by {m}, got {cols}")
    groups = cols // m
    perm = torch.arange(cols, device=S.device)
    if groups < 2:
        return perm
    S = S.float()
    g = torch.Generator().manual_seed(seed)
    idle = 0
    for _ in range(rounds):
        order = torch.randperm(groups, generator=g).to(S.device)
        a, b = order[: groups // 2 * 2].view(-1, 2).unbind(1)
        idle = 0 if _round(S, perm, a, b, pattern, chunk_elements) else idle + 1
        if idle >= STALE_ROUNDS:  # several random pairings in a row found no improving swap
            break
    return perm


def _round(S: torch.Tensor, perm: torch.Tensor, a: torch.Tensor, b: torch.Tensor, pattern: Pattern,
           chunk_elements: int) -> bool:
    """Best swap within each pair of groups (a_k, b_k); applied in place to perm. Returns whether any was taken."""
    m = pattern.m
    rows = S.shape[0]
    per_pair = rows * m * m * 3
    step = max(1, chunk_elements // per_pair)
    changed = False
    for s in range(0, a.numel(), step):
        pa, pb = a[s : s + step], b[s : s + step]
        ia = perm.view(-1, m)[pa]  # [P, m] columns of S now in group a
        ib = perm.view(-1, m)[pb]
        gain, best = _best_swaps(S, ia, ib, pattern)
        take = gain > 1e-6 * S.abs().mean() * rows
        if not bool(take.any()):
            continue
        i, j = best[take] // m, best[take] % m  # position in group a, position in group b
        pos_a = pa[take] * m + i
        pos_b = pb[take] * m + j
        va, vb = perm[pos_a].clone(), perm[pos_b].clone()
        perm[pos_a], perm[pos_b] = vb, va
        changed = True
    return changed


def _best_swaps(S: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor, pattern: Pattern) -> tuple[torch.Tensor, torch.Tensor]:
    """For P pairs of groups (columns ia, ib [P, m]): the best of the m*m swaps, its gain [P] and index i*m+j [P].

    Replacing entry i of a group by v keeps T_i + max(0, v - L_i), with T_i the sum and L_i the
    smallest of the n best of the group without entry i: no sort per candidate."""
    A = S[:, ia].permute(1, 0, 2)  # [P, rows, m]
    B = S[:, ib].permute(1, 0, 2)
    TA, LA = _without_each(A, pattern)
    TB, LB = _without_each(B, pattern)
    base = A.topk(pattern.n, dim=-1).values.sum((1, 2)) + B.topk(pattern.n, dim=-1).values.sum((1, 2))
    # [P, rows, i, j]: group a loses i and gains B_j; group b loses j and gains A_i
    grow_a = (B.unsqueeze(2) - LA.unsqueeze(3)).clamp_min_(0)
    grow_b = (A.unsqueeze(3) - LB.unsqueeze(2)).clamp_min_(0)
    kept = (grow_a + grow_b).sum(1) + TA.sum(1).unsqueeze(2) + TB.sum(1).unsqueeze(1)  # [P, i, j]
    value, index = (kept - base[:, None, None]).flatten(1).max(dim=1)
    return value, index


def _without_each(A: torch.Tensor, pattern: Pattern) -> tuple[torch.Tensor, torch.Tensor]:
    """A [P, rows, m] -> (T, L) [P, rows, m]: sum and smallest of the n best entries without entry i."""
    m = pattern.m
    others = torch.arange(m, device=A.device).repeat(m, 1)[~torch.eye(m, dtype=torch.bool, device=A.device)].view(m, m - 1)
    top = A[..., others].topk(pattern.n, dim=-1).values  # [P, rows, m, n]
    return top.sum(-1), top[..., -1]
