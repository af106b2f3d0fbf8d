"""A model's tensors read straight from the bucket, block by block, with ranged GETs: no
download of the weight files, so a pod needs no disk for them and the time to the first
block does not grow with the model.

`RemoteWeightIndex` has the interface of the pipeline's safetensors index
(`location`, `in`, `read(keys)`; `open_model(..., index=...)` takes it): each
safetensors object's header is read with two small ranged GETs (its 8-byte length,
then the JSON), each tensor with one ranged GET of exactly its bytes. Every range is
verified: the object's ETag in the response must be the one listed when the index
was built (an object replaced mid-run is refused, never mixed), the byte count must
be the range's, and every tensor must lie inside its object's listed size. Given the
blocks' keys in order (`plan`), reading any tensor of block i starts fetching block
i+1 in the background, so the next block's bytes arrive while this one is pruned
(one block of host memory more).

`fetch_model_files` brings only the small files (config, tokenizer, index JSON) into
a local folder, which is all `open_model` reads from disk. The evaluation reads the
dense model through the same index (its perplexity block by block, its whole models
with `ModelHandle.load_all`), so nothing of the weights is written to disk.
"""
from __future__ import annotations

import hashlib
import json
import struct
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch

from prune_job.checkpoint.dtypes import CODE_DTYPES
from prune_job.storage.client import S3Store, parse_s3_uri
from prune_job.storage.errors import IntegrityError, StorageError
from prune_job.storage.transfer import MiB

MAX_HEADER_BYTES = 100 * MiB  # safetensors' own limit


@dataclass(frozen=True)
class RemoteTensor:
    key: str  # the object holding it
    etag: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the object
    end: int


def read_range(store: S3Store, bucket: str, key: str, etag: str, offset: int, length: int) -> bytearray:
    """Exactly `length` bytes at `offset`, from the object version whose ETag is `etag`."""
    buf = bytearray(length)
    if length == 0:
        return buf
    response = store._call("reading", lambda: store.client.get_object(bucket, key, offset=offset, length=length),
                           bucket, key)
    try:
        got = (response.headers.get("ETag") or "").strip('"')
        if etag and got != etag:
            raise IntegrityError(f"s3://{bucket}/{key} changed while the model was read (ETag {got or 'missing'}, "
                                 f"expected {etag}); restart the job to read one consistent version")
        pos = 0
        for chunk in response.stream(MiB):
            if pos + len(chunk) > length:
                raise IntegrityError(f"s3://{bucket}/{key}: more bytes than the range {offset}+{length}")
            buf[pos:pos + len(chunk)] = chunk
            pos += len(chunk)
    finally:
        response.close()
        response.release_conn()
    if pos != length:
        raise StorageError(f"s3://{bucket}/{key}: short read ({pos} of {length} bytes at {offset})")
    return buf


def read_header(store: S3Store, bucket: str, key: str, size: int, etag: str) -> dict[str, RemoteTensor]:
    """The tensors of one safetensors object, from its header; each checked to lie inside the object."""
    if size < 8:
        raise IntegrityError(f"s3://{bucket}/{key}: {size} bytes is too short for a safetensors file")
    (length,) = struct.unpack("<Q", bytes(read_range(store, bucket, key, etag, 0, 8)))
    if length > min(MAX_HEADER_BYTES, size - 8):
        raise IntegrityError(f"s3://{bucket}/{key}: header length {length} does not fit the object ({size} bytes)")
    try:
        header = json.loads(bytes(read_range(store, bucket, key, etag, 8, length)))
    except ValueError as err:
        raise IntegrityError(f"s3://{bucket}/{key}: header is not JSON ({err})") from None
    base = 8 + length
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = base + info["data_offsets"][0], base + info["data_offsets"][1]
        if not base <= start <= end <= size:
            raise IntegrityError(f"s3://{bucket}/{key}: tensor {name} lies outside the object")
        out[name] = RemoteTensor(key, etag, info["dtype"], tuple(info["shape"]), start, end)
    return out


