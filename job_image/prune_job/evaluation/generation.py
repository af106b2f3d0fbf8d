"""Generation benchmark of a fully loaded model: greedy decoding with the KV
cache in a manual loop, so that the first token and each following token are
timed on their own (with a device synchronise on CUDA).

For each batch size: one warm-up run (not counted), then `repeats` timed runs;
the median of each figure is reported, and the largest peak memory.
"""
from __future__ import annotations

import inspect
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from prune_job.evaluation.memory import PeakMemory, available_bytes
from prune_job.spec import GenerationEval, GenerationFigures, GenerationRun

FIT_MARGIN = 0.9  # use at most this share of the memory still available
PROMPT_SEED = 0


@dataclass(frozen=True)
class Timing:
    first_token_s: float
    step_s: list[float]  # each following token's time (batch-wide)
    total_s: float
    peak_bytes: int
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
    with PeakMemory(device) as peak:
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
    return Timing(first, steps, total, peak.bytes, torch.cat(generated, dim=1).cpu())


def figures(timings: list[Timing], batch_size: int, new_tokens: int) -> GenerationFigures:
    """Median over runs of throughput, time to first token and mean inter-token latency."""
    tps = [batch_size * new_tokens / t.total_s for t in timings]
    ttft = [1000.0 * t.first_token_s for t in timings]
    itl = [1000.0 * statistics.fmean(t.step_s) for t in timings if t.step_s]
    return GenerationFigures(
        tokens_per_second=statistics.median(tps),
        time_to_first_token_ms=statistics.median(ttft),
        inter_token_latency_ms=statistics.median(itl) if itl else None,
        peak_memory_bytes=max(t.peak_bytes for t in timings),
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


def _run_need(model: nn.Module, batch_size: int, settings: GenerationEval) -> int:
    elt = next(model.parameters()).element_size()
    return run_bytes(text_config(model), elt, batch_size, settings.prompt_tokens + settings.new_tokens,
                     settings.prompt_tokens)


def benchmark(model: nn.Module, settings: GenerationEval, variant: str, device: torch.device) -> list[GenerationRun]:
    """One GenerationRun per batch size; a batch size that does not fit is recorded, not raised."""
    vocab = text_config(model).vocab_size
    runs = []
    for batch_size in settings.batch_sizes:
        run = GenerationRun(variant=variant, batch_size=batch_size, prompt_tokens=settings.prompt_tokens,
                            new_tokens=settings.new_tokens, repeats=settings.repeats)
        run.skipped = does_not_fit(_run_need(model, batch_size, settings), device, f"batch {batch_size}")
        if run.skipped is None:
            run.figures, run.skipped = _measure(model, prompts(vocab, batch_size, settings.prompt_tokens, device),
                                                settings)
        runs.append(run)
    return runs


def _measure(model: nn.Module, prompt: torch.Tensor, settings: GenerationEval
             ) -> tuple[Optional[GenerationFigures], Optional[str]]:
    try:
        decode(model, prompt, settings.new_tokens)  # warm-up, not counted
        timings = [decode(model, prompt, settings.new_tokens) for _ in range(settings.repeats)]
    except (torch.OutOfMemoryError, MemoryError) as err:
        if prompt.device.type == "cuda":
            torch.cuda.empty_cache()
        return None, f"out of memory at batch {prompt.shape[0]}: {str(err).splitlines()[0][:200]}"
    return figures(timings, prompt.shape[0], settings.new_tokens), None
