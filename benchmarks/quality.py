#!/usr/bin/env python3
"""Quality of the pruning recipes: held-out perplexity and pruning seconds, one table.

SmolLM2-135M (`builtin:smollm2-135m`, fp32), calibration 64 x 512 tokens of
`builtin:pydoc`, evaluation 40 x 512 tokens of `builtin:pydoc-heldout` (never
seen in calibration), every configuration at 50% unstructured, 2:4 and 4:8,
all in this process through the block pipeline (`prune_model`, `sequential`
as in the spec's default) on the same calibration batches. Prints the table,
the issue's targets against the better of our own Wanda and SparseGPT, and
writes the figures as JSON (and the table and verdicts as markdown beside it).

With --json, every row is written as soon as it is measured, and rows already
in that file (same model, calibration, held-out and sequential) are kept and
not measured again: a run stopped part way keeps what it measured, and several
runs with different --configs / --patterns fill one table.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

EXAMPLES = """examples:
  python benchmarks/quality.py --json q.json --patterns 2:4 --configs wanda,sparsegpt,sparsegpt+admm
  python benchmarks/quality.py --json q.json --patterns 2:4,unstructured    # the rest, same file
  python benchmarks/quality.py --json q.json --report                       # table and verdicts, no runs
  python benchmarks/quality.py --device cuda --json q.json                  # every config and pattern
  python benchmarks/quality.py --tiny                                       # smoke test: a tiny model, seconds
"""

REPO = Path(__file__).resolve().parent.parent

# name -> spec.pruning fields besides sparsity and pattern
CONFIGS: dict[str, dict[str, Any]] = {
    "magnitude": dict(method="magnitude"),
    "wanda": dict(method="wanda"),
    "sparsegpt": dict(method="sparsegpt"),
    "ria": dict(method="wanda", score="ria"),
    "wanda+dsnot": dict(method="wanda", refine="dsnot"),
    "wanda+admm": dict(method="wanda", update="admm"),
    "ria+admm": dict(method="wanda", score="ria", update="admm"),
    "ria+dsnot": dict(method="wanda", score="ria", refine="dsnot"),
    "ria+dsnot+admm": dict(method="wanda", score="ria", refine="dsnot", update="admm"),
    "sparsegpt+admm": dict(method="sparsegpt", update="admm"),
    "sparsegpt+dsnot+admm": dict(method="sparsegpt", refine="dsnot", update="admm"),
    "wanda+owl": dict(method="wanda", allocation="owl"),
    "ria+owl": dict(method="wanda", score="ria", allocation="owl"),
    "ria+owl+admm": dict(method="wanda", score="ria", allocation="owl", update="admm"),
    "sparsegpt+owl": dict(method="sparsegpt", allocation="owl"),
    "wanda+permute": dict(method="wanda", permute=True),
    "sparsegpt+permute": dict(method="sparsegpt", permute=True),
    "sparsegpt+permute+admm": dict(method="sparsegpt", permute=True, update="admm"),
    "ria+permute+dsnot+admm": dict(method="wanda", score="ria", permute=True, refine="dsnot", update="admm"),
}
BASELINES = ("magnitude", "wanda", "sparsegpt")
TARGET_LOWER = {"unstructured": 5.0, "2:4": 12.0, "4:8": 12.0}  # % lower ppl than the better of wanda/sparsegpt
TIME_FACTOR = 3.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:smollm2-135m", help="builtin:smollm2-135m or a model folder")
    p.add_argument("--configs", default="", help=f"comma-separated subset of: {','.join(CONFIGS)}")
    p.add_argument("--patterns", default="unstructured,2:4,4:8", help="comma-separated: unstructured,2:4,4:8")
    p.add_argument("--sparsity", type=float, default=0.5, help="for unstructured")
    p.add_argument("--calib", default="64x512", help="calibration samples x tokens")
    p.add_argument("--heldout", default="40x512", help="held-out samples x tokens")
    p.add_argument("--sequential", choices=("true", "false"), default="true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, default=None,
                   help="figures here, each row as it is measured (and PATH.md: table and verdicts); rows already "
                        "in it are kept and skipped")
    p.add_argument("--report", action="store_true", help="print the table and verdicts of --json's rows; run nothing")
    p.add_argument("--tiny", action="store_true", help="smoke test on a tiny random model")
    return p.parse_args(argv)


def tiny_model(folder: Path) -> str:
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import save_tiny_model

    return str(save_tiny_model(folder, "llama", 2, 64))


def token_batches(path: str, tiny: bool, calib: str, heldout: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    from prune_job.data import load_tokenizer, micro_batches, token_windows
    from prune_job.sources.texts import read_source

    (cn, cl), (hn, hl) = (tuple(map(int, s.split("x"))) for s in (calib, heldout))
    if tiny:
        g = torch.Generator().manual_seed(0)
        return ([torch.randint(0, 256, (cn, cl), generator=g)], [torch.randint(0, 256, (hn, hl), generator=g)])
    tok = load_tokenizer(path)
    c = token_windows(read_source("builtin:pydoc", "calibration"), tok, cn, cl, 0, "calibration")
    h = token_windows(read_source("builtin:pydoc-heldout", "heldout"), tok, hn, hl, 0, "heldout")
    return micro_batches(c, 4096), micro_batches(h, 4096)


def measure(path: str, pruning: Any, calib: list[torch.Tensor], held: list[torch.Tensor],
            device: torch.device) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "tests"))
    from memory_sink import MemorySink
    from prune_job.evaluation.perplexity import perplexity, streamed_nll
    from prune_job.pipeline.model import open_model
    from prune_job.pipeline.prune import prune_model

    sink = MemorySink()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    result = prune_model(open_model(path, device=device), pruning, calib, sink)
    sync()
    seconds = time.perf_counter() - t0
    ppl = perplexity(*streamed_nll(open_model(path, device=device, index=sink), held))
    return {"ppl": ppl, "seconds": seconds, "sparsity": result.sparsity}


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What makes rows comparable: rows measured under other settings are not mixed into one table."""
    return {"model": args.model, "calib": args.calib, "heldout": args.heldout, "sequential": args.sequential,
            "sparsity": args.sparsity, "tiny": args.tiny}


