"""CUDA-only parts of the evaluation: semi-structured 2:4 kernels, device peak
memory, timing with synchronisation. Skipped cleanly without CUDA; run by
benchmarks/gpu_check.sh on a GPU machine."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from eval_fixtures import ids_file, make_job, prune_folder
from prune_job.evaluation import evaluate, generation, kernels, write_report
from prune_job.evaluation.memory import PeakMemory
from prune_job.spec import GenerationEval, Pattern, ResultsDetail

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = torch.device("cuda")


def two_four(w: torch.Tensor) -> torch.Tensor:
    groups = w.reshape(w.shape[0], -1, 4)
    keep = groups.abs().topk(2, dim=-1).indices
    return (groups * torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)).reshape_as(w)


class Blocks(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(weight.shape[1], weight.shape[0], bias=False)])
        self.layers[0].weight.data = weight


@pytest.mark.parametrize("tokens", [1, 5, 64])
def test_semi_structured_linear_matches_dense(tokens):
    torch.manual_seed(0)
    w = two_four(torch.randn(256, 128, device=CUDA, dtype=torch.float16))
    x = torch.randn(tokens, 128, device=CUDA, dtype=torch.float16)
    module = Blocks(w.clone())
    converted, left = kernels.to_semi_structured(module)
    assert converted == ["layers.0"] and left == []
    y = module.layers[0](x)
    assert torch.allclose(y.float(), (x @ w.t()).float(), atol=2e-2, rtol=1e-2)


def test_weights_that_are_not_2_4_stay_dense():
    w = torch.randn(64, 64, device=CUDA, dtype=torch.float16)  # dense: not 2:4
    module = Blocks(w)
    assert kernels.to_semi_structured(module) == ([], ["layers.0"])
    assert kernels.satisfies_nm(two_four(w), Pattern(2, 4))


def test_peak_memory_counts_device_allocations():
    with PeakMemory(CUDA) as peak:
        block = torch.empty(256 << 20, dtype=torch.uint8, device=CUDA)
        del block
    assert peak.bytes >= 256 << 20 and peak.method == "torch.cuda.max_memory_allocated"


def test_decode_on_cuda_is_greedy_generate(tiny_model_factory):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama", 2, 64), dtype=torch.float32).to(CUDA)
    prompt = generation.prompts(256, 2, 8, CUDA)
    timing = generation.decode(model.eval(), prompt, 5)
    expect = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, min_new_tokens=5,
                            do_sample=False, pad_token_id=0)
    assert torch.equal(timing.tokens, expect[:, 8:].cpu())
    from prune_job.evaluation.footprint import peaks

    assert peaks(model, GenerationEval(batch_sizes=[2], prompt_tokens=8, new_tokens=5), CUDA)[2] > 0


def test_evaluate_on_cuda_runs_2_4_kernels_separately(tmp_path):
    from tiny_models import save_tiny_model

    dense = save_tiny_model(tmp_path / "dense", "llama", 2, 128, dtype=torch.float16)
    sparse = prune_folder(dense, tmp_path / "sparse")
    job = make_job(ids_file(tmp_path / "ids.jsonl", 4, 32), tmp_path / "out", dtype="float16")
    detail = evaluate(job=job, dense_dir=dense, sparse_dir=sparse, device=CUDA)
    assert detail.environment.memory_kind == "device" and detail.environment.sparse_kernel
    kernel_runs = [r for r in detail.generation_runs if r.variant == "sparse-kernel"]
    assert len(kernel_runs) == 2 and all(r.figures and r.figures.tokens_per_second > 0 for r in kernel_runs)
    assert detail.generation.sparse_kernel is not None and detail.cost_per_million_tokens.sparse_kernel > 0
    assert detail.environment.order == "interleaved" and detail.generation.sparse_kernel_vs_dense is not None
    assert {r.variant for r in detail.generation_timeline} == {"dense", "sparse", "sparse-kernel"}
    assert all(r.figures.peak_memory_bytes > 0 for r in detail.generation_runs)
    assert any("14 Linear layers converted" in n for n in detail.notes)
    assert math.isfinite(detail.perplexity.sparse)
    results = ResultsDetail(**vars(detail))
    write_report(results, tmp_path / "report")
    assert (tmp_path / "report" / "report.md").read_text().count("sparse-kernel") >= 2
