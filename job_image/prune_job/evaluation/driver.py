"""`evaluate`: dense against sparse under the same conditions, after the
checkpoint is written. Returns an `Evaluation`; the orchestrator puts it into
the results (prune_job.run.assemble_results) and writes the report once.

Order: perplexity of both models with the block-streaming forward (same
windows) → peak memory of each generation variant on its own (`footprint`) →
the generation benchmark of the fully loaded models, dense, sparse and on CUDA
the 2:4 model with semi-structured kernels, resident together and timed in an
interleaved order (`interleave`), each figure a median with its spread →
cost, and each variant against dense with the `spread` rule. Models that do
not fit together are timed one after the other (and the results say so); a
model that does not fit at all is recorded in the results; perplexity is
still reported. Each step has its progress stage and bar.
Measured sparsity is not counted here: the checkpoint writer counts it as it
encodes each pruned tensor.
"""
from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from prune_job.data import micro_batches, token_windows
from prune_job.evaluation import footprint, generation, kernels, tasks
from prune_job.evaluation.interleave import measurement_order
from prune_job.evaluation.perplexity import Perplexity, increase_percent, streamed_nll
from prune_job.evaluation.summary import cost_summary, generation_summary
from prune_job.evaluation.weights import WeightSource, load_full_model, streaming_handle, weight_source
from prune_job.pipeline.distributed import SingleProcess, World, first_on_each_node
from prune_job.pipeline.memory import micro_batch_tokens, release_freed_memory
from prune_job.pipeline.model import DTYPES, ModelHandle, default_device, open_model
from prune_job.sources.texts import read_source
from prune_job.spec import (
    CostResult, DenseBaseline, EvaluationEnvironment, GenerationEval, GenerationResult, GenerationRun, PerplexityDetail,
    PerplexityResult, PruneJob, TaskAccuracy, TasksDetail, TimedRun,
)

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """What evaluation measured; each field has the same name in ResultsDetail."""

    perplexity: Optional[PerplexityResult] = None
    perplexity_detail: Optional[PerplexityDetail] = None
    environment: Optional[EvaluationEnvironment] = None
    generation: Optional[GenerationResult] = None
    generation_runs: list[GenerationRun] = field(default_factory=list)
    generation_timeline: list[TimedRun] = field(default_factory=list)
    cost_per_million_tokens: Optional[CostResult] = None
    tasks: list[TaskAccuracy] = field(default_factory=list)
    tasks_detail: Optional[TasksDetail] = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Models:
    """The two models compared, and how to build them."""

    dense_dir: Path
    sparse: Optional[WeightSource]  # the written (pruned) weights; None before pruning (dense_perplexity)
    dtype: str
    device: torch.device
    trust_remote_code: bool = False
    blocks: Optional[str] = None
    sparse_dir: Optional[Path] = None  # where `sparse` was read from, when it is a folder
    dense: Optional[WeightSource] = None  # the dense tensors when not in dense_dir's files (ranged reads, stream)

    @cached_property
    def skeleton(self) -> nn.Module:
        """The dense model on the meta device: shapes, config, module types; no weights."""
        return self.handle(sparse=False).model

    def handle(self, sparse: bool) -> ModelHandle:
        """A meta-device skeleton whose blocks are read one at a time from the dense or the sparse weights."""
        if sparse:
            return streaming_handle(self.dense_dir, self.sparse, self.dtype, self.device,
                                    self.trust_remote_code, self.blocks, self.dense)
        return open_model(self.dense_dir, self.dtype, self.device, trust_remote_code=self.trust_remote_code,
                          blocks=self.blocks, index=self.dense)

    def load(self, sparse: bool) -> nn.Module:
        return load_full_model(self.dense_dir, self.dtype, self.device, self.sparse if sparse else None,
                               self.trust_remote_code, self.dense)


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
    world: Optional[World] = None,
    measured_dense: Optional[DenseBaseline] = None,
    dense_weights: Optional[WeightSource] = None,
) -> Evaluation:
    """Evaluate `sparse_dir` (or `sparse_state`) against `dense_dir`. In a group of ranks
    (`world`) the perplexity windows are shared and the generation benchmark runs on rank 0.
    `measured_dense`: the dense perplexity this run measured before pruning (dense_perplexity).
    `dense_weights`: the dense tensors when dense_dir holds only the small files (`model.stream`:
    the pruning's RemoteWeightIndex, verified ranged reads from the bucket)."""
    world = world or SingleProcess()
    spec = job.spec
    if (sparse_dir is None) == (sparse_state is None):
        raise ValueError("give exactly one of sparse_dir and sparse_state")
    models = Models(Path(dense_dir), weight_source(sparse_dir if sparse_dir is not None else sparse_state),
                    spec.model.dtype, torch.device(device) if device else default_device(),
                    spec.model.trust_remote_code, spec.model.blocks,
                    Path(sparse_dir) if sparse_dir is not None else None, dense_weights)
    result = Evaluation()
    windows = first_on_each_node(world, lambda: eval_windows(job, models, tokenizer, fetch))
    perplexity(models, windows, result, job, progress, world, measured_dense)
    if world.is_writer:
        generate(models, job, result, progress, job.spec.evaluation.dense_baseline or measured_dense)
    if world.is_writer and spec.evaluation.tasks is not None:
        _free(models.device)
        result.tasks, result.tasks_detail, notes = tasks.measure(models, spec.evaluation.tasks, tokenizer, progress)
        result.notes += notes
    return result


