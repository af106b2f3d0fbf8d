"""`Uploader`: the checkpoint writer's `on_file_written`. It uploads each file as it is
finished, turns a renamed shard into a server-side copy, and sends manifest.json only after
everything before it; `upload_folder` sends a finished folder the same way."""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

from prune_job.storage.client import S3Store, join_key, parse_s3_uri
from prune_job.storage.errors import UploadError
from prune_job.storage.transfer import ETAGS_FILE, JOURNAL, MANIFEST, Transfer

log = logging.getLogger(__name__)
MAX_COPY_BYTES = 5 * (1 << 30)  # CopyObject's limit
TEMP_SUFFIXES = (".tmp", ".data", ".part", ETAGS_FILE)


class Uploader:
    """`on_file_written` for the CheckpointWriter: uploads each finished file to `uri` in the background.

    The bucket is checked at construction (before any heavy work). A shard renamed
    by the writer (model-00001 -> model-00001-of-00003) becomes a server-side
    copy. `manifest.json` is sent only after every file handed over before it.
    `close()` waits for everything and raises UploadError, naming the local folder,
    if anything failed."""

    def __init__(self, uri: str, local_dir: Path, store: Optional[S3Store] = None, files_in_parallel: int = 2,
                 on_bytes: Optional[Callable[[int], None]] = None):
        self.uri = uri.rstrip("/") + "/"
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.local_dir = Path(local_dir)
        self.store = store or S3Store()
        self.store.check_bucket(self.bucket)
        self.on_bytes = on_bytes
        self._files = ThreadPoolExecutor(max(2, files_in_parallel), thread_name_prefix="upload")
        self._lock = threading.Lock()
        self._pending: list[Future] = []
        self._by_file: dict[tuple[int, int, int, int], tuple[str, Future]] = {}  # same file -> key, its upload
        self.transfers: list[Transfer] = []
        self.errors: list[str] = []
        self._names: set[str] = set()

    def __call__(self, path: Path) -> None:
        path = Path(path)
        name = path.relative_to(self.local_dir).as_posix() if path.is_relative_to(self.local_dir) else path.name
        key = join_key(self.prefix, name)
        self._names.add(name)
        fd = os.open(path, os.O_RDONLY)  # opened now: the writer may rename the file later
        st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)  # a rename keeps all four
        with self._lock:
            earlier = list(self._pending) if name in (MANIFEST, JOURNAL) else []  # sent after what they list
            prior = self._by_file.get(ident)
            future = self._files.submit(self._send, fd, key, earlier, prior)
            self._pending.append(future)
            self._by_file[ident] = (key, future)

    def adopt(self, path: Path) -> None:
        """A file that is already in the bucket under its name (a resumed run's finished shards): not sent
        again, and a later rename of it becomes a server-side copy."""
        path = Path(path)
        name = path.relative_to(self.local_dir).as_posix()
        st = os.stat(path)
        done: Future = Future()
        done.set_result(None)
        with self._lock:
            self._names.add(name)
            self._by_file[(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)] = (join_key(self.prefix, name), done)

    def _send(self, fd: int, key: str, wait_for: list[Future], prior: Optional[tuple[str, Future]]) -> None:
        try:
            if any(f.exception() is not None for f in wait_for):
                raise UploadError(f"s3://{self.bucket}/{key}: held back because an earlier file failed")
            transfer = None
            if prior is not None and prior[0] != key and prior[1].exception() is None:
                transfer = self._move(prior[0], key, fd)
            if transfer is None:
                transfer = self.store.upload(None, self.bucket, key, fd=fd, on_bytes=self.on_bytes)
            with self._lock:
                self.transfers.append(transfer)
            log.info("%s s3://%s/%s (%d bytes)", transfer.action, self.bucket, key, transfer.size)
        except Exception as e:
            with self._lock:
                self.errors.append(str(e))
            raise
        finally:
            os.close(fd)

    def _move(self, old: str, key: str, fd: int) -> Optional[Transfer]:
        """The same file, already uploaded under its earlier name: copy it on the server, drop the old key."""
        size = os.fstat(fd).st_size
        if size > MAX_COPY_BYTES:
            return None
        old_head = self.store.head(self.bucket, old)
        new_head = self.store.head(self.bucket, key)
        if new_head is not None and old_head is not None and new_head[:2] == old_head[:2]:
            action = "skipped"
        elif old_head is not None and old_head[0] == size:
            self.store.copy(self.bucket, old, key)
            action = "copied"
        else:
            return None
        self.store.remove(self.bucket, old)
        return Transfer(key, size, 0, action)

    def sync(self) -> None:
        """Hand over every file of the local folder not handed over yet (report.md, plots, ...), manifest.json
        last. Call it after the checkpoint is finished."""
        files = sorted(p for p in self.local_dir.rglob("*") if p.is_file() and not p.name.endswith(TEMP_SUFFIXES)
                       and p.relative_to(self.local_dir).as_posix() not in self._names)
        for path in sorted(files, key=lambda p: p.name == MANIFEST):
            self(path)

    def wait(self) -> None:
        with self._lock:
            pending = list(self._pending)
        for f in pending:
            f.exception()

    def close(self) -> None:
        """Wait for every upload; raise UploadError naming the local folder if any failed."""
        self.wait()
        self._files.shutdown(wait=True)
        if self.errors:
            raise UploadError(f"upload to {self.uri} failed: {self.errors[0]}"
                              + (f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else "")
                              + f". Nothing computed is lost: the files are kept in {self.local_dir}; "
                              "rerunning sends only what is missing.")

    @property
    def bytes_sent(self) -> int:
        return sum(t.bytes_sent for t in self.transfers)


def upload_folder(local_dir: Path, uri: str, store: Optional[S3Store] = None,
                  on_bytes: Optional[Callable[[int], None]] = None) -> Uploader:
    """Upload every file of a finished checkpoint folder, manifest.json last; returns the closed Uploader."""
    uploader = Uploader(uri, Path(local_dir), store, on_bytes=on_bytes)
    uploader.sync()
    uploader.close()
    return uploader
