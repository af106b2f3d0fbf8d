"""sha256 of files, computed once per file version in this process, so that the
checkpoint writer (for the manifest) and the uploader (for skip-if-same) read
each shard once. A version is (device, inode, size, mtime): a rename keeps it,
a rewrite changes it. Verification of what is on disk passes `cached=False`."""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Union

CHUNK = 8 << 20
MAX_ENTRIES = 4096
_cache: dict[tuple[int, int, int, int], str] = {}
_lock = threading.Lock()


def sha256_fd(fd: int, cached: bool = True) -> str:
    st = os.fstat(fd)
    version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if cached:
        with _lock:
            if version in _cache:
                return _cache[version]
    digest, offset = hashlib.sha256(), 0
    while data := os.pread(fd, CHUNK, offset):
        digest.update(data)
        offset += len(data)
    with _lock:
        if len(_cache) >= MAX_ENTRIES:
            _cache.clear()
        _cache[version] = digest.hexdigest()
    return _cache[version]


def sha256_file(path: Union[str, Path], cached: bool = True) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return sha256_fd(fd, cached)
    finally:
        os.close(fd)


def forget() -> None:
    """Drop every remembered digest (benchmarks measure the hashing too)."""
    with _lock:
        _cache.clear()