def eval_windows(job: PruneJob, models: Models, tokenizer: Any, fetch) -> list[torch.Tensor]:
    ppl = job.spec.evaluation.perplexity
    field = "spec.evaluation.perplexity.uri"
    source = read_source(ppl.uri, field, fetch)
    vocab = models.skeleton.get_input_embeddings().num_embeddings
    return token_windows(source, tokenizer, ppl.samples, ppl.sequence_length, job.spec.calibration.seed, field,
                         vocab_size=vocab)


def perplexity(models: Models, windows: list[torch.Tensor], result: Evaluation, job: PruneJob, progress,
               world: Optional[World] = None, measured: Optional[DenseBaseline] = None) -> None:
    """Dense and sparse perplexity on the same windows with the block-streaming forward
    (each rank its share of the windows; the sums of losses and tokens are reduced in fp64).
    The dense figure is not measured again when a sweep shares one (evaluation.denseBaseline)
    or this run `measured` it before pruning."""
    world = world or SingleProcess()
    shared = job.spec.evaluation.dense_baseline  # a sweep's dense figure, measured once on the same windows
    known = shared or measured
    figures = {variant: _streamed_perplexity(models, windows, variant, progress, world)
               for variant in (("sparse",) if known else ("dense", "sparse"))}
    dense = known.perplexity if known else figures["dense"].value
    sparse = figures["sparse"].value
    result.perplexity = PerplexityResult(dense=dense, sparse=sparse, increase_percent=increase_percent(dense, sparse),
                                         dense_source=f"shared: {shared.source}" if shared else None)
    if shared:
        result.notes.append(f"dense perplexity not measured again: shared from {shared.source} (same windows)")
    elif measured:
        result.notes.append("dense perplexity measured before pruning (evaluation.measureDenseFirst) and posted "
                            "to status.denseBaseline for the sweep's other children")
    result.perplexity_detail = PerplexityDetail(
        source=job.spec.evaluation.perplexity.uri, windows=len(windows),
        sequence_length=job.spec.evaluation.perplexity.sequence_length, tokens=figures["sparse"].tokens,
        dense_nll=known.nll if known else figures["dense"].mean_nll, sparse_nll=figures["sparse"].mean_nll,
        method="streamed",
    )


def _streamed_perplexity(models: Models, windows: list[torch.Tensor], variant: str, progress,
                         world: World) -> Perplexity:
    """One model's perplexity on this rank's share of `windows`, summed over the ranks."""
    batches = micro_batches(world.share(windows), micro_batch_tokens(models.device))  # same for dense and sparse
    handle = models.handle(sparse=variant == "sparse")
    on_block = _counter(progress, f"perplexity-{variant}", handle.num_blocks, "block")
    nll, tokens = streamed_nll(handle, batches, on_block) if batches else (0.0, 0)
    sums = world.all_reduce(torch.tensor([nll, tokens], dtype=torch.float64))
    del handle
    return Perplexity(float(sums[0]), int(sums[1]))


