"""Storage and checkpoint-size figures (not a timed test).

1. Throughput on loopback against a local `nanio` S3 server: a ~1 GB dense
   checkpoint (random tensors, shards of `--shard-mb`) uploaded and downloaded
   by prune_job.storage (parallel multipart / ranged GETs, sha256 recorded and
   verified) and by the plain minio SDK (`fput_object` / `fget_object`, one
   file after another), in one run, alternating, best of `--repeat`; printed
   as MB/s and as the ratio ours / SDK.
2. Sizes: SmolLM2-135M (`builtin:smollm2-135m`) magnitude-pruned 50%
   unstructured and 2:4 in bfloat16 and float16, written dense and compressed:
   the pruned Linear weights and the whole checkpoint, compressed / dense.

    python benchmarks/storage.py                 # both parts, ~1 GB
    python benchmarks/storage.py --gb 0.2 --skip-sizes
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "storage"))

MB = 1_000_000
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gb", type=float, default=1.0, help="checkpoint size for the throughput part")
    p.add_argument("--shard-mb", type=int, default=256)
    p.add_argument("--part-mb", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="parts in flight (default: 2 per CPU, at most 8)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-sizes", action="store_true")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=Path("storage.json"))
    return p.parse_args(argv)


# -- throughput --------------------------------------------------------------------------------------

def make_checkpoint(folder: Path, gb: float, shard_mb: int) -> int:
    import torch

    from prune_job.checkpoint import CheckpointWriter

    writer = CheckpointWriter(folder, format="dense", max_shard_bytes=shard_mb * MB)
    g = torch.Generator().manual_seed(0)
    block = 64 * MB // 4
    for i in range(max(1, int(gb * 1000 / 64))):
        writer.add(f"tensor{i:04d}", torch.randn(block, generator=g))
    writer.add_file("config.json", b"{}")
    return writer.finish({}).bytes


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def throughput(a: argparse.Namespace, work: Path) -> dict:
    from minio import Minio

    from nanio_server import ACCESS_KEY, SECRET_KEY, NanioServer
    from prune_job import storage
    from prune_job.storage import checksums

    ckpt = work / "ckpt"
    size = make_checkpoint(ckpt, a.gb, a.shard_mb)
    files = sorted(p for p in ckpt.iterdir() if p.is_file())
    server = NanioServer(work / "nanio").start()
    try:
        os.environ.update(server.env())
        bucket = server.make_bucket("bench")
        sdk = Minio(f"127.0.0.1:{server.port}", ACCESS_KEY, SECRET_KEY, secure=False)
        best = {"ours_up": 1e9, "sdk_up": 1e9, "ours_down": 1e9, "sdk_down": 1e9, "ours_skip": 1e9}
        for r in range(a.repeat):
            store = storage.S3Store(part_size=a.part_mb * (1 << 20), workers=a.workers)
            prefix, down = f"r{r}", work / f"down{r}"

            def ours_up():
                checksums.forget()  # a new process has hashed nothing yet
                storage.upload_folder(ckpt, f"s3://{bucket}/{prefix}/ours/", store)

            def ours_skip():
                checksums.forget()
                storage.upload_folder(ckpt, f"s3://{bucket}/{prefix}/ours/", store)

            ups = {"sdk_up": lambda: [sdk.fput_object(bucket, f"{prefix}/sdk/{f.name}", str(f)) for f in files],
                   "ours_up": ours_up}
            downs = {"sdk_down": lambda: [sdk.fget_object(bucket, f"{prefix}/sdk/{f.name}", str(down / "sdk" / f.name))
                                          for f in files],
                     "ours_down": lambda: storage.fetch_model(f"s3://{bucket}/{prefix}/ours/", down / "ours", store)}
            for phase in (ups, downs):
                order = list(phase.items()) if r % 2 == 0 else list(phase.items())[::-1]  # alternate who goes first
                for name, fn in order:
                    os.sync()  # start each from clean page cache writeback
                    best[name] = min(best[name], timed(fn))
                if phase is ups:
                    best["ours_skip"] = min(best["ours_skip"], timed(ours_skip))
            shutil.rmtree(down)
            workers = store.workers
            store.close()
    finally:
        server.stop()
    mbps = {k: size / MB / v for k, v in best.items()}
    return {"bytes": size, "files": len(files), "seconds": best, "MBps": mbps,
            "upload_ratio": mbps["ours_up"] / mbps["sdk_up"], "download_ratio": mbps["ours_down"] / mbps["sdk_down"],
            "settings": {"part_mb": a.part_mb, "workers": workers, "shard_mb": a.shard_mb, "repeat": a.repeat}}


# -- sizes -------------------------------------------------------------------------------------------

def sizes(work: Path) -> list[dict]:
    import torch
    from safetensors import safe_open

    from prune_job.algorithms import magnitude_prune
    from prune_job.sources.builtin import builtin_model_dir
    from prune_job.checkpoint import CheckpointWriter
    from prune_job.spec import Pattern

    src = builtin_model_dir("smollm2-135m")
    shard = next(src.glob("*.safetensors"))
    rows = []
    for dtype in (torch.bfloat16, torch.float16):
        for label, pattern in (("50% unstructured", None), ("2:4", Pattern(2, 4))):
            tag = f"{label.replace(' ', '-').replace('%', '').replace(':', '-')}-{str(dtype).removeprefix('torch.')}"
            writers = {fmt: CheckpointWriter(work / f"{fmt}-{tag}", format=fmt) for fmt in ("dense", "compressed")}
            with safe_open(shard, framework="pt") as f:
                for key in f.keys():  # one tensor at a time, pruned once, written in both formats
                    t = f.get_tensor(key).to(dtype)
                    target = key.endswith(".weight") and key.split(".")[-2] in LINEAR
                    if target:
                        t = magnitude_prune(t, 0.5, pattern)
                    for w in writers.values():
                        w.add(key, t, pattern=pattern if target else None, pruned=target)
            summaries = {}
            for fmt, w in writers.items():
                for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
                    if (src / name).is_file():
                        w.add_file(name, src / name)
                summaries[fmt] = w.finish({"source": {"uri": "builtin:smollm2-135m", "dtype": str(dtype)}})
            dense, comp = summaries["dense"], summaries["compressed"]
            lin_dense, lin_comp = linear_bytes(work / f"compressed-{tag}")
            rows.append({
                "dtype": str(dtype).removeprefix("torch."), "pattern": label,
                "linear_dense_bytes": lin_dense, "linear_compressed_bytes": lin_comp,
                "linear_ratio": lin_comp / lin_dense,
                "checkpoint_dense_bytes": dense.bytes, "checkpoint_compressed_bytes": comp.bytes,
                "checkpoint_ratio": comp.bytes / dense.bytes,
                "shard_dense_bytes": dense.tensor_bytes, "shard_compressed_bytes": comp.tensor_bytes,
            })
            for w in writers.values():
                shutil.rmtree(w.directory)
    return rows


def linear_bytes(folder: Path) -> tuple[int, int]:
    """(dense, stored) bytes of the pruned tensors of a compressed checkpoint, from its index and headers."""
    import math

    from safetensors import safe_open

    index = json.loads((folder / "model.compressed.index.json").read_text())
    itemsize = {"F16": 2, "BF16": 2, "F32": 4, "U8": 1}
    dense = stored = 0
    for name, info in index["tensors"].items():
        if "parts" not in info:
            continue
        dense += math.prod(info["shape"]) * (4 if info["dtype"] == "float32" else 2)
        for part in info["parts"].values():
            with safe_open(folder / index["weight_map"][part], framework="pt") as f:
                s = f.get_slice(part)
                stored += math.prod(s.get_shape()) * itemsize[s.get_dtype()]
    return dense, stored


# -- report ------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    a = parse_args(argv)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="storage-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"loadavg": os.getloadavg(), "cpus": os.cpu_count()}
    try:
        if not a.skip_throughput:
            t = throughput(a, work)
            result["throughput"] = t
            print(f"\n{t['bytes'] / MB:.0f} MB in {t['files']} files, loopback nanio, {t['settings']['workers']} "
                  f"workers x {a.part_mb} MiB parts, load average {result['loadavg'][0]:.1f} on {result['cpus']} CPUs")
            print(f"{'':22}{'ours MB/s':>10}{'SDK MB/s':>10}{'ratio':>8}")
            print(f"{'upload':22}{t['MBps']['ours_up']:10.1f}{t['MBps']['sdk_up']:10.1f}{t['upload_ratio']:8.2f}")
            print(f"{'download (verified)':22}{t['MBps']['ours_down']:10.1f}{t['MBps']['sdk_down']:10.1f}"
                  f"{t['download_ratio']:8.2f}")
            print(f"{'re-upload (skipped)':22}{t['MBps']['ours_skip']:10.1f}   (hash + HEAD per file)")
        if not a.skip_sizes:
            rows = sizes(work)
            result["sizes"] = rows
            print("\nSmolLM2-135M, magnitude 50%: compressed / dense")
            print(f"{'dtype':10}{'pattern':18}{'Linear MB':>18}{'ratio':>7}{'checkpoint MB':>20}{'ratio':>7}")
            for r in rows:
                print(f"{r['dtype']:10}{r['pattern']:18}"
                      f"{r['linear_compressed_bytes'] / MB:8.1f} / {r['linear_dense_bytes'] / MB:7.1f}"
                      f"{r['linear_ratio']:7.3f}"
                      f"{r['checkpoint_compressed_bytes'] / MB:9.1f} / {r['checkpoint_dense_bytes'] / MB:8.1f}"
                      f"{r['checkpoint_ratio']:7.3f}")
    finally:
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    a.json.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nfigures: {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
