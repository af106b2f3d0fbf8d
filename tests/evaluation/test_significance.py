"""Speed and cost figures a user can trust (issue 17): interleaved runs, a spread
per figure, and a change reported only where it is larger than the spread."""
from __future__ import annotations

import functools
import json
import time

import pytest
import torch
from matplotlib.container import BarContainer
from torch import nn

from eval_fixtures import ids_file, make_job
from prune_job.evaluation import evaluate, generation, render_markdown, summary_table, write_report
from prune_job.evaluation.footprint import SEPARATE_PROCESS
from prune_job.evaluation.interleave import WARM_UP, measurement_order
from prune_job.evaluation.plots import comparison_figure
from prune_job.evaluation.spread import MIN_SAMPLES, compare, is_significant, spread
from prune_job.evaluation.summary import cost_summary, generation_summary
from prune_job.spec import GenerationEval, ResultsDetail
from prune_job.status import RunProgress, results_document
from test_generation import load

CPU = torch.device("cpu")
FIGURES = ("tokensPerSecond", "timeToFirstTokenMs", "interTokenLatencyMs", "costPerMillionTokens")
NO_DIFFERENCE = "no significant difference (within ±"


class Slowed(nn.Module):
    """Test-only wrapper: the same model, `delay` seconds slower on every forward call."""

    def __init__(self, model: nn.Module, delay: float):
        super().__init__()
        self.inner, self.delay, self.config = model, delay, model.config

        @functools.wraps(model.forward)  # the inner signature: its KV cache argument's name
        def slow_forward(*args, **kwargs):
            time.sleep(self.delay)
            return self.inner(*args, **kwargs)

        self.forward = slow_forward


class Recorder:
    def __init__(self):
        self.states = []

    def progress(self, progress):
        self.states.append(progress)

    def results(self, results):
        pass

    def close(self):
        pass


def summarise(runs) -> ResultsDetail:
    detail = ResultsDetail(generation_runs=runs)
    detail.generation = generation_summary(runs, None)
    detail.cost_per_million_tokens = cost_summary(detail.generation, 3.5)
    return detail


# ---------------------------------------------------------------- the rule (pure)


def test_ranges_that_overlap_are_no_significant_difference():
    dense, sparse = spread([100, 104, 98, 101, 103]), spread([102, 99, 106, 100, 101])
    c = compare(dense, sparse)
    assert dense.median == 101 and (dense.low, dense.high, dense.samples) == (98, 104, 5)
    assert not c.significant and not is_significant(c)
    assert c.low_percent == pytest.approx(100 * (99 - 104) / 104) and c.high_percent == pytest.approx(100 * (106 - 98) / 98)
    assert c.verdict == f"{NO_DIFFERENCE}{c.high_percent:.1f}%)"


def test_ranges_apart_are_significant_with_their_bounds():
    c = compare(spread([100, 101, 102, 99, 100]), spread([80, 82, 81, 79, 80]))
    assert c.significant and c.percent == pytest.approx(-20.0) and c.high_percent < 0
    assert c.verdict == f"{c.percent:+.1f}% ({c.low_percent:+.1f}% to {c.high_percent:+.1f}%)"
    assert not compare(spread([100] * (MIN_SAMPLES - 1)), spread([50] * (MIN_SAMPLES - 1))).significant
    assert "too few runs" in compare(spread([100, 101]), spread([50, 51])).verdict
    assert compare(None, spread([1.0])) is None and spread([]) is None


def test_results_change_is_the_one_place_a_sweep_reads():
    from prune_job.spec import Comparison, CostResult, GenerationComparison, GenerationResult, Results

    faster = Comparison(percent=-20.0, low_percent=-25.0, high_percent=-15.0, significant=True)
    results = Results(cost_per_million_tokens=CostResult(sparse_kernel_vs_dense=faster),
                      generation=GenerationResult(sparse_vs_dense=GenerationComparison(tokens_per_second=faster)))
    assert results.change("costPerMillionTokens", "sparseKernel").significant
    assert results.change("costPerMillionTokens") is None and results.change("tokensPerSecond") == faster
    assert results.change("tokensPerSecond", "sparseKernel") is None
    with pytest.raises(ValueError, match="unknown figure"):
        results.change("tokens")
    back = Results.model_validate(results_document(results))  # status.results round trip
    assert back.change("costPerMillionTokens", "sparseKernel") == faster


def test_interleaved_order_alternates_after_a_shared_warm_up():
    order = measurement_order(["A", "B"], [1, 8], 4)
    first = [(s.variant, s.round) for s in order if s.batch_size == 1]
    assert first == [("A", WARM_UP), ("B", WARM_UP), ("A", 0), ("B", 0), ("B", 1), ("A", 1), ("A", 2), ("B", 2),
                     ("B", 3), ("A", 3)]
    three = [s.variant for s in measurement_order(["d", "s", "k"], [1], 2) if not s.warm_up]
    assert three == ["d", "s", "k", "k", "s", "d"] and len(order) == 2 * 2 * 5


