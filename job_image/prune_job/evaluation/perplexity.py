"""Perplexity from a sum of next-token negative log-likelihoods.

A window of L tokens predicts L - 1 of them; perplexity is
exp(Σ nll / Σ predicted tokens) over all windows, the convention of
`model(input_ids, labels=input_ids).loss` for equal windows. The sums come
from the pipeline's block-streaming forward (`prune_job.pipeline.stream`),
which holds one decoder block in memory at a time, for dense and sparse alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Perplexity:
    nll_sum: float
    tokens: int

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.tokens

    @property
    def value(self) -> float:
        return math.exp(self.mean_nll)


def increase_percent(dense: float, sparse: float) -> float:
    return 100.0 * (sparse - dense) / dense
