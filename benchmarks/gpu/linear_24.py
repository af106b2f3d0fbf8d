"""Semi-structured 2:4 against dense for one fp16 Linear (CUDA only).

For each weight shape and token count: median time of F.linear with the dense
weight and with the same 2:4 weight as a PyTorch semi-structured tensor
(cuSPARSELt, and CUTLASS where it runs), timed with CUDA events after warm-up.
Pure torch: needs nothing from this project, so it runs on any CUDA machine.

    python benchmarks/gpu/linear_24.py [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F

# (in_features, out_features): a 70B attention projection and its MLP gate/up.
SHAPES = [(8192, 8192), (8192, 28672)]
TOKENS = [1, 16, 256, 4096]
WARMUP, ITERS = 10, 50


def two_four(w: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest of every 4 consecutive inputs (NVIDIA's 2:4)."""
    groups = w.reshape(w.shape[0], -1, 4)
    keep = groups.abs().topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return (groups * mask).reshape_as(w)


def time_ms(fn) -> float:
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(ITERS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def sparse_weight(w: torch.Tensor, cutlass: bool):
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    SparseSemiStructuredTensor._FORCE_CUTLASS = cutlass
    try:
        return to_sparse_semi_structured(w)
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = False


def measure(in_f: int, out_f: int, tokens: int, backends: dict) -> dict:
    x = torch.randn(tokens, in_f, device="cuda", dtype=torch.float16)
    dense = backends["dense"]
    row = {"in": in_f, "out": out_f, "tokens": tokens, "dense_ms": time_ms(lambda: F.linear(x, dense))}
    for name, w in backends.items():
        if name == "dense" or w is None:
            continue
        y, ref = F.linear(x, w), F.linear(x, dense)
        row[f"{name}_max_abs_err"] = float((y.float() - ref.float()).abs().max())
        row[f"{name}_ms"] = time_ms(lambda: F.linear(x, w))
        row[f"{name}_speedup"] = row["dense_ms"] / row[f"{name}_ms"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("linear_24: no CUDA device; nothing measured")
        return 2
    torch.manual_seed(0)
    rows, notes = [], []
    for in_f, out_f in SHAPES:
        w = two_four(torch.randn(out_f, in_f, device="cuda", dtype=torch.float16))
        backends = {"dense": w}
        for name, cutlass in (("cusparselt", False), ("cutlass", True)):
            try:
                backends[name] = sparse_weight(w, cutlass)
            except (RuntimeError, NotImplementedError) as err:  # a backend missing from this build
                backends[name] = None
                notes.append(f"{name} unavailable for {out_f}x{in_f}: {str(err).splitlines()[0][:160]}")
        for tokens in TOKENS:
            rows.append(measure(in_f, out_f, tokens, backends))
            print(format_row(rows[-1]), flush=True)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "dtype": "float16",
              "iters": ITERS, "rows": rows, "notes": notes}
    for note in notes:
        print("note:", note)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def format_row(r: dict) -> str:
    parts = [f"W {r['out']}x{r['in']} tokens {r['tokens']:5d}: dense {r['dense_ms']:.4f} ms"]
    for name in ("cusparselt", "cutlass"):
        if f"{name}_ms" in r:
            parts.append(f"{name} {r[f'{name}_ms']:.4f} ms ({r[f'{name}_speedup']:.2f}x, "
                         f"max err {r[f'{name}_max_abs_err']:.3g})")
    return "  ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
