"""The S3 client: settings from the environment, `s3://` URIs, and `S3Store`, one endpoint
with checked calls (retried with backoff on transient errors) and the object operations.

Settings come only from the environment, under the names every S3 tool knows:
AWS_ENDPOINT_URL (`http://host:port`; https means TLS; default AWS),
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION (or
AWS_DEFAULT_REGION), AWS_CA_BUNDLE. Credentials never appear in a message.

Uploading and downloading one object live in `upload.py` and `download.py`, as functions
of a store; `S3Store.upload` and `S3Store.download` hand over to them.
"""
from __future__ import annotations

import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, TypeVar
from urllib.parse import urlparse

from prune_job.storage import download as _download
from prune_job.storage import upload as _upload
from prune_job.storage.errors import BucketNotFound, ObjectNotFound, StorageError, classify
from prune_job.storage.transfer import SHA_META, MiB, Transfer

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_PART_SIZE = 32 * MiB
MIN_PART_SIZE = 5 * MiB


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
                error, transient = classify(e, what, self.config.url, bucket, key)
                if not transient or attempt == self.retries:
                    raise error from None
                delay = min(self.backoff * 2 ** attempt, 30.0) * (0.5 + random.random())
                log.warning("%s (attempt %d of %d); retrying in %.1fs", error, attempt + 1, self.retries + 1, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _parallel(self, fn: Callable[[Any], T], items: list[Any]) -> list[T]:
        futures = [self._pool.submit(fn, item) for item in items]
        """`fn` of every item on the store's threads; waits for all, then raises the first error."""
        results, first_error = [], None
        for f in futures:
            try:
                results.append(f.result())
            except BaseException as e:  # noqa: BLE001 - wait for all, then raise the first
                first_error = first_error or e
        if first_error is not None:
            raise first_error
        return results

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

    def copy(self, bucket: str, src: str, dst: str) -> None:
        from minio.commonconfig import CopySource

        self._call("copying to", lambda: self.client.copy_object(bucket, dst, CopySource(bucket, src)), bucket, dst)

    def remove(self, bucket: str, key: str) -> None:
        self._call("removing", lambda: self.client.remove_object(bucket, key), bucket, key)

    # transfers (upload.py, download.py) -----------------------------------------------------------
    def upload(self, path: Optional[Path], bucket: str, key: str, sha256: Optional[str] = None,
               fd: Optional[int] = None, on_bytes: Optional[Callable[[int], None]] = None) -> Transfer:
        """Upload one file (or an open descriptor of it) unless the object already has its size and sha256."""
        return _upload.upload(self, path, bucket, key, sha256, fd, on_bytes)

    def download(self, bucket: str, key: str, dest: Path, sha256: Optional[str] = None,
                 size: Optional[int] = None) -> Transfer:
        """Parallel ranged GETs into `dest`, verified against `sha256` or the object's recorded sha256."""
        return _download.download(self, bucket, key, dest, sha256, size)
