"""Names, headers and index entries from untrusted files (issue 12): every bad one is refused
with a message naming the file and the tensor, before anything is read or allocated."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch

from ckpt_helpers import write_model
from prune_job.checkpoint import CheckpointError, CompressedReader, load_pretrained
from prune_job.checkpoint.headers import read_header
from prune_job.pipeline.model import WeightIndex
from prune_job.sources.models import ModelFormatError
from prune_job.sources.names import UnsafeName, check_name, name_problem, path_inside
from prune_job.spec import Pattern


# -- names ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["/etc/passwd", "a//b", "./a", "a/./b", "../x", "a/../../x", "a/..", "a\\..\\b",
                                  "a\x00b", "", "a/", "x\ny"])
def test_unsafe_names_are_refused_naming_the_object(name):
    assert name_problem(name)
    with pytest.raises(UnsafeName, match="manifest.json lists"):
        check_name(name, "manifest.json lists")


@pytest.mark.parametrize("name", ["model.safetensors", "sub/dir/file.json", "a..b", ".hidden", "x-y_z.0"])
def test_plain_names_pass(name):
    assert check_name(name, "x") == name


def test_a_name_through_a_symlink_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "folder" / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(UnsafeName, match="resolves outside"):
        path_inside(tmp_path / "folder", "link/file", "index names")


def _rehash(folder: Path, name: str) -> None:
    """Record a file's new size and sha256 in the manifest, as someone editing a bucket would."""
    doc = json.loads((folder / "manifest.json").read_text())
    data = (folder / name).read_bytes()
    for f in doc["files"]:
        if f["name"] == name:
            f["size"], f["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(doc))


@pytest.fixture
def compressed(tiny_model_factory, tmp_path):
    src = tiny_model_factory("llama", layers=1, hidden=32)
    write_model(src, tmp_path / "ckpt", "compressed", Pattern(2, 4), prune=True)
    return tmp_path / "ckpt"


@pytest.mark.parametrize("bad", ["../outside.safetensors", "/tmp/abs.safetensors", "a//b.safetensors"])
def test_manifest_names_outside_the_folder_are_refused(compressed, bad):
    doc = json.loads((compressed / "manifest.json").read_text())
    doc["files"].append({"name": bad, "size": 1, "sha256": "0" * 64})
    (compressed / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"manifest.json: listed file .* refused"):
        CompressedReader(compressed)


def test_index_shard_names_outside_the_folder_are_refused(compressed):
    index = json.loads((compressed / "model.compressed.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../../etc/passwd"
    (compressed / "model.compressed.index.json").write_text(json.dumps(index))
    _rehash(compressed, "model.compressed.index.json")
    with pytest.raises(CheckpointError, match=rf"tensor '{first}' is in shard '../../etc/passwd' has a"):
        CompressedReader(compressed)


def test_index_missing_key_is_a_clean_refusal(compressed):
    index = json.loads((compressed / "model.compressed.index.json").read_text())
    del index["tensors"]
    (compressed / "model.compressed.index.json").write_text(json.dumps(index))
    _rehash(compressed, "model.compressed.index.json")
    with pytest.raises(CheckpointError, match="no 'tensors' mapping"):
        CompressedReader(compressed)


def test_manifest_entry_without_sha256_is_a_clean_refusal(compressed):
    doc = json.loads((compressed / "manifest.json").read_text())
    del doc["files"][0]["sha256"]
    (compressed / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"files\[0\] is not \{name, size, sha256\}"):
        CompressedReader(compressed)


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.update(formatVersion="2"), "formatVersion '2' is not a whole number"),
    (lambda d: d.update(files={"a": 1}), "has no list of files"),
    (lambda d: d["files"].append("x"), r"files\[\d+\] is not"),
    (lambda d: d["files"][0].update(size="big"), r"files\[0\] is not"),
])
def test_malformed_manifests_are_clean_refusals(compressed, edit, message):
    doc = json.loads((compressed / "manifest.json").read_text())
    edit(doc)
    (compressed / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(compressed)


def test_a_stale_shard_beside_a_dense_checkpoint_is_refused(tiny_model_factory, tmp_path):
    src = tiny_model_factory("llama", layers=1, hidden=32)
    write_model(src, tmp_path / "ckpt", "dense")
    shard = next((tmp_path / "ckpt").glob("*.safetensors"))
    assert shard.name != "model.safetensors"
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(shard.read_bytes())  # an earlier run's single file
    with pytest.raises(CheckpointError, match="model.safetensors: not listed in manifest.json"):
        load_pretrained(tmp_path / "ckpt")


def test_a_dense_index_naming_a_file_outside_the_manifest_is_refused(tiny_model_factory, tmp_path):
    src = tiny_model_factory("llama", layers=1, hidden=32)
    write_model(src, tmp_path / "ckpt", "dense")
    index_path = tmp_path / "ckpt" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../../elsewhere.safetensors"
    index_path.write_text(json.dumps(index))
    _rehash(tmp_path / "ckpt", index_path.name)
    with pytest.raises(CheckpointError, match=r"names shard '../../elsewhere.safetensors', which manifest.json does not list"):
        load_pretrained(tmp_path / "ckpt")


# -- safetensors headers ----------------------------------------------------------------------------

def _file(path: Path, header: dict, data: bytes = b"", length: int | None = None) -> Path:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + data)
    return path


