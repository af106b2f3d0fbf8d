"""Mask selection: the one place where the weights to remove are chosen.

Conventions (shared by every method):
- scores are "importance": higher means keep. A keep-mask is returned (True = keep).
- Unstructured: each comparison group loses exactly ``removed_count(size, s)`` entries,
  the lowest scores; among equal scores the entry with the lower index (row-major
  within the group) is removed first. The group is one output row (``group="row"``)
  or the whole tensor (``group="layer"``).
- N:M (NVIDIA convention): in every run of ``m`` consecutive inputs of a row exactly
  ``n`` entries are kept, the highest scores; among equal scores the lower index is kept.
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import torch

from prune_job.spec import Pattern

Group = Literal["row", "layer"]


def removed_count(size: int, sparsity: float) -> int:
    """floor(sparsity * size), forgiving float representation error (0.29 * 100 -> 29)."""
    return int(math.floor(round(sparsity * size, 6)))


def check_sparsity(sparsity: float, pattern: Optional[Pattern]) -> None:
    """0 <= s < 1; with an N:M pattern, s must be 0 (no-op) or the pattern's own sparsity."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if pattern is not None:
        if not 0 < pattern.n < pattern.m:
            raise ValueError(f"N:M pattern {pattern} needs 0 < N < M")
        if sparsity != 0 and abs(sparsity - pattern.sparsity) > 1e-6:
            raise ValueError(f"sparsity {sparsity} does not match pattern {pattern} ({pattern.sparsity:g})")


def is_noop(sparsity: float, pattern: Optional[Pattern]) -> bool:
    """True when nothing is to be removed: the methods then return the weight itself."""
    check_sparsity(sparsity, pattern)
    return sparsity == 0


def check_nm_width(shape: torch.Size, pattern: Pattern) -> None:
    width = shape[-1]
    if width % pattern.m:
        raise ValueError(
            f"N:M pattern {pattern} needs the layer's input width to be divisible by M={pattern.m}, "
            f"but this layer (shape {tuple(shape)}) has in_features={width}"
        )


def select_mask(
    scores: torch.Tensor, sparsity: float, pattern: Optional[Pattern], group: Group = "row"
) -> torch.Tensor:
    """Keep-mask (bool, shape of ``scores``) removing the lowest scores.

    ``scores`` is [rows, in_features]. Unstructured: ``group`` is the comparison group
    ("row" or "layer"). N:M: ``group`` is ignored, the groups are ``m`` consecutive
    inputs of a row; raises ValueError when ``m`` does not divide in_features.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D [rows, in_features], got shape {tuple(scores.shape)}")
    check_sparsity(sparsity, pattern)
    if pattern is not None:
        check_nm_width(scores.shape, pattern)
        if sparsity == 0:
            return torch.ones_like(scores, dtype=torch.bool)
        return _keep_n_of_m(scores, pattern)
    if group == "row":
        return _keep_rows(scores, removed_count(scores.shape[1], sparsity))
    if group == "layer":
        flat = scores.reshape(1, -1)
        return _keep_rows(flat, removed_count(flat.shape[1], sparsity)).view(scores.shape)
    raise ValueError(f'group must be "row" or "layer", got {group!r}')


def _keep_n_of_m(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Vectorised over all groups of m consecutive inputs of every row."""
    groups = scores.reshape(scores.shape[0], -1, pattern.m)
    return keep_top_n(groups, pattern.n, dim=-1).view(scores.shape)


def keep_top_n(scores: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """Keep-mask of the n highest entries along `dim` (ties: the lower index is kept).
    A stable sort along a short axis: no Python loop over groups."""
    order = torch.sort(scores, dim=dim, descending=True, stable=True).indices.narrow(dim, 0, n)
    keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    return keep.scatter_(dim, order, True)


def _keep_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Remove the k lowest entries of each row: kth value as threshold, ties resolved by index."""
    if k == 0:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = scores.kthvalue(k, dim=1, keepdim=True).values
    if torch.isnan(threshold).any():
        raise ValueError("pruning scores contain NaN: the weight or its statistics are not finite")
    at_most = scores <= threshold
    if bool((torch.count_nonzero(at_most, dim=1) == k).all()):  # the usual case: no tie to resolve by index
        return at_most.logical_not_()
    remove = scores < threshold
    tie = scores == threshold
    need = k - remove.sum(dim=1)  # how many tied entries each row still loses (>= 1)
    rows, cols = tie.nonzero(as_tuple=True)  # row-major: ties of a row in column order
    counts = torch.bincount(rows, minlength=scores.shape[0])
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(rows.numel(), device=scores.device) - first[rows]
    chosen = rank < need[rows]
    remove[rows[chosen], cols[chosen]] = True
    return ~remove
