"""Running `python -m prune_job run` as a separate process (so that it can be killed), and comparing outputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import yaml

ROOT = Path(__file__).resolve().parents[2]
# files that carry times or the run's own history; everything else must be byte-identical
VARYING = {"journal.json", "manifest.json", "results.json", "report.md", "sparsity_by_block.png",
           "dense_vs_sparse.png"}


def write_job(path: Path, model: Path, out: str, calib: Path, **overrides) -> Path:
    spec = {"model": {"uri": str(model)},
            "pruning": {"method": "sparsegpt", "sparsity": 0.5, "blockSize": 16},
            "calibration": {"uri": str(calib), "samples": 8, "sequenceLength": 16},
            "output": {"uri": out, "format": "compressed"},
            "evaluation": {"enabled": False}}
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value}
    path.write_text(yaml.safe_dump({"apiVersion": "pruning.dev/v1alpha1", "kind": "PruneJob",
                                    "metadata": {"name": "resume"}, "spec": spec}))
    return path


def calibration_ids(path: Path, rows: int = 8, offset: int = 0) -> Path:
    path.write_text("\n".join(json.dumps({"input_ids": [(7 * i + j + offset) % 200 for j in range(16)]})
                              for i in range(rows)))
    return path


def env(fault: Optional[str] = None, extra: Optional[dict] = None) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT / "job_image"), str(ROOT / "operator"), e.get("PYTHONPATH", "")])
    e.setdefault("OMP_NUM_THREADS", "1")
    e.pop("PRUNE_JOB_FAULT", None)
    if fault:
        e["PRUNE_JOB_FAULT"] = fault
    e.update(extra or {})
    return e


def run(spec: Path, workdir: Path, fault: Optional[str] = None, extra_env: Optional[dict] = None,
        timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prune_job", "run", str(spec), "--no-progress",
                           "--workdir", str(workdir)], env=env(fault, extra_env), capture_output=True, text=True,
                          timeout=timeout)


def start(spec: Path, workdir: Path, fault: Optional[str] = None, extra_env: Optional[dict] = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "prune_job", "run", str(spec), "--no-progress",
                             "--workdir", str(workdir)], env=env(fault, extra_env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def assert_same_checkpoint(a: Path, b: Path) -> None:
    """Every shard and index byte-identical; the manifest equal but for its time; the same pruned layers."""
    fa, fb = files_of(a), files_of(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        if name not in VARYING:
            assert fa[name] == fb[name], name
    ma, mb = json.loads(fa["manifest.json"]), json.loads(fb["manifest.json"])
    ma.pop("createdAt"), mb.pop("createdAt")
    assert ma == mb
    ra, rb = json.loads(fa["results.json"]), json.loads(fb["results.json"])
    assert ra["layers"] == rb["layers"] and ra["sparsity"] == rb["sparsity"]
