"""What untrusted files say about sizes and shapes, checked before anything is allocated.

- `read_header`: a safetensors file's header (of a source model or of our own checkpoint):
  the header length against the file size, every tensor's dtype, shape and `data_offsets`
  (ordered, inside the data section, not overlapping, covering it without holes) and byte count
  (shape x dtype size). The largest allocation a caller then makes is one tensor's bytes,
  which the file's size bounds.
- `read_index`, `check_infos`, `check_parts`: a compressed checkpoint's index (every shard a
  file of the manifest, every tensor's encoding, dtype, shape, N:M pattern and index width),
  and, before decoding, the stored parts against the declared shape (bitmask length, value
  count, N:M code stream length and code range).

Every error is a CheckpointError naming the file and the tensor.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from prune_job.checkpoint.dtypes import NAME_DTYPES
from prune_job.checkpoint.manifest import CheckpointError
from prune_job.sources.names import check_name

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
MAX_DIMS = 8
MAX_M = 1024  # the widest N:M group the reader decodes
ENCODINGS = {"dense": (), "bitmask": ("bitmask", "values"), "nm": ("values", "nm_index")}


@dataclass(frozen=True)
class StoredTensor:
    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def read_header(path: Path, error: type[Exception] = CheckpointError) -> dict[str, StoredTensor]:
    """{tensor name: where it lies} of one safetensors file, every entry checked against the file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise error(f"{path}: {size} bytes, too short for a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8 or length > MAX_HEADER_BYTES:
            raise error(f"{path}: header length {length} does not fit in a file of {size} bytes")
        blob = f.read(length)
    try:
        header = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise error(f"{path}: the safetensors header is not JSON ({type(err).__name__})") from None
    if not isinstance(header, dict):
        raise error(f"{path}: the safetensors header is a {type(header).__name__}, not a mapping")
    base, data = 8 + length, size - 8 - length
    tensors = {name: _entry(path, name, info, base, data, error) for name, info in header.items()
               if name != "__metadata__"}
    _check_layout(path, tensors, base, data, error)
    return tensors


def _entry(path: Path, name: str, info: Any, base: int, data: int, error: type[Exception]) -> StoredTensor:
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise error(f"{where}: expected dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise error(f"{where}: unsupported dtype {dtype!r}")
    if not _ints(shape) or len(shape) > MAX_DIMS:
        raise error(f"{where}: shape {shape!r} is not a list of at most {MAX_DIMS} non-negative integers")
    if not _ints(offsets) or len(offsets) != 2 or not offsets[0] <= offsets[1] <= data:
        raise error(f"{where}: data_offsets {offsets!r} are not an ordered pair inside the {data}-byte data section")
    nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
    if nbytes != offsets[1] - offsets[0]:
        raise error(f"{where}: shape {shape} of {dtype} needs {nbytes} bytes, data_offsets give "
                    f"{offsets[1] - offsets[0]}")
    return StoredTensor(path, dtype, tuple(shape), base + offsets[0], base + offsets[1])


def _ints(value: Any) -> bool:
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)


def _check_layout(path: Path, tensors: dict[str, StoredTensor], base: int, data: int,
                  error: type[Exception]) -> None:
    """Tensors tile the data section: no overlap, no hole, nothing after the last one."""
    end = base
    for name, t in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if t.start != end:
            what = "overlaps the previous tensor" if t.start < end else "leaves a hole before it"
            raise error(f"{path}: tensor {name!r} {what} (data_offsets start {t.start - base}, expected {end - base})")
        end = t.end
    if end != base + data:
        raise error(f"{path}: {base + data - end} bytes after the last tensor are not described by the header")


# -- a compressed checkpoint's index ------------------------------------------------------------

def read_index(path: Path, listed: Mapping[str, Any]) -> dict[str, Any]:
    """model.compressed.index.json: `weight_map` {stored name: shard} whose shards are all files
    of the manifest (`listed`), and `tensors` {name: info}."""
    try:
        doc = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: not JSON ({type(err).__name__})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: a {type(doc).__name__}, not an index mapping")
    for key in ("weight_map", "tensors"):
        if not isinstance(doc.get(key), dict):
            raise CheckpointError(f"{path}: no {key!r} mapping")
    for stored, shard in doc["weight_map"].items():
        check_name(shard, f"{path}: tensor {stored!r} is in shard", CheckpointError)
        if shard not in listed:
            raise CheckpointError(f"{path}: tensor {stored!r} is in {shard!r}, which manifest.json does not list")
    return doc


def check_infos(path: Path, infos: dict[str, Any], weight_map: Mapping[str, str]) -> None:
    """Every tensor's encoding, dtype, shape, pattern and parts make sense together."""
    for name, info in infos.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict) or not isinstance(info.get("encoding"), str) or info["encoding"] not in ENCODINGS:
            raise CheckpointError(f"{where}: unknown encoding {info.get('encoding') if isinstance(info, dict) else info!r}")
        roles = ENCODINGS[info["encoding"]]
        if not roles:
            if "parts" in info:
                raise CheckpointError(f"{where}: a dense tensor has no parts")
            if name not in weight_map:
                raise CheckpointError(f"{where}: not in the weight_map")
            continue
        parts = info.get("parts")
        if not isinstance(parts, dict) or set(parts) != set(roles):
            raise CheckpointError(f"{where}: parts must be {', '.join(roles)}")
        for stored in parts.values():
            if not isinstance(stored, str) or stored not in weight_map:
                raise CheckpointError(f"{where}: part {stored!r} is not in the weight_map")
        if len({weight_map[s] for s in parts.values()}) != 1:
            raise CheckpointError(f"{where}: its parts lie in different shards")
        if not isinstance(info.get("dtype"), str) or info["dtype"] not in NAME_DTYPES:
            raise CheckpointError(f"{where}: dtype {info.get('dtype')!r} is not a floating-point dtype")
        if not _ints(info.get("shape")) or len(info["shape"]) > MAX_DIMS:
            raise CheckpointError(f"{where}: shape {info.get('shape')!r} is not a list of non-negative integers")
        if info["encoding"] == "nm":
            _check_nm_info(where, info)