class RemoteWeightIndex:
    """The safetensors objects under one prefix, read tensor by tensor with verified ranged GETs."""

    def __init__(self, uri: str, store: Optional[S3Store] = None, prefetch_workers: int = 4):
        self.uri = uri  # what another process (footprint's) opens again
        self.bucket, prefix = parse_s3_uri(uri)
        self.store = store or S3Store()
        objects = [o for o in self.store.list(self.bucket, prefix) if o[0].endswith(".safetensors")]
        if not objects:
            raise StorageError(f"{uri}: no .safetensors objects under this prefix")
        self.location: dict[str, RemoteTensor] = {}
        for key, size, etag in sorted(objects):
            self.location.update(read_header(self.store, self.bucket, key, size, etag))
        self._pool = ThreadPoolExecutor(max_workers=prefetch_workers, thread_name_prefix="prefetch")
        self.pending: dict[str, Future] = {}
        self._next: dict[str, list[str]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.location

    def plan(self, blocks: Sequence[Iterable[str]]) -> None:
        """The blocks' keys in pipeline order: reading block i prefetches block i+1."""
        groups = [[k for k in keys if k in self.location] for keys in blocks]
        for here, after in zip(groups, groups[1:]):
            for key in here:
                self._next[key] = after

    def prefetch(self, keys: Iterable[str]) -> None:
        for key in keys:
            if key not in self.pending:
                self.pending[key] = self._pool.submit(self._fetch, key)

    def _fetch(self, key: str) -> torch.Tensor:
        t = self.location[key]
        if t.dtype not in CODE_DTYPES:
            raise StorageError(f"s3://{self.bucket}/{t.key}: tensor {key} has unsupported dtype {t.dtype}")
        buf = read_range(self.store, self.bucket, t.key, t.etag, t.start, t.end - t.start)
        dtype = CODE_DTYPES[t.dtype]
        flat = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
        return flat.reshape(t.shape)

    def read(self, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        keys = list(keys)
        for key in keys:
            self.prefetch(self._next.get(key, ()))
        out = {}
        for key in keys:
            future = self.pending.pop(key, None)
            out[key] = future.result() if future is not None else self._fetch(key)
        return out

    def close(self) -> None:
        for future in self.pending.values():
            future.cancel()
        self.pending.clear()
        self._pool.shutdown(wait=True)


SMALL_FILE_SUFFIXES = (".json", ".txt", ".model", ".jinja")


def fetch_model_files(uri: str, dest: Path, store: Optional[S3Store] = None) -> Path:
    """Only the model's small files (config, tokenizer, safetensors index) into `dest`: what
    `open_model` reads from disk when its tensors come from a RemoteWeightIndex."""
    store = store or S3Store()
    bucket, prefix = parse_s3_uri(uri)
    start = prefix.rstrip("/") + "/" if prefix else ""
    dest.mkdir(parents=True, exist_ok=True)
    for key, size, _etag in store.list(bucket, prefix):
        name = key[len(start):]
        if "/" in name or not name.endswith(SMALL_FILE_SUFFIXES) or name in ("", ".", ".."):
            continue  # only the folder's own small files; never a path outside `dest`
        store.download(bucket, key, dest / name, size=size)
    return dest


def plan_blocks(index: RemoteWeightIndex, handle) -> None:
    """Tell the index the pipeline's block order (ModelHandle's blocks and their stored keys)."""
    index.plan([[key for _, key in handle.state_keys(handle.block_prefix(i))] for i in range(handle.num_blocks)])


def streamed_model(uri: str, cache_dir: Path, store: Optional[S3Store] = None) -> tuple[Path, RemoteWeightIndex]:
    """(a folder with the model's small files, the index that reads its tensors from the bucket).
    The folder is named by a digest of the URI: names from the bucket never become paths."""
    store = store or S3Store()
    folder = fetch_model_files(uri, Path(cache_dir) / hashlib.sha256(uri.encode()).hexdigest()[:24], store)
    return folder, RemoteWeightIndex(uri, store)
