"""SparseGPT seconds for one 7B-sized decoder block on CUDA (LLaMA-2-7B shapes).

Measures the parts of pruning one block with this project's algorithms
(prune_job.algorithms: HessianStats, factorise, sparsegpt_prune), on random
calibration activations of the usual size (128 samples x 2048 tokens):

  forward      one pass of a real LlamaDecoderLayer (fp16, 7B config) over the
               calibration tokens; the pipeline needs two per block (statistics,
               then the pruned block's outputs for the next block), plus one per
               extra sub-layer group when `sequential: true`
  statistics   H = 2/n Σ x xᵀ in fp32 for the four distinct inputs
               (q/k/v share one, o_proj, gate/up share one, down_proj)
  factorise    one per distinct input
  prune        sparsegpt_prune of the seven Linear weights, unstructured 50% and 2:4

    python benchmarks/gpu/sparsegpt_block.py [--samples 128] [--seqlen 2048] [--json out.json]
    python benchmarks/gpu/sparsegpt_block.py --cpu-dry-run   # tiny shapes on CPU: checks the script runs
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

HIDDEN, INTER, HEADS = 4096, 11008, 32
# group name -> (input width, [(layer, out_features)])
GROUPS = {
    "qkv": (HIDDEN, [("q_proj", HIDDEN), ("k_proj", HIDDEN), ("v_proj", HIDDEN)]),
    "o": (HIDDEN, [("o_proj", HIDDEN)]),
    "gate_up": (HIDDEN, [("gate_proj", INTER), ("up_proj", INTER)]),
    "down": (INTER, [("down_proj", HIDDEN)]),
}
CHUNK_TOKENS = 8192
DEVICE = torch.device("cuda")
DTYPE = torch.float16


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def seconds(fn):
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def shrink_for_dry_run() -> None:
    """Same code path, toy sizes, CPU, fp32 (CPU kernels for fp16 attention are slow or missing)."""
    global HIDDEN, INTER, HEADS, GROUPS, CHUNK_TOKENS, DEVICE, DTYPE
    HIDDEN, INTER, HEADS, CHUNK_TOKENS, DEVICE, DTYPE = 64, 128, 4, 64, torch.device("cpu"), torch.float32
    GROUPS = {
        "qkv": (HIDDEN, [("q_proj", HIDDEN), ("k_proj", HIDDEN), ("v_proj", HIDDEN)]),
        "o": (HIDDEN, [("o_proj", HIDDEN)]),
        "gate_up": (HIDDEN, [("gate_proj", INTER), ("up_proj", INTER)]),
        "down": (INTER, [("down_proj", HIDDEN)]),
    }


def forward_seconds(tokens: int, seqlen: int) -> float:
    """One LlamaDecoderLayer (7B config, fp16, SDPA) over `tokens` calibration tokens, 8 samples at a time."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTER, num_attention_heads=HEADS,
                         num_key_value_heads=HEADS, max_position_embeddings=seqlen)
    config._attn_implementation = "sdpa"
    layer = LlamaDecoderLayer(config, layer_idx=0).to(DEVICE, DTYPE).eval()
    rotary = LlamaRotaryEmbedding(config).to(DEVICE)
    batch = 8
    x = torch.randn(batch, seqlen, HIDDEN, device=DEVICE, dtype=DTYPE)
    pos = torch.arange(seqlen, device=DEVICE).unsqueeze(0).expand(batch, -1)
    emb = rotary(x, pos)

    def run():
        with torch.inference_mode():
            for _ in range(max(1, tokens // (batch * seqlen))):
                layer(x, attention_mask=None, position_ids=pos, position_embeddings=emb)

    run()  # warm-up
    s, _ = seconds(run)
    del layer, x
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()
    return s


def accumulate(algorithms, width: int, tokens: int):
    stats = algorithms.HessianStats(width, device=DEVICE)
    for _ in range(max(1, tokens // CHUNK_TOKENS)):
        stats.add(torch.randn(CHUNK_TOKENS, width, device=DEVICE, dtype=DTYPE))
    return stats


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--json")
    parser.add_argument("--cpu-dry-run", action="store_true")
    args = parser.parse_args()
    if args.cpu_dry_run:
        shrink_for_dry_run()
        args.samples, args.seqlen = 2, 32
    elif not torch.cuda.is_available():
        print("sparsegpt_block: no CUDA device; nothing measured")
        return 2
    try:
        from prune_job import algorithms
        from prune_job.spec import Pattern
    except ImportError as err:
        print(f"sparsegpt_block: cannot import prune_job.algorithms ({err}); set PYTHONPATH=job_image")
        return 3
    tokens = args.samples * args.seqlen
    torch.manual_seed(0)
    result = {"device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu (dry run)",
              "torch": torch.__version__, "tokens": tokens, "hidden": HIDDEN, "intermediate": INTER,
              "weights_dtype": str(DTYPE).removeprefix("torch.")}
    result["forward_s"] = forward_seconds(tokens, args.seqlen)
    print(f"forward of one block over {tokens} tokens: {result['forward_s']:.2f} s", flush=True)
    stats_s, factor_s, factors = {}, {}, {}
    for group, (width, _) in GROUPS.items():
        stats_s[group], stats = seconds(lambda: accumulate(algorithms, width, tokens))
        factor_s[group], factors[group] = seconds(lambda: algorithms.factorise(stats.H, 0.01))
        del stats
    result["statistics_s"], result["factorise_s"] = stats_s, factor_s
    print(f"statistics {sum(stats_s.values()):.2f} s, factorise {sum(factor_s.values()):.2f} s", flush=True)
    for label, pattern in (("unstructured_50", None), ("2:4", Pattern(2, 4))):
        prune_s = {}
        for group, (width, layers) in GROUPS.items():
            for name, out_features in layers:
                w = torch.randn(out_features, width, device=DEVICE, dtype=DTYPE)
                prune_s[name], _ = seconds(lambda: algorithms.sparsegpt_prune(w, factors[group], 0.5, pattern, 128))
        total = 2 * result["forward_s"] + sum(stats_s.values()) + sum(factor_s.values()) + sum(prune_s.values())
        result[label] = {"prune_s": prune_s, "block_total_s": total}
        print(f"{label}: prune {sum(prune_s.values()):.2f} s; one block in total (2 forwards + statistics + "
              f"factorise + prune) {total:.2f} s; x32 blocks = {32 * total / 60:.1f} min", flush=True)
    result["peak_device_bytes"] = torch.cuda.max_memory_allocated() if DEVICE.type == "cuda" else 0
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
