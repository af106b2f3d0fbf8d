"""A model's tensors read straight from the bucket, block by block, with ranged GETs: no
download of the weight files, so a pod needs no disk for them and the time to the first
block does not grow with the model.

`RemoteWeightIndex` has the interface of the pipeline's safetensors index
(`location`, `in`, `read(keys)`; `open_model(..., index=...)` takes it): each
safetensors object's header is read with two small ranged GETs (its 8-byte length,
then the JSON), each tensor with one ranged GET of exactly its bytes. Every range is
verified: the object's ETag in the response must be the one listed when the index
was built (an object replaced mid-run is refused, never mixed), the byte count must
be the range's, and every tensor must lie inside its object's listed size. Where the
source records a sha256 for an object (its manifest.json, or the `x-amz-meta-sha256`
our uploads set), the object's digest is also computed from the ranges as they are
read (`ObjectDigest`): a block's tensors are fed in file order, so a checkpoint written
by this project (one block per shard) is checked before its block is pruned; what is
never read, or arrives too far out of order to hold, is read once more by `verify`,
which the run calls before it writes anything. Given the
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
import logging
import struct
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import torch

from prune_job.checkpoint.dtypes import CODE_DTYPES
from prune_job.storage.client import S3Store, parse_s3_uri
from prune_job.storage.errors import IntegrityError, StorageError
from prune_job.storage.fetch import manifest_files
from prune_job.storage.transfer import MiB

MAX_HEADER_BYTES = 100 * MiB  # safetensors' own limit
HOLD_BYTES = 64 * MiB  # ranges kept ahead of an object's hashed prefix; beyond it `verify` reads them again
log = logging.getLogger(__name__)


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


class HoldBudget:
    """Bytes the digests of one index may hold ahead of their hashed prefixes, together."""

    def __init__(self, limit: int = HOLD_BYTES):
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


class ObjectDigest:
    """The sha256 of one object, computed from ranges read in any order and checked against
    the one its source records. Bytes that continue the hashed prefix are hashed at once;
    ranges further on are held (within the index's HoldBudget) until the gap before
    them is filled; a range already hashed, or one that does not fit, is passed over, and
    `finish` reads whatever the prefix still lacks."""

    def __init__(self, uri: str, size: int, expected: str, budget: "HoldBudget"):
        self.uri, self.size, self.expected = uri, size, expected.lower()
        self._hash = hashlib.sha256()
        self._upto = 0  # bytes hashed, from the start
        self._held: dict[int, bytes] = {}
        self._budget = budget
        self._lock = threading.Lock()
        self.checked = False

    def feed(self, start: int, data: Union[bytes, bytearray, memoryview]) -> None:
        with self._lock:
            if start == self._upto:
                self._consume(data)
            elif start > self._upto and start not in self._held and self._budget.take(len(data)):
                self._held[start] = bytes(data)
            if self._upto == self.size:
                self._check()

    def finish(self, read: Callable[[int, int], bytearray]) -> None:
        """Read (`read(offset, length)`) the bytes never fed, hash them in order, and check."""
        with self._lock:
            while self._upto < self.size:
                ahead = [s for s in self._held if s > self._upto]
                stop = min(ahead + [self.size, self._upto + 64 * MiB])
                self._consume(read(self._upto, stop - self._upto))
            self._check()

    def _consume(self, data: Union[bytes, bytearray, memoryview]) -> None:
        self._hash.update(data)
        self._upto += len(data)
        while self._upto in self._held:
            piece = self._held.pop(self._upto)
            self._budget.give(len(piece))
            self._hash.update(piece)
            self._upto += len(piece)
        for start in [s for s in self._held if s < self._upto]:  # overlapped what was hashed (a bad header)
            self._budget.give(len(self._held.pop(start)))

    def _check(self) -> None:
        if self.checked:
            return
        got = self._hash.hexdigest()
        if got != self.expected:
            raise IntegrityError(f"{self.uri}: sha256 of the bytes read is {got}, the source records "
                                 f"{self.expected}; the object is corrupt or was replaced")
        self.checked = True


def recorded_sha256(store: S3Store, bucket: str, prefix: str, objects: Sequence[tuple[str, int, str]],
                    ) -> dict[str, str]:
    """{object key: sha256} the source records: its manifest.json's files, else each object's
    `x-amz-meta-sha256` (set by this project's uploads). Objects with neither are absent."""
    start = prefix.rstrip("/") + "/" if prefix else ""
    manifest = next((k for k, _, _ in objects if k == start + "manifest.json"), None)
    if manifest is not None:
        head = store.head(bucket, manifest)
        if head is not None and head[0] > MAX_HEADER_BYTES:
            raise StorageError(f"s3://{bucket}/{manifest}: {head[0]} bytes is too large for a checkpoint manifest")
        raw = read_range(store, bucket, manifest, head[2] if head else "", 0, head[0] if head else 0)
        listed = manifest_files(f"s3://{bucket}/{start}", bytes(raw))
        return {start + name: sha for name, (_, sha) in listed.items() if name.endswith(".safetensors")}
    out = {}
    for key, _, _ in objects:
        if key.endswith(".safetensors"):
            head = store.head(bucket, key)
            if head is not None and head[1]:
                out[key] = head[1]
    return out


def read_header(store: S3Store, bucket: str, key: str, size: int, etag: str,
                digest: Optional[ObjectDigest] = None) -> dict[str, RemoteTensor]:
    """The tensors of one safetensors object, from its header; each checked to lie inside the object."""
    if size < 8:
        raise IntegrityError(f"s3://{bucket}/{key}: {size} bytes is too short for a safetensors file")
    raw_length = read_range(store, bucket, key, etag, 0, 8)
    (length,) = struct.unpack("<Q", bytes(raw_length))
    if length > min(MAX_HEADER_BYTES, size - 8):
        raise IntegrityError(f"s3://{bucket}/{key}: header length {length} does not fit the object ({size} bytes)")
    raw_header = read_range(store, bucket, key, etag, 8, length)
    if digest is not None:
        digest.feed(0, raw_length)
        digest.feed(8, raw_header)
    try:
        header = json.loads(bytes(raw_header))
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

    def __init__(self, uri: str, store: Optional[S3Store] = None, prefetch_workers: int = 4,
                 check_sha256: bool = True):
        self.uri = uri  # what another process (footprint's) opens again
        self.bucket, prefix = parse_s3_uri(uri)
        self.store = store or S3Store()
        listed = self.store.list(self.bucket, prefix)
        objects = [o for o in listed if o[0].endswith(".safetensors")]
        if not objects:
            raise StorageError(f"{uri}: no .safetensors objects under this prefix")
        recorded = recorded_sha256(self.store, self.bucket, prefix, listed) if check_sha256 else {}
        unlisted = sorted(set(recorded) - {k for k, _, _ in objects})
        if unlisted:
            raise StorageError(f"s3://{self.bucket}/{unlisted[0]}: listed in the source's manifest, not in the bucket")
        budget = HoldBudget()
        self.digests = {key: ObjectDigest(f"s3://{self.bucket}/{key}", size, recorded[key], budget)
                        for key, size, _ in objects if key in recorded}
        self.etags = {key: etag for key, _, etag in objects}
        self.location: dict[str, RemoteTensor] = {}
        for key, size, etag in sorted(objects):
            self.location.update(read_header(self.store, self.bucket, key, size, etag, self.digests.get(key)))
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
        for key in sorted(keys, key=lambda k: (self.location[k].key, self.location[k].start)):  # in file order
            t = self.location[key]
            digest = self.digests.get(t.key)
            if digest is not None and not digest.checked:
                digest.feed(t.start, memoryview(out[key].reshape(-1).view(torch.uint8).numpy()))
        return out

    def verify(self) -> None:
        """Check every object whose sha256 the source records and whose digest is not yet checked,
        reading the bytes it still lacks (tensors never read, ranges that came too far out of order)."""
        for key, digest in sorted(self.digests.items()):
            if not digest.checked:
                log.info("verifying s3://%s/%s against its recorded sha256", self.bucket, key)
                digest.finish(lambda offset, length, key=key: read_range(
                    self.store, self.bucket, key, self.etags[key], offset, length))

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
