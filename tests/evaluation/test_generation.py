"""Generation benchmark on CPU: positive finite figures, greedy tokens as generate(), no failure when it does not fit."""
from __future__ import annotations

import math

import torch
from transformers import AutoModelForCausalLM

from prune_job.evaluation import generation
from prune_job.evaluation.summary import cost_per_million, generation_summary
from prune_job.spec import GenerationEval

SETTINGS = GenerationEval(batch_sizes=[1, 3], prompt_tokens=8, new_tokens=5, repeats=2)


def load(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def test_cpu_benchmark_gives_positive_finite_figures(tiny_dense):
    runs, timeline = generation.benchmark({"dense": load(tiny_dense)}, SETTINGS, torch.device("cpu"))
    assert [r.batch_size for r in runs] == [1, 3]
    assert len(timeline) == 2 * (1 + SETTINGS.repeats)  # a warm-up and the timed runs per batch size
    for run in runs:
        assert run.skipped is None
        f = run.figures
        for value in (f.tokens_per_second, f.time_to_first_token_ms, f.inter_token_latency_ms):
            assert value > 0 and math.isfinite(value)
        assert f.spread.tokens_per_second.low <= f.tokens_per_second <= f.spread.tokens_per_second.high
        assert f.spread.tokens_per_second.samples == SETTINGS.repeats


def test_manual_decode_is_greedy_generate(tiny_dense):
    model = load(tiny_dense)
    prompt = generation.prompts(256, 2, 8, torch.device("cpu"))
    timing = generation.decode(model, prompt, 6)
    expect = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, min_new_tokens=6,
                            do_sample=False, pad_token_id=0)
    assert torch.equal(timing.tokens, expect[:, 8:])
    assert len(timing.step_s) == 5 and timing.total_s >= timing.first_token_s + sum(timing.step_s) * 0.99


def test_peak_memory_of_one_variant(tiny_dense):
    from prune_job.evaluation.footprint import peaks

    measured = peaks(load(tiny_dense), SETTINGS, torch.device("cpu"))
    assert set(measured) == {1, 3} and all(v > 1 << 20 for v in measured.values())  # the process's RSS


def test_batch_that_does_not_fit_is_recorded_not_raised(tiny_dense, monkeypatch):
    monkeypatch.setattr(generation, "available_bytes", lambda device: 1000)
    runs, timeline = generation.benchmark({"sparse": load(tiny_dense)}, SETTINGS, torch.device("cpu"))
    assert all(r.figures is None and r.skipped.startswith("does not fit") for r in runs) and timeline == []
    assert generation_summary(runs, None).batch_size is None


def test_out_of_memory_during_a_run_is_recorded(tiny_dense, monkeypatch):
    def oom(*_a, **_k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(generation, "decode", oom)
    runs, _ = generation.benchmark({"dense": load(tiny_dense)}, SETTINGS, torch.device("cpu"))
    assert all(r.skipped.startswith("out of memory at batch") for r in runs)


def test_kv_cache_estimate_matches_the_formula(tiny_dense):
    cfg = load(tiny_dense).config  # 2 layers, 2 KV heads of 16 dims
    need = generation.run_bytes(cfg, 4, batch_size=2, length=10, prompt_tokens=1)
    assert need >= 2 * 2 * 2 * 10 * 2 * 16 * 4


def test_cost_per_million_tokens():
    assert cost_per_million(3.6, 1000.0) == 1.0  # 3.6 USD/h = 0.001 USD/s; 1000 tok/s → 1 USD per 1e6 tokens
    assert cost_per_million(None, 1000.0) is None and cost_per_million(3.6, None) is None


def test_cgroup_limit_caps_available_host_memory(tmp_path, monkeypatch):
    from prune_job.evaluation import memory

    (tmp_path / "max").write_text("1000000\n")
    (tmp_path / "cur").write_text("400000\n")
    monkeypatch.setattr(memory, "CGROUP_FILES", ((tmp_path / "max", tmp_path / "cur"),))
    assert memory.available_bytes(torch.device("cpu")) == 600000
    (tmp_path / "max").write_text("max\n")
    assert memory.available_bytes(torch.device("cpu")) > 600000


def test_peak_rss_is_measured_on_cpu():
    from prune_job.evaluation.memory import PeakMemory

    with PeakMemory(torch.device("cpu")) as peak:
        block = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB touched
        del block
    assert peak.bytes > 64 << 20 and peak.method in ("VmHWM", "rss-sampling")


def test_busy_host_is_noted():
    from prune_job.evaluation.driver import busy_host_note
    from prune_job.spec import EvaluationEnvironment

    env = EvaluationEnvironment(device="cpu", dtype="float32", torch_version="x", threads=2, memory_kind="host-rss",
                                load_average=9.5, cpu_count=2)
    assert "load average 9.5 on 2 cores" in busy_host_note(env)
    assert busy_host_note(env.model_copy(update={"load_average": 1.0})) is None
