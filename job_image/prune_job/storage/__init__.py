"""S3 (MinIO, AWS, any S3 server) for models, data and results, through the `minio` SDK.

- `errors`: the StorageError family and the classification of SDK and network errors.
- `client`: settings from the environment (`S3Config`), `s3://` URIs, and `S3Store`: one
  endpoint, every request retried with exponential backoff on transient errors.
- `upload`: files up to `part_size` in one PUT, larger ones multipart with parts in
  parallel; an object with the same size and sha256 (kept in its `x-amz-meta-sha256`) is not
  sent again, and an unfinished multipart upload of the same key is resumed, re-sending only
  the parts whose MD5 does not match.
- `download`: parallel ranged GETs, verified against a given sha256 or the object's recorded one.
- `uploader`: `Uploader`, the checkpoint writer's `on_file_written`; uploads each file as it is
  finished, turns a renamed shard into a server-side copy, sends manifest.json only after
  everything before it. `upload_folder` for a finished folder.
- `fetch`: `fetch_model` (verified against the manifest's sha256 when there is one) and
  `fetch_data` into a local cache that is not fetched again when unchanged.
- `checksums`: sha256 of files, computed once per file version in this process.

Nothing here imports `minio` until a store is made: the checkpoint code imports `checksums`
without the [job] extra's SDK.
"""
from prune_job.storage.client import DEFAULT_PART_SIZE, MIN_PART_SIZE, S3Config, S3Store, join_key, parse_s3_uri
from prune_job.storage.errors import (
    AccessDenied,
    BucketNotFound,
    EndpointUnreachable,
    IntegrityError,
    ObjectNotFound,
    StorageError,
    UploadError,
)
from prune_job.storage.fetch import fetch_data, fetch_model
from prune_job.storage.transfer import ETAGS_FILE, MANIFEST, SHA_META, MiB, Transfer
from prune_job.storage.uploader import MAX_COPY_BYTES, TEMP_SUFFIXES, Uploader, upload_folder

__all__ = [
    "AccessDenied", "BucketNotFound", "DEFAULT_PART_SIZE", "ETAGS_FILE", "EndpointUnreachable", "IntegrityError",
    "MANIFEST", "MAX_COPY_BYTES", "MIN_PART_SIZE", "MiB", "ObjectNotFound", "S3Config", "S3Store", "SHA_META",
    "StorageError", "TEMP_SUFFIXES", "Transfer", "UploadError", "Uploader", "fetch_data", "fetch_model",
    "join_key", "parse_s3_uri", "upload_folder",
]