def nm_of(info: dict[str, Any]) -> tuple[int, int]:
    text = info.get("pattern")
    try:
        n, m = (int(x) for x in str(text).split(":"))
    except ValueError:
        raise CheckpointError(f"pattern {text!r} is not N:M") from None
    return n, m


def _check_nm_info(where: str, info: dict[str, Any]) -> None:
    from prune_job.checkpoint.encoding import index_scheme
    from prune_job.spec import Pattern

    try:
        n, m = nm_of(info)
    except CheckpointError as err:
        raise CheckpointError(f"{where}: {err}") from None
    if not 0 < n < m <= MAX_M:
        raise CheckpointError(f"{where}: pattern {n}:{m} needs 0 < N < M <= {MAX_M}")
    scheme, bits = index_scheme(Pattern(n, m))
    if info.get("index") != scheme or info.get("index_bits") != bits:
        raise CheckpointError(f"{where}: a {n}:{m} index is {scheme} with {bits} bits, not "
                              f"{info.get('index')!r} with {info.get('index_bits')!r}")
    shape = info["shape"]
    if not shape or shape[-1] % m:
        raise CheckpointError(f"{where}: shape {shape} has no last dimension divisible by M={m}")


# -- the stored parts, before decoding -------------------------------------------------------------

def check_parts(where: str, info: dict[str, Any], parts: Mapping[str, StoredTensor]) -> None:
    """Declared shape against the stored parts' dtypes and sizes (from the header, nothing read yet)."""
    numel = math.prod(info["shape"])
    values = parts["values"]
    if values.dtype != _code(info["dtype"]):
        raise CheckpointError(f"{where}: values stored as {values.dtype}, the index says {info['dtype']}")
    if info["encoding"] == "bitmask":
        mask = parts["bitmask"]
        if mask.dtype != "U8" or math.prod(mask.shape) != (numel + 7) // 8:
            raise CheckpointError(f"{where}: bitmask of {math.prod(mask.shape)} {mask.dtype} for {numel} elements "
                                  f"(needs {(numel + 7) // 8} U8)")
        if math.prod(values.shape) > numel:
            raise CheckpointError(f"{where}: {math.prod(values.shape)} values for {numel} elements")
        return
    n, m = nm_of(info)
    groups = numel // m
    if math.prod(values.shape) != groups * n:
        raise CheckpointError(f"{where}: {math.prod(values.shape)} values, a {n}:{m} tensor of {numel} "
                              f"elements keeps {groups * n}")
    per_group = 1 if info["index"] == "combination" else n
    need = (groups * per_group * info["index_bits"] + 7) // 8
    index = parts["nm_index"]
    if index.dtype != "U8" or math.prod(index.shape) != need:
        raise CheckpointError(f"{where}: nm_index of {math.prod(index.shape)} {index.dtype}, needs {need} U8")


def check_mask_count(where: str, bitmask: torch.Tensor, values: torch.Tensor, numel: int) -> None:
    """The bitmask's set bits (within the tensor) equal the number of stored values."""
    bits = np.unpackbits(bitmask.numpy(), count=numel, bitorder="little")
    if int(bits.sum()) != values.numel():
        raise CheckpointError(f"{where}: the bitmask marks {int(bits.sum())} non-zeros, {values.numel()} values stored")


def check_codes(where: str, code: torch.Tensor, n: int, m: int, combination: bool) -> None:
    """N:M codes in range: a combination rank below C(M, N), or N increasing positions below M."""
    if combination:
        if code.numel() and int(code.max()) >= math.comb(m, n):
            raise CheckpointError(f"{where}: N:M code {int(code.max())} out of range (C({m},{n}) = {math.comb(m, n)})")
        return
    pos = code.reshape(-1, n)
    if pos.numel() and (int(pos.max()) >= m or bool((pos[:, 1:] <= pos[:, :-1]).any())):
        raise CheckpointError(f"{where}: N:M positions are not {n} increasing positions below {m}")


def _code(name: str) -> Optional[str]:
    from prune_job.checkpoint.dtypes import SAFETENSORS_CODES

    return SAFETENSORS_CODES.get(NAME_DTYPES.get(name))


def read_tensor(t: StoredTensor, name: str, error: type[Exception] = CheckpointError) -> torch.Tensor:
    """One tensor's bytes, read with a positioned read into fresh memory (no memory map: mapped pages
    would count as resident for as long as any tensor views them). The header was checked, so the
    allocation is at most the file's size."""
    from prune_job.checkpoint.dtypes import CODE_DTYPES

    if t.dtype not in CODE_DTYPES:
        raise error(f"{t.path.name}: tensor {name} has unsupported dtype {t.dtype}")
    buffer = bytearray(t.end - t.start)
    with open(t.path, "rb", buffering=0) as f:
        f.seek(t.start)
        if f.readinto(buffer) != len(buffer):
            raise error(f"{t.path.name}: truncated while reading {name}")
    dtype = CODE_DTYPES[t.dtype]
    flat = torch.frombuffer(buffer, dtype=dtype) if buffer else torch.empty(0, dtype=dtype)
    return flat.reshape(t.shape)
