#!/usr/bin/env python3
"""This project's `prune-job run` side by side with the papers' code and llm-compressor.

Every tool prunes the same model folder from the same calibration token ids
(written once to a .jsonl of `input_ids` rows), each in its own subprocess
limited to `--threads` threads. For each run we record the tool's own
load+prune seconds, the peak RSS of its process (`wait4`), and the perplexity
of its pruned weights on the same held-out windows, computed by one evaluator
(this venv) for all tools. Then a table, the ratios ours/peer, and JSON.

Peers (nothing of theirs is in this repository):
  paper  the papers' own code, checked out under --peers-dir: IST-DASLab/sparsegpt
         (`llama.llama_sequential` with its `SparseGPT` class) and locuslab/wanda
         (`lib.prune.prune_wanda` with its `WrappedGPT`). They are written for
         transformers 4.3x, CUDA and hub datasets; the child adds three shims and
         nothing else: our token ids instead of their C4 loader, rotary position
         embeddings for decoder layers called the 4.3x way, and no-op CUDA syncs.
  llmc   llm-compressor's `oneshot` (SparseGPTModifier / WandaPruningModifier,
         sequential pipeline), run by --llmc-python (a separate venv: it pins
         its own transformers).

This file is also the child: `compare_peers.py _child CONFIG.json` runs one
peer, `_eval` one evaluation. Its top level imports only the standard library,
so any venv's python can run it.

    python benchmarks/compare_peers.py --peers-dir /work/peers \\
        --llmc-python /work/peers/venv-llmc/bin/python --threads 2
    python benchmarks/compare_peers.py --quick     # smoke test: 8 x 128 tokens
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
DEFAULT_PEERS = Path("/work/peers")
TOOLS = ("ours", "paper", "llmc")
PEER_FILE = "pruned-linears.safetensors"


# --------------------------------------------------------------------------- options


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="builtin:smollm2-135m", help="dense HF folder or builtin:smollm2-135m")
    p.add_argument("--peers-dir", type=Path, default=DEFAULT_PEERS, help="checkouts sparsegpt/ and wanda/")
    p.add_argument("--paper-python", default=sys.executable, help="python that runs the papers' code")
    p.add_argument("--llmc-python", default=str(DEFAULT_PEERS / "venv-llmc/bin/python"))
    p.add_argument("--prune-job", default=None, help="prune-job executable (default: beside this python)")
    p.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"], choices=["wanda", "sparsegpt"])
    p.add_argument("--patterns", nargs="+", default=["unstructured", "2:4"])
    p.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    p.add_argument("--sparsity", type=float, default=0.5, help="for unstructured runs")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--eval-samples", type=int, default=40, help="held-out windows of --seqlen tokens")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sequential", action="store_true", help="ours with pruning.sequential: true")
    p.add_argument("--quick", action="store_true", help="smoke test: 8 samples x 128 tokens, 4 eval windows")
    p.add_argument("--workdir", type=Path, default=None, help="keep outputs here (default: a temp dir)")
    p.add_argument("--json", type=Path, default=Path("compare_peers.json"), help="where to write the figures")
    a = p.parse_args(argv)
    if a.quick:
        a.samples, a.seqlen, a.eval_samples = 8, 128, 4
    return a


def nm_of(pattern: str) -> tuple[int, int]:
    """(n, m) kept of every m, or (0, 0) for unstructured (the papers' convention)."""
    if pattern == "unstructured":
        return 0, 0
    n, m = (int(x) for x in pattern.split(":"))
    return n, m


def sparsity_of(pattern: str, unstructured: float) -> float:
    n, m = nm_of(pattern)
    return unstructured if m == 0 else 1.0 - n / m


# --------------------------------------------------------------------------- model + data


def resolve_model(uri: str) -> Path:
    """A local dense HF folder for `uri`: a directory, or builtin:NAME (converted once by prune_job.sources.builtin)."""
    if not uri.startswith("builtin:"):
        return Path(uri).resolve()
    from prune_job.sources.builtin import builtin_model_dir

    return builtin_model_dir(uri.removeprefix("builtin:"))


def token_windows(model_dir: Path, samples: int, seqlen: int, eval_samples: int) -> tuple[list, list]:
    """Calibration windows of builtin:pydoc and held-out windows of builtin:pydoc-heldout, as token id
    lists, cut by prune_job.data exactly as `prune-job run` cuts them."""
    from prune_job import data
    from prune_job.sources.texts import read_source

    tok = data.load_tokenizer(model_dir)

    def windows(uri: str, n: int, field: str) -> list[list[int]]:
        return [w.tolist() for w in data.token_windows(read_source(uri, field), tok, n, seqlen, 0, field)]

    return (windows("builtin:pydoc", samples, "spec.calibration.uri"),
            windows("builtin:pydoc-heldout", eval_samples, "spec.evaluation.perplexity.uri"))


def prepare_inputs(a: argparse.Namespace, work: Path) -> Path:
    """Resolve the model and write calib.jsonl / heldout.jsonl in a child process, so that this parent
    never holds torch or a model: a child's peak RSS (wait4 ru_maxrss) starts from the size of the
    process that forked it, and Linux keeps that figure across exec."""
    cfg = {"model": a.model, "samples": a.samples, "seqlen": a.seqlen, "eval_samples": a.eval_samples,
           "calib": str(work / "calib.jsonl"), "heldout": str(work / "heldout.jsonl"),
           "result": str(work / "inputs.json")}
    (work / "inputs-config.json").write_text(json.dumps(cfg))
    subprocess.run([sys.executable, str(HERE), "_inputs", str(work / "inputs-config.json")], check=True,
                   env=child_env(a.threads))
    return Path(json.loads((work / "inputs.json").read_text())["model_dir"])


def inputs_main(cfg_path: str) -> int:
    cfg = json.loads(Path(cfg_path).read_text())
    model_dir = resolve_model(cfg["model"])
    calib, heldout = token_windows(model_dir, cfg["samples"], cfg["seqlen"], cfg["eval_samples"])
    write_jsonl(Path(cfg["calib"]), calib)
    write_jsonl(Path(cfg["heldout"]), heldout)
    Path(cfg["result"]).write_text(json.dumps({"model_dir": str(model_dir)}))
    return 0


def write_jsonl(path: Path, windows: list) -> Path:
    path.write_text("".join(json.dumps({"input_ids": w}) + "\n" for w in windows))
    return path


def read_jsonl(path: str) -> list[list[int]]:
    return [json.loads(line)["input_ids"] for line in Path(path).read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- running children


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def run_measured(cmd: list[str], log: Path, threads: int) -> dict[str, Any]:
    """Run `cmd`, output to `log`; exit code, wall seconds, and the child's own CPU seconds (user + sys)
    and peak RSS (wait4). CPU seconds suffer less than wall time when other work shares the cores.
    A sampler also records the RSS split (anonymous / file-backed) over time, to show where a peak is."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env(threads))
        samples: list[tuple[float, int, int]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(proc.pid, t0, samples, stop), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        stop.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - t0,
            "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_bytes": usage.ru_maxrss * 1024, "log": str(log),
            **_rss_summary(samples)}


def _sample_rss(pid: int, t0: float, samples: list, stop: threading.Event, every: float = 0.5) -> None:
    """(seconds, RssAnon, RssFile, VmHWM bytes) of `pid` from /proc until it exits."""
    while not stop.is_set():
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            return
        kb = {k: int(v.split()[0]) * 1024 for k, v in (ln.split(":", 1) for ln in lines
                                                       if ln.startswith(("Rss", "VmHWM")))}
        if kb:
            samples.append((round(time.perf_counter() - t0, 1), kb.get("RssAnon", 0), kb.get("RssFile", 0),
                            kb.get("VmHWM", 0)))
        stop.wait(every)


def _rss_summary(samples: list[tuple[float, int, int]]) -> dict[str, Any]:
    if not samples:
        return {}
    t, anon, file, _ = max(samples, key=lambda s: s[1] + s[2])
    step = max(1, len(samples) // 200)
    return {"sampled_peak": {"at_s": t, "anon_bytes": anon, "file_bytes": file},
            "hwm_bytes": samples[-1][3],  # VmHWM of the exec'd image at the last sample: a cross-check
            "rss_timeline": [s[:3] for s in samples[::step]]}


def prune_job_exe(opt: str | None) -> str:
    if opt:
        return opt
    beside = Path(sys.executable).parent / "prune-job"
    return str(beside) if beside.exists() else (shutil.which("prune-job") or "prune-job")


def ours_spec(a: argparse.Namespace, model_dir: Path, calib: Path, out: Path, method: str, pattern: str) -> dict:
    return {
        "apiVersion": "pruning.dev/v1alpha1", "kind": "PruneJob",
        "metadata": {"name": f"bench-ours-{method}-{pattern.replace(':', '-')}"},
        "spec": {
            "model": {"uri": str(model_dir), "dtype": "float32"},
            "pruning": {"method": method, "sparsity": sparsity_of(pattern, a.sparsity), "pattern": pattern,
                        "blockSize": 128, "dampening": 0.01, "sequential": a.sequential},
            "calibration": {"uri": str(calib), "samples": a.samples, "sequenceLength": a.seqlen, "seed": 0},
            "output": {"uri": str(out), "format": "dense"},
            "evaluation": {"enabled": False},
        },
    }


def run_ours(a, model_dir: Path, calib: Path, work: Path, method: str, pattern: str) -> dict[str, Any]:
    import yaml

    out = work / "out"
    spec = work / "prunejob.yaml"
    spec.write_text(yaml.safe_dump(ours_spec(a, model_dir, calib, out, method, pattern), sort_keys=False))
    rec = run_measured([prune_job_exe(a.prune_job), "run", str(spec)], work / "log.txt", a.threads)
    results = out / "results.json"
    if rec["rc"] == 0 and results.exists():
        rec["results_json"] = json.loads(results.read_text())
        rec["prune_s"] = _ours_prune_seconds(rec["results_json"], rec["wall_s"])
        rec["self_peak_rss_bytes"] = _ours_peak(rec["results_json"])
    rec.update(output=str(out), output_kind="hf-folder")
    return rec


def _ours_prune_seconds(results: dict, wall: float) -> float:
    """Load + prune + write: results.json's seconds.total (evaluation is off), which like the peers'
    figure starts before the model is opened; seconds.prune alone starts after. Wall time if absent."""
    seconds = results.get("seconds") or {}
    return float(seconds.get("total") or wall)


def _ours_peak(results: dict) -> int | None:
    return (results.get("memory") or {}).get("peakHostBytes")


def run_peer(a, tool: str, model_dir: Path, calib: Path, work: Path, method: str, pattern: str) -> dict:
    python = a.paper_python if tool == "paper" else a.llmc_python
    cfg = {"tool": tool, "method": method, "pattern": pattern, "sparsity": sparsity_of(pattern, a.sparsity),
           "model": str(model_dir), "calibration": str(calib), "seqlen": a.seqlen, "threads": a.threads,
           "peers_dir": str(a.peers_dir), "output": str(work / PEER_FILE), "result": str(work / "child.json")}
    cfg_path = work / "child-config.json"
    cfg_path.write_text(json.dumps(cfg, indent=1))
    rec = run_measured([python, str(HERE), "_child", str(cfg_path)], work / "log.txt", a.threads)
    if rec["rc"] == 0:
        child = json.loads((work / "child.json").read_text())
        rec.update(prune_s=child["seconds"], self_peak_rss_bytes=child["peak_rss_bytes"], versions=child["versions"])
    rec.update(output=cfg["output"], output_kind="linears")
    return rec


def evaluate(a, model_dir: Path, heldout: Path, rec: dict | None, work: Path) -> dict[str, Any]:
    """Perplexity + measured sparsity of one output (None: the dense model), in a fresh process."""
    cfg = {"model": str(model_dir), "heldout": str(heldout), "threads": a.threads,
           "output": rec and rec["output"], "output_kind": rec and rec["output_kind"],
           "result": str(work / "eval.json")}
    cfg_path = work / "eval-config.json"
    cfg_path.write_text(json.dumps(cfg))
    m = run_measured([sys.executable, str(HERE), "_eval", str(cfg_path)], work / "eval-log.txt", a.threads)
    if m["rc"] != 0:
        return {"error": f"evaluation failed, see {m['log']}"}
    return json.loads((work / "eval.json").read_text())


# --------------------------------------------------------------------------- report


def ratio(x, y) -> float | None:
    return None if not x or not y else x / y


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(runs: list[dict], dense_ppl: float | None) -> None:
    print(f"\ndense perplexity: {fmt(dense_ppl, '.3f')}")
    head = f"{'method':10} {'pattern':12} {'tool':6} {'prune s':>9} {'wall s':>8} {'CPU s':>8} {'peak RSS GB':>11} " \
           f"{'ppl':>9} {'sparsity':>9}"
    print(head + "\n" + "-" * len(head))
    for r in runs:
        e = r.get("eval", {})
        print(f"{r['method']:10} {r['pattern']:12} {r['tool']:6} {fmt(r.get('prune_s'), '9.1f')} "
              f"{fmt(r.get('wall_s'), '8.1f')} {fmt(r.get('cpu_s'), '8.1f')} {fmt(gb(r.get('peak_rss_bytes')), '11.3f')} "
              f"{fmt(e.get('perplexity'), '9.3f')} {fmt(e.get('sparsity'), '9.4f')}"
              + ("" if r.get("rc") == 0 else f"   FAILED rc={r.get('rc')} ({r.get('log')})"))


def print_stages(runs: list[dict]) -> None:
    """Ours: where seconds.prune went (results.json's seconds.stages), beside each peer's load+prune total."""
    from prune_job.pipeline.stages import cores_busy

    ours = [r for r in runs if r["tool"] == "ours" and (r.get("results_json") or {}).get("seconds", {}).get("stages")]
    if not ours:
        return
    names = list(ours[0]["results_json"]["seconds"]["stages"])
    print("\nours: prune seconds by stage (results.json seconds.stages), peers' load+prune total beside")
    head = f"{'method':10} {'pattern':12} {'prune s':>8} " + " ".join(f"{n[:9]:>9}" for n in names) + "  peers"
    print(head + "\n" + "-" * len(head))
    for r in ours:
        sec = r["results_json"]["seconds"]
        peers = [p for p in runs if p["tool"] != "ours" and (p["method"], p["pattern"]) == (r["method"], r["pattern"])]
        beside = ", ".join(f"{p['tool']} {fmt(p.get('prune_s'), '.1f')}" for p in peers)
        print(f"{r['method']:10} {r['pattern']:12} {fmt(sec.get('prune'), '8.1f')} "
              + " ".join(f"{sec['stages'].get(n, 0.0):9.1f}" for n in names) + f"  {beside}")
        cpu = sec.get("stageCpu")
        if cpu:
            busy = sum(cpu.values()) / sec["prune"] if sec.get("prune") else None
            cores = cores_busy(sec["stages"], cpu)
            print(f"{'  cores':23} {fmt(busy, '8.2f')} " + " ".join(f"{fmt(cores.get(n), '.2f'):>9}" for n in names))


def gb(b) -> float | None:
    return None if b is None else b / 1e9


def ratios(runs: list[dict]) -> list[dict]:
    """ours / peer for every (method, pattern, peer) where both ran."""
    by = {(r["method"], r["pattern"], r["tool"]): r for r in runs}
    out = []
    for (method, pattern, tool), peer in by.items():
        ours = by.get((method, pattern, "ours"))
        if tool == "ours" or ours is None:
            continue
        oe, pe = ours.get("eval", {}), peer.get("eval", {})
        out.append({"method": method, "pattern": pattern, "peer": tool,
                    "prune_s": ratio(ours.get("prune_s"), peer.get("prune_s")),
                    "wall_s": ratio(ours.get("wall_s"), peer.get("wall_s")),
                    "cpu_s": ratio(ours.get("cpu_s"), peer.get("cpu_s")),
                    "peak_rss": ratio(ours.get("peak_rss_bytes"), peer.get("peak_rss_bytes")),
                    "perplexity": ratio(oe.get("perplexity"), pe.get("perplexity"))})
    return out


def print_ratios(rows: list[dict]) -> None:
    print("\nratios ours / peer  (targets vs llmc: time <= 0.9 wanda, <= 0.85 sparsegpt; RSS <= 0.6; ppl <= 1.01)")
    head = f"{'method':10} {'pattern':12} {'peer':6} {'prune s':>8} {'wall s':>8} {'CPU s':>8} {'peak RSS':>9} {'ppl':>7}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['method']:10} {r['pattern']:12} {r['peer']:6} {fmt(r['prune_s'], '8.3f')} "
              f"{fmt(r['wall_s'], '8.3f')} {fmt(r['cpu_s'], '8.3f')} {fmt(r['peak_rss'], '9.3f')} "
              f"{fmt(r['perplexity'], '7.4f')}")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --------------------------------------------------------------------------- parent main


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="compare-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = prepare_inputs(a, work)
    calib, heldout = work / "calib.jsonl", work / "heldout.jsonl"
    report = {"model": str(model_dir), "samples": a.samples, "seqlen": a.seqlen, "eval_samples": a.eval_samples,
              "threads": a.threads, "sequential": a.sequential, "cpus": os.cpu_count(),
              "load_before": load_average(), "workdir": str(work), "runs": []}
    print(f"model {model_dir}\nworkdir {work}\nload average before: {report['load_before']}", flush=True)
    dense_dir = work / "dense"
    dense_dir.mkdir(exist_ok=True)
    report["dense"] = evaluate(a, model_dir, heldout, None, dense_dir)
    for pattern in a.patterns:  # every method's first pattern first: a cut-short run still compares
        for method in a.methods:
            for tool in a.tools:
                report["runs"].append(one_run(a, tool, model_dir, calib, heldout, work, method, pattern))
                _save(a.json, report)
    report["load_after"] = load_average()
    report["ratios"] = ratios(report["runs"])
    _save(a.json, report)
    print_table(report["runs"], report["dense"].get("perplexity"))
    print_stages(report["runs"])
    print_ratios(report["ratios"])
    print(f"\nload average before {report['load_before']}, after {report['load_after']} ({os.cpu_count()} CPUs)")
    print(f"figures: {a.json}")
    return 0 if all(r.get("rc") == 0 for r in report["runs"]) else 1


def one_run(a, tool: str, model_dir: Path, calib: Path, heldout: Path, work: Path, method: str,
            pattern: str) -> dict:
    run_dir = work / f"{method}-{pattern.replace(':', 'of')}-{tool}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    print(f"[{time.strftime('%H:%M:%S')}] {method} {pattern} {tool} (load {load_average()}) ...", flush=True)
    if tool == "ours":
        rec = run_ours(a, model_dir, calib, run_dir, method, pattern)
    else:
        rec = run_peer(a, tool, model_dir, calib, run_dir, method, pattern)
    rec.update(method=method, pattern=pattern, tool=tool)
    if rec["rc"] == 0:
        rec["eval"] = evaluate(a, model_dir, heldout, rec, run_dir)
    print(f"    rc={rec['rc']} prune_s={fmt(rec.get('prune_s'), '.1f')} wall_s={rec['wall_s']:.1f} "
          f"cpu_s={rec['cpu_s']:.1f} "
          f"peak={gb(rec['peak_rss_bytes']):.3f} GB ppl={fmt(rec.get('eval', {}).get('perplexity'), '.3f')}",
          flush=True)
    return rec


def _save(path: Path, report: dict) -> None:
    path.write_text(json.dumps(report, indent=1, default=str))


# =========================================================================== children
# Everything below runs in a child process, possibly in another venv: imports are local.


def child_main(cfg_path: str) -> int:
    """Load + prune with one peer; record its seconds and peak RSS, then save its pruned Linear weights."""
    cfg = json.loads(Path(cfg_path).read_text())
    import torch

    torch.set_num_threads(cfg["threads"])
    calib = read_jsonl(cfg["calibration"])
    runner = PEER_RUNNERS[(cfg["tool"], cfg["method"])]
    t0 = time.perf_counter()
    model = runner(cfg, calib)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    save_decoder_linears(model, cfg["output"])
    Path(cfg["result"]).write_text(json.dumps({"seconds": seconds, "peak_rss_bytes": peak,
                                               "versions": _versions()}))
    return 0


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("torch", "transformers", "llmcompressor", "compressed-tensors"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def decoder_linears(model) -> dict[str, Any]:
    """Every nn.Linear of the model except the output head: what all three tools prune."""
    import torch

    return {n: m for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")}


def save_decoder_linears(model, path: str) -> None:
    from safetensors.torch import save_file

    save_file({f"{n}.weight": m.weight.detach().contiguous() for n, m in decoder_linears(model).items()}, path)


def calib_batches(calib: list[list[int]]):
    import torch

    return [(torch.tensor([ids]), None) for ids in calib]


def add_rotary_shim(model) -> None:
    """Give decoder layers their rotary (cos, sin) when a driver calls them the transformers-4.3x way.

    transformers >= 4.48 computes position embeddings once in the model and passes them to every
    layer; the papers' drivers call `layer(x, attention_mask=..., position_ids=...)` only.
    """
    import torch

    rotary = model.model.rotary_emb

    def pre_hook(module, args, kwargs):
        if kwargs.get("position_embeddings") is None:
            hidden = args[0] if args else kwargs["hidden_states"]
            pos = kwargs.get("position_ids")
            if pos is None:
                pos = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
            kwargs["position_embeddings"] = rotary(hidden, pos)
        return args, kwargs

    for layer in model.model.layers:
        layer.register_forward_pre_hook(pre_hook, with_kwargs=True)


def no_cuda_sync() -> None:
    """The papers' solvers call torch.cuda.synchronize() for their timers; a CPU build cannot."""
    import torch

    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda *a, **k: None


def paper_sparsegpt(cfg: dict, calib: list) -> Any:
    """IST-DASLab/sparsegpt: its get_llama loader and llama_sequential driver, with its SparseGPT class."""
    import torch

    sys.path.insert(0, str(Path(cfg["peers_dir"]) / "sparsegpt"))
    no_cuda_sync()
    import llama as sgpt  # the repository's llama.py

    model = sgpt.get_llama(cfg["model"])
    model.seqlen = cfg["seqlen"]
    model.eval()
    add_rotary_shim(model)
    n, m = nm_of(cfg["pattern"])
    sgpt.args = argparse.Namespace(  # llama_sequential reads its CLI's global `args`; these are its defaults
        nsamples=len(calib), true_sequential=False, minlayer=-1, maxlayer=1000, prune_only="", invert=False,
        wbits=16, sparsity=cfg["sparsity"], prunen=n, prunem=m, percdamp=0.01, blocksize=128)
    sgpt.llama_sequential(model, calib_batches(calib), torch.device("cpu"))
    return model


def paper_wanda(cfg: dict, calib: list) -> Any:
    """locuslab/wanda: lib.prune.prune_wanda (its Catcher, WrappedGPT statistics and mask selection)."""
    import types

    import torch
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(Path(cfg["peers_dir"]) / "wanda"))
    if "datasets" not in sys.modules:
        try:
            import datasets  # noqa: F401  (lib.data imports it; we never call its C4 loader)
        except ImportError:
            sys.modules["datasets"] = types.SimpleNamespace(load_dataset=None)
    from lib import prune as wanda

    # its get_llm, in fp32 on the CPU (it asks for fp16 with device_map="auto", which sets hf_device_map)
    model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32, low_cpu_mem_usage=True)
    model.seqlen = cfg["seqlen"]
    model.hf_device_map = {}
    model.eval()
    add_rotary_shim(model)
    no_cuda_sync()
    batches = calib_batches(calib)
    wanda.get_loaders = lambda *a, **k: (batches, None)
    n, m = nm_of(cfg["pattern"])
    args = argparse.Namespace(nsamples=len(calib), seed=0, sparsity_ratio=cfg["sparsity"], use_variant=False)
    wanda.prune_wanda(args, model, None, device=torch.device("cpu"), prune_n=n, prune_m=m)
    return model


def llmc_prune(cfg: dict, calib: list, modifier_cls: Callable) -> Any:
    """llm-compressor oneshot, sequential pipeline over decoder layers, lm_head untouched."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)
    ds = Dataset.from_dict({"input_ids": calib, "attention_mask": [[1] * len(x) for x in calib]})
    n, m = nm_of(cfg["pattern"])
    recipe = modifier_cls(sparsity=cfg["sparsity"], mask_structure=f"{n}:{m}",
                          targets=[r"re:model\.layers\.\d+$"], ignore=["re:.*lm_head"])
    oneshot(model=model, dataset=ds, recipe=[recipe], num_calibration_samples=len(calib),
            max_seq_length=cfg["seqlen"], shuffle_calibration_samples=False, pipeline="sequential")
    return model


def llmc_sparsegpt(cfg: dict, calib: list) -> Any:
    from llmcompressor.modifiers.pruning import SparseGPTModifier

    return llmc_prune(cfg, calib, lambda **kw: SparseGPTModifier(block_size=128, dampening_frac=0.01, **kw))


def llmc_wanda(cfg: dict, calib: list) -> Any:
    from llmcompressor.modifiers.pruning import WandaPruningModifier

    return llmc_prune(cfg, calib, WandaPruningModifier)


PEER_RUNNERS = {("paper", "sparsegpt"): paper_sparsegpt, ("paper", "wanda"): paper_wanda,
                ("llmc", "sparsegpt"): llmc_sparsegpt, ("llmc", "wanda"): llmc_wanda}


def eval_main(cfg_path: str) -> int:
    """Perplexity on the held-out windows and measured sparsity of one pruned model."""
    cfg = json.loads(Path(cfg_path).read_text())
    import torch

    torch.set_num_threads(cfg["threads"])
    model = load_for_eval(cfg)
    linears = decoder_linears(model)
    zeros = sum(int((m.weight == 0).sum()) for m in linears.values())
    total = sum(m.weight.numel() for m in linears.values())
    result = {"perplexity": perplexity(model, read_jsonl(cfg["heldout"])), "sparsity": zeros / total,
              "valid_2of4": all(_at_most_n_of_m(m.weight, 2, 4) for m in linears.values())}
    Path(cfg["result"]).write_text(json.dumps(result))
    return 0


def load_for_eval(cfg: dict):
    import torch
    from transformers import AutoModelForCausalLM

    if cfg["output_kind"] == "hf-folder":
        return AutoModelForCausalLM.from_pretrained(cfg["output"], dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32).eval()
    if cfg["output_kind"] == "linears":
        from safetensors.torch import load_file

        pruned = load_file(cfg["output"])
        expected = {f"{n}.weight" for n in decoder_linears(model)}
        if set(pruned) != expected:
            raise SystemExit(f"pruned weights do not match the model: {sorted(set(pruned) ^ expected)[:5]}")
        model.load_state_dict(pruned, strict=False)
    return model


def _at_most_n_of_m(w, n: int, m: int) -> bool:
    if w.shape[1] % m:
        return False
    return bool(((w.reshape(w.shape[0], -1, m) != 0).sum(-1) <= n).all())


def perplexity(model, windows: list[list[int]]) -> float:
    """exp(mean next-token NLL) over every predicted token of every window (one window per forward)."""
    import math

    import torch
    import torch.nn.functional as F

    nll, count = 0.0, 0
    with torch.no_grad():
        for ids in windows:
            x = torch.tensor([ids])
            logits = model(input_ids=x).logits[0, :-1].float()
            nll += F.cross_entropy(logits, x[0, 1:], reduction="sum").item()
            count += len(ids) - 1
    return math.exp(nll / count)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        sys.exit(child_main(sys.argv[2]))
    if len(sys.argv) > 1 and sys.argv[1] == "_inputs":
        sys.exit(inputs_main(sys.argv[2]))
    if len(sys.argv) > 1 and sys.argv[1] == "_eval":
        sys.exit(eval_main(sys.argv[2]))
    sys.exit(main(sys.argv[1:]))
