"""The compressed encodings of one tensor (docs/format.md is the reference).

- `dense`: the tensor as it is, under its own name.
- `bitmask` (unstructured): `<name>.bitmask` U8 [ceil(numel/8)], bit i (LSB first:
  bit i % 8 of byte i // 8) set where element i of the row-major tensor is
  non-zero; `<name>.values` [nnz] in the tensor's dtype, row-major.
- `nm` (N:M along the last dimension): `<name>.values` [rows, cols/M*N] the kept
  values of each group of M in order; `<name>.nm_index` U8, a little-endian bit
  stream of one code per group, `index_bits` wide: for M <= 16 the rank of the
  kept position set among the combinations of N of M in lexicographic order
  (2:4: 6 sets, 3 bits), else the N positions, ceil(log2 M) bits each.

"Non-zero" is decided on the bit pattern, so -0.0 is kept and the round trip is
bit-exact. Encoding works in chunks of rows (a multiple of 8, so the bit
streams of chunks concatenate on byte boundaries).
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from prune_job.checkpoint.dtypes import FLOAT_NAMES
from prune_job.checkpoint.headers import check_codes, check_mask_count
from prune_job.spec import Pattern

ROWS_PER_CHUNK = 1024  # a multiple of 8
GROUPS_PER_CHUNK = 1 << 20  # a multiple of 8
MAX_COMBINATION_M = 16
BITS_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass
class Encoded:
    parts: dict[str, torch.Tensor]  # stored name -> tensor
    info: dict[str, Any]  # goes to the index ("tensors")


def encode(name: str, tensor: torch.Tensor, pattern: Optional[Pattern], pruned: bool) -> Encoded:
    """The smallest faithful encoding of a tensor: dense unless pruned and smaller sparse."""
    dense = Encoded({name: tensor}, {"encoding": "dense"})
    if not pruned or tensor.dtype not in FLOAT_NAMES or tensor.numel() == 0:
        return dense
    t = tensor.detach().to("cpu").contiguous()
    enc = None
    if pattern is not None and t.dim() >= 1 and t.shape[-1] % pattern.m == 0:
        enc = _encode_nm(name, t, pattern)
    if enc is None:
        enc = _encode_bitmask(name, t)
    stored = sum(p.numel() * p.element_size() for p in enc.parts.values())
    if stored >= t.numel() * t.element_size():
        dense.info["pruned"] = True
        return dense
    return enc


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1]) if t.dim() >= 2 else t.reshape(1, -1)


def _nonzero(t: torch.Tensor) -> torch.Tensor:
    return t.view(BITS_VIEW[t.element_size()]) != 0


def _pack_bits(bits: torch.Tensor) -> np.ndarray:
    return np.packbits(bits.reshape(-1).numpy().astype(np.uint8, copy=False), bitorder="little")


def _info(t: torch.Tensor, encoding: str, **extra: Any) -> dict[str, Any]:
    return {"encoding": encoding, "dtype": FLOAT_NAMES[t.dtype], "shape": list(t.shape), **extra}


# -- unstructured ------------------------------------------------------------------------------

def _encode_bitmask(name: str, t: torch.Tensor) -> Encoded:
    rows = _rows(t)
    masks, values = [], []
    for start in range(0, rows.shape[0], ROWS_PER_CHUNK):
        chunk = rows[start:start + ROWS_PER_CHUNK]
        keep = _nonzero(chunk)
        masks.append(_pack_bits(keep))
        values.append(chunk[keep])
    mask = torch.from_numpy(np.concatenate(masks))
    parts = {f"{name}.bitmask": mask, f"{name}.values": torch.cat(values)}
    return Encoded(parts, _info(t, "bitmask", parts={"bitmask": f"{name}.bitmask", "values": f"{name}.values"}))


def decode_bitmask(info: dict[str, Any], bitmask: torch.Tensor, values: torch.Tensor,
                   where: str = "tensor") -> torch.Tensor:
    shape = info["shape"]
    numel = math.prod(shape)
    check_mask_count(where, bitmask, values, numel)
    keep = np.unpackbits(bitmask.numpy(), count=numel, bitorder="little").view(np.bool_)
    out = torch.zeros(numel, dtype=values.dtype)
    out[torch.from_numpy(keep)] = values
    return out.reshape(shape)


# -- N:M ---------------------------------------------------------------------------------------

def index_scheme(pattern: Pattern) -> tuple[str, int]:
    """("combination", bits per group) for M <= 16, else ("position", bits per kept value)."""
    if pattern.m <= MAX_COMBINATION_M:
        return "combination", max(1, math.ceil(math.log2(math.comb(pattern.m, pattern.n))))
    return "position", max(1, math.ceil(math.log2(pattern.m)))


@functools.lru_cache(maxsize=16)
def _combinations(n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rank of each M-bit kept-set as an int, -1 if not a set of N; positions of each rank [C, N])."""
    combos = list(itertools.combinations(range(m), n))
    rank = torch.full((1 << m,), -1, dtype=torch.int64)
    for r, c in enumerate(combos):
        rank[sum(1 << p for p in c)] = r
    return rank, torch.tensor(combos, dtype=torch.int64)


