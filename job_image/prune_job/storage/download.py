"""Downloading one object: parallel ranged GETs into a temporary file, hashed in order as the
ranges land, verified against the given sha256 or the object's recorded one, then renamed into
place. Reached through `S3Store.download`."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from prune_job.storage.errors import IntegrityError, ObjectNotFound, StorageError
from prune_job.storage.transfer import MiB, Transfer

if TYPE_CHECKING:
    from prune_job.storage.client import S3Store


def download(store: S3Store, bucket: str, key: str, dest: Path, sha256: Optional[str] = None,
             size: Optional[int] = None) -> Transfer:
    """Parallel ranged GETs into `dest` (via a temporary file), verified against `sha256` or the
    object's recorded sha256."""
    if size is None or sha256 is None:
        remote = store.head(bucket, key)
        if remote is None:
            raise ObjectNotFound(f"s3://{bucket}/{key}: no such object")
        size, sha256 = (size if size is not None else remote[0]), (sha256 or remote[1])
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        got = _fetch_ranges(store, bucket, key, fd, size)
    finally:
        os.close(fd)
    if sha256 and got != sha256:
        tmp.unlink(missing_ok=True)
        raise IntegrityError(f"s3://{bucket}/{key}: sha256 of the downloaded bytes does not match "
                             f"{'the manifest' if sha256 else 'the object'}; the object is corrupt")
    os.replace(tmp, dest)
    return Transfer(key, size, size, "downloaded")


def _fetch_ranges(store: S3Store, bucket: str, key: str, fd: int, size: int) -> str:
    """Ranges in parallel; this thread hashes them in order as they land (overlapping the download)."""
    ranges = [(off, min(store.part_size, size - off)) for off in range(0, size, store.part_size)]
    futures = [store._pool.submit(store._call, "downloading", lambda r=r: _get_range(store, bucket, key, fd, *r),
                                  bucket, key) for r in ranges]
    digest = hashlib.sha256()
    try:
        for future, (offset, length) in zip(futures, ranges):
            future.result()
            for start in range(offset, offset + length, 8 * MiB):
                digest.update(os.pread(fd, min(8 * MiB, offset + length - start), start))
    finally:
        for future in futures:
            future.cancel()
        for future in futures:
            if not future.cancelled():
                future.exception()  # let running ranges finish before the descriptor closes
    return digest.hexdigest()


def _get_range(store: S3Store, bucket: str, key: str, fd: int, offset: int, length: int) -> None:
    response = store.client.get_object(bucket, key, offset=offset, length=length)
    try:
        pos = offset
        for chunk in response.stream(MiB):
            os.pwrite(fd, chunk, pos)
            pos += len(chunk)
        if pos != offset + length:
            raise StorageError(f"s3://{bucket}/{key}: short read ({pos - offset} of {length} bytes)")
    finally:
        response.close()
        response.release_conn()
