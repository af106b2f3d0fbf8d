"""Shared helpers: write a saved tiny model through the CheckpointWriter, pruned or not."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file

from prune_job.checkpoint import CheckpointWriter
from prune_job.spec import Pattern

LINEAR_SUFFIXES = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                   "gate_proj.weight", "up_proj.weight", "down_proj.weight")


def model_state(model_dir: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        state.update(load_file(f))
    return state


def magnitude(w: torch.Tensor, pattern: Optional[Pattern], sparsity: float = 0.5) -> torch.Tensor:
    """A small independent pruner for tests: zero the smallest |w| (per row, or per N:M group)."""
    w = w.clone()
    if pattern is None:
        k = int(w.shape[1] * sparsity)
        idx = w.abs().float().argsort(dim=1)[:, :k]
        return w.scatter(1, idx, torch.zeros_like(idx, dtype=w.dtype))
    groups = w.reshape(-1, pattern.m)
    idx = groups.abs().float().argsort(dim=1)[:, : pattern.m - pattern.n]
    return groups.scatter(1, idx, torch.zeros_like(idx, dtype=w.dtype)).reshape(w.shape)


def write_model(model_dir: Path, out: Path, fmt: str, pattern: Optional[Pattern] = None, prune: bool = False,
                dtype: Optional[torch.dtype] = None, max_shard_bytes: int = 10**9, on_file_written=None,
                state: Optional[dict[str, torch.Tensor]] = None):
    """Write every tensor of `model_dir` (pruned Linear weights if `prune`); returns (summary, written state)."""
    state = dict(state or model_state(model_dir))
    writer = CheckpointWriter(out, format=fmt, max_shard_bytes=max_shard_bytes, on_file_written=on_file_written)
    written = {}
    for name, t in state.items():
        t = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        is_target = prune and name.endswith(LINEAR_SUFFIXES)
        if is_target:
            t = magnitude(t, pattern)
        writer.add(name, t, pattern=pattern, pruned=is_target)
        written[name] = t
    writer.add_file("config.json", Path(model_dir) / "config.json")
    if (Path(model_dir) / "generation_config.json").is_file():
        writer.add_file("generation_config.json", Path(model_dir) / "generation_config.json")
    summary = writer.finish({"source": {"uri": str(model_dir)}})
    return summary, written
