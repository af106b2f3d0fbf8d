"""`evaluate`: dense against sparse under the same conditions, after the
checkpoint is written. Returns an `Evaluation`; the orchestrator puts it into
the results (prune_job.run.assemble_results) and writes the report once.

Order: perplexity of both models with the block-streaming forward (same
windows) → generation benchmark of both fully loaded models (and, on CUDA, the
2:4 model with semi-structured kernels) → cost. A model that does not fit for
generation is recorded in the results; perplexity is still reported.
Measured sparsity is not counted here: the checkpoint writer counts it as it
encodes each pruned tensor.
"""
from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from prune_job.data import micro_batches, token_windows
from prune_job.evaluation import generation, kernels
from prune_job.evaluation.perplexity import Perplexity, increase_percent, streamed_nll
from prune_job.evaluation.summary import cost_summary, generation_summary
from prune_job.evaluation.weights import WeightSource, load_full_model, streaming_handle, weight_source
from prune_job.pipeline.memory import micro_batch_tokens, release_freed_memory
from prune_job.pipeline.model import DTYPES, ModelHandle, default_device, open_model
from prune_job.sources.texts import read_source
from prune_job.spec import (
    CostResult, EvaluationEnvironment, GenerationResult, GenerationRun, PerplexityDetail, PerplexityResult,
    PruneJob,
)


@dataclass
class Evaluation:
    """What evaluation measured; each field has the same name in ResultsDetail."""

    perplexity: Optional[PerplexityResult] = None
    perplexity_detail: Optional[PerplexityDetail] = None
    environment: Optional[EvaluationEnvironment] = None
    generation: Optional[GenerationResult] = None
    generation_runs: list[GenerationRun] = field(default_factory=list)
    cost_per_million_tokens: Optional[CostResult] = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Models:
    """The two models compared, and how to build them."""

    dense_dir: Path
    sparse: WeightSource  # the written (pruned) weights
    dtype: str
    device: torch.device
    trust_remote_code: bool = False
    blocks: Optional[str] = None

    @cached_property
    def skeleton(self) -> nn.Module:
        """The dense model on the meta device: shapes, config, module types; no weights."""
        return self.handle(sparse=False).model

    def handle(self, sparse: bool) -> ModelHandle:
        """A meta-device skeleton whose blocks are read one at a time from the dense or the sparse weights."""
        if sparse:
            return streaming_handle(self.dense_dir, self.sparse, self.dtype, self.device,
                                    self.trust_remote_code, self.blocks)
        return open_model(self.dense_dir, self.dtype, self.device, trust_remote_code=self.trust_remote_code,
                          blocks=self.blocks)

    def load(self, sparse: bool) -> nn.Module:
        return load_full_model(self.dense_dir, self.dtype, self.device, self.sparse if sparse else None,
                               self.trust_remote_code)


def evaluate(
    *,
    job: PruneJob,
    dense_dir: Path,
    sparse_dir: Optional[Path] = None,
    sparse_state: Optional[Mapping[str, torch.Tensor]] = None,
    tokenizer: Any = None,
    fetch: Optional[Callable[[str], Path]] = None,
    progress: Any = None,
    device: Optional[torch.device] = None,
) -> Evaluation:
    """Evaluate `sparse_dir` (or `sparse_state`) against `dense_dir`."""
    spec = job.spec
    if (sparse_dir is None) == (sparse_state is None):
        raise ValueError("give exactly one of sparse_dir and sparse_state")
    models = Models(Path(dense_dir), weight_source(sparse_dir if sparse_dir is not None else sparse_state),
                    spec.model.dtype, torch.device(device) if device else default_device(),
                    spec.model.trust_remote_code, spec.model.blocks)
    result = Evaluation()
    windows = eval_windows(job, models, tokenizer, fetch)
    perplexity(models, windows, result, job, progress)
    generate(models, job, result)
    return result


def eval_windows(job: PruneJob, models: Models, tokenizer: Any, fetch) -> list[torch.Tensor]:
    ppl = job.spec.evaluation.perplexity
    field = "spec.evaluation.perplexity.uri"
    source = read_source(ppl.uri, field, fetch)
    vocab = models.skeleton.get_input_embeddings().num_embeddings
    return token_windows(source, tokenizer, ppl.samples, ppl.sequence_length, job.spec.calibration.seed, field,
                         vocab_size=vocab)


