#!/usr/bin/env python3
"""What a preemption costs: an uninterrupted `prune-job run` against one killed (SIGKILL) after
block K and run again, resuming from its journal (docs/resume.md).

Both prune the same model with the same spec (SparseGPT 50% unstructured, compressed output,
evaluation off), each process limited to `--threads` threads. The resumed pair's cost is the
killed run's seconds plus the rerun's; the rerun forwards the calibration through the K pruned
blocks read back from their shards before it continues. Printed: wall and CPU seconds of each
process, the ratio (rerun / uninterrupted: the target is at most 0.7 for K = 20 of 30), and whether
every shard and index file of the two checkpoints is byte-identical (it must be).

    python benchmarks/resume.py                      # SmolLM2-135M (builtin:smollm2-135m), kill after block 20
    python benchmarks/resume.py --tiny               # smoke test: a random 6-block Llama, kill after block 3
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_peers import load_average, prune_job_exe, run_measured  # noqa: E402

VARYING = {"journal.json", "manifest.json", "results.json", "report.md", "sparsity_by_block.png",
           "dense_vs_sparse.png"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="builtin:smollm2-135m")
    p.add_argument("--kill-after", type=int, default=20, help="the last block the killed run finishes")
    p.add_argument("--calibration", default="builtin:pydoc")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="smoke test: random 6-block Llama, 8 x 64 tokens")
    p.add_argument("--work", default=None, help="keep the outputs here (default: a temporary folder)")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--prune-job", default=None, help="prune-job executable (default: beside this python)")
    a = p.parse_args(argv)
    if a.tiny:
        a.kill_after, a.samples, a.seqlen = 3, 8, 64
    return a


def tiny_model(folder: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1024, hidden_size=128, intermediate_size=352, num_hidden_layers=6,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def tiny_calibration(path: Path, samples: int, seqlen: int) -> str:
    """Token ids as given (the random model has no tokenizer)."""
    rows = [{"input_ids": [(31 * i + 7 * j) % 1024 for j in range(seqlen)]} for i in range(samples)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def spec(a: argparse.Namespace, model: str, out: Path) -> dict:
    return {"apiVersion": "pruning.dev/v1alpha1", "kind": "PruneJob", "metadata": {"name": "bench-resume"},
            "spec": {"model": {"uri": model, "dtype": "float32"},
                     "pruning": {"method": "sparsegpt", "sparsity": 0.5},
                     "calibration": {"uri": a.calibration, "samples": a.samples, "sequenceLength": a.seqlen},
                     "output": {"uri": str(out), "format": "compressed"},
                     "evaluation": {"enabled": False}}}


def one(a: argparse.Namespace, model: str, work: Path, name: str, fault: str | None = None) -> dict:
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prunejob.yaml"
    if not path.exists():
        path.write_text(yaml.safe_dump(spec(a, model, work / f"out-{name.split('-')[0]}"), sort_keys=False))
    if fault:
        os.environ["PRUNE_JOB_FAULT"] = fault  # run_measured's child inherits os.environ
    try:
        cmd = [prune_job_exe(a.prune_job), "run", str(path), "--no-progress", "--workdir", str(folder / "work")]
        return run_measured(cmd, folder / f"log-{fault and 'killed' or 'run'}.txt", a.threads)
    finally:
        os.environ.pop("PRUNE_JOB_FAULT", None)


def same_files(x: Path, y: Path) -> tuple[bool, list[str]]:
    names = sorted(p.name for p in x.iterdir() if p.is_file() and p.name not in VARYING)
    other = sorted(p.name for p in y.iterdir() if p.is_file() and p.name not in VARYING)
    differ = [n for n in names if n not in other or (x / n).read_bytes() != (y / n).read_bytes()]
    return names == other and not differ, differ


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    work = Path(a.work or tempfile.mkdtemp(prefix="bench-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    model = str(tiny_model(work / "tiny-model")) if a.tiny else a.model
    if a.tiny:
        a.calibration = tiny_calibration(work / "calib.jsonl", a.samples, a.seqlen)
    print(f"load average before: {load_average()}")
    full = one(a, model, work, "full")
    killed = one(a, model, work, "resumed-killed", fault=f"block-committed:{a.kill_after}:kill")
    rerun = one(a, model, work, "resumed")  # the same spec file as the killed run: same output, resumes
    assert full["rc"] == 0 and killed["rc"] == -9 and rerun["rc"] == 0, (full["rc"], killed["rc"], rerun["rc"])
    log = Path(rerun["log"]).read_text()
    resumed_line = next((ln for ln in log.splitlines() if "resuming from block" in ln), "(no resume line)")
    equal, differ = same_files(work / "out-full", work / "out-resumed")
    rows = [("uninterrupted", full), (f"killed after block {a.kill_after}", killed), ("rerun (resume)", rerun)]
    print(f"{'run':<26}{'wall s':>10}{'CPU s':>10}")
    for label, rec in rows:
        print(f"{label:<26}{rec['wall_s']:>10.1f}{rec['cpu_s']:>10.1f}")
    pair_wall, pair_cpu = killed["wall_s"] + rerun["wall_s"], killed["cpu_s"] + rerun["cpu_s"]
    print(f"{'killed + rerun':<26}{pair_wall:>10.1f}{pair_cpu:>10.1f}")
    figures = {
        "kill_after_block": a.kill_after, "full": full, "killed": killed, "rerun": rerun,
        "rerun_over_full_wall": rerun["wall_s"] / full["wall_s"], "rerun_over_full_cpu": rerun["cpu_s"] / full["cpu_s"],
        "pair_over_full_wall": pair_wall / full["wall_s"], "files_identical": equal, "differing": differ,
        "resume_line": resumed_line, "load_average_after": load_average(),
    }
    print(f"rerun / uninterrupted: {figures['rerun_over_full_wall']:.2f} wall, {figures['rerun_over_full_cpu']:.2f} CPU "
          f"(target <= 0.7); killed + rerun / uninterrupted: {figures['pair_over_full_wall']:.2f} wall")
    print(f"files byte-identical: {equal}{'' if equal else f' (differ: {differ})'}; {resumed_line.strip()}")
    print(f"load average after: {figures['load_average_after']}; outputs in {work}")
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
