"""evaluate(): the entry point the orchestrator calls after the checkpoint is written."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from eval_fixtures import ids_file, make_job
from prune_job.checkpoint.sparsity import iter_safetensors, measure_layers
from prune_job.evaluation import evaluate
from prune_job.evaluation import generation
from prune_job.spec import Pattern


def test_evaluate_dense_format_folder(tiny_dense, tiny_sparse, tmp_path):
    job = make_job(ids_file(tmp_path / "ids.jsonl", 4, 32), tmp_path / "out")
    detail = evaluate(job=job, dense_dir=tiny_dense, sparse_dir=tiny_sparse)
    ppl = detail.perplexity
    assert ppl.dense > 1 and ppl.sparse > 1 and ppl.dense != ppl.sparse
    assert detail.perplexity_detail.tokens == 4 * 31 and detail.perplexity_detail.method == "streamed"
    assert {(r.variant, r.batch_size) for r in detail.generation_runs} == {
        ("dense", 1), ("dense", 2), ("sparse", 1), ("sparse", 2)}
    gen = detail.generation
    assert gen.batch_size == 2 and gen.sparse_kernel is None and "no sparse kernel" in gen.note
    assert all(math.isfinite(v) and v > 0 for v in (gen.dense.tokens_per_second, gen.sparse.tokens_per_second))
    assert detail.cost_per_million_tokens.dense > 0 and detail.cost_per_million_tokens.sparse > 0
    assert detail.environment.memory_kind == "host-rss"


def test_evaluate_in_memory_state(tiny_dense, tiny_sparse, tmp_path):
    """A state dict instead of a folder gives the folder's perplexity."""
    state = load_file(next(tiny_sparse.glob("*.safetensors")))
    state = {k: v for k, v in state.items() if k != "lm_head.weight"}  # tied: stored once
    job = make_job(ids_file(tmp_path / "ids.jsonl", 4, 16), tmp_path / "out", generation={"enabled": False})
    detail = evaluate(job=job, dense_dir=tiny_dense, sparse_state=state)
    assert detail.perplexity == evaluate(job=job, dense_dir=tiny_dense, sparse_dir=tiny_sparse).perplexity
    assert detail.generation_runs == [] and "disabled" in detail.generation.note
    assert detail.perplexity.sparse > 1


def test_model_too_large_for_generation_still_reports_perplexity(tiny_dense, tiny_sparse, tmp_path, monkeypatch):
    monkeypatch.setattr(generation, "available_bytes", lambda device: 10_000)
    job = make_job(ids_file(tmp_path / "ids.jsonl", 4, 16), tmp_path / "out")
    detail = evaluate(job=job, dense_dir=tiny_dense, sparse_dir=tiny_sparse)
    assert detail.perplexity.dense is not None and detail.perplexity.sparse is not None
    assert detail.generation.note.startswith("does not fit: the whole model")
    assert all(r.figures is None for r in detail.generation_runs)
    assert detail.cost_per_million_tokens.dense is None


def test_needs_exactly_one_sparse_source(tiny_dense, tmp_path):
    job = make_job(ids_file(tmp_path / "ids.jsonl", 4, 16), tmp_path / "out")
    with pytest.raises(ValueError):
        evaluate(job=job, dense_dir=tiny_dense)


@pytest.mark.parametrize("pattern", ["2:4", "unstructured"])
def test_evaluate_compressed_checkpoint_matches_dense_format(tiny_dense, tiny_sparse, tmp_path, pattern):
    """The checkpoint writer's compressed format gives the same figures as the dense-format folder,
    and the zeros it counts while encoding are those counted again from the written weights."""
    from prune_job.checkpoint import CheckpointWriter

    writer = CheckpointWriter(tmp_path / "compressed", format="compressed")
    for key, tensor in load_file(next(tiny_sparse.glob("*.safetensors"))).items():
        pruned = ".layers." in key and tensor.dim() == 2
        writer.add(key, tensor, pattern=Pattern(2, 4) if pruned and pattern == "2:4" else None, pruned=pruned)
    writer.add_file("config.json", tiny_sparse / "config.json")
    summary = writer.finish({})
    job = make_job(ids_file(tmp_path / "ids.jsonl", 4, 16), tmp_path / "out", pattern=pattern,
                   generation={"enabled": False})
    results = [evaluate(job=job, dense_dir=tiny_dense, sparse_dir=folder) for folder in [tiny_sparse, summary.directory]]
    assert results[0].perplexity == results[1].perplexity
    nm = Pattern(2, 4) if pattern == "2:4" else None
    recounted = measure_layers(iter_safetensors(tiny_sparse), nm)
    assert sorted(writer.layers.values(), key=lambda l: l.name) == recounted and len(recounted) == 14
    assert all(layer.zeros * 2 == layer.numel and layer.pattern_ok is not False for layer in recounted)
    manifest = json.loads((summary.directory / "manifest.json").read_text())
    assert manifest["sparsity"]["measured"] == 0.5


def test_in_memory_sparse_weights_measure_memory_in_process(tiny_dense, tiny_sparse, tmp_path):
    from prune_job.evaluation.footprint import IN_PROCESS_HOST

    state = load_file(next(tiny_sparse.glob("*.safetensors")))
    job = make_job(ids_file(tmp_path / "ids.jsonl", 4, 16), tmp_path / "out", batch_sizes=(1,))
    detail = evaluate(job=job, dense_dir=tiny_dense, sparse_state=state)
    assert detail.environment.memory_isolation == IN_PROCESS_HOST and detail.environment.order == "interleaved"
    assert all(r.figures.peak_memory_bytes > 0 for r in detail.generation_runs)


def test_models_that_fit_only_one_at_a_time_are_timed_one_after_the_other(tiny_dense, tiny_sparse, tmp_path,
                                                                         monkeypatch):
    from prune_job.evaluation import driver
    from prune_job.evaluation.weights import weight_source

    job = make_job(ids_file(tmp_path / "ids.jsonl", 4, 16), tmp_path / "out", batch_sizes=(1, 2))
    models = driver.Models(tiny_dense, weight_source(tiny_sparse), "float32", torch.device("cpu"))
    weights = generation.weight_bytes(models.skeleton)  # room for one model and a half
    room = (1.5 * weights + generation.run_bytes(generation.text_config(models.skeleton), 4, 2, 12, 8))
    monkeypatch.setattr(generation, "available_bytes", lambda device: room / generation.FIT_MARGIN)
    settings = job.spec.evaluation.generation
    assert driver._does_not_fit(models, settings, 1) is None and driver._does_not_fit(models, settings, 2)
    state = load_file(next(tiny_sparse.glob("*.safetensors")))  # in memory: no measuring processes (faster)
    detail = evaluate(job=job, dense_dir=tiny_dense, sparse_state=state)
    assert detail.environment.order == "sequential" and any("one after the other" in n for n in detail.notes)
    assert [r.variant for r in detail.generation_timeline] == ["dense"] * 6 + ["sparse"] * 6  # 2 x (warm-up + 2)
    assert [(r.variant, r.batch_size) for r in detail.generation_runs] == [
        ("dense", 1), ("sparse", 1), ("dense", 2), ("sparse", 2)]
    assert all(r.figures is not None for r in detail.generation_runs)
