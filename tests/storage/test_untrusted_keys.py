"""Object keys and manifest names from a bucket are checked by the project itself (issue 12): a
permissive store that lists keys a real S3 server would reject (`../x`, `a//b`, absolute) is
refused naming the object, and nothing is written outside the cache folder."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from prune_job.storage import StorageError
from prune_job.storage.fetch import fetch_data, fetch_model
from prune_job.storage.transfer import Transfer


class PermissiveStore:
    """Lists and serves whatever keys it holds, as a careless or hostile server might."""

    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects
        self.downloaded: list[Path] = []

    def check_bucket(self, bucket: str) -> None:
        pass

    def list(self, bucket: str, prefix: str):
        return [(k, len(v), hashlib.md5(v).hexdigest()) for k, v in self.objects.items()]

    def head(self, bucket: str, key: str):
        data = self.objects.get(key)
        return None if data is None else (len(data), None, hashlib.md5(data).hexdigest())

    def download(self, bucket: str, key: str, dest: Path, sha256=None, size=None) -> Transfer:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(self.objects[key])
        self.downloaded.append(dest)
        return Transfer(key, len(self.objects[key]), len(self.objects[key]), "downloaded")


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("key", ["models/m/../../../escape.txt", "models/m//a.json", "models/m/./a.json",
                                 "models/m/a\\..\\b", "other/prefix/x.json"])
def test_listed_keys_that_leave_the_prefix_are_refused(tmp_path, key):
    store = PermissiveStore({"models/m/config.json": b"{}", key: b"evil"})
    cache = tmp_path / "cache"
    with pytest.raises(StorageError, match="refused") as err:
        fetch_model("s3://bucket/models/m", cache, store)
    assert repr(key.removeprefix("models/m/"))[1:-1] in str(err.value) or key in str(err.value)
    assert store.downloaded == []
    assert not (tmp_path / "escape.txt").exists()
    assert all(p.is_relative_to(cache) for p in _files_under(tmp_path))


@pytest.mark.parametrize("name", ["../../../escape.safetensors", "/tmp/abs.safetensors", "a//b.safetensors"])
def test_manifest_names_that_leave_the_folder_are_refused(tmp_path, name):
    evil = b"evil"
    manifest = {"files": [{"name": name, "size": len(evil), "sha256": hashlib.sha256(evil).hexdigest()}]}
    store = PermissiveStore({"m/manifest.json": json.dumps(manifest).encode(), f"m/{name}": evil})
    # the evil key itself is also listed: the listing check refuses it first, or the manifest check does
    with pytest.raises(StorageError, match="refused"):
        fetch_model("s3://bucket/m", tmp_path / "cache", store)
    store2 = PermissiveStore({"m/manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(StorageError, match=r"manifest.json lists file .* refused"):
        fetch_model("s3://bucket/m", tmp_path / "cache2", store2)
    assert not (tmp_path / "escape.safetensors").exists()
    assert [p.name for p in store2.downloaded] == ["manifest.json"]


def test_a_manifest_of_another_shape_is_a_clean_refusal(tmp_path):
    store = PermissiveStore({"m/manifest.json": b'{"files": [{"name": "a"}]}', "m/a": b"x"})
    with pytest.raises(StorageError, match="manifest.json is not a checkpoint manifest"):
        fetch_model("s3://bucket/m", tmp_path / "cache", store)
    store = PermissiveStore({"m/manifest.json": b"\xff\xfe not json", "m/a": b"x"})
    with pytest.raises(StorageError, match="manifest.json is not a checkpoint manifest"):
        fetch_model("s3://bucket/m", tmp_path / "cache", store)


def test_a_data_key_with_dot_segments_is_refused(tmp_path):
    store = PermissiveStore({"../../escape.txt": b"evil"})
    with pytest.raises(StorageError, match="refused"):
        fetch_data("s3://bucket/../../escape.txt", tmp_path / "cache", store)
    assert store.downloaded == []


def test_plain_keys_still_fetch(tmp_path):
    store = PermissiveStore({"m/config.json": b"{}", "m/sub/w.safetensors": b"w"})
    local = fetch_model("s3://bucket/m", tmp_path / "cache", store)
    assert (local / "sub" / "w.safetensors").read_bytes() == b"w"
