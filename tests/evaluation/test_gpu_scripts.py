"""The GPU benchmark scripts stay runnable: their CPU dry run and helpers work
here, so that benchmarks/gpu_check.sh does not first break on a GPU machine."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))

from linear_24 import two_four  # noqa: E402


def test_two_four_mask_keeps_the_two_largest_of_every_four():
    w = torch.tensor([[1.0, -4.0, 3.0, 2.0, 0.5, 0.1, -0.2, 9.0]])
    assert two_four(w).tolist() == [[0.0, -4.0, 3.0, 0.0, 0.5, 0.0, 0.0, 9.0]]


def test_sparsegpt_block_benchmark_cpu_dry_run(tmp_path):
    out = tmp_path / "sg.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu/sparsegpt_block.py"), "--cpu-dry-run",
                           "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert set(result["2:4"]["prune_s"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"}
    assert result["unstructured_50"]["block_total_s"] > 0


def test_gpu_check_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks/gpu_check.sh")]).returncode == 0