def load_figures(args: argparse.Namespace) -> dict[str, Any]:
    fresh = {"settings": settings(args), "dense": None, "runs": {}}
    if args.json is None or not args.json.exists():
        return fresh
    old = json.loads(args.json.read_text())
    if not args.report and old.get("settings") != settings(args):
        raise SystemExit(f"{args.json} holds rows measured with {old.get('settings')}, not {settings(args)}; "
                         "use another --json")
    return old


def save(figures: dict[str, Any], path: Optional[Path]) -> None:
    """The JSON and the markdown, rewritten whole after every row (a stopped run keeps its rows)."""
    if path is None:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(figures, indent=2))
    tmp.replace(path)
    path.with_name(path.name + ".md").write_text(
        "```\n" + table(figures) + "\n```\n\n" + "".join(f"- {line}\n" for line in targets(figures)))


def run(args: argparse.Namespace, figures: dict[str, Any]) -> dict[str, Any]:
    from prune_job.evaluation.perplexity import perplexity, streamed_nll
    from prune_job.pipeline.model import open_model
    from prune_job.sources.builtin import builtin_model_dir
    from prune_job.spec import Pruning

    names = [c for c in args.configs.split(",") if c] or list(CONFIGS)
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"--configs: unknown {unknown}; known: {', '.join(CONFIGS)}")
    patterns = [p for p in args.patterns.split(",") if p]
    bad = [p for p in patterns if p != "unstructured" and not (p.count(":") == 1 and all(x.isdigit() for x in p.split(":")))]
    if bad:
        raise SystemExit(f"--patterns: unknown {bad}; use unstructured or N:M (2:4, 4:8)")
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_model(Path(tmp)) if args.tiny else (
            str(builtin_model_dir(args.model.removeprefix("builtin:"))) if args.model.startswith("builtin:") else args.model)
        calib, held = token_batches(path, args.tiny, args.calib, args.heldout)
        if figures.get("dense") is None:
            figures["dense"] = perplexity(*streamed_nll(open_model(path, device=device), held))
            save(figures, args.json)
        for pattern in patterns:
            sparsity = args.sparsity if pattern == "unstructured" else 1 - int(pattern.split(":")[0]) / int(pattern.split(":")[1])
            rows = figures["runs"].setdefault(pattern, {})
            for name in names:
                if name in rows:
                    print(f"  {pattern:>12} {name:<22} kept from {args.json}", flush=True)
                    continue
                try:
                    pruning = Pruning(sparsity=sparsity, pattern=pattern, sequential=args.sequential == "true",
                                      **CONFIGS[name])
                except ValueError as err:  # e.g. OWL with N:M: refused by the spec, shown as n/a
                    rows[name] = {"refused": str(err).splitlines()[-1]}
                    continue
                row = measure(path, pruning, calib, held, device)
                rows[name] = row
                save(figures, args.json)
                print(f"  {pattern:>12} {name:<22} ppl {row['ppl']:9.3f}  {row['seconds']:7.1f} s", flush=True)
    return figures