GOOD = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "U8", "shape": [4], "data_offsets": [16, 20]}}


def test_a_good_hand_made_header_reads_exactly(tmp_path):
    data = torch.arange(4, dtype=torch.float32).numpy().tobytes() + bytes([1, 2, 3, 4])
    index = WeightIndex([_file(tmp_path / "m.safetensors", GOOD, data)])
    out = index.read(["a", "b"])
    assert torch.equal(out["a"], torch.arange(4, dtype=torch.float32).reshape(2, 2))
    assert out["b"].tolist() == [1, 2, 3, 4]


def _bad(**changes):
    header = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        header["a"][key] = value
    return header


@pytest.mark.parametrize("header,data,length,message", [
    (GOOD, b"\0" * 20, 10**12, "header length 1000000000000 does not fit"),
    (GOOD, b"\0" * 20, 2**64 - 1, "does not fit"),
    (_bad(data_offsets=[16, 0]), b"\0" * 20, None, "not an ordered pair"),
    (_bad(data_offsets=[0, 10**15]), b"\0" * 20, None, "not an ordered pair inside"),
    (_bad(data_offsets=[4, 20]), b"\0" * 20, None, "overlaps the previous tensor|leaves a hole"),
    (_bad(shape=[10**9, 10**9]), b"\0" * 20, None, "needs 4000000000000000000 bytes"),
    (_bad(shape=[2, -2]), b"\0" * 20, None, "not a list of at most"),
    (_bad(shape=[True, 4]), b"\0" * 20, None, "not a list of at most"),
    (_bad(dtype="F128"), b"\0" * 20, None, "unsupported dtype 'F128'"),
    (GOOD, b"\0" * 24, None, "4 bytes after the last tensor"),
    ({"a": [1, 2]}, b"", None, "expected dtype, shape and data_offsets"),
    ([1, 2], b"", None, "not a mapping"),
])
def test_bad_headers_are_refused_naming_file_and_tensor(tmp_path, header, data, length, message):
    path = _file(tmp_path / "model-00001.safetensors", header, data, length)
    with pytest.raises(ModelFormatError, match=message) as err:
        WeightIndex([path])
    assert "model-00001.safetensors" in str(err.value)
    if isinstance(header, dict) and "data_offsets" in str(header) and length is None and message != "not a mapping":
        assert "'a'" in str(err.value) or "'b'" in str(err.value) or "after the last tensor" in str(err.value)


def test_non_json_and_short_files_are_refused(tmp_path):
    (tmp_path / "short.safetensors").write_bytes(b"\x01\x00")
    with pytest.raises(CheckpointError, match="too short"):
        read_header(tmp_path / "short.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{x")
    with pytest.raises(CheckpointError, match="not JSON"):
        read_header(tmp_path / "junk.safetensors")