# ---------------------------------------------------------------- measured on a tiny model


def test_timeline_records_the_interleaved_order(tiny_dense, tiny_sparse):
    settings = GenerationEval(batch_sizes=[1, 2], prompt_tokens=8, new_tokens=3, repeats=4)
    runs, timeline = generation.benchmark({"dense": load(tiny_dense), "sparse": load(tiny_sparse)}, settings, CPU)
    assert all(a.end_seconds <= b.start_seconds for a, b in zip(timeline, timeline[1:]))  # in the order they ran
    for batch in (1, 2):
        ran = [(r.variant, r.round) for r in timeline if r.batch_size == batch]
        assert ran[:2] == [("dense", WARM_UP), ("sparse", WARM_UP)]
        variants = [v for v, _ in ran[2:]]
        assert variants == ["dense", "sparse", "sparse", "dense"] * 2  # A B B A, not A A A A B B B B
    assert [r.figures.spread.tokens_per_second.samples for r in runs] == [4] * 4


def test_dense_against_the_same_weights_with_zeros_is_no_significant_difference(tiny_dense, tiny_sparse, tmp_path):
    """CPU, no sparse kernel: report, status and results.json say "no significant difference", every time."""
    job = make_job(ids_file(tmp_path / "ids.jsonl", 4, 16), tmp_path / "out", batch_sizes=(1, 2),
                   generation={"batchSizes": [1, 2], "promptTokens": 8, "newTokens": 4, "repeats": 7})
    recorder = Recorder()
    evaluation = evaluate(job=job, dense_dir=tiny_dense, sparse_dir=tiny_sparse, progress=RunProgress(recorder))
    detail = ResultsDetail(**vars(evaluation))
    write_report(detail, tmp_path / "report")

    results_json = ResultsDetail.model_validate(json.loads((tmp_path / "report" / "results.json").read_text()))
    status = results_document(detail.summary())
    assert status["costPerMillionTokens"]["sparseVsDense"]["significant"] is False
    for figure in FIGURES:
        change = results_json.change(figure)
        assert not change.significant and change.verdict.startswith(NO_DIFFERENCE)
        assert change.low_percent < 0 < change.high_percent
    report, table = (tmp_path / "report" / "report.md").read_text(), summary_table(detail.summary())
    for text in (report, table):
        assert text.count(NO_DIFFERENCE) == 4 and "dense (no sparse kernel ran)" in text
    assert "sparseVsDense" in status["generation"] and "spread" in status["generation"]["dense"]

    env = detail.environment
    assert env.order == "interleaved" and env.memory_isolation == SEPARATE_PROCESS and SEPARATE_PROCESS in report
    assert all(r.figures.peak_memory_bytes > 1 << 20 for r in detail.generation_runs)
    assert len(detail.generation_timeline) == 2 * 2 * 8

    bars = [c for c in comparison_figure(detail).axes[1].containers if isinstance(c, BarContainer)]
    assert len(bars) == 2 and all(c.errorbar is not None for c in bars)

    stages = [s.stage for s in recorder.states]
    for stage in ("perplexity-dense", "perplexity-sparse", "generation-memory", "generation"):
        assert stage in stages and any(s.stage == stage and s.fraction == 1.0 for s in recorder.states)
    last = [s for s in recorder.states if s.stage == "generation"][-1]
    assert last.eta_seconds == 0 and (last.blocks_done, last.blocks_total) == (2, 2)  # the blocks count stays

    dense, sparse = load(tiny_dense), load(tiny_sparse)
    settings = job.spec.evaluation.generation
    for _ in range(4):  # stable: the same verdict on every repetition of the benchmark
        runs, _timeline = generation.benchmark({"dense": dense, "sparse": sparse}, settings, CPU)
        again = summarise(runs)
        assert not any(again.change(f).significant for f in FIGURES), render_markdown(again)


def test_an_injected_slow_down_is_significant(tiny_dense):
    settings = GenerationEval(batch_sizes=[1], prompt_tokens=8, new_tokens=3, repeats=MIN_SAMPLES)
    model = load(tiny_dense)
    # 0.5 s per forward: far beyond what a stalled forward of the tiny model costs on a loaded host
    runs, _ = generation.benchmark({"dense": model, "sparse": Slowed(model, 0.5)}, settings, CPU)
    detail = summarise(runs)
    for figure in FIGURES:
        assert detail.change(figure).significant, figure
    assert detail.change("tokensPerSecond").high_percent < -50
    assert detail.change("costPerMillionTokens").low_percent > 100
    assert NO_DIFFERENCE not in summary_table(detail.summary())


def test_speed_noise_benchmark_runs_tiny(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "noise.json"
    proc = subprocess.run([sys.executable, str(root / "benchmarks/speed_noise.py"), "--tiny", "--trials", "1",
                           "--repeats", "5", "--new-tokens", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trial = json.loads(out.read_text())["trials"][0]
    assert isinstance(trial["significant"], bool) and trial["verdict"] and "sequential_percent" in trial