def targets(figures: dict[str, Any]) -> list[str]:
    """The verdicts the rows so far allow, one line per pattern (saying what is missing)."""
    lines = []
    for pattern, rows in figures["runs"].items():
        done = {n: r for n, r in rows.items() if "ppl" in r}
        base = {n: done[n] for n in ("wanda", "sparsegpt") if n in done}
        new = {n: r for n, r in done.items() if n not in BASELINES}
        if not base or not new:
            lines.append(f"{pattern}: no verdict yet (needs a wanda or sparsegpt row and a new recipe's row)")
            continue
        ref_name = min(base, key=lambda n: base[n]["ppl"])
        ref = base[ref_name]["ppl"]
        goal = TARGET_LOWER.get(pattern, 12.0)
        partial = "" if len(base) == 2 else f" (only {ref_name} measured)"

        def verdict(n: str) -> str:
            lower = 100.0 * (ref - new[n]["ppl"]) / ref
            line = (f"{n} ppl {new[n]['ppl']:.3f} vs {ref_name} {ref:.3f}{partial}: {lower:+.1f}% lower "
                    f"(target >= {goal:g}%: {'met' if lower >= goal else 'NOT met'})")
            if "sparsegpt" in done:
                ratio = new[n]["seconds"] / max(done["sparsegpt"]["seconds"], 1e-9)
                line += f"; time {ratio:.2f}x sparsegpt (target <= {TIME_FACTOR:g}x: {'met' if ratio <= TIME_FACTOR else 'NOT met'})"
            return line

        best = min(new, key=lambda n: new[n]["ppl"])
        lines.append(f"{pattern}: best {verdict(best)}")
        if "sparsegpt" in done:
            budget = TIME_FACTOR * done["sparsegpt"]["seconds"]
            fast = {n: r for n, r in new.items() if r["seconds"] <= budget}
            if fast and min(fast, key=lambda n: fast[n]["ppl"]) != best:
                lines.append(f"{pattern}: best within {TIME_FACTOR:g}x sparsegpt's time {verdict(min(fast, key=lambda n: fast[n]['ppl']))}")
    return lines


def table(figures: dict[str, Any]) -> str:
    patterns = list(figures["runs"])
    names = list(dict.fromkeys(n for rows in figures["runs"].values() for n in rows))
    head = f"{'config':<22}" + "".join(f"{p + ' ppl':>18}{'s':>8}" for p in patterns)
    dense = figures.get("dense")
    out = [f"dense perplexity {dense:.3f}" if dense is not None else "dense perplexity —", head, "-" * len(head)]
    for n in names:
        cells = []
        for p in patterns:
            r = figures["runs"][p].get(n)
            cells.append(f"{'—':>18}{'':>8}" if r is None else f"{'n/a':>18}{'':>8}" if "refused" in r
                         else f"{r['ppl']:>18.3f}{r['seconds']:>8.1f}")
        out.append(f"{n:<22}" + "".join(cells))
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.tiny:
        args.calib, args.heldout = "8x32", "4x32"
    if args.report and args.json is None:
        raise SystemExit("--report needs --json")
    torch.manual_seed(0)
    figures = load_figures(args)
    if not args.report:
        figures = run(args, figures)
        save(figures, args.json)
    print(table(figures))
    for line in targets(figures):
        print(line)
    ok = all(math.isfinite(r.get("ppl", 0.0)) for rows in figures["runs"].values() for r in rows.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
