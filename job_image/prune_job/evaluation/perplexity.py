"""Perplexity with the block-streaming forward, one decoder block in memory at
a time, for dense and sparse alike (a model too large for memory included).

A window of L tokens predicts L - 1 of them; perplexity is
exp(Σ nll / Σ predicted tokens) over all windows, the convention of
`model(input_ids, labels=input_ids).loss` for equal windows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from prune_job.pipeline.forward import stream_forward, tail_logits
from prune_job.pipeline.model import ModelHandle


@dataclass(frozen=True)
class Perplexity:
    nll_sum: float
    tokens: int

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.tokens

    @property
    def value(self) -> float:
        return perplexity(self.nll_sum, self.tokens)


def perplexity(nll_sum: float, tokens: int) -> float:
    return math.exp(nll_sum / tokens) if tokens else float("nan")


def increase_percent(dense: float, sparse: float) -> float:
    return 100.0 * (sparse - dense) / dense


def streamed_nll(
    handle: ModelHandle,
    batches: list[torch.Tensor],
    on_block: Optional[Callable[[int], None]] = None,
    tail_tokens: int = 512,
) -> tuple[float, int]:
    """Sum of next-token negative log-likelihoods over `batches` ([B, L] token
    ids) and the number of predicted tokens. The head runs on slices of about
    `tail_tokens` tokens so that [tokens, vocab] logits stay small."""
    finals = stream_forward(handle, batches, on_block)
    total, count = 0.0, 0
    for ids, hidden in zip(batches, finals):
        step = max(1, tail_tokens // ids.shape[1])
        for k in range(0, ids.shape[0], step):
            logits = tail_logits(handle, ids[k : k + step], hidden[k : k + step]).float()
            labels = ids[k : k + step, 1:].to(logits.device)
            nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")
            total += float(nll)
            count += labels.numel()
    return total, count
