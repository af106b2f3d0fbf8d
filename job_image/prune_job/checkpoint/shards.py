"""Safetensors shards written as a stream: each tensor's bytes go to a
temporary data file at once (host memory holds one tensor, never a shard);
closing the shard writes the header and then the data, ordered as the
safetensors library orders it (larger element sizes first, then by name) so
that every tensor starts aligned to its element size.

File layout (https://huggingface.co/docs/safetensors): 8-byte little-endian
header length N, N bytes of JSON header padded with spaces to a multiple of 8,
then the tensors' bytes; `data_offsets` are relative to the end of the header.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from prune_job.checkpoint.dtypes import SAFETENSORS_CODES

COPY_CHUNK = 64 << 20


@dataclass
class _Entry:
    name: str
    dtype: str
    shape: list[int]
    itemsize: int
    start: int  # offset in the temporary data file
    nbytes: int


@dataclass
class ShardFile:
    """One shard being written: tensors appended to `<path>.data`, header written at close."""

    path: Path
    entries: list[_Entry] = field(default_factory=list)
    nbytes: int = 0
    _data: Optional[object] = None

    def __post_init__(self) -> None:
        self._data = open(self.data_path, "wb")

    @property
    def data_path(self) -> Path:
        return self.path.with_name(self.path.name + ".data")

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if tensor.dtype not in SAFETENSORS_CODES:
            raise TypeError(f"{name}: dtype {tensor.dtype} cannot be stored in safetensors")
        raw = tensor_bytes(tensor)
        self.entries.append(_Entry(name, SAFETENSORS_CODES[tensor.dtype], list(tensor.shape),
                                   tensor.element_size(), self.nbytes, len(raw)))
        self._data.write(raw)
        self.nbytes += len(raw)

    def close(self, metadata: Optional[dict[str, str]] = None) -> Path:
        """Write header + data to `path`, remove the temporary data file; returns `path`."""
        self._data.close()
        order = sorted(self.entries, key=lambda e: (-e.itemsize, e.name))
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = metadata
        offset = 0
        for e in order:
            header[e.name] = {"dtype": e.dtype, "shape": e.shape, "data_offsets": [offset, offset + e.nbytes]}
            offset += e.nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb", buffering=0) as out, open(self.data_path, "rb", buffering=0) as data:
            _write_all(out, struct.pack("<Q", len(blob)) + blob)
            for e in order:
                _copy_range(data, out, e.start, e.nbytes)
        os.replace(tmp, self.path)
        self.data_path.unlink()
        return self.path

    def abort(self) -> None:
        self._data.close()
        self.data_path.unlink(missing_ok=True)


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes in row-major order (little-endian, as stored in memory on every supported host)."""
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    t = t.contiguous().reshape(-1)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def _copy_range(src, dst, start: int, length: int) -> None:
    """Append `length` bytes of `src` from `start` to `dst` (both unbuffered; in the kernel where possible)."""
    done = 0
    try:
        while done < length:
            n = os.copy_file_range(src.fileno(), dst.fileno(), length - done, start + done)
            if n == 0:
                break
            done += n
    except OSError:  # e.g. a file system without copy_file_range: fall back to plain reads
        pass
    src.seek(start + done)
    while done < length:
        chunk = src.read(min(COPY_CHUNK, length - done))
        if not chunk:
            raise OSError(f"{src.name}: unexpected end of data")
        _write_all(dst, chunk)
        done += len(chunk)


def _write_all(f, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[f.write(view):]
