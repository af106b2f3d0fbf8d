"""Downloads into a local cache: a model folder (`fetch_model`, checked against its manifest)
or one object (`fetch_data`). A file already cached with the same size and ETag (recorded in
`.prune-job-etags.json` next to it) is not fetched again."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from prune_job.sources.names import check_name, path_inside
from prune_job.storage.checksums import sha256_file
from prune_job.storage.client import S3Store, join_key, parse_s3_uri
from prune_job.storage.errors import ObjectNotFound, StorageError
from prune_job.storage.transfer import ETAGS_FILE, JOURNAL, MANIFEST, Transfer


def fetch_model(uri: str, cache_dir: Path, store: Optional[S3Store] = None) -> Path:
    """Download a model folder `s3://bucket/prefix/` into `cache_dir/bucket/prefix` and return it.
    With a manifest.json, exactly its files, each checked against its sha256; without one, every object
    under the prefix. Files already cached with the same size and sha256 (or ETag) are not fetched again."""
    bucket, prefix = parse_s3_uri(uri)
    store = store or S3Store()
    store.check_bucket(bucket)
    local = path_inside(Path(cache_dir), join_key(bucket, prefix), f"{uri}: location", StorageError)
    objects = _listed(store, uri, bucket, prefix)
    if not objects:
        raise ObjectNotFound(f"{uri}: no objects under this prefix")
    local.mkdir(parents=True, exist_ok=True)
    etags = _read_etags(local)
    if MANIFEST in objects:
        _fetch_one(store, bucket, join_key(prefix, MANIFEST), local, MANIFEST, objects[MANIFEST], None, etags)
        wanted = _manifest_files(uri, local / MANIFEST)
        missing = sorted(set(wanted) - set(objects))
        if missing:
            raise ObjectNotFound(f"{uri}: {MANIFEST} lists {missing[0]}, which is not in the bucket")
    elif JOURNAL in objects:  # a run in progress: its journal alone, so that the loader can say so
        (local / MANIFEST).unlink(missing_ok=True)  # a cached manifest of what the location held before
        wanted = {JOURNAL: (objects[JOURNAL][0], None)}
    else:
        wanted = {name: (size, None) for name, (size, _) in objects.items()}
    names = [n for n in wanted if n != MANIFEST]
    for name in names:  # one file at a time, each in parallel ranges
        _fetch_one(store, bucket, join_key(prefix, name), local, name, objects[name], wanted[name][1], etags)
    _write_etags(local, etags)
    return local


def _listed(store: S3Store, uri: str, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    """{name relative to the prefix: (size, etag)}, every name checked (a key is data, not a path)."""
    start = prefix + "/" if prefix else ""
    objects = {}
    for key, size, etag in store.list(bucket, prefix):
        if not key.startswith(start):
            raise StorageError(f"{uri}: the server listed {key!r}, which is not under the prefix; refused")
        objects[check_name(key[len(start):], f"{uri}: object key", StorageError)] = (size, etag)
    return objects


def _manifest_files(uri: str, path: Path) -> dict[str, tuple[int, str]]:
    """{file name: (size, sha256)} from a downloaded manifest.json, every name checked."""
    return manifest_files(uri, path.read_bytes())


def manifest_files(uri: str, raw: bytes) -> dict[str, tuple[int, str]]:
    """{file name: (size, sha256)} from a manifest.json's bytes, every name checked."""
    try:
        doc = json.loads(raw)
        files = doc["files"]
        wanted = {f["name"]: (int(f["size"]), str(f["sha256"])) for f in files}
    except (ValueError, KeyError, TypeError) as err:
        raise StorageError(f"{uri}: {MANIFEST} is not a checkpoint manifest ({type(err).__name__}: {err}); "
                           "expected files: [{name, size, sha256}, ...]") from None
    for name in wanted:
        check_name(name, f"{uri}: {MANIFEST} lists file", StorageError)
    return wanted


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
    dest = path_inside(Path(cache_dir), join_key(bucket, key), f"{uri}: object key", StorageError)
    etags = _read_etags(dest.parent)
    _fetch_one(store, bucket, key, dest.parent, dest.name, (remote[0], remote[2]), remote[1], etags)
    _write_etags(dest.parent, etags)
    return dest


def _fetch_one(store: S3Store, bucket: str, key: str, folder: Path, name: str, remote: tuple[int, str],
               sha: Optional[str], etags: dict[str, str]) -> Transfer:
    size, etag = remote
    dest = path_inside(folder, name, f"s3://{bucket}/{key}: file", StorageError)
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