def dense_perplexity(*, job: PruneJob, dense_dir: Path, tokenizer: Any = None,
                     fetch: Optional[Callable[[str], Path]] = None, progress: Any = None,
                     device: Optional[torch.device] = None, world: Optional[World] = None,
                     source: str = "", dense_weights: Optional[WeightSource] = None) -> DenseBaseline:
    """The dense perplexity on the evaluation windows, before pruning (evaluation.measureDenseFirst:
    a sweep's first child posts it so that the others need not measure it); `evaluate(measured_dense=...)` reuses it."""
    world = world or SingleProcess()
    spec = job.spec
    models = Models(Path(dense_dir), None, spec.model.dtype, torch.device(device) if device else default_device(),
                    spec.model.trust_remote_code, spec.model.blocks, dense=dense_weights)
    windows = first_on_each_node(world, lambda: eval_windows(job, models, tokenizer, fetch))
    figure = _streamed_perplexity(models, windows, "dense", progress, world)
    memory = None
    settings = spec.evaluation.generation
    on_cpu = models.device.type == "cpu"
    if world.is_writer and settings.enabled and on_cpu and _does_not_fit(models, settings, 1) is None:
        try:  # the generation benchmark's dense memory, measured as evaluate() would, for the others too
            memory = footprint.in_own_process(_footprint_recipe(models, "dense"), settings) or None
        except (footprint.MeasurementError, OSError) as err:
            log.warning("dense peak memory not measured before pruning (each child measures it): %s", err)
    return DenseBaseline(perplexity=figure.value, nll=figure.mean_nll if figure.tokens else None,
                         peak_memory_bytes=memory, source=source or f"PruneJob {job.metadata.name}")


def _counter(progress, stage: str, total: int, unit: str) -> Optional[Callable[[int], None]]:
    """Start a progress stage of `total` units; the callback takes the index of the unit just finished."""
    if progress is None:
        return None
    progress.stage(stage, total=total, unit=unit)
    return lambda i: progress.advance(i + 1)


def _run_counter(progress, stage: str, total: int) -> Optional[Callable[[int], None]]:
    """Like `_counter`, for callers that report how many units they just finished."""
    on_unit = _counter(progress, stage, total, "run")
    if on_unit is None:
        return None
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        on_unit(done[0] - 1)

    return advance


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


def generate(models: Models, job: PruneJob, result: Evaluation, progress: Any = None,
             known: Optional[DenseBaseline] = None) -> None:
    """Generation benchmark of every variant (dense, sparse, 2:4 kernels on CUDA), then cost.
    `known`: dense figures measured before (a sweep's, or this run's before pruning): its dense
    peak memory, measured in a process of its own, is not measured again."""
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
    variants = ["dense", "sparse"] + ([] if no_kernel else ["sparse-kernel"])
    skipped = _does_not_fit(models, settings, 1)
    if skipped is None:
        memory = _separate_process_memory(models, variants, settings, result, progress, known)
        together = _does_not_fit(models, settings, len(variants)) is None
        runs = _timed(models, variants, settings, result, progress, memory, together)
    else:
        runs = [_skipped_run(v, b, settings, skipped) for v in variants for b in settings.batch_sizes]
    result.generation_runs = runs
    note = skipped or _skipped_note(runs)
    if no_kernel:
        note = f"{note} {no_kernel}".strip() if note else no_kernel
        result.notes.append(no_kernel)
    result.generation = generation_summary(runs, note)
    result.cost_per_million_tokens = cost_summary(result.generation, job.spec.evaluation.gpu_hourly_cost)


def _does_not_fit(models: Models, settings: GenerationEval, copies: int) -> Optional[str]:
    """Why `copies` whole models (plus one run at the smallest batch) do not fit, or None."""
    skeleton = models.skeleton
    elt = DTYPES[models.dtype].itemsize
    need = copies * generation.weight_bytes(skeleton) + generation.run_bytes(
        generation.text_config(skeleton), elt, min(settings.batch_sizes),
        settings.prompt_tokens + settings.new_tokens, settings.prompt_tokens)
    what = "the whole model" if copies == 1 else f"{copies} whole models at once"
    return generation.does_not_fit(need, models.device, f"{what} for the generation benchmark")


def _skipped_run(variant: str, batch_size: int, settings: GenerationEval, skipped: str) -> GenerationRun:
    return GenerationRun(variant=variant, batch_size=batch_size, prompt_tokens=settings.prompt_tokens,
                         new_tokens=settings.new_tokens, repeats=settings.repeats, skipped=skipped)


def _skipped_note(runs: list[GenerationRun]) -> Optional[str]:
    skipped = [f"{r.variant} batch {r.batch_size}: {r.skipped}" for r in runs if r.skipped]
    return "; ".join(skipped) if skipped else None


Memory = dict[str, dict[int, int]]  # variant -> batch size -> peak bytes


