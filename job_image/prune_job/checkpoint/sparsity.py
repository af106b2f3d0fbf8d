"""Sparsity counted from the weights as written, not from the request: the
checkpoint writer counts each pruned tensor as it encodes it (`count_layer`),
and a finished checkpoint can be counted again tensor by tensor (`measure_layers`).

Tensors are visited one at a time (a safetensors folder is read tensor by
tensor), so counting a 70B checkpoint needs one tensor of memory.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Collection, Iterable, Iterator, Optional

import torch
from safetensors import safe_open

from prune_job.spec import LayerSparsity, Pattern

BLOCK_INDEX = re.compile(r"\.(\d+)\.")
Tensors = Iterable[tuple[str, torch.Tensor]]


def is_block_linear(name: str, tensor: torch.Tensor) -> bool:
    """Default choice of layers: 2-D `.weight`s inside numbered decoder blocks."""
    return name.endswith(".weight") and tensor.dim() == 2 and BLOCK_INDEX.search(name) is not None


def block_of(name: str) -> Optional[int]:
    match = BLOCK_INDEX.search(name)
    return int(match.group(1)) if match else None


def layer_kind(name: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` → `self_attn.q_proj`."""
    match = BLOCK_INDEX.search(name)
    tail = name[match.end():] if match else name
    return tail.removesuffix(".weight")


def satisfies_nm(weight: torch.Tensor, pattern: Pattern) -> bool:
    """At most n non-zeros in every m consecutive inputs of each row ([out, in] layout)."""
    rows, cols = weight.shape
    if cols % pattern.m:
        return False
    groups = (weight != 0).reshape(rows, cols // pattern.m, pattern.m)
    return bool((groups.sum(dim=-1) <= pattern.n).all())


def count_layer(key: str, weight: torch.Tensor, pattern: Optional[Pattern] = None,
                transposed: bool = False) -> LayerSparsity:
    """Zeros of one written weight; `transposed` for [in, out] storage (transformers' Conv1D)."""
    numel = weight.numel()
    zeros = numel - int(torch.count_nonzero(weight))
    rows_out = weight.t() if transposed else weight
    return LayerSparsity(
        name=key.removesuffix(".weight"),
        block=block_of(key),
        shape=list(rows_out.shape),
        zeros=zeros,
        numel=numel,
        sparsity=zeros / numel if numel else 0.0,
        pattern_ok=None if pattern is None else satisfies_nm(rows_out, pattern),
    )


def measure_layers(
    tensors: Tensors,
    pattern: Optional[Pattern] = None,
    select: Callable[[str, torch.Tensor], bool] = is_block_linear,
    transposed: Collection[str] = (),
) -> list[LayerSparsity]:
    """One LayerSparsity per selected tensor; `transposed` holds module names stored [in, out]."""
    return [count_layer(key, t, pattern, key.removesuffix(".weight") in transposed)
            for key, t in tensors if select(key, t)]


def overall_sparsity(layers: list[LayerSparsity]) -> Optional[float]:
    """Zeros over elements of all counted layers (weighted by size, not a mean of ratios)."""
    total = sum(layer.numel for layer in layers)
    return sum(layer.zeros for layer in layers) / total if total else None


def iter_safetensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a dense-format folder, one at a time, in key order."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no *.safetensors files")
    for path in files:
        with safe_open(path, framework="pt") as f:
            for key in sorted(f.keys()):
                yield key, f.get_tensor(key)
