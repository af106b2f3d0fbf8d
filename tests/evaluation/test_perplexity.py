"""The streaming forward's perplexity equals the one of model(...) on the whole model."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from prune_job.evaluation.perplexity import Perplexity, increase_percent
from prune_job.pipeline.model import open_model
from prune_job.evaluation.perplexity import streamed_nll


def windows(n: int, length: int, vocab: int = 256) -> torch.Tensor:
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_streamed_perplexity_equals_full_model(tiny_model_factory, arch):
    folder = tiny_model_factory(arch, 2, 64)
    ids = windows(6, 24)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss  # mean over every predicted token
    reference = math.exp(float(loss))
    streamed = Perplexity(*streamed_nll(open_model(folder, "float32", torch.device("cpu")), [ids[:4], ids[4:]]))
    assert streamed.tokens == 6 * 23
    assert abs(streamed.value - reference) / reference < 1e-4


def test_perplexity_of_unequal_batches_weights_tokens(tiny_dense):
    """Windows of two lengths: perplexity is per token, not a mean of per-window perplexities."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dense, dtype=torch.float32).eval()
    a, b = windows(2, 9), windows(3, 17)
    with torch.no_grad():
        nll = sum(float(model(input_ids=x, labels=x).loss) * x.shape[0] * (x.shape[1] - 1) for x in (a, b))
    expect = math.exp(nll / (2 * 8 + 3 * 16))
    streamed = Perplexity(*streamed_nll(open_model(tiny_dense, "float32", torch.device("cpu")), [a, b]))
    assert abs(streamed.value - expect) / expect < 1e-4


def test_increase_percent():
    assert increase_percent(10.0, 11.5) == pytest.approx(15.0)