def _encode_nm(name: str, t: torch.Tensor, pattern: Pattern) -> Optional[Encoded]:
    n, m = pattern
    rows = _rows(t)
    scheme, bits = index_scheme(pattern)
    order = (m - 1 - torch.arange(m))  # prefer earlier positions among zeros
    codes, values = [], []
    for start in range(0, rows.shape[0], ROWS_PER_CHUNK):
        groups = rows[start:start + ROWS_PER_CHUNK].reshape(-1, m)
        keep = _nonzero(groups)
        if bool((keep.sum(dim=1) > n).any()):
            return None  # more than N non-zeros in a group: not N:M, use the bitmask
        pos = (keep.to(torch.int64) * m + order).topk(n, dim=1).indices.sort(dim=1).values
        values.append(groups.gather(1, pos).reshape(-1))
        if scheme == "combination":
            set_bits = (torch.ones_like(pos) << pos).sum(dim=1)
            code = _combinations(n, m)[0][set_bits]
        else:
            code = pos.reshape(-1)
        shifts = torch.arange(bits, dtype=torch.int64)
        codes.append(_pack_bits(((code[:, None] >> shifts) & 1).to(torch.uint8)))
    kept = rows.shape[1] // m * n
    vals = torch.cat(values).reshape(*t.shape[:-1], kept) if t.dim() >= 2 else torch.cat(values)
    parts = {f"{name}.values": vals, f"{name}.nm_index": torch.from_numpy(np.concatenate(codes))}
    info = _info(t, "nm", pattern=f"{n}:{m}", index=scheme, index_bits=bits,
                 parts={"values": f"{name}.values", "nm_index": f"{name}.nm_index"})
    return Encoded(parts, info)


def decode_nm(info: dict[str, Any], values: torch.Tensor, nm_index: torch.Tensor, where: str = "tensor") -> torch.Tensor:
    n, m = (int(x) for x in info["pattern"].split(":"))
    shape, bits = info["shape"], int(info["index_bits"])
    per_group = 1 if info["index"] == "combination" else n  # codes per group
    groups = math.prod(shape) // m
    out = torch.zeros(groups, m, dtype=values.dtype)
    kept = values.reshape(groups, n)
    stream = nm_index.numpy()
    for g0 in range(0, groups, GROUPS_PER_CHUNK):  # a multiple of 8: every chunk starts on a byte
        g1 = min(groups, g0 + GROUPS_PER_CHUNK)
        count = (g1 - g0) * per_group
        first = g0 * per_group * bits // 8
        code = _read_codes(stream[first:first + (count * bits + 7) // 8], count, bits)
        check_codes(where, code, n, m, per_group == 1)
        pos = _combinations(n, m)[1][code] if per_group == 1 else code.reshape(-1, n)
        out[g0:g1].scatter_(1, pos, kept[g0:g1])
    return out.reshape(shape)


def _read_codes(stream: np.ndarray, count: int, bits: int) -> torch.Tensor:
    """`count` unsigned codes of `bits` bits each from a little-endian, LSB-first bit stream."""
    unpacked = np.unpackbits(stream, count=count * bits, bitorder="little").reshape(count, bits)
    packed = np.packbits(unpacked, axis=1, bitorder="little")  # [count, ceil(bits/8)], little-endian bytes
    code = torch.zeros(count, dtype=torch.int64)
    for j in range(packed.shape[1]):
        code |= torch.from_numpy(packed[:, j].astype(np.int64)) << (8 * j)
    return code


def decode(info: dict[str, Any], parts: dict[str, torch.Tensor], where: str = "tensor") -> torch.Tensor:
    """Rebuild a tensor from its stored parts (keyed by role: values, bitmask, nm_index); parts that
    disagree with each other (set bits against values, codes out of range) raise CheckpointError."""
    kind = info["encoding"]
    if kind == "bitmask":
        return decode_bitmask(info, parts["bitmask"], parts["values"], where)
    if kind == "nm":
        return decode_nm(info, parts["values"], parts["nm_index"], where)
    raise ValueError(f"unknown tensor encoding {kind!r}")
