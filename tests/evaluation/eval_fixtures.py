"""Helpers for the evaluation tests: a pruned (2:4) copy of a model folder in
dense format, token-id data files, and a PruneJob whose evaluation reads them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from prune_job.spec import parse_prunejob


def prune_folder(dense_dir: Path, out_dir: Path, keep_every: int = 2) -> Path:
    """Copy `dense_dir`, zeroing 2 of every 4 inputs (2:4) in every block Linear weight."""
    shutil.copytree(dense_dir, out_dir)
    for path in out_dir.glob("*.safetensors"):
        state = load_file(path)
        for key, t in state.items():
            if key.endswith(".weight") and t.dim() == 2 and ".layers." in key:
                mask = torch.zeros_like(t, dtype=torch.bool)
                mask[:, ::4] = True
                mask[:, 1::4] = True
                state[key] = t * mask
        save_file(state, path, metadata={"format": "pt"})
    return out_dir


def ids_file(path: Path, rows: int, length: int, vocab: int = 256, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, length), generator=g)
    path.write_text("".join(json.dumps({"input_ids": r}) + "\n" for r in ids.tolist()))
    return path


def make_job(data: Path, out: Path, pattern: str = "2:4", batch_sizes=(1, 2), dtype: str = "float32", **evaluation):
    return parse_prunejob({"spec": {
        "model": {"uri": "/unused", "dtype": dtype},
        "pruning": {"method": "magnitude", "sparsity": 0.5, "pattern": pattern},
        "output": {"uri": str(out)},
        "evaluation": {
            "perplexity": {"uri": str(data), "samples": 4, "sequenceLength": 32},
            "generation": {"batchSizes": list(batch_sizes), "promptTokens": 8, "newTokens": 4, "repeats": 2},
            "gpuHourlyCost": 3.5,
            **evaluation,
        },
    }})
