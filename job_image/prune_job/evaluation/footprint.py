"""Peak memory of each generation variant on its own.

The timed runs keep every variant resident at once (so that they can
alternate), which would count the other variants' weights in each one's peak.
So peak memory is measured apart from the timing, one decode per batch size:

- CPU, from folders: each variant in a fresh Python process of its own,
  whose RSS high-water mark during the decode is the figure; neither variant's
  freed memory (kept by the allocator) can inflate the other's.
- CUDA: in this process, with the device's peak statistics reset before each
  decode and the device memory held by the variants loaded before it
  subtracted (allocated bytes are exact; the allocator's cache is not counted).
- CPU, from a state dict in memory: in this process, the resident memory of
  the variants loaded before it subtracted (approximate).

`EvaluationEnvironment.memory_isolation` says which was used.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import psutil
import torch
from torch import nn

from prune_job.evaluation.generation import decode, does_not_fit, prompts, run_need, text_config
from prune_job.evaluation.memory import PeakMemory
from prune_job.evaluation.weights import load_full_model, weight_source
from prune_job.spec import GenerationEval

SEPARATE_PROCESS = ("each variant in a fresh process of its own: the RSS high-water mark of that process during "
                    "one decode per batch size")
DEVICE_RESET = ("device peak statistics reset before each measured decode; the device memory held by the other "
                "resident variants subtracted")
IN_PROCESS_HOST = ("in this process, one decode per batch size; the resident memory of the variants loaded before "
                   "it subtracted (approximate)")


def held_bytes(device: torch.device) -> int:
    """Memory this process holds now: allocated device memory on CUDA, resident set on CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.memory_allocated(device)
    return psutil.Process().memory_info().rss


def peaks(model: nn.Module, settings: GenerationEval, device: torch.device, others: int = 0) -> dict[int, int]:
    """{batch size: peak bytes of one decode, less `others`}; a batch size that does not fit is left out."""
    vocab = text_config(model).vocab_size
    result = {}
    for batch_size in settings.batch_sizes:
        if does_not_fit(run_need(model, batch_size, settings), device, f"batch {batch_size}"):
            continue
        prompt = prompts(vocab, batch_size, settings.prompt_tokens, device)
        try:
            with PeakMemory(device) as peak:
                decode(model, prompt, settings.new_tokens)
        except (torch.OutOfMemoryError, MemoryError):
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
            continue
        result[batch_size] = max(0, peak.bytes - others)
    return result


@dataclass(frozen=True)
class Recipe:
    """What a spawned process needs to load one variant (plain values only)."""

    dense_dir: str
    sparse_dir: Optional[str]
    dtype: str
    trust_remote_code: bool
    threads: int
    dense_uri: Optional[str] = None  # s3:// model read with ranged GETs (model.stream): dense_dir holds no weights


class MeasurementError(RuntimeError):
    """The process measuring one variant failed (its last lines of stderr are in the message)."""


def in_own_process(recipe: Recipe, settings: GenerationEval) -> dict[int, int]:
    """`peaks` of the model `recipe` loads, measured in a fresh Python process
    (`python -m prune_job.evaluation.footprint`, JSON in and out)."""
    request = json.dumps({"recipe": dataclasses.asdict(recipe), "settings": settings.model_dump(mode="json")})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run([sys.executable, "-m", "prune_job.evaluation.footprint"], input=request, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise MeasurementError(f"the measuring process exited with {done.returncode}: {tail}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    return {int(batch): int(value) for batch, value in answer.items()}


def _child(request: dict) -> dict[int, int]:
    recipe = Recipe(**request["recipe"])
    torch.set_num_threads(recipe.threads)
    cpu = torch.device("cpu")
    source = weight_source(Path(recipe.sparse_dir)) if recipe.sparse_dir else None
    dense = None
    if recipe.dense_uri:
        from prune_job.storage.ranged import RemoteWeightIndex

        # the run's own index checked these objects' sha256; the ETags pin the same versions here,
        # and a digest's held ranges would count in the memory this process measures
        dense = RemoteWeightIndex(recipe.dense_uri, check_sha256=False)
    try:
        model = load_full_model(Path(recipe.dense_dir), recipe.dtype, cpu, source, recipe.trust_remote_code, dense)
    finally:
        if dense is not None:
            dense.close()
    return peaks(model.eval(), GenerationEval.model_validate(request["settings"]), cpu)


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.stdin.read()))))
