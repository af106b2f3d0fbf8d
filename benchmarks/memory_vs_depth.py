#!/usr/bin/env python3
"""Peak host memory of `prune-job run` against model depth.

Random Llama models of one width and 4, 8, 16 and 32 decoder blocks are saved
with `save_pretrained` into a temporary directory and pruned with the same
spec (random calibration token ids, evaluation off), each run in its own
process limited to `--threads` threads. Peak RSS is the child's own (`wait4`),
beside results.json's `memory.peakHostBytes`; models are built in another child
so that this parent stays small (Linux starts a child's peak RSS from the size
of the process that forked it and keeps it across exec). A pipeline that holds one block
at a time has a flat peak; one that holds the model grows by a block's bytes
per block. Target (docs/architecture.md, memory): the deepest run's peak within
1.25x of the shallowest's.

    python benchmarks/memory_vs_depth.py                 # 4 8 16 32 blocks, hidden 1024
    python benchmarks/memory_vs_depth.py --quick         # smoke test: small, 4 and 8 blocks
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_peers import gb, load_average, prune_job_exe, run_measured  # noqa: E402

TARGET = 1.25


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--method", default="sparsegpt", choices=["sparsegpt", "wanda", "magnitude"])
    p.add_argument("--pattern", default="unstructured")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--format", default="dense", choices=["dense", "compressed"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prune-job", default=None, help="prune-job executable (default: beside this python)")
    p.add_argument("--quick", action="store_true", help="smoke test: hidden 256, 4 and 8 blocks, 4 x 64 tokens")
    p.add_argument("--workdir", type=Path, default=None, help="keep models and logs here (default: a temp dir)")
    p.add_argument("--json", type=Path, default=Path("memory_vs_depth.json"))
    a = p.parse_args(argv)
    if a.quick:
        a.depths, a.hidden, a.intermediate, a.heads, a.samples, a.seqlen = [4, 8], 256, 704, 4, 4, 64
    return a


def build_model(a: argparse.Namespace, depth: int, folder: Path) -> int:
    """Save the model from a child process; returns its parameter bytes. This parent must stay small:
    a child's wait4 peak RSS starts from the size of the process that forked it (kept across exec)."""
    params = {k: getattr(a, k) for k in ("hidden", "intermediate", "heads", "vocab", "seqlen")}
    subprocess.run([sys.executable, __file__, "_build", json.dumps(params), str(depth), str(folder)], check=True)
    return json.loads((folder / "bench-params.json").read_text())["bytes"]