def perplexity(models: Models, windows: list[torch.Tensor], result: Evaluation, job: PruneJob, progress) -> None:
    """Dense and sparse perplexity on the same windows with the block-streaming forward."""
    batches = micro_batches(windows, micro_batch_tokens(models.device))  # the same for dense and sparse
    shared = job.spec.evaluation.dense_baseline  # a sweep's dense figure, measured once on the same windows
    variants = ("sparse",) if shared else ("dense", "sparse")
    figures = {}
    for k, variant in enumerate(variants):
        handle = models.handle(sparse=variant == "sparse")
        on_block = _block_counter(progress, k * handle.num_blocks, len(variants) * handle.num_blocks)
        figures[variant] = Perplexity(*streamed_nll(handle, batches, on_block))
        del handle
    dense = shared.perplexity if shared else figures["dense"].value
    sparse = figures["sparse"].value
    result.perplexity = PerplexityResult(dense=dense, sparse=sparse, increase_percent=increase_percent(dense, sparse),
                                         dense_source=f"shared: {shared.source}" if shared else None)
    if shared:
        result.notes.append(f"dense perplexity not measured again: shared from {shared.source} (same windows)")
    result.perplexity_detail = PerplexityDetail(
        source=job.spec.evaluation.perplexity.uri, windows=len(windows),
        sequence_length=job.spec.evaluation.perplexity.sequence_length, tokens=figures["sparse"].tokens,
        dense_nll=shared.nll if shared else figures["dense"].mean_nll, sparse_nll=figures["sparse"].mean_nll,
        method="streamed",
    )


def _block_counter(progress, offset: int, total: int) -> Optional[Callable[[int], None]]:
    if progress is None:
        return None
    start = time.perf_counter()
    return lambda i: progress.block_done(offset + i + 1, total, time.perf_counter() - start)


def environment(device: torch.device, dtype: str, kernel: Optional[str]) -> EvaluationEnvironment:
    cuda = device.type == "cuda"
    return EvaluationEnvironment(
        device=str(device), device_name=torch.cuda.get_device_name(device) if cuda else None, dtype=dtype,
        torch_version=torch.__version__, threads=torch.get_num_threads(),
        memory_kind="device" if cuda else "host-rss", sparse_kernel=kernel,
        load_average=os.getloadavg()[0], cpu_count=os.cpu_count(),
    )


def busy_host_note(env: EvaluationEnvironment) -> Optional[str]:
    """CPU timings on a host busier than its core count are mostly noise: say so."""
    if env.memory_kind == "host-rss" and env.load_average and env.cpu_count and env.load_average > env.cpu_count:
        return (f"the host was busy (load average {env.load_average:.1f} on {env.cpu_count} cores) when generation "
                "was timed: CPU figures are noisy")
    return None


def generate(models: Models, job: PruneJob, result: Evaluation) -> None:
    """Generation benchmark, dense then sparse (then 2:4 kernels on CUDA); one model in memory at a time."""
    settings = job.spec.evaluation.generation
    no_kernel = kernels.kernel_unavailable(models.device, DTYPES[models.dtype], job.spec.pruning.nm)
    result.environment = environment(models.device, models.dtype, None if no_kernel else kernels.backend_name())
    busy = busy_host_note(result.environment)
    if busy and settings.enabled:
        result.notes.append(busy)
    if not settings.enabled:
        result.generation = generation_summary([], "generation benchmark disabled (evaluation.generation.enabled)")
        return
    _free(models.device)  # what perplexity freed is not counted in generation's peak memory
    skipped = _model_does_not_fit(models, settings)
    variants = ["dense", "sparse"] + ([] if no_kernel else ["sparse-kernel"])
    runs: list[GenerationRun] = []
    for variant in variants:
        runs += _benchmark_variant(models, variant, settings, skipped, result)
    result.generation_runs = runs
    note = skipped or _skipped_note(runs)
    if no_kernel:
        note = f"{note} {no_kernel}".strip() if note else no_kernel
        result.notes.append(no_kernel)
    result.generation = generation_summary(runs, note)
    result.cost_per_million_tokens = cost_summary(result.generation, job.spec.evaluation.gpu_hourly_cost)


def _model_does_not_fit(models: Models, settings) -> Optional[str]:
    skeleton = models.skeleton
    elt = DTYPES[models.dtype].itemsize
    need = generation.weight_bytes(skeleton) + generation.run_bytes(
        generation.text_config(skeleton), elt, min(settings.batch_sizes),
        settings.prompt_tokens + settings.new_tokens, settings.prompt_tokens)
    return generation.does_not_fit(need, models.device, "the whole model for the generation benchmark")


def _skipped_note(runs: list[GenerationRun]) -> Optional[str]:
    skipped = [f"{r.variant} batch {r.batch_size}: {r.skipped}" for r in runs if r.skipped]
    return "; ".join(skipped) if skipped else None


def _benchmark_variant(models: Models, variant: str, settings, skipped: Optional[str],
                       result: Evaluation) -> list[GenerationRun]:
    if skipped is None:
        model = None
        try:
            model = models.load(sparse=variant != "dense")
            if variant == "sparse-kernel":
                converted, left = kernels.to_semi_structured(model)
                result.notes.append(f"2:4 kernels: {len(converted)} Linear layers converted, {len(left)} left dense")
            return generation.benchmark(model, settings, variant, models.device)
        except (torch.OutOfMemoryError, MemoryError) as err:
            skipped = f"out of memory loading the {variant} model: {str(err).splitlines()[0][:200]}"
        finally:
            del model
            _free(models.device)
    return [GenerationRun(variant=variant, batch_size=b, prompt_tokens=settings.prompt_tokens,
                          new_tokens=settings.new_tokens, repeats=settings.repeats, skipped=skipped)
            for b in settings.batch_sizes]


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    release_freed_memory()

