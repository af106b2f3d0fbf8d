#!/usr/bin/env python3
"""`prune-job sweep` of a 2 × 3 grid against six separate `prune-job run`s.

The grid: Wanda and SparseGPT at 0.3, 0.5 and 0.7 unstructured on SmolLM2-135M
(`builtin:smollm2-135m`, fp32), calibration 16 × 256 tokens of builtin:pydoc,
perplexity on 8 × 256 held-out tokens, generation at batch 1 (one timed run).
The sweep shares the model resolution, the calibration windows and the dense
perplexity between its children (speed is measured beside every child in
both); the separate runs are the same six PruneJob documents (the sweep's own
children, from prune_job.sweep.grid), each its own process. Each process is
measured by wait4 (wall, CPU seconds, peak RSS). Target: the sweep's total
wall seconds ≤ 0.8 × the six runs' total. The sparse perplexity of each child
must agree between the two (sharing must change no result).

    python benchmarks/sweep.py                 # SmolLM2, the real measurement (~minutes on 2 cores)
    python benchmarks/sweep.py --tiny          # smoke test: a random 2-block Llama, a 2 × 1 grid
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_peers import load_average, prune_job_exe, run_measured  # noqa: E402
from memory_vs_depth import build_model  # noqa: E402

TARGET = 0.8
MATRIX = {"method": ["wanda", "sparsegpt"], "sparsity": [0.3, 0.5, 0.7]}
TINY_MATRIX = {"method": ["wanda", "sparsegpt"], "sparsity": [0.5]}  # --tiny: 2 × 1, to stay under a minute


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="smoke test on a random 2-block Llama")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument("--prune-job", default=None, help="prune-job executable (default: beside this python)")
    return p.parse_args(argv)


def data_sources(a: argparse.Namespace, work: Path) -> tuple[str, dict, dict]:
    """(model URI, calibration, perplexity evaluation) for the template."""
    if not a.tiny:
        return ("builtin:smollm2-135m", {"uri": "builtin:pydoc", "samples": 16, "sequenceLength": 256},
                {"uri": "builtin:pydoc-heldout", "samples": 8, "sequenceLength": 256})
    shape = SimpleNamespace(hidden=128, intermediate=352, heads=4, vocab=512, seqlen=64)
    build_model(shape, 2, work / "model")
    rng = random.Random(0)
    ids = work / "ids.jsonl"
    ids.write_text("".join(json.dumps({"input_ids": [rng.randrange(512) for _ in range(64)]}) + "\n" for _ in range(8)))
    return (str(work / "model"), {"uri": str(ids), "samples": 8, "sequenceLength": 64},
            {"uri": str(ids), "samples": 4, "sequenceLength": 64})


def sweep_document(a: argparse.Namespace, work: Path, out: Path) -> dict:
    model, calibration, perplexity = data_sources(a, work)
    generation = {"batchSizes": [1], "promptTokens": 8 if a.tiny else 32, "newTokens": 4 if a.tiny else 16,
                  "repeats": 1}
    template = {"model": {"uri": model, "dtype": "float32"}, "calibration": calibration,
                "output": {"uri": str(out), "format": "compressed"},
                "evaluation": {"perplexity": perplexity, "generation": generation}}
    return {"apiVersion": "pruning.dev/v1alpha1", "kind": "PruneSweep", "metadata": {"name": "bench"},
            "spec": {"template": template, "matrix": TINY_MATRIX if a.tiny else MATRIX, "parallelism": 1}}


def separate_documents(sweep: dict, out: Path) -> list[tuple[str, dict]]:
    """The sweep's children as PruneJob documents writing under `out`."""
    from prune_job.spec import parse_sweep
    from prune_job.sweep.grid import child_spec, plan_grid

    parsed = parse_sweep(sweep)
    docs = []
    for child in plan_grid("bench", parsed.spec.template, parsed.spec.matrix).children:
        spec = child_spec(parsed.spec.template, child, str(out))
        docs.append((child.name, {"apiVersion": "pruning.dev/v1alpha1", "kind": "PruneJob",
                                  "metadata": {"name": child.name},
                                  "spec": spec.model_dump(by_alias=True, mode="json", exclude_none=True)}))
    return docs


def sparse_ppl(folder: Path) -> float:
    return json.loads((folder / "results.json").read_text())["perplexity"]["sparse"]


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    exe = prune_job_exe(a.prune_job)
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        work = a.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        sweep = sweep_document(a, work, work / "sweep-out")
        (work / "sweep.yaml").write_text(yaml.safe_dump(sweep))
        print(f"load average before: {load_average()}")
        swept = run_measured([exe, "sweep", str(work / "sweep.yaml"), "--no-progress", "--workdir",
                              str(work / "sweep-work")], work / "sweep.log", a.threads)
        runs = {}
        for name, doc in separate_documents(sweep, work / "alone"):
            path = work / f"{name}.yaml"
            path.write_text(yaml.safe_dump(doc))
            runs[name] = run_measured([exe, "run", str(path), "--no-progress", "--workdir", str(work / f"w-{name}")],
                                      work / f"{name}.log", a.threads)
        figures = report(swept, runs, work)
        print(f"load average after: {load_average()}")
    if a.json:
        a.json.write_text(json.dumps(figures, indent=2))
    return 0 if figures["ok"] else 1


def report(swept: dict, runs: dict[str, dict], work: Path) -> dict:
    failed = [n for n, r in runs.items() if r["rc"] != 0] + (["sweep"] if swept["rc"] != 0 else [])
    alone_wall = sum(r["wall_s"] for r in runs.values())
    alone_cpu = sum(r["cpu_s"] for r in runs.values())
    ratio = swept["wall_s"] / alone_wall if alone_wall else None
    agree = {n: (sparse_ppl(work / "sweep-out" / n), sparse_ppl(work / "alone" / n)) for n in runs if not failed}
    print(f"{'':28} {'wall s':>9} {'CPU s':>9} {'peak RSS GB':>12}")
    print(f"{f'prune-job sweep ({len(runs)} children)':28} {swept['wall_s']:9.1f} {swept['cpu_s']:9.1f} "
          f"{swept['peak_rss_bytes'] / 1e9:12.2f}")
    print(f"{f'{len(runs)} × prune-job run':28} {alone_wall:9.1f} {alone_cpu:9.1f} "
          f"{max(r['peak_rss_bytes'] for r in runs.values()) / 1e9:12.2f}")
    if ratio is not None:
        print(f"ratio (wall): {ratio:.2f}× (target ≤ {TARGET}×); CPU: {swept['cpu_s'] / alone_cpu:.2f}×")
    for name, (a, b) in agree.items():
        print(f"  {name}: sparse perplexity sweep {a:.4f}, alone {b:.4f}")
    same = all(abs(a - b) <= 1e-6 * max(1.0, abs(b)) for a, b in agree.values())
    if failed:
        print(f"failed: {failed} (logs in {work})")
    return {"sweep": swept, "runs": runs, "ratio_wall": ratio, "target": TARGET, "same_results": same,
            "failed": failed, "ok": not failed and same}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