def save_random_llama(a: argparse.Namespace, depth: int, folder: Path) -> int:
    """A seeded random Llama of `depth` blocks; returns its parameter bytes."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=a.hidden, intermediate_size=a.intermediate, num_hidden_layers=depth,
                         num_attention_heads=a.heads, num_key_value_heads=a.heads, vocab_size=a.vocab,
                         max_position_embeddings=max(a.seqlen, 128), tie_word_embeddings=False)
    torch.manual_seed(depth)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(folder)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    (folder / "bench-params.json").write_text(json.dumps({"bytes": size}))
    del model
    gc.collect()
    return size


def write_calibration(a: argparse.Namespace, path: Path) -> Path:
    rng = random.Random(0)
    rows = [{"input_ids": [rng.randrange(a.vocab) for _ in range(a.seqlen)]} for _ in range(a.samples)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def spec(a: argparse.Namespace, model: Path, calib: Path, out: Path, depth: int) -> dict:
    n_m = a.pattern.split(":")
    sparsity = 0.5 if len(n_m) == 1 else 1 - int(n_m[0]) / int(n_m[1])
    return {
        "apiVersion": "pruning.dev/v1alpha1", "kind": "PruneJob",
        "metadata": {"name": f"memory-vs-depth-{depth}"},
        "spec": {
            "model": {"uri": str(model), "dtype": "float32"},
            "pruning": {"method": a.method, "sparsity": sparsity, "pattern": a.pattern},
            "calibration": {"uri": str(calib), "samples": a.samples, "sequenceLength": a.seqlen, "seed": 0},
            "output": {"uri": str(out), "format": a.format},
            "evaluation": {"enabled": False},
        },
    }


def run_depth(a: argparse.Namespace, work: Path, calib: Path, depth: int) -> dict:
    import yaml

    folder, out = work / f"llama-{depth}", work / f"out-{depth}"
    weights = build_model(a, depth, folder)
    spec_path = work / f"prunejob-{depth}.yaml"
    spec_path.write_text(yaml.safe_dump(spec(a, folder, calib, out, depth), sort_keys=False))
    print(f"{depth:3d} blocks ({gb(weights):.3f} GB of weights, load {load_average()}) ...", flush=True)
    rec = run_measured([prune_job_exe(a.prune_job), "run", str(spec_path)], work / f"log-{depth}.txt", a.threads)
    rec.update(depth=depth, weights_bytes=weights)
    results = out / "results.json"
    if rec["rc"] == 0 and results.exists():
        detail = json.loads(results.read_text())
        rec["self_peak_rss_bytes"] = (detail.get("memory") or {}).get("peakHostBytes")
        rec["seconds"] = (detail.get("seconds") or {}).get("total")
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    print(f"    rc={rec['rc']} peak {gb(rec['peak_rss_bytes']):.3f} GB, {rec['wall_s']:.1f} s", flush=True)
    return rec


def print_table(runs: list[dict]) -> float | None:
    base = runs[0]["peak_rss_bytes"] if runs and runs[0]["rc"] == 0 else None
    head = f"{'blocks':>6} {'weights GB':>10} {'peak RSS GB':>11} {'results.json GB':>15} {'x first':>8} " \
           f"{'anon/file GB at sampled peak':>28} {'wall s':>7}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in runs:
        rel = r["peak_rss_bytes"] / base if base and r["rc"] == 0 else None
        sp = r.get("sampled_peak") or {}
        split = f"{_f(gb(sp.get('anon_bytes')), '.3f')} / {_f(gb(sp.get('file_bytes')), '.3f')} @{sp.get('at_s', '-')}s"
        print(f"{r['depth']:6d} {gb(r['weights_bytes']):10.3f} {gb(r['peak_rss_bytes']):11.3f} "
              f"{_f(gb(r.get('self_peak_rss_bytes')), '15.3f')} {_f(rel, '8.3f')} {split:>28} {r['wall_s']:7.1f}"
              + ("" if r["rc"] == 0 else f"   FAILED rc={r['rc']} ({r['log']})"))
    ok = [r for r in runs if r["rc"] == 0]
    if base is None or len(ok) != len(runs) or len(runs) < 2:
        return None
    return runs[-1]["peak_rss_bytes"] / base


def _f(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="memory-vs-depth-"))
    work.mkdir(parents=True, exist_ok=True)
    calib = write_calibration(a, work / "calib.jsonl")
    report = {"hidden": a.hidden, "intermediate": a.intermediate, "method": a.method, "pattern": a.pattern,
              "samples": a.samples, "seqlen": a.seqlen, "format": a.format, "threads": a.threads,
              "cpus": os.cpu_count(), "load_before": load_average(), "runs": []}
    print(f"workdir {work}\nload average before: {report['load_before']}", flush=True)
    for depth in sorted(a.depths):
        report["runs"].append(run_depth(a, work, calib, depth))
        a.json.write_text(json.dumps(report, indent=1))
    growth = print_table(report["runs"])
    report.update(load_after=load_average(), ratio_deepest_to_shallowest=growth, target=TARGET)
    a.json.write_text(json.dumps(report, indent=1))
    first, last = min(a.depths), max(a.depths)
    verdict = "n/a" if growth is None else ("PASS" if growth <= TARGET else "FAIL")
    print(f"\npeak RSS {last} blocks / {first} blocks = {_f(growth, '.3f')} (target <= {TARGET}): {verdict}")
    print(f"load average before {report['load_before']}, after {report['load_after']} ({os.cpu_count()} CPUs)")
    print(f"figures: {a.json}")
    if a.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_build":
        save_random_llama(argparse.Namespace(**json.loads(sys.argv[2])), int(sys.argv[3]), Path(sys.argv[4]))
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