def _footprint_recipe(models: Models, variant: str) -> footprint.Recipe:
    return footprint.Recipe(str(models.dense_dir), None if variant == "dense" else str(models.sparse_dir),
                            models.dtype, models.trust_remote_code, torch.get_num_threads(),
                            getattr(models.dense, "uri", None))


def _separate_process_memory(models: Models, variants: list[str], settings: GenerationEval, result: Evaluation,
                             progress, known: Optional[DenseBaseline] = None) -> Optional[Memory]:
    """On CPU with the sparse model in a folder: each variant's peak memory in a process of its own
    (the dense one taken from `known` when it has every batch size)."""
    if models.device.type != "cpu" or models.sparse_dir is None:
        return None
    on_variant = _counter(progress, "generation-memory", len(variants), "variant")
    memory: Memory = {}
    shared = (known.peak_memory_bytes or {}) if known else {}
    for k, variant in enumerate(variants):
        if variant == "dense" and shared and set(settings.batch_sizes) <= set(shared):
            memory[variant] = {b: shared[b] for b in settings.batch_sizes}
            result.notes.append(f"dense peak memory not measured again: measured in a process of its own by "
                                f"{known.source}")
            if on_variant:
                on_variant(k)
            continue
        try:
            memory[variant] = footprint.in_own_process(_footprint_recipe(models, variant), settings)
        except (footprint.MeasurementError, OSError) as err:
            result.notes.append(f"peak memory of the {variant} model not measured: {err or type(err).__name__}")
            memory[variant] = {}
        if on_variant:
            on_variant(k)
    result.environment.memory_isolation = footprint.SEPARATE_PROCESS
    return memory


def _timed(models: Models, variants: list[str], settings: GenerationEval, result: Evaluation, progress,
           memory: Optional[Memory], together: bool) -> list[GenerationRun]:
    """Load the variants (all at once when they fit together) and time them; peak memory from `memory`
    or, where that is None, measured in this process as each variant is loaded."""
    result.environment.order = "interleaved" if together else "sequential"
    if not together:
        result.notes.append("dense and sparse did not fit in memory together: they were timed one after the other, "
                            "not interleaved")
    if memory is None:
        memory = {}
        result.environment.memory_isolation = (footprint.DEVICE_RESET if models.device.type == "cuda"
                                               else footprint.IN_PROCESS_HOST)
    on_run = _run_counter(progress, "generation", len(measurement_order(variants, settings.batch_sizes,
                                                                         settings.repeats)))
    groups = [variants] if together else [[v] for v in variants]
    runs: list[GenerationRun] = []
    for group in groups:
        runs += _time_group(models, group, settings, result, memory, on_run)
    return sorted(runs, key=lambda r: (settings.batch_sizes.index(r.batch_size), variants.index(r.variant)))


def _time_group(models: Models, group: list[str], settings: GenerationEval, result: Evaluation, memory: Memory,
                on_run) -> list[GenerationRun]:
    loaded: dict[str, nn.Module] = {}
    try:
        base = footprint.held_bytes(models.device)
        for variant in group:
            held = footprint.held_bytes(models.device) - base  # what the variants loaded before hold
            loaded[variant] = _load_variant(models, variant, result)
            if variant not in memory:
                memory[variant] = footprint.peaks(loaded[variant], settings, models.device, others=held)
        runs, timeline = generation.benchmark(loaded, settings, models.device, on_run)
    except (torch.OutOfMemoryError, MemoryError) as err:
        reason = f"out of memory loading the {' and '.join(group)} model: {str(err).splitlines()[0][:200]}"
        if on_run:
            on_run(len(measurement_order(group, settings.batch_sizes, settings.repeats)))
        return [_skipped_run(v, b, settings, reason) for v in group for b in settings.batch_sizes]
    finally:
        loaded.clear()
        _free(models.device)
    result.generation_timeline += timeline
    for run in runs:
        if run.figures is not None:
            run.figures.peak_memory_bytes = memory.get(run.variant, {}).get(run.batch_size)
    return runs


def _load_variant(models: Models, variant: str, result: Evaluation) -> nn.Module:
    model = models.load(sparse=variant != "dense")
    if variant == "sparse-kernel":
        converted, left = kernels.to_semi_structured(model)
        result.notes.append(f"2:4 kernels: {len(converted)} Linear layers converted, {len(left)} left dense")
    return model


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    release_freed_memory()
