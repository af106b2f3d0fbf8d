"""N:M channel permutations folded into the weights, so the written model is an ordinary one.

Which inputs share a group of M decides what N:M can keep. Two places in a decoder block
let the inputs of a layer be reordered for free, by reordering the outputs of the layers
that produce them:

- the MLP's intermediate channels: the rows of `gate_proj` and `up_proj` (an elementwise
  activation between) with the columns of `down_proj`;
- attention values: within each KV head, the rows of `v_proj` with the columns of
  `o_proj` of every query head that reads that KV head (grouped KV heads share one
  permutation), from the model config's head counts.

Before a consumer (`down_proj`, `o_proj`) is pruned, a permutation raising its kept score
under N:M is searched (`algorithms.permutation`) from the recipe's own scores, and applied
to its weight, its statistics and its producers' rows (and biases). The block computes the
same function as before, and its pruned weights are valid N:M in the written order.
Layers named otherwise (fused gate_up, GPT-2's Conv1D) are left in their order.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from prune_job.algorithms.permutation import search_permutation
from prune_job.algorithms.recipe import mask_scores
from prune_job.pipeline.model import ModelHandle, Target
from prune_job.spec import Pruning

PRODUCERS = {"down_proj": ("gate_proj", "up_proj"), "o_proj": ("v_proj",)}


class ChannelPermuter:
    """Folds one permutation per consumer layer; `applied` keeps, by consumer name, its input
    permutation and its producers' output permutation."""

    def __init__(self, handle: ModelHandle, pruning: Pruning):
        self.handle = handle
        self.pruning = pruning
        self.applied: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.defer_producers = False
        self.pending: dict[str, torch.Tensor] = {}  # deferred: consumer name -> its producers' row permutation

    def fold(self, members: list[Target], stats: Any) -> None:
        """Permute the inputs of a group's single consumer layer, its statistics and its producers."""
        if len(members) != 1 or self.pruning.nm is None:
            return
        target = members[0]
        parent, _, leaf = target.name.rpartition(".")
        producers = self._producers(parent, leaf)
        if not producers or target.transposed:
            return
        perm = self._search(target, leaf, stats)
        if perm is None:
            return
        target.set_weight(target.get_weight()[:, perm])
        _permute_stats(stats, perm)
        out_perm = perm if leaf == "down_proj" else self._kv_rows(perm)
        if self.defer_producers:  # several ranks: every rank folds it after the weights are shared
            self.pending[target.name] = out_perm
        else:
            permute_rows(producers, out_perm)
        self.applied[target.name] = (perm, out_perm)

    def producers_of(self, members: list[Target]) -> list[nn.Module]:
        """The producers a fold of this group would permute (none when it folds nothing)."""
        if len(members) != 1 or self.pruning.nm is None or members[0].transposed:
            return []
        parent, _, leaf = members[0].name.rpartition(".")
        return self._producers(parent, leaf)

    def _producers(self, parent: str, leaf: str) -> list[nn.Module]:
        names = PRODUCERS.get(leaf, ())
        found = []
        for name in names:
            try:
                module = self.handle.model.get_submodule(f"{parent}.{name}")
            except AttributeError:
                continue
            if isinstance(module, nn.Linear):
                found.append(module)
        return found if found and len(found) == len(names) else []

    def _scores(self, W: torch.Tensor, stats: Any) -> torch.Tensor:
        if stats is None:
            return W.abs().float()
        if self.pruning.method == "sparsegpt":
            return W.abs().float() * stats.col_sq_norm.to(W.device).sqrt()
        return mask_scores(W, self.pruning, stats)

    def _search(self, target: Target, leaf: str, stats: Any) -> Optional[torch.Tensor]:
        W = target.get_weight()
        S = self._scores(W, stats)
        nm, rounds = self.pruning.nm, self.pruning.permute_rounds
        if leaf == "down_proj":
            return search_permutation(S, nm, rounds)
        heads = self._heads(W.shape[1])
        if heads is None:
            return None
        n_heads, n_kv, hd = heads
        per_kv = n_heads // n_kv
        perm = torch.empty(W.shape[1], dtype=torch.long, device=W.device)
        for g in range(n_kv):
            q = range(g * per_kv, (g + 1) * per_kv)
            Sg = torch.cat([S[:, h * hd : (h + 1) * hd] for h in q], dim=0)
            pg = search_permutation(Sg, nm, rounds, seed=g)
            for h in q:
                perm[h * hd : (h + 1) * hd] = h * hd + pg
        return perm

    def _heads(self, in_features: int) -> Optional[tuple[int, int, int]]:
        """(query heads, KV heads, head_dim) when they describe this o_proj and head_dim is a multiple of M."""
        cfg = self.handle.model.config
        n_heads = getattr(cfg, "num_attention_heads", None)
        if not n_heads:
            return None
        n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
        hd = getattr(cfg, "head_dim", None) or in_features // n_heads
        if n_heads * hd != in_features or n_heads % n_kv or hd % self.pruning.nm.m:
            return None
        self._kv = (n_heads, n_kv, hd)
        return self._kv

    def _kv_rows(self, perm: torch.Tensor) -> torch.Tensor:
        """o_proj's column permutation -> v_proj's row permutation (the first query head of each KV head)."""
        n_heads, n_kv, hd = self._kv
        per_kv = n_heads // n_kv
        return torch.cat([perm[g * per_kv * hd : g * per_kv * hd + hd] - g * per_kv * hd + g * hd for g in range(n_kv)])


def permute_rows(producers: list[nn.Module], out_perm: torch.Tensor) -> None:
    """The producers' output rows (and biases) in the consumer's input order."""
    for module in producers:
        module.weight.data = module.weight.data[out_perm].contiguous()
        if getattr(module, "bias", None) is not None:
            module.bias.data = module.bias.data[out_perm].contiguous()


def _permute_stats(stats: Any, perm: torch.Tensor) -> None:
    if stats is None:
        return
    if getattr(stats, "H", None) is not None:
        p = perm.to(stats.H.device)
        stats.H = stats.H[p][:, p].contiguous()
    elif getattr(stats, "col_sq_norm", None) is not None:
        stats.col_sq_norm = stats.col_sq_norm[perm.to(stats.col_sq_norm.device)]