def test_source_shapes_against_config_json(tiny_model_factory, tmp_path):
    """A stored tensor whose shape is not what config.json makes of it is refused before any read."""
    import shutil

    from prune_job.pipeline.model import open_model

    src = tiny_model_factory("llama", layers=1, hidden=32)
    folder = tmp_path / "model"
    shutil.copytree(src, folder)
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = config["intermediate_size"] * 2
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match=r"model.safetensors: tensor model.layers.0.mlp.\w+_proj.weight has shape"):
        open_model(folder, device=torch.device("cpu"))


# -- compressed parts against each other --------------------------------------------------------------

def _edit_index(folder: Path, edit) -> None:
    index = json.loads((folder / "model.compressed.index.json").read_text())
    name = next(n for n, i in index["tensors"].items() if i["encoding"] == "nm")
    edit(index["tensors"][name])
    (folder / "model.compressed.index.json").write_text(json.dumps(index))
    _rehash(folder, "model.compressed.index.json")
    return name


@pytest.mark.parametrize("edit,message", [
    (lambda i: i.update(shape=[i["shape"][0] * 2, i["shape"][1]]), "values, a 2:4 tensor"),
    (lambda i: i.update(pattern="2:8"), "a 2:8 index is combination with 5 bits"),
    (lambda i: i.update(pattern="4:2"), "needs 0 < N < M"),
    (lambda i: i.update(pattern="x"), "is not N:M"),
    (lambda i: i.update(index_bits=64), "not 'combination' with 64"),
    (lambda i: i.update(dtype="int8"), "not a floating-point dtype"),
    (lambda i: i.update(encoding="zip"), "unknown encoding"),
    (lambda i: i["parts"].pop("nm_index"), "parts must be values, nm_index"),
])
def test_compressed_declarations_are_checked_against_each_other(compressed, edit, message):
    name = _edit_index(compressed, edit)
    with pytest.raises(CheckpointError, match=message) as err:
        reader = CompressedReader(compressed)
        reader.read([name])
    assert name in str(err.value)


def test_nm_codes_out_of_range_are_refused(compressed):
    """Codes 6 and 7 are not ranks of a 2-of-4 set: refused, not scattered into a wrong place."""
    reader = CompressedReader(compressed)
    name = next(n for n, i in reader.infos.items() if i["encoding"] == "nm")
    shard = reader.weight_map[reader.infos[name]["parts"]["nm_index"]]
    stored = reader.header(shard)[reader.infos[name]["parts"]["nm_index"]]
    path = compressed / shard
    data = bytearray(path.read_bytes())
    data[stored.start:stored.end] = b"\xff" * (stored.end - stored.start)
    path.write_bytes(bytes(data))
    _rehash(compressed, shard)
    with pytest.raises(CheckpointError, match="N:M code 7 out of range"):
        CompressedReader(compressed).read([name])


def test_bitmask_count_against_values_is_checked(tiny_model_factory, tmp_path):
    src = tiny_model_factory("llama", layers=1, hidden=32)
    write_model(src, tmp_path / "ckpt", "compressed", None, prune=True)
    reader = CompressedReader(tmp_path / "ckpt")
    name = next(n for n, i in reader.infos.items() if i["encoding"] == "bitmask")
    part = reader.infos[name]["parts"]["bitmask"]
    shard = reader.weight_map[part]
    stored = reader.header(shard)[part]
    data = bytearray((tmp_path / "ckpt" / shard).read_bytes())
    data[stored.start] ^= 0xFF  # eight elements change sides
    (tmp_path / "ckpt" / shard).write_bytes(bytes(data))
    _rehash(tmp_path / "ckpt", shard)
    with pytest.raises(CheckpointError, match=r"the bitmask marks \d+ non-zeros, \d+ values stored"):
        CompressedReader(tmp_path / "ckpt").read([name])
