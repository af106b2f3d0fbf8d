"""S3 (MinIO, AWS, any S3 server) for models, data and results, through the `minio` SDK.

Settings come only from the environment, under the names every S3 tool knows:
AWS_ENDPOINT_URL (`http://host:port`; https means TLS; default AWS),
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION (or
AWS_DEFAULT_REGION), AWS_CA_BUNDLE. Credentials never appear in a message.

- Upload: files up to `part_size` in one PUT, larger ones multipart with parts
  in parallel; every request retried with exponential backoff on transient
  errors; an object with the same size and sha256 (kept in its `x-amz-meta-sha256`)
  is not sent again, and an unfinished multipart upload of the same key is
  resumed, re-sending only the parts whose MD5 does not match.
- `Uploader`: the checkpoint writer's `on_file_written`; uploads each file as it
  is finished, turns a renamed shard into a server-side copy, sends manifest.json
  only after everything before it.
- Download: parallel ranged GETs; verified against the manifest's sha256 when
  there is one (`fetch_model`), else against the object's recorded sha256.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, TypeVar
from urllib.parse import urlparse

from prune_job.checksums import sha256_fd, sha256_file

log = logging.getLogger(__name__)
T = TypeVar("T")
MiB = 1 << 20
DEFAULT_PART_SIZE = 32 * MiB
MIN_PART_SIZE = 5 * MiB
MAX_COPY_BYTES = 5 * (1 << 30)  # CopyObject's limit
SHA_META = "x-amz-meta-sha256"
MANIFEST = "manifest.json"
ETAGS_FILE = ".prune-job-etags.json"
TEMP_SUFFIXES = (".tmp", ".data", ".part", ETAGS_FILE)
DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                "AllAccessDisabled", "AccountProblem"}
TRANSIENT_CODES = {"InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed",
                   "OperationAborted", "XMinioServerNotInitialized"}


# -- errors ----------------------------------------------------------------------------------------

class StorageError(Exception):
    """An S3 problem, in words; never carries credentials."""


class EndpointUnreachable(StorageError):
    pass


class AccessDenied(StorageError):
    pass


class BucketNotFound(StorageError):
    pass


class ObjectNotFound(StorageError):
    pass


class IntegrityError(StorageError):
    pass


class UploadError(StorageError):
    """An upload that failed; the local files are kept (the message says where)."""


# -- configuration ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class S3Config:
    endpoint: str = "s3.amazonaws.com"  # host[:port]
    secure: bool = True
    region: Optional[str] = None
    access_key: Optional[str] = field(default=None, repr=False)
    secret_key: Optional[str] = field(default=None, repr=False)
    session_token: Optional[str] = field(default=None, repr=False)
    ca_bundle: Optional[str] = None

    @property
    def url(self) -> str:
        return ("https://" if self.secure else "http://") + self.endpoint

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "S3Config":
        env = os.environ if env is None else env
        endpoint, secure = "s3.amazonaws.com", True
        raw = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if raw:
            url = urlparse(raw if "://" in raw else "https://" + raw)
            if url.scheme not in ("http", "https") or not url.netloc or url.path not in ("", "/"):
                raise StorageError(f"AWS_ENDPOINT_URL must look like http(s)://host[:port], got {raw!r}")
            endpoint, secure = url.netloc, url.scheme == "https"
        return cls(endpoint=endpoint, secure=secure, region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
                   access_key=env.get("AWS_ACCESS_KEY_ID") or None, secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
                   session_token=env.get("AWS_SESSION_TOKEN") or None, ca_bundle=env.get("AWS_CA_BUNDLE") or None)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    if not uri.startswith("s3://"):
        raise StorageError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} names no bucket")
    return bucket, key.strip("/")


def join_key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


# -- the store -------------------------------------------------------------------------------------

@dataclass
class Transfer:
    """What one upload or download did."""

    key: str
    size: int
    bytes_sent: int = 0  # payload bytes that crossed the network
    action: str = "sent"  # sent | skipped | resumed | copied | downloaded | cached


class S3Store:
    """One S3 endpoint: checked calls with retries, multipart upload, ranged download."""

    def __init__(self, config: Optional[S3Config] = None, part_size: int = DEFAULT_PART_SIZE,
                 workers: Optional[int] = None,
                 retries: int = 5, backoff: float = 0.5, connect_timeout: float = 10.0, read_timeout: float = 120.0):
        import urllib3
        from minio import Minio

        self.config = config or S3Config.from_env()
        self.part_size = max(part_size, MIN_PART_SIZE)
        # requests cost CPU (TLS or SigV4 payload hashing): more in flight than 2 per core only adds contention
        workers = workers or max(2, min(8, 2 * (os.cpu_count() or 1)))
        self.workers = workers
        self.retries, self.backoff = retries, backoff
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout), maxsize=workers + 4,
            retries=False, cert_reqs="CERT_REQUIRED", ca_certs=self._ca_certs(),
        )
        self.client = Minio(self.config.endpoint, access_key=self.config.access_key,
                            secret_key=self.config.secret_key, session_token=self.config.session_token,
                            secure=self.config.secure, region=self.config.region, http_client=http)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="s3")

    def _ca_certs(self) -> Optional[str]:
        if self.config.ca_bundle:
            return self.config.ca_bundle
        if os.environ.get("SSL_CERT_FILE"):
            return os.environ["SSL_CERT_FILE"]
        try:
            import certifi

            return certifi.where()
        except ImportError:  # pragma: no cover - minio depends on certifi
            return None

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # errors and retries ---------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T], bucket: str = "", key: str = "") -> T:
        """Run one request, retrying transient failures with exponential backoff and jitter."""
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except Exception as e:  # noqa: BLE001 - classified below, re-raised as StorageError
                error, transient = self._classify(e, what, bucket, key)
                if not transient or attempt == self.retries:
                    raise error from None
                delay = min(self.backoff * 2 ** attempt, 30.0) * (0.5 + random.random())
                log.warning("%s (attempt %d of %d); retrying in %.1fs", error, attempt + 1, self.retries + 1, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _classify(self, e: Exception, what: str, bucket: str, key: str) -> tuple[StorageError, bool]:
        from minio.error import InvalidResponseError, S3Error, ServerError

        where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}" if bucket else self.config.url
        if isinstance(e, StorageError):
            return e, False
        if isinstance(e, S3Error):
            code = e.code or ""
            if code in DENIED_CODES:
                return AccessDenied(f"{what} {where}: access denied by {self.config.url} ({code}); check "
                                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's policy"), False
            if code == "NoSuchBucket":
                return BucketNotFound(f"{what} {where}: bucket {bucket!r} does not exist at {self.config.url}"), False
            if code in ("NoSuchKey", "NoSuchUpload", "NoSuchObject"):
                return ObjectNotFound(f"{what} {where}: no such object"), False
            return StorageError(f"{what} {where}: {code or 'error'} from {self.config.url}"), code in TRANSIENT_CODES
        if isinstance(e, ServerError):
            return StorageError(f"{what} {where}: HTTP {e.status_code} from {self.config.url}"), True
        if isinstance(e, InvalidResponseError):
            return StorageError(f"{what} {where}: unexpected response from {self.config.url}"), True
        if _is_network_error(e):
            return EndpointUnreachable(f"{what} {where}: cannot reach {self.config.url} ({_reason(e)}); "
                                       "check AWS_ENDPOINT_URL and the network"), True
        return StorageError(f"{what} {where}: {type(e).__name__}"), False

    # checks ---------------------------------------------------------------------------------------
    def check_bucket(self, bucket: str) -> None:
        """Fail early: unreachable endpoint, rejected credentials, or missing bucket."""
        exists = self._call("checking", lambda: self.client.bucket_exists(bucket), bucket)
        if not exists:
            raise BucketNotFound(f"s3://{bucket}: bucket {bucket!r} does not exist at {self.config.url}")
        # bucket_exists answers False for some servers even on bad credentials: list one key to be sure
        self._call("listing", lambda: next(iter(self.client.list_objects(bucket, prefix="", recursive=False)), None),
                   bucket)

    def head(self, bucket: str, key: str) -> Optional[tuple[int, Optional[str], str]]:
        """(size, recorded sha256 or None, etag) of an object, None when it does not exist."""
        try:
            st = self._call("reading", lambda: self.client.stat_object(bucket, key), bucket, key)
        except ObjectNotFound:
            return None
        meta = {k.lower(): v for k, v in (st.metadata or {}).items()}
        return int(st.size or 0), meta.get(SHA_META), (st.etag or "").strip('"')

    def list(self, bucket: str, prefix: str) -> list[tuple[str, int, str]]:
        """(key, size, etag) of every object under `prefix/`."""
        start = prefix.rstrip("/") + "/" if prefix else ""
        objs = self._call("listing", lambda: list(self.client.list_objects(bucket, prefix=start, recursive=True)),
                          bucket, start)
        return [(o.object_name, int(o.size or 0), (o.etag or "").strip('"')) for o in objs if not o.is_dir]

    # upload ---------------------------------------------------------------------------------------
    def upload(self, path: Optional[Path], bucket: str, key: str, sha256: Optional[str] = None,
               fd: Optional[int] = None, on_bytes: Optional[Callable[[int], None]] = None) -> Transfer:
        """Upload one file (or an open descriptor of it) unless the object already has its size and sha256."""
        own_fd = fd is None
        fd = os.open(path, os.O_RDONLY) if own_fd else fd
        try:
            size = os.fstat(fd).st_size
            sha256 = sha256 or sha256_fd(fd)
            remote = self.head(bucket, key)
            if remote is not None and remote[0] == size and remote[1] == sha256:
                return Transfer(key, size, 0, "skipped")
            if size <= self.part_size:
                data = os.pread(fd, size, 0)
                self._call("uploading", lambda: self._put(bucket, key, data, sha256), bucket, key)
                if on_bytes:
                    on_bytes(size)
                return Transfer(key, size, size, "sent")
            return self._multipart(fd, size, bucket, key, sha256, on_bytes)
        finally:
            if own_fd:
                os.close(fd)

    def _put(self, bucket: str, key: str, data: bytes, sha256: str) -> None:
        import io

        self.client.put_object(bucket, key, io.BytesIO(data), len(data), metadata={SHA_META: sha256})

    def _multipart(self, fd: int, size: int, bucket: str, key: str, sha256: str,
                   on_bytes: Optional[Callable[[int], None]], resume: bool = True) -> Transfer:
        from minio.datatypes import Part

        ranges = [(n + 1, off, min(self.part_size, size - off)) for n, off in enumerate(range(0, size, self.part_size))]
        upload_id, done = self._resumable(fd, bucket, key, ranges) if resume else (None, {})
        if upload_id is None:
            headers = {"Content-Type": "application/octet-stream", SHA_META: sha256}
            upload_id = self._call("starting upload of", lambda: self.client._create_multipart_upload(
                bucket, key, headers), bucket, key)
        todo = [r for r in ranges if r[0] not in done]

        def send(part: tuple[int, int, int]) -> tuple[int, str]:
            number, offset, length = part
            data = os.pread(fd, length, offset)
            etag = self._call(f"uploading part {number} of", lambda: self.client._upload_part(
                bucket, key, data, None, upload_id, number), bucket, key)
            if on_bytes:
                on_bytes(length)
            return number, etag

        etags = dict(done)
        etags.update(self._parallel(send, todo))
        parts = [Part(n, etags[n]) for n, _, _ in ranges]
        self._call("completing upload of", lambda: self.client._complete_multipart_upload(
            bucket, key, upload_id, parts), bucket, key)
        sent = sum(length for _, _, length in todo)
        if done and (self.head(bucket, key) or (0, None))[1] != sha256:
            # the bytes are ours (every reused part matched its MD5), but the upload was started for an
            # earlier version of the file and carries its sha256: send it again, whole, to record ours
            log.warning("s3://%s/%s: resumed upload recorded another file's sha256; uploading it again", bucket, key)
            self.remove(bucket, key)
            again = self._multipart(fd, size, bucket, key, sha256, on_bytes, resume=False)
            return Transfer(key, size, sent + again.bytes_sent, "sent")
        return Transfer(key, size, sent, "resumed" if done else "sent")

    def _resumable(self, fd: int, bucket: str, key: str,
                   ranges: list[tuple[int, int, int]]) -> tuple[Optional[str], dict[int, str]]:
        """An unfinished upload of `key` and its parts whose size and MD5 match the local file."""
        uploads = self._call("listing uploads of", lambda: self.client._list_multipart_uploads(
            bucket, prefix=key).uploads, bucket, key)
        candidates = sorted((u for u in uploads if u.object_name == key),
                            key=lambda u: u.initiated_time or 0, reverse=True)
        if not candidates:
            return None, {}
        upload_id = candidates[0].upload_id
        try:
            remote = self._list_parts(bucket, key, upload_id)
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

    def _list_parts(self, bucket: str, key: str, upload_id: str) -> list[Any]:
        parts, marker = [], None
        while True:
            page = self._call("listing parts of", lambda: self.client._list_parts(
                bucket, key, upload_id, max_parts=1000, part_number_marker=marker), bucket, key)
            parts += page.parts
            if not page.is_truncated or not page.next_part_number_marker:
                return parts
            marker = page.next_part_number_marker

    def _parallel(self, fn: Callable[[Any], T], items: list[Any]) -> list[T]:
        futures = [self._pool.submit(fn, item) for item in items]
        results, first_error = [], None
        for f in futures:
            try:
                results.append(f.result())
            except BaseException as e:  # noqa: BLE001 - wait for all, then raise the first
                first_error = first_error or e
        if first_error is not None:
            raise first_error
        return results

    def copy(self, bucket: str, src: str, dst: str) -> None:
        from minio.commonconfig import CopySource

        self._call("copying to", lambda: self.client.copy_object(bucket, dst, CopySource(bucket, src)), bucket, dst)

    def remove(self, bucket: str, key: str) -> None:
        self._call("removing", lambda: self.client.remove_object(bucket, key), bucket, key)

    # download -------------------------------------------------------------------------------------
    def download(self, bucket: str, key: str, dest: Path, sha256: Optional[str] = None,
                 size: Optional[int] = None) -> Transfer:
        """Parallel ranged GETs into `dest` (via a temporary file), verified against `sha256` or the
        object's recorded sha256."""
        if size is None or sha256 is None:
            remote = self.head(bucket, key)
            if remote is None:
                raise ObjectNotFound(f"s3://{bucket}/{key}: no such object")
            size, sha256 = (size if size is not None else remote[0]), (sha256 or remote[1])
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, size)
            got = self._fetch_ranges(bucket, key, fd, size)
        finally:
            os.close(fd)
        if sha256 and got != sha256:
            tmp.unlink(missing_ok=True)
            raise IntegrityError(f"s3://{bucket}/{key}: sha256 of the downloaded bytes does not match "
                                 f"{'the manifest' if sha256 else 'the object'}; the object is corrupt")
        os.replace(tmp, dest)
        return Transfer(key, size, size, "downloaded")

    def _fetch_ranges(self, bucket: str, key: str, fd: int, size: int) -> str:
        """Ranges in parallel; this thread hashes them in order as they land (overlapping the download)."""
        ranges = [(off, min(self.part_size, size - off)) for off in range(0, size, self.part_size)]
        futures = [self._pool.submit(self._call, "downloading", lambda r=r: self._get_range(bucket, key, fd, *r),
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

    def _get_range(self, bucket: str, key: str, fd: int, offset: int, length: int) -> None:
        response = self.client.get_object(bucket, key, offset=offset, length=length)
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


def _is_network_error(e: BaseException) -> bool:
    import urllib3

    return isinstance(e, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def _reason(e: BaseException) -> str:
    import urllib3

    if isinstance(e, urllib3.exceptions.MaxRetryError) and e.reason is not None:
        e = e.reason
    text = str(e).lower()
    if isinstance(e, urllib3.exceptions.NewConnectionError) or "refused" in text:
        return "connection refused"
    if isinstance(e, urllib3.exceptions.NameResolutionError) or "resolution" in text:
        return "host name not found"
    if isinstance(e, (urllib3.exceptions.TimeoutError, TimeoutError)) or "timed out" in text:
        return "timed out"
    if isinstance(e, urllib3.exceptions.SSLError) or "ssl" in text or "certificate" in text:
        return "TLS handshake failed"
    return "connection lost"


# -- the checkpoint's uploader ---------------------------------------------------------------------

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
            earlier = list(self._pending) if name == MANIFEST else []
            prior = self._by_file.get(ident)
            future = self._files.submit(self._send, fd, key, earlier, prior)
            self._pending.append(future)
            self._by_file[ident] = (key, future)

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


# -- downloads into a cache ------------------------------------------------------------------------

def fetch_model(uri: str, cache_dir: Path, store: Optional[S3Store] = None) -> Path:
    """Download a model folder `s3://bucket/prefix/` into `cache_dir/bucket/prefix` and return it.
    With a manifest.json, exactly its files, each checked against its sha256; without one, every object
    under the prefix. Files already cached with the same size and sha256 (or ETag) are not fetched again."""
    bucket, prefix = parse_s3_uri(uri)
    store = store or S3Store()
    store.check_bucket(bucket)
    local = Path(cache_dir) / bucket / prefix
    objects = {key[len(prefix) + 1 if prefix else 0:]: (size, etag) for key, size, etag in store.list(bucket, prefix)}
    if not objects:
        raise ObjectNotFound(f"{uri}: no objects under this prefix")
    local.mkdir(parents=True, exist_ok=True)
    etags = _read_etags(local)
    if MANIFEST in objects:
        _fetch_one(store, bucket, join_key(prefix, MANIFEST), local, MANIFEST, objects[MANIFEST], None, etags)
        doc = json.loads((local / MANIFEST).read_text())
        wanted = {f["name"]: (int(f["size"]), f["sha256"]) for f in doc.get("files", [])}
        missing = sorted(set(wanted) - set(objects))
        if missing:
            raise ObjectNotFound(f"{uri}: {MANIFEST} lists {missing[0]}, which is not in the bucket")
    else:
        wanted = {name: (size, None) for name, (size, _) in objects.items()}
    names = [n for n in wanted if n != MANIFEST]
    for name in names:  # one file at a time, each in parallel ranges
        _fetch_one(store, bucket, join_key(prefix, name), local, name, objects[name], wanted[name][1], etags)
    _write_etags(local, etags)
    return local


def fetch_data(uri: str, cache_dir: Path, store: Optional[S3Store] = None) -> Path:
    """Download one object `s3://bucket/key` into `cache_dir/bucket/key` (again only if it changed)."""
    bucket, key = parse_s3_uri(uri)
    if not key:
        raise StorageError(f"{uri}: names a bucket, not a file")
    store = store or S3Store()
    store.check_bucket(bucket)
    remote = store.head(bucket, key)
    if remote is None:
        raise ObjectNotFound(f"{uri}: no such object")
    dest = Path(cache_dir) / bucket / key
    etags = _read_etags(dest.parent)
    _fetch_one(store, bucket, key, dest.parent, dest.name, (remote[0], remote[2]), remote[1], etags)
    _write_etags(dest.parent, etags)
    return dest


def _fetch_one(store: S3Store, bucket: str, key: str, folder: Path, name: str, remote: tuple[int, str],
               sha: Optional[str], etags: dict[str, str]) -> Transfer:
    size, etag = remote
    dest = folder / name
    if etag and dest.is_file() and dest.stat().st_size == size and etags.get(name) == etag:
        if sha is None or sha256_file(dest, cached=False) == sha:
            return Transfer(key, size, 0, "cached")
    transfer = store.download(bucket, key, dest, sha256=sha, size=size if sha else None)
    etags[name] = etag
    return transfer


def _read_etags(folder: Path) -> dict[str, str]:
    try:
        return json.loads((folder / ETAGS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _write_etags(folder: Path, etags: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ETAGS_FILE).write_text(json.dumps(etags, indent=1, sort_keys=True))
