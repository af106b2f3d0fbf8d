"""The one table of tensor dtypes: safetensors header codes, the names the
compressed encoding writes, and the names a PruneJob's `model.dtype` takes."""
from __future__ import annotations

import torch

SAFETENSORS_CODES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
CODE_DTYPES = {code: dtype for dtype, code in SAFETENSORS_CODES.items()}
# Floating-point dtypes by name ("bfloat16"), as the compressed encoding records them.
FLOAT_NAMES = {dtype: str(dtype).removeprefix("torch.") for dtype in SAFETENSORS_CODES if dtype.is_floating_point}
NAME_DTYPES = {name: dtype for dtype, name in FLOAT_NAMES.items()}
# What a model is computed in (spec.model.dtype); a model's weights are loaded in one of these.
COMPUTE_DTYPES = {name: NAME_DTYPES[name] for name in ("float32", "bfloat16", "float16")}
WIDE_FLOATS = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
