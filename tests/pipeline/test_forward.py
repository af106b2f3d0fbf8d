"""The block-streaming forward reproduces the model's own logits."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from prune_job.pipeline.forward import stream_forward, tail_logits
from prune_job.pipeline.model import open_model
from tiny_models import ARCHS


@pytest.mark.parametrize("arch", ARCHS)
def test_streamed_logits_match_model(tiny_model_factory, arch):
    path = tiny_model_factory(arch, layers=3)
    torch.manual_seed(1)
    batches = [torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (3, 16))]
    reference = AutoModelForCausalLM.from_pretrained(path).eval()
    handle = open_model(path, device=torch.device("cpu"))
    finals = stream_forward(handle, batches)
    for ids, hidden in zip(batches, finals):
        with torch.no_grad():
            expected = reference(input_ids=ids).logits
        got = tail_logits(handle, ids, hidden)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # Blocks are released after use: nothing of them stays materialised.
    assert all(p.is_meta for p in handle.blocks.parameters())


def test_blocks_found_generically(tiny_model_factory):
    for arch, path in (("llama", "model.layers"), ("opt", "model.decoder.layers"), ("gpt2", "transformer.h")):
        handle = open_model(tiny_model_factory(arch), device=torch.device("cpu"))
        assert handle.blocks_path == path
