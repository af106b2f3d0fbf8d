"""Generation benchmark of fully loaded models: greedy decoding with the KV
cache in a manual loop, so that the first token and each following token are
timed on their own (with a device synchronise on CUDA).

`benchmark` runs every variant (dense, sparse, and on CUDA the 2:4 kernel
model) in the interleaved order of `interleave.measurement_order`: a shared
warm-up, then alternating repetitions. Every timed run is kept in a timeline;
each figure is the median of its runs with the min-max spread
(`spread.spread`). Peak memory is not measured here, where every variant is
resident at once: `footprint` measures it one variant at a time.
"""
from __future__ import annotations

import inspect
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch
from torch import nn

from prune_job.evaluation.interleave import Slot, batch_order
from prune_job.evaluation.memory import available_bytes
from prune_job.evaluation.spread import spread
from prune_job.spec import FigureSpreads, GenerationEval, GenerationFigures, GenerationRun, TimedRun

FIT_MARGIN = 0.9  # use at most this share of the memory still available
PROMPT_SEED = 0


@dataclass(frozen=True)
class Timing:
    first_token_s: float
    step_s: list[float]  # each following token's time (batch-wide)
    total_s: float
    tokens: torch.Tensor  # [batch, new_tokens] generated ids (greedy)


def _sync(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def _forward_kwargs(model: nn.Module) -> dict:
    """Ask only for the last position's logits where the model allows it."""
    params = inspect.signature(model.forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


def _cache_name(model: nn.Module) -> str:
    """transformers 5.2x calls the KV cache `cache`; earlier versions `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.inference_mode()
def decode(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> Timing:
    """Greedy decoding of `new_tokens` tokens after `prompt` ([batch, prompt_len])."""
    device = prompt.device
    sync, extra, cache_name = _sync(device), _forward_kwargs(model), _cache_name(model)
    steps, generated = [], []
    sync()
    start = time.perf_counter()
    out = model(input_ids=prompt, use_cache=True, **extra)
    token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
    sync()
    first = time.perf_counter() - start
    generated.append(token)
    cache = out[cache_name]
    for _ in range(new_tokens - 1):
        t = time.perf_counter()
        out = model(input_ids=token, use_cache=True, **{cache_name: cache}, **extra)
        cache = out[cache_name]
        token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
        sync()
        steps.append(time.perf_counter() - t)
        generated.append(token)
    total = time.perf_counter() - start
    del out, cache
    return Timing(first, steps, total, torch.cat(generated, dim=1).cpu())


def timed_run(slot: Slot, timing: Timing, start_s: float, new_tokens: int) -> TimedRun:
    """One decode as the timeline records it (seconds from the start of the benchmark)."""
    return TimedRun(
        variant=slot.variant, batch_size=slot.batch_size, round=slot.round, start_seconds=start_s,
        end_seconds=start_s + timing.total_s, tokens_per_second=slot.batch_size * new_tokens / timing.total_s,
        time_to_first_token_ms=1000.0 * timing.first_token_s,
        inter_token_latency_ms=1000.0 * statistics.fmean(timing.step_s) if timing.step_s else None,
    )


def figures(runs: list[TimedRun]) -> GenerationFigures:
    """Median and min-max over the timed runs of one variant at one batch size (warm-ups excluded)."""
    timed = [r for r in runs if r.round >= 0]
    spreads = FigureSpreads(
        tokens_per_second=spread([r.tokens_per_second for r in timed]),
        time_to_first_token_ms=spread([r.time_to_first_token_ms for r in timed]),
        inter_token_latency_ms=spread([r.inter_token_latency_ms for r in timed if r.inter_token_latency_ms is not None]),
    )
    median = lambda s: s.median if s is not None else None  # noqa: E731
    return GenerationFigures(
        tokens_per_second=median(spreads.tokens_per_second),
        time_to_first_token_ms=median(spreads.time_to_first_token_ms),
        inter_token_latency_ms=median(spreads.inter_token_latency_ms),
        spread=spreads,
    )


def text_config(model: nn.Module):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def run_bytes(config, element_size: int, batch_size: int, length: int, prompt_tokens: int) -> int:
    """Memory one run needs beyond the weights: KV cache plus prefill activations (an estimate)."""
    hidden = config.hidden_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    inter = getattr(config, "intermediate_size", None) or 4 * hidden
    kv = 2 * config.num_hidden_layers * batch_size * length * kv_heads * head_dim * element_size
    prefill = batch_size * prompt_tokens * (4 * hidden + 3 * inter) * element_size
    scores = batch_size * heads * prompt_tokens * prompt_tokens * 4
    logits = 2 * batch_size * config.vocab_size * 4
    return kv + prefill + scores + logits


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the parameters (works on a meta-device skeleton too; tied tensors counted once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def prompts(vocab_size: int, batch_size: int, prompt_tokens: int, device: torch.device) -> torch.Tensor:
    """Deterministic random prompts (content does not change the work of a forward)."""
    g = torch.Generator().manual_seed(PROMPT_SEED)
    return torch.randint(0, vocab_size, (batch_size, prompt_tokens), generator=g).to(device)


def does_not_fit(need: int, device: torch.device, what: str) -> Optional[str]:
    free = available_bytes(device)
    if need > FIT_MARGIN * free:
        return f"does not fit: {what} needs about {need / 2**30:.2f} GiB, {free / 2**30:.2f} GiB free on {device}"
    return None


def run_need(model: nn.Module, batch_size: int, settings: GenerationEval) -> int:
    elt = next(model.parameters()).element_size()
    return run_bytes(text_config(model), elt, batch_size, settings.prompt_tokens + settings.new_tokens,
                     settings.prompt_tokens)


OnRun = Callable[[int], None]  # called with the number of runs just finished (or skipped)


def benchmark(models: Mapping[str, nn.Module], settings: GenerationEval, device: torch.device,
              on_run: Optional[OnRun] = None) -> tuple[list[GenerationRun], list[TimedRun]]:
    """Every variant of `models` ({variant: model}, all resident) at every batch size, interleaved.
    One GenerationRun per variant and batch size (a batch size that does not fit is recorded for
    every variant, not raised), and the timeline of every decode in the order it ran."""
    vocab = text_config(next(iter(models.values()))).vocab_size
    clock = time.perf_counter()
    runs: list[GenerationRun] = []
    timeline: list[TimedRun] = []
    for batch_size in settings.batch_sizes:
        need = max(run_need(m, batch_size, settings) for m in models.values())
        skipped = does_not_fit(need, device, f"batch {batch_size}")
        measured: list[TimedRun] = []
        if skipped is None:
            prompt = prompts(vocab, batch_size, settings.prompt_tokens, device)
            measured, skipped = _measure(models, prompt, settings, clock, on_run)
        elif on_run is not None:
            on_run(len(models) * (settings.repeats + 1))
        timeline += measured
        for variant in models:
            run = GenerationRun(variant=variant, batch_size=batch_size, prompt_tokens=settings.prompt_tokens,
                                new_tokens=settings.new_tokens, repeats=settings.repeats, skipped=skipped)
            if skipped is None:
                run.figures = figures([r for r in measured if r.variant == variant])
            runs.append(run)
    return runs, timeline


def _measure(models: Mapping[str, nn.Module], prompt: torch.Tensor, settings: GenerationEval, clock: float,
             on_run: Optional[OnRun]) -> tuple[list[TimedRun], Optional[str]]:
    slots = batch_order(list(models), prompt.shape[0], settings.repeats)
    measured: list[TimedRun] = []
    try:
        for slot in slots:
            start = time.perf_counter() - clock
            measured.append(timed_run(slot, decode(models[slot.variant], prompt, settings.new_tokens), start,
                                      settings.new_tokens))
            if on_run is not None:
                on_run(1)
    except (torch.OutOfMemoryError, MemoryError) as err:
        if prompt.device.type == "cuda":
            torch.cuda.empty_cache()
        if on_run is not None:
            on_run(len(slots) - len(measured))
        return measured, f"out of memory at batch {prompt.shape[0]}: {str(err).splitlines()[0][:200]}"
    return measured, None
