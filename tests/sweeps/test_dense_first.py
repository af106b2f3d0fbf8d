"""evaluation.measureDenseFirst on a tiny model: the sweep's measuring child posts the dense
perplexity before it prunes, and its results use that figure (the same one a plain run measures)."""
from __future__ import annotations

import json

import pytest

from prune_job.run import run_job
from prune_job.spec import ObjectMeta, PruneJob, parse_spec


class Recorder:
    """A StatusReporter that keeps the order of what it was told."""

    def __init__(self):
        self.calls = []

    def progress(self, progress):
        self.calls.append(("progress", progress.stage))

    def results(self, results):
        self.calls.append(("results", results))

    def dense_baseline(self, baseline):
        self.calls.append(("dense", baseline))

    def close(self):
        pass


def job(tmp_path, model, name, **evaluation):
    ids = tmp_path / "ids.jsonl"
    ids.write_text("\n".join(json.dumps({"input_ids": list(range(i, i + 16))}) for i in range(8)))
    spec = parse_spec({"model": {"uri": str(model)}, "output": {"uri": str(tmp_path / name), "format": "dense"},
                       "pruning": {"method": "wanda", "sparsity": 0.5},
                       "calibration": {"uri": str(ids), "samples": 8, "sequenceLength": 16},
                       "evaluation": {"perplexity": {"uri": str(ids), "samples": 4, "sequenceLength": 16},
                                      "generation": {"enabled": False}, **evaluation}})
    return PruneJob(metadata=ObjectMeta(name=name, namespace="ml"), spec=spec)


def test_the_measurer_posts_the_dense_perplexity_before_pruning(tmp_path, tiny_model_factory):
    model = tiny_model_factory("llama")
    plain = run_job(job(tmp_path, model, "plain"), tmp_path / "w1", show_bar=False)
    reporter = Recorder()
    first = run_job(job(tmp_path, model, "first", measureDenseFirst=True), tmp_path / "w2", reporter=reporter,
                    show_bar=False)
    posted = [c for c in reporter.calls if c[0] == "dense"]
    assert len(posted) == 1
    baseline = posted[0][1]
    stages = [c[1] for c in reporter.calls if c[0] == "progress"]
    stages = [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s]  # each stage once, in order
    before = {c[1] for c in reporter.calls[: reporter.calls.index(posted[0])] if c[0] == "progress"}
    assert "pruning" not in before and "perplexity-dense" in before  # measured, and posted before pruning
    assert stages.count("perplexity-dense") == 1 and "perplexity-sparse" in stages  # dense not measured again
    assert baseline.perplexity == pytest.approx(plain.perplexity.dense, rel=1e-6) and "first" in baseline.source
    assert first.perplexity.dense == baseline.perplexity and first.perplexity.dense_source is None
    assert first.perplexity_detail.dense_nll == pytest.approx(baseline.nll)
    assert first.perplexity.sparse == pytest.approx(plain.perplexity.sparse, rel=1e-6)
    assert any("measured before pruning" in n for n in first.notes)


def test_a_shared_baseline_wins_over_measuring_first(tmp_path, tiny_model_factory):
    model = tiny_model_factory("llama")
    reporter = Recorder()
    shared = {"perplexity": 123.0, "source": "PruneJob other (sweep g)"}
    result = run_job(job(tmp_path, model, "second", measureDenseFirst=True, denseBaseline=shared), tmp_path / "w",
                     reporter=reporter, show_bar=False)
    assert not [c for c in reporter.calls if c[0] == "dense"]
    assert result.perplexity.dense == 123.0 and "other" in result.perplexity.dense_source


def test_on_cpu_the_measurer_posts_the_dense_peak_memory_too(tmp_path, tiny_model_factory):
    """With generation on, the measurer also measures the dense model's peak memory in a process of
    its own before pruning (as its evaluation would), posts it, and does not measure it again."""
    model = tiny_model_factory("llama")
    generation = {"batchSizes": [1, 2], "promptTokens": 4, "newTokens": 2, "repeats": 1}
    reporter = Recorder()
    first = run_job(job(tmp_path, model, "first", measureDenseFirst=True, generation=generation),
                    tmp_path / "w", reporter=reporter, show_bar=False)
    [(_, baseline)] = [c for c in reporter.calls if c[0] == "dense"]
    assert set(baseline.peak_memory_bytes) == {1, 2} and min(baseline.peak_memory_bytes.values()) > 0
    dense_runs = {r.batch_size: r.figures.peak_memory_bytes for r in first.generation_runs if r.variant == "dense"}
    assert dense_runs == baseline.peak_memory_bytes
    assert any("dense peak memory not measured again" in n for n in first.notes)

    # a child given that baseline takes the dense memory and measures its own sparse one
    shared = baseline.model_dump(by_alias=True, mode="json")
    second = run_job(job(tmp_path, model, "second", denseBaseline=shared, generation=generation), tmp_path / "w2",
                     show_bar=False)
    runs = {(r.variant, r.batch_size): r.figures.peak_memory_bytes for r in second.generation_runs}
    assert runs[("dense", 1)] == baseline.peak_memory_bytes[1] and runs[("dense", 2)] == baseline.peak_memory_bytes[2]
    assert runs[("sparse", 1)] > 0

    # a baseline without the batch sizes this spec times measures dense memory again
    partial = {**shared, "peakMemoryBytes": {"1": 5}}
    third = run_job(job(tmp_path, model, "third", denseBaseline=partial, generation=generation), tmp_path / "w3",
                    show_bar=False)
    assert not any("memory not measured again" in n for n in third.notes)
    assert {r.figures.peak_memory_bytes for r in third.generation_runs if r.variant == "dense"} != {5}
