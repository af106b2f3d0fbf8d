"""Semi-structured (2:4) sparse kernels for the generation benchmark (CUDA only).

A 2:4 model is run twice on CUDA: once with its zeros multiplied by the
ordinary dense kernels, once with its Linear weights turned into PyTorch
semi-structured sparse tensors, so that users see what the kernels buy.
Computing the weights is elsewhere; this module only converts modules for
runtime (gpt-fast's separation).
"""
from __future__ import annotations

from typing import Collection, Optional

import torch
from torch import nn

from prune_job.checkpoint.sparsity import is_block_linear, satisfies_nm
from prune_job.spec import Pattern

TWO_FOUR = Pattern(2, 4)
KERNEL_DTYPES = (torch.float16, torch.bfloat16)
CPU_NOTE = ("CPU run: no sparse kernel was used; the sparse model multiplies its zeros with the same dense "
            "kernels as the dense model, so a speed difference here is not a sparsity speed-up.")


def _backend_class() -> type:
    cls = torch.sparse.SparseSemiStructuredTensor
    return torch.sparse.SparseSemiStructuredTensorCUTLASS if cls._FORCE_CUTLASS \
        else torch.sparse.SparseSemiStructuredTensorCUSPARSELT


def backend_name() -> str:
    return "CUTLASS" if _backend_class() is torch.sparse.SparseSemiStructuredTensorCUTLASS else "cuSPARSELt"


def kernel_unavailable(device: torch.device, dtype: torch.dtype, pattern: Optional[Pattern]) -> Optional[str]:
    """Why the semi-structured run cannot happen here, or None when it can."""
    if torch.device(device).type != "cuda":
        return CPU_NOTE
    if pattern != TWO_FOUR:
        return f"semi-structured kernels exist for 2:4 only; this model is {pattern or 'unstructured'}"
    if dtype not in KERNEL_DTYPES:
        return f"semi-structured kernels need float16 or bfloat16; this model runs in {str(dtype).removeprefix('torch.')}"
    return None


def convertible(name: str, weight: torch.Tensor) -> bool:
    """A block Linear whose weight is 2:4 and whose shape the backend accepts."""
    if not is_block_linear(name, weight) or weight.dtype not in KERNEL_DTYPES:
        return False
    limits = _backend_class()._DTYPE_SHAPE_CONSTRAINTS[weight.dtype]
    rows, cols = weight.shape
    shape_ok = rows % limits.sparse_min_rows == 0 and cols % limits.sparse_min_cols == 0
    return shape_ok and satisfies_nm(weight, TWO_FOUR)


@torch.no_grad()
def to_semi_structured(model: nn.Module, stored_2_4: Optional[Collection[str]] = None) -> tuple[list[str], list[str]]:
    """Swap 2:4 Linear weights for semi-structured tensors in place; (converted, left dense).
    `stored_2_4`: the weight names a checkpoint stores as 2:4 (only those are converted)."""
    from torch.sparse import to_sparse_semi_structured

    converted, left = [], []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        key = f"{name}.weight"
        if (stored_2_4 is None or key in stored_2_4) and convertible(key, module.weight):
            module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.data), requires_grad=False)
            converted.append(name)
        elif is_block_linear(key, module.weight):
            left.append(name)
    return converted, left
