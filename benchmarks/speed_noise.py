"""Is a speed difference real? Dense against the same model with half its
block weights set to zero, on CPU (no sparse kernel: both run the same dense
kernels, so the true difference is nil). For each trial, two ways of timing:

- `sequential` (the evaluation before issue 17): dense timed first, then
  sparse, the median of 3 runs each after a warm-up; the apparent change;
- `interleaved` (now): both resident, a shared warm-up, then alternating
  rounds (A B, B A, ...), median [min-max], a change only where the ranges do
  not overlap (prune_job.evaluation.spread).

Prints one row per trial and how often each way reports a change; writes the
figures as JSON. A trustworthy evaluation reports no significant difference in
every trial.

    python benchmarks/speed_noise.py --trials 5                  # SmolLM2-135M, fp32
    python benchmarks/speed_noise.py --tiny --trials 3           # a tiny random Llama (smoke test)
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from prune_job.evaluation import generation
from prune_job.evaluation.summary import cost_summary, generation_summary
from prune_job.spec import GenerationEval, ModelSource

HOURLY = 3.5  # USD, only to show the cost rule


def load_models(tiny: bool) -> tuple[nn.Module, nn.Module]:
    if tiny:
        from transformers import AutoModelForCausalLM, LlamaConfig

        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2)
        dense = AutoModelForCausalLM.from_config(config).eval()
    else:
        from prune_job.checkpoint.reader import load_hf_folder
        from prune_job.sources.models import resolve_model

        folder = resolve_model(ModelSource(uri="builtin:smollm2-135m"))
        dense = load_hf_folder(Path(folder), torch.float32, torch.device("cpu"))
    return dense, half_zeros(dense)


@torch.no_grad()
def half_zeros(model: nn.Module) -> nn.Module:
    """A copy whose decoder Linear weights have their smaller half (by magnitude, per row) set to zero."""
    sparse = copy.deepcopy(model)
    for name, module in sparse.named_modules():
        if isinstance(module, nn.Linear) and ".layers." in f".{name}":
            w = module.weight
            threshold = w.abs().kthvalue(w.shape[1] // 2, dim=1, keepdim=True).values
            w.mul_(w.abs() > threshold)
    return sparse


def sequential_change(dense: nn.Module, sparse: nn.Module, settings: GenerationEval) -> float:
    """The old way: dense then sparse, median of 3 each; the apparent tokens/s change in %."""
    old = settings.model_copy(update={"repeats": 3})
    tps = [generation.benchmark({v: m}, old, torch.device("cpu"))[0][-1].figures.tokens_per_second
           for v, m in (("dense", dense), ("sparse", sparse))]
    return 100.0 * (tps[1] - tps[0]) / tps[0]


def interleaved(dense: nn.Module, sparse: nn.Module, settings: GenerationEval) -> dict:
    runs, _ = generation.benchmark({"dense": dense, "sparse": sparse}, settings, torch.device("cpu"))
    gen = generation_summary(runs, None)
    cost = cost_summary(gen, HOURLY)
    tps = gen.sparse_vs_dense.tokens_per_second
    return {"percent": tps.percent, "significant": tps.significant, "verdict": tps.verdict,
            "cost_verdict": cost.sparse_vs_dense.verdict, "cost_significant": cost.sparse_vs_dense.significant}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of SmolLM2-135M")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("speed_noise.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = GenerationEval(batch_sizes=[args.batch], prompt_tokens=args.prompt_tokens,
                              new_tokens=args.new_tokens, repeats=args.repeats)
    dense, sparse = load_models(args.tiny)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores, {args.threads} threads")
    print(f"{'trial':>5}  {'sequential Δ tok/s':>18}  interleaved tokens/s | cost per million tokens")
    rows = []
    for trial in range(args.trials):
        start = time.perf_counter()
        row = {"sequential_percent": sequential_change(dense, sparse, settings),
               **interleaved(dense, sparse, settings), "seconds": None}
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        print(f"{trial:>5}  {row['sequential_percent']:>+17.1f}%  {row['verdict']} | {row['cost_verdict']}")
    seq = [abs(r["sequential_percent"]) for r in rows]
    print(f"sequential: median |Δ| {statistics.median(seq):.1f}%, largest {max(seq):.1f}%")
    print(f"interleaved: a change reported in {sum(r['significant'] for r in rows)} of {len(rows)} trials "
          f"(cost: {sum(r['cost_significant'] for r in rows)})")
    args.out.write_text(json.dumps({"settings": settings.model_dump(), "tiny": args.tiny, "threads": args.threads,
                                    "load_average": os.getloadavg()[0], "trials": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
