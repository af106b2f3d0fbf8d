#!/usr/bin/env python3
"""One Llama-3-70B-shaped decoder block, pruned with SparseGPT 2:4 on CPU: seconds and
peak RSS per stage.

Two blocks (propagation runs only when a next block exists) have Llama-3-70B's shapes (hidden 8192, MLP 28672, 64 heads, 8 KV heads,
bf16) with a small vocabulary and random weights, saved with `save_pretrained` by a
child process (so that building it does not count). Another child runs the real
`prune-job` pipeline (prune_job.run.run_job) on it from 8 x 256 calibration tokens,
with each stage's functions wrapped by timers: load (block tensors read from the
safetensors), statistics (the hooked forwards that accumulate Hessians),
factorisation (Cholesky of each damped inverse Hessian), solve (the SparseGPT
column sweeps), propagation (the block's outputs with pruned weights), write (the
checkpoint writer). For each stage: seconds per block (propagation: block 0 only) and
the process's peak RSS when the stage last ended (VmHWM). One block of a 70B model is what the pipeline holds
at a time, so these figures are the per-block cost of a 70B run (x 80 blocks for
time; memory does not grow with the number of blocks: benchmarks/memory_vs_depth.py).

    python benchmarks/block_70b.py                   # the 70B block (~1.7 GB bf16; minutes)
    python benchmarks/block_70b.py --tiny            # smoke test: hidden 256, seconds
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {"hidden": 8192, "intermediate": 28672, "heads": 64, "kv_heads": 8, "vocab": 1024}
TINY = {"hidden": 256, "intermediate": 896, "heads": 8, "kv_heads": 2, "vocab": 256}
BLOCKS = 2  # the pipeline propagates a block's outputs only when a next block exists
STAGES = ("load", "statistics", "factorisation", "solve", "propagation", "write")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--pattern", default="2:4")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="smoke test: hidden 256, MLP 896")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=Path("block_70b.json"))
    return p.parse_args(argv)


def build(shapes: dict, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=shapes["vocab"], hidden_size=shapes["hidden"],
                         intermediate_size=shapes["intermediate"], num_hidden_layers=BLOCKS,
                         num_attention_heads=shapes["heads"], num_key_value_heads=shapes["kv_heads"],
                         max_position_embeddings=4096, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)


def vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class Stages:
    """Seconds per stage, and the peak RSS when each stage last ended."""

    def __init__(self):
        self.seconds = {s: 0.0 for s in STAGES}
        self.peak = {s: 0 for s in STAGES}
        self.depth = 0

    def wrap(self, owner, name: str, stage: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            if self.depth:  # a stage inside another (e.g. a forward inside statistics) counts once
                return original(*args, **kwargs)
            self.depth += 1
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - t0
                self.peak[stage] = vm_hwm()
                self.depth -= 1

        setattr(owner, name, timed)


def run_child(cfg: dict) -> dict:
    import torch

    torch.set_num_threads(cfg["threads"])
    from prune_job.algorithms import recipe
    from prune_job.checkpoint import CheckpointWriter
    from prune_job.pipeline import prune
    from prune_job.pipeline.model import ModelHandle
    from prune_job.run import run_job
    from prune_job.spec import parse_prunejob

    stages = Stages()
    stages.wrap(ModelHandle, "load_tree", "load")
    stages.wrap(prune.GroupCollector, "run", "statistics")
    stages.wrap(recipe, "factorise", "factorisation")  # the names the pipeline calls them by (algorithms/recipe.py)
    stages.wrap(recipe, "sparsegpt_prune_shared", "solve")
    stages.wrap(recipe, "sparsegpt_prune", "solve")
    stages.wrap(prune, "advance", "propagation")
    stages.wrap(CheckpointWriter, "add", "write")
    stages.wrap(CheckpointWriter, "finish", "write")
    job = parse_prunejob(cfg["spec"])
    t0 = time.perf_counter()
    detail = run_job(job, Path(cfg["work"]), show_bar=False)
    return {"seconds": stages.seconds, "peak_rss_bytes_at_end": stages.peak, "total_s": time.perf_counter() - t0,
            "peak_rss_bytes": vm_hwm(), "sparsity": detail.sparsity, "threads": cfg["threads"],
            "pipeline_stages": detail.seconds.stages.model_dump() if detail.seconds.stages else None}


def spec(model: Path, ids: Path, out: Path, a) -> dict:
    return {"apiVersion": "pruning.dev/v1alpha1", "kind": "PruneJob", "metadata": {"name": "block-70b"},
            "spec": {"model": {"uri": str(model), "dtype": "bfloat16"},
                     "pruning": {"method": "sparsegpt", "sparsity": 0.5, "pattern": a.pattern},
                     "calibration": {"uri": str(ids), "samples": a.samples, "sequenceLength": a.seqlen},
                     "output": {"uri": str(out)}, "evaluation": {"enabled": False}}}


def main(argv: list[str]) -> int:
    if argv[:1] == ["_build"]:
        build(json.loads(argv[1]), Path(argv[2]))
        return 0
    if argv[:1] == ["_run"]:
        cfg = json.loads(Path(argv[1]).read_text())
        Path(cfg["result"]).write_text(json.dumps(run_child(cfg)))
        return 0
    a = parse_args(argv)
    shapes = TINY if a.tiny else SHAPES
    with tempfile.TemporaryDirectory(prefix="block70b-") as tmp:
        work = a.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = work / "model"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "_build", json.dumps(shapes), str(model)], check=True)
        print(f"built and saved the block in {time.perf_counter() - t0:.1f} s")
        ids = work / "ids.jsonl"
        with ids.open("w") as f:
            for i in range(a.samples):
                f.write(json.dumps({"input_ids": [(31 * i + 7 * j) % shapes["vocab"] for j in range(a.seqlen)]}) + "\n")
        cfg = {"spec": spec(model, ids, work / "out", a), "work": str(work / "work"), "threads": a.threads,
               "result": str(work / "result.json")}
        (work / "cfg.json").write_text(json.dumps(cfg))
        subprocess.run([sys.executable, __file__, "_run", str(work / "cfg.json")], check=True)
        result = json.loads((work / "result.json").read_text())
    result.update(shapes=shapes, samples=a.samples, seqlen=a.seqlen, pattern=a.pattern)
    per_block = {s: result["seconds"][s] / (1 if s == "propagation" else BLOCKS) for s in STAGES}
    result["seconds_per_block"] = per_block
    print(f"{'stage':14} {'s / block':>9} {'peak RSS GB at its end':>24}")
    for s in STAGES:
        print(f"{s:14} {per_block[s]:>9.2f} {result['peak_rss_bytes_at_end'][s] / 1e9:>24.3f}")
    print(f"{'run (2 blocks)':14} {result['total_s']:>9.2f} {result['peak_rss_bytes'] / 1e9:>24.3f}   "
          f"(sparsity {result['sparsity']:.4f}, {a.threads} threads)")
    if result.get("pipeline_stages"):  # the run's own clock (results.json seconds.stages), both blocks
        print("pipeline's own stage seconds, 2 blocks: " +
              ", ".join(f"{k} {v:.1f}" for k, v in result["pipeline_stages"].items() if v))
    a.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main(sys.argv[1:]))
