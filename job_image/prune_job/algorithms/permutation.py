"""Input-channel permutations for N:M: which inputs share a group of M decides what N:M can keep.

Permuting a layer's inputs costs nothing at inference when the same permutation is applied
to the outputs of the layer that produces them (folded into both weights). This module
searches such a permutation for a score matrix; the folding lives in the pipeline.

Search: greedy swaps between groups. Each round pairs the groups of M at random and, for
every pair, tries all M x M swaps of one channel of each, taking the best swap when it
raises the kept score (the sum over rows of the N best scores of each group). The kept
score never falls, and a round costs O(rows x in x M) in tensor operations. The gains
shrink fast (on SmolLM2's down_proj 2:4, 80% of 100 rounds' gain comes in the first 10),
so the search stops once a window of rounds adds less than MIN_GAIN of the kept score.
"""
from __future__ import annotations

import torch

from prune_job.spec import Pattern

PERMUTE_ROUNDS = 100
WINDOW = 4  # rounds over which the relative gain is judged
MIN_GAIN = 5e-4  # stop when WINDOW rounds together raised the kept score by less than this fraction (down_proj: ~1 s, 86% of 100 rounds' gain)


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
    kept = [float(kept_score(S, pattern))]
    for _ in range(rounds):
        order = torch.randperm(groups, generator=g).to(S.device)
        a, b = order[: groups // 2 * 2].view(-1, 2).unbind(1)
        kept.append(kept[-1] + _round(S, perm, a, b, pattern, chunk_elements))
        if len(kept) > WINDOW and kept[-1] - kept[-1 - WINDOW] <= MIN_GAIN * abs(kept[-1 - WINDOW]):
            break
    return perm


def _round(S: torch.Tensor, perm: torch.Tensor, a: torch.Tensor, b: torch.Tensor, pattern: Pattern,
           chunk_elements: int) -> float:
    """Best swap within each pair of groups (a_k, b_k); applied in place to perm. Returns the kept score gained."""
    m = pattern.m
    rows = S.shape[0]
    per_pair = rows * m * m * 3
    step = max(1, chunk_elements // per_pair)
    gained = 0.0
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
        gained += float(gain[take].sum())
    return gained


def _best_swaps(S: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor, pattern: Pattern) -> tuple[torch.Tensor, torch.Tensor]:
    """For P pairs of groups (columns ia, ib [P, m]): the best of the m*m swaps, its gain [P] and index i*m+j [P].

    Replacing entry i of a group by v keeps T_i + max(0, v - L_i), with T_i the sum and L_i the
    smallest of the n best of the group without entry i: no sort per candidate."""
    A = S[:, ia].permute(1, 0, 2)  # [P, rows, m]
    B = S[:, ib].permute(1, 0, 2)
    TA, LA, base_a = _without_each(A, pattern)
    TB, LB, base_b = _without_each(B, pattern)
    base = (base_a + base_b).sum(1)
    # [P, rows, i, j]: group a loses i and gains B_j; group b loses j and gains A_i
    grow_a = (B.unsqueeze(2) - LA.unsqueeze(3)).clamp_min_(0)
    grow_b = (A.unsqueeze(3) - LB.unsqueeze(2)).clamp_min_(0)
    kept = (grow_a + grow_b).sum(1) + TA.sum(1).unsqueeze(2) + TB.sum(1).unsqueeze(1)  # [P, i, j]
    value, index = (kept - base[:, None, None]).flatten(1).max(dim=1)
    return value, index


def _without_each(A: torch.Tensor, pattern: Pattern) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A [P, rows, m] -> (T, L) [P, rows, m]: sum and smallest of the n best entries without entry i,
    and the sum of the n best [P, rows]. One sort: without an entry among the n best, the
    (n+1)-th best takes its place; without any other entry, the n best stay."""
    n, m = pattern.n, pattern.m
    s, order = A.sort(dim=-1, descending=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(m, device=A.device).expand_as(order))
    top = s[..., :n].sum(-1)
    inside = rank < n
    T = torch.where(inside, top.unsqueeze(-1) - A + s[..., n : n + 1], top.unsqueeze(-1))
    L = torch.where(inside, s[..., n : n + 1], s[..., n - 1 : n])
    return T, L, top
