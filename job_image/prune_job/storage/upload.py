"""Uploading one file: one PUT up to the store's part size, else multipart with parts in
parallel. An object with the same size and sha256 (kept in its `x-amz-meta-sha256`) is not
sent again, and an unfinished multipart upload of the same key is resumed, re-sending only
the parts whose MD5 does not match. Reached through `S3Store.upload`."""
from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from prune_job.storage.checksums import sha256_fd
from prune_job.storage.errors import ObjectNotFound
from prune_job.storage.transfer import SHA_META, Transfer

if TYPE_CHECKING:
    from prune_job.storage.client import S3Store

log = logging.getLogger(__name__)


def upload(store: S3Store, path: Optional[Path], bucket: str, key: str, sha256: Optional[str] = None,
           fd: Optional[int] = None, on_bytes: Optional[Callable[[int], None]] = None) -> Transfer:
    """Upload one file (or an open descriptor of it) unless the object already has its size and sha256."""
    own_fd = fd is None
    fd = os.open(path, os.O_RDONLY) if own_fd else fd
    try:
        size = os.fstat(fd).st_size
        sha256 = sha256 or sha256_fd(fd)
        remote = store.head(bucket, key)
        if remote is not None and remote[0] == size and remote[1] == sha256:
            return Transfer(key, size, 0, "skipped")
        if size <= store.part_size:
            data = os.pread(fd, size, 0)
            store._call("uploading", lambda: _put(store, bucket, key, data, sha256), bucket, key)
            if on_bytes:
                on_bytes(size)
            return Transfer(key, size, size, "sent")
        return _multipart(store, fd, size, bucket, key, sha256, on_bytes)
    finally:
        if own_fd:
            os.close(fd)


def _put(store: S3Store, bucket: str, key: str, data: bytes, sha256: str) -> None:
    store.client.put_object(bucket, key, io.BytesIO(data), len(data), metadata={SHA_META: sha256})


def _multipart(store: S3Store, fd: int, size: int, bucket: str, key: str, sha256: str,
               on_bytes: Optional[Callable[[int], None]], resume: bool = True) -> Transfer:
    from minio.datatypes import Part

    client, part_size = store.client, store.part_size
    ranges = [(n + 1, off, min(part_size, size - off)) for n, off in enumerate(range(0, size, part_size))]
    upload_id, done = _resumable(store, fd, bucket, key, ranges) if resume else (None, {})
    if upload_id is None:
        headers = {"Content-Type": "application/octet-stream", SHA_META: sha256}
        upload_id = store._call("starting upload of", lambda: client._create_multipart_upload(
            bucket, key, headers), bucket, key)
    todo = [r for r in ranges if r[0] not in done]

    def send(part: tuple[int, int, int]) -> tuple[int, str]:
        number, offset, length = part
        data = os.pread(fd, length, offset)
        etag = store._call(f"uploading part {number} of", lambda: client._upload_part(
            bucket, key, data, None, upload_id, number), bucket, key)
        if on_bytes:
            on_bytes(length)
        return number, etag

    etags = dict(done)
    etags.update(store._parallel(send, todo))
    parts = [Part(n, etags[n]) for n, _, _ in ranges]
    store._call("completing upload of", lambda: client._complete_multipart_upload(
        bucket, key, upload_id, parts), bucket, key)
    sent = sum(length for _, _, length in todo)
    if done and (store.head(bucket, key) or (0, None))[1] != sha256:
        # the bytes are ours (every reused part matched its MD5), but the upload was started for an
        # earlier version of the file and carries its sha256: send it again, whole, to record ours
        log.warning("s3://%s/%s: resumed upload recorded another file's sha256; uploading it again", bucket, key)
        store.remove(bucket, key)
        again = _multipart(store, fd, size, bucket, key, sha256, on_bytes, resume=False)
        return Transfer(key, size, sent + again.bytes_sent, "sent")
    return Transfer(key, size, sent, "resumed" if done else "sent")


def _resumable(store: S3Store, fd: int, bucket: str, key: str,
               ranges: list[tuple[int, int, int]]) -> tuple[Optional[str], dict[int, str]]:
    """An unfinished upload of `key` and its parts whose size and MD5 match the local file."""
    uploads = store._call("listing uploads of", lambda: store.client._list_multipart_uploads(
        bucket, prefix=key).uploads, bucket, key)
    candidates = sorted((u for u in uploads if u.object_name == key),
                        key=lambda u: u.initiated_time or 0, reverse=True)
    if not candidates:
        return None, {}
    upload_id = candidates[0].upload_id
    try:
        remote = _list_parts(store, bucket, key, upload_id)
    except ObjectNotFound:
        return None, {}
    by_number = {n: (off, length) for n, off, length in ranges}
    done = {}
    for p in remote:
        if p.part_number in by_number and p.size == by_number[p.part_number][1]:
            off, length = by_number[p.part_number]
            if hashlib.md5(os.pread(fd, length, off)).hexdigest() == p.etag.strip('"'):
                done[p.part_number] = p.etag.strip('"')
    log.info("resuming s3://%s/%s: %d of %d parts already there", bucket, key, len(done), len(ranges))
    return upload_id, done


def _list_parts(store: S3Store, bucket: str, key: str, upload_id: str) -> list[Any]:
    parts, marker = [], None
    while True:
        page = store._call("listing parts of", lambda: store.client._list_parts(
            bucket, key, upload_id, max_parts=1000, part_number_marker=marker), bucket, key)
        parts += page.parts
        if not page.is_truncated or not page.next_part_number_marker:
            return parts
        marker = page.next_part_number_marker
