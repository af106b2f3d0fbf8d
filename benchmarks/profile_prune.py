#!/usr/bin/env python3
"""Where one `prune-job run` spends its time: stage breakdown, cProfile, CPU and page faults.

Runs ours in this process (evaluation off, dense output into a temporary folder)
under cProfile, then prints: the load average; wall, user and system seconds and
CPU/wall (getrusage); minor and major page faults; results.json's
`seconds.stages`; and the functions with the most own time. On a shared,
loaded machine the proportions are what to read, not the absolute seconds.

    python benchmarks/profile_prune.py --method sparsegpt --samples 16 --seqlen 512 --threads 2
    python benchmarks/profile_prune.py --method wanda --no-profile --floor   # and one forward on its own
    python benchmarks/profile_prune.py --tiny     # smoke test: a tiny random Llama, seconds
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="builtin:smollm2-135m")
    p.add_argument("--method", default="sparsegpt", choices=["sparsegpt", "wanda"])
    p.add_argument("--pattern", default="unstructured")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sequential", action="store_true", help="pruning.sequential: true (compare_peers' default is off)")
    p.add_argument("--top", type=int, default=25, help="functions listed by own time")
    p.add_argument("--no-profile", action="store_true", help="stages and rusage only (no cProfile overhead)")
    p.add_argument("--tiny", action="store_true", help="smoke test on a tiny random Llama")
    p.add_argument("--floor", action="store_true",
                   help="also time one forward of the calibration through the model, one block at a time (the "
                        "floor: pruning needs two per block)")
    return p.parse_args(argv)


def tiny_model(folder: Path) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    return str(folder)


def spec(a: argparse.Namespace, model: str, calib: str, out: Path) -> dict:
    n, _, m = a.pattern.partition(":")
    sparsity = 0.5 if a.pattern == "unstructured" else 1 - int(n) / int(m)  # N:M: the sparsity it removes
    return {
        "apiVersion": "pruning.dev/v1alpha1", "kind": "PruneJob", "metadata": {"name": "profile"},
        "spec": {
            "model": {"uri": model, "dtype": "float32"},
            "pruning": {"method": a.method, "sparsity": sparsity, "pattern": a.pattern, "blockSize": 128,
                        "sequential": a.sequential},
            "calibration": {"uri": calib, "samples": a.samples, "sequenceLength": a.seqlen, "seed": 0},
            "output": {"uri": str(out), "format": "dense"},
            "evaluation": {"enabled": False},
        },
    }


def tiny_calibration(folder: Path, samples: int, seqlen: int) -> str:
    import json
    import random

    rng = random.Random(0)
    path = folder / "calib.jsonl"
    path.write_text("".join(json.dumps({"input_ids": [rng.randrange(256) for _ in range(seqlen)]}) + "\n"
                            for _ in range(samples)))
    return str(path)


def stat_faults() -> tuple[int, int]:
    """(minor, major) page faults of this process from /proc/self/stat (fields 10 and 12)."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7]), int(fields[9])


def one_forward_seconds(job) -> float:
    """One forward of the job's calibration tokens through the dense model, block-streamed as pruning reads it."""
    from prune_job.data import micro_batches
    from prune_job.pipeline.forward import stream_forward
    from prune_job.pipeline.memory import micro_batch_tokens
    from prune_job.run import prepare

    prepared = prepare(job)
    batches = micro_batches(prepared.windows, micro_batch_tokens(prepared.handle.device))
    t0 = time.perf_counter()
    stream_forward(prepared.handle, batches)
    return time.perf_counter() - t0


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from prune_job.run import run_job
    from prune_job.spec import PruneJob

    work = Path(tempfile.mkdtemp(prefix="profile-prune-"))
    if a.tiny:
        a.samples, a.seqlen = 4, 64
        model, calib = tiny_model(work / "model"), tiny_calibration(work, a.samples, a.seqlen)
    else:
        model, calib = a.model, "builtin:pydoc"
    job = PruneJob.model_validate(spec(a, model, calib, work / "out"))
    load = os.getloadavg()
    r0, f0, t0 = resource.getrusage(resource.RUSAGE_SELF), stat_faults(), time.perf_counter()
    prof = None if a.no_profile else cProfile.Profile()
    if prof is not None:
        prof.enable()
    detail = run_job(job, work, show_bar=False)
    if prof is not None:
        prof.disable()
    wall, r1, f1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF), stat_faults()
    user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    print(f"{a.method} {a.pattern} sequential={a.sequential} {a.samples}x{a.seqlen} threads={a.threads} "
          f"cProfile={'off' if prof is None else 'on'}")
    print(f"load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, after "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" ({os.cpu_count()} CPUs)")
    print(f"wall {wall:.1f} s, user {user:.1f} s, system {system:.1f} s, CPU/wall {(user + system) / wall:.2f}; "
          f"page faults minor {f1[0] - f0[0]}, major {f1[1] - f0[1]}; peak RSS {r1.ru_maxrss / 1e6:.3f} GB")
    sec = detail.seconds
    print(f"seconds: total {sec.total:.1f}, prune {sec.prune:.1f}")
    if sec.stages is not None:
        for k, v in sec.stages.model_dump().items():
            print(f"  {k:11} {v:8.2f}  {100 * v / max(sec.prune, 1e-9):5.1f}%")
    if a.floor:
        floor = one_forward_seconds(job)
        print(f"one forward of the calibration: {floor:.1f} s; pruning's floor (two per block) {2 * floor:.1f} s, "
              f"seconds.prune is {sec.prune / (2 * floor):.2f}x that (load now {os.getloadavg()[0]:.2f})")
    if prof is not None:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(a.top)
        print(buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
