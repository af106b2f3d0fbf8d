#!/usr/bin/env python3
"""Data-parallel pruning on this machine: 1 rank x 1 thread, 2 ranks x 1 thread, 1 rank x 2 threads.

For each method (Wanda, SparseGPT at 50%), the same PruneJob runs three ways with
`prune-job run SPEC` (plain path) or `prune-job run SPEC --nproc 2` (torchrun, gloo),
each rank limited to its thread count. Recorded per run: seconds of the block loop
(results.json `seconds.prune`, rank 0's clock: it includes waiting for the slowest
rank), peak RSS per rank (results.json `memory.peakHostBytes`, the largest over the
ranks; and wait4's figure for the whole process tree, launcher included), and the
dense and sparse perplexity. Targets (issue "several GPUs and pods"): 2 ranks x 1
thread at least 1.6x faster than 1 rank x 1 thread, and no slower than 1 rank x 2
threads; perplexity of 2 ranks within 0.5% of 1 rank.

    python benchmarks/scaling.py                # SmolLM2-135M, 64 x 512 calibration tokens
    python benchmarks/scaling.py --tiny         # smoke test: a tiny random Llama, seconds
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_peers import gb, load_average, prune_job_exe, run_measured  # noqa: E402

LAYOUTS = [(1, 1), (2, 1), (1, 2)]  # (ranks, threads per rank)
METHODS = ("wanda", "sparsegpt")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="builtin:smollm2-135m")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--eval-samples", type=int, default=16)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--tiny", action="store_true", help="smoke test: tiny random Llama, 8 x 32 tokens")
    p.add_argument("--prune-job", default=None, help="prune-job executable (default: beside this python)")
    p.add_argument("--workdir", type=Path, default=None, help="keep specs, outputs and logs here")
    p.add_argument("--json", type=Path, default=Path("scaling.json"))
    return p.parse_args(argv)


def tiny_inputs(work: Path) -> tuple[str, dict, dict]:
    """A tiny random Llama and token-id files (no tokenizer needed)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(work / "model")
    ids = work / "ids.jsonl"
    ids.write_text("\n".join(json.dumps({"input_ids": [(7 * i + j) % 256 for j in range(32)]}) for i in range(8)))
    cal = {"uri": str(ids), "samples": 8, "sequenceLength": 32}
    ppl = {"uri": str(ids), "samples": 8, "sequenceLength": 32}
    return str(work / "model"), cal, ppl


def spec(model: str, method: str, cal: dict, ppl: dict, out: Path) -> dict:
    return {"apiVersion": "pruning.dev/v1alpha1", "kind": "PruneJob", "metadata": {"name": f"scaling-{method}"},
            "spec": {"model": {"uri": model, "dtype": "float32"},
                     "pruning": {"method": method, "sparsity": 0.5, "pattern": "unstructured"},
                     "calibration": {**cal, "seed": 0}, "output": {"uri": str(out), "format": "dense"},
                     "evaluation": {"perplexity": ppl,
                                    "generation": {"batchSizes": [1], "promptTokens": 8, "newTokens": 4,
                                                   "repeats": 1}}}}


def one(a, exe: str, model: str, method: str, cal: dict, ppl: dict, work: Path, ranks: int, threads: int) -> dict:
    import yaml

    folder = work / f"{method}-{ranks}r{threads}t"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prunejob.yaml"
    path.write_text(yaml.safe_dump(spec(model, method, cal, ppl, folder / "out"), sort_keys=False))
    cmd = [exe, "run", str(path), "--no-progress", "--workdir", str(folder / "work")]
    if ranks > 1:
        cmd += ["--nproc", str(ranks)]
    rec = run_measured(cmd, folder / "log.txt", threads)
    rec.update(method=method, ranks=ranks, threads=threads)
    if rec["rc"] != 0:
        rec["log_tail"] = (folder / "log.txt").read_text(errors="replace")[-2000:]
    results = folder / "out" / "results.json"
    if rec["rc"] == 0 and results.exists():
        r = json.loads(results.read_text())
        rec.update(prune_s=r["seconds"]["prune"], peak_rank_bytes=r["memory"]["peakHostBytes"],
                   ppl_dense=r["perplexity"]["dense"], ppl_sparse=r["perplexity"]["sparse"], sparsity=r["sparsity"])
    return rec


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for method in sorted({r["method"] for r in runs}):
        by = {(r["ranks"], r["threads"]): r for r in runs if r["method"] == method and "prune_s" in r}
        if len(by) < 3:
            continue
        base, two_ranks, two_threads = by[(1, 1)], by[(2, 1)], by[(1, 2)]
        rows.append({"method": method,
                     "speedup_2ranks": base["prune_s"] / two_ranks["prune_s"],
                     "speedup_2threads": base["prune_s"] / two_threads["prune_s"],
                     "ppl_change_percent": 100 * (two_ranks["ppl_sparse"] / base["ppl_sparse"] - 1)})
    return rows


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    exe = prune_job_exe(a.prune_job)
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        work = a.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if a.tiny:
            model, cal, ppl = tiny_inputs(work)
        else:
            model = a.model
            cal = {"uri": "builtin:pydoc", "samples": a.samples, "sequenceLength": a.seqlen}
            ppl = {"uri": "builtin:pydoc-heldout", "samples": a.eval_samples, "sequenceLength": a.seqlen}
        runs = [one(a, exe, model, m, cal, ppl, work, r, t) for m in a.methods for r, t in LAYOUTS]
    print(f"load average before: {load_average()}")
    print(f"{'method':10} {'ranks x threads':>15} {'block loop s':>12} {'peak/rank GB':>12} {'tree GB':>8} "
          f"{'ppl dense':>10} {'ppl sparse':>10}")
    for r in runs:
        if "prune_s" not in r:
            print(f"{r['method']:10} {r['ranks']} x {r['threads']:<11} FAILED (rc {r['rc']}):\n{r['log_tail']}")
            continue
        print(f"{r['method']:10} {r['ranks']:>7} x {r['threads']:<5} {r['prune_s']:>12.2f} "
              f"{gb(r['peak_rank_bytes']):>12.3f} {gb(r['peak_rss_bytes']):>8.3f} {r['ppl_dense']:>10.3f} "
              f"{r['ppl_sparse']:>10.3f}")
    rows = summarise(runs)
    for row in rows:
        print(f"{row['method']}: 2 ranks x 1 thread {row['speedup_2ranks']:.2f}x, 1 rank x 2 threads "
              f"{row['speedup_2threads']:.2f}x faster than 1 x 1 (target >= 1.6x and >= the threads' figure); "
              f"sparse perplexity {row['ppl_change_percent']:+.3f}% (target within 0.5%)")
    a.json.write_text(json.dumps({"runs": runs, "summary": rows, "tiny": a.tiny}, indent=2, default=str))
    print(f"wrote {a.json}")
    return 0 if len(rows) == len(a.methods) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
