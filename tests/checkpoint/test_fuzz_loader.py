"""Property tests (issue 12): random bytes and random mutations of a valid checkpoint, its index
and its safetensors headers, fed to the header reader and the loader. Every outcome is a clean
refusal (CheckpointError naming the file) or a load of exactly what the files declare, never
another exception, a hang, or an allocation beyond what the files' sizes justify."""
from __future__ import annotations

import hashlib
import json
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt_helpers import write_model
from prune_job.checkpoint import CheckpointError, CompressedReader, load_pretrained
from prune_job.checkpoint.headers import read_header, read_tensor
from prune_job.spec import Pattern

FUZZ = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow], derandomize=True)
INDEX = "model.compressed.index.json"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_model_factory):
    """Two tiny compressed checkpoints (2:4 and unstructured) and what they hold."""
    src = tiny_model_factory("llama", layers=1, hidden=32)
    out = {}
    for label, pattern in (("nm", Pattern(2, 4)), ("bitmask", None)):
        folder = tmp_path_factory.mktemp(label) / "ckpt"
        _, written = write_model(src, folder, "compressed", pattern, prune=True)
        out[label] = (folder, written)
    return out


def _rehash(folder: Path, name: str) -> None:
    doc = json.loads((folder / "manifest.json").read_text())
    data = (folder / name).read_bytes()
    for f in doc["files"]:
        if f["name"] == name:
            f["size"], f["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(doc))


def _load_all(folder: Path) -> dict[str, torch.Tensor]:
    reader = CompressedReader(folder)
    return reader.read(list(reader.keys()))


def _check_outcome(folder: Path, written: dict[str, torch.Tensor], unchanged: bool) -> None:
    try:
        out = _load_all(folder)
    except CheckpointError as err:
        assert str(folder) in str(err)  # names the file
        return
    files = sum(p.stat().st_size for p in folder.iterdir())
    assert sum(t.numel() * t.element_size() for t in out.values()) <= 64 * files
    index = json.loads((folder / INDEX).read_text())
    for name, t in out.items():
        info = index["tensors"][name]
        if info["encoding"] != "dense":
            assert list(t.shape) == info["shape"] and str(t.dtype) == f"torch.{info['dtype']}"
        if unchanged:
            assert torch.equal(t, written[name]), name


# -- the header reader --------------------------------------------------------------------------------

@FUZZ
@given(data=st.binary(max_size=256))
def test_random_bytes_are_refused_or_read_exactly(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.safetensors"
        path.write_bytes(data)
        try:
            header = read_header(path)
        except CheckpointError as err:
            assert "x.safetensors" in str(err)
            return
        for name, t in header.items():
            assert read_tensor(t, name).numel() * 1 <= len(data)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=6),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                           max_leaves=6)


@st.composite
def header_mutation(draw):
    """(path inside the header: tensor, field, [item]) and a new value, or a deletion."""
    field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra", None]))
    item = draw(st.integers(0, 2))
    value = draw(JSON_VALUES | st.integers(-5, 5000))
    return field, item, value, draw(st.integers(0, 10**6))


@FUZZ
@given(mutation=header_mutation(), label=st.sampled_from(["nm", "bitmask"]))
def test_mutated_shard_headers(checkpoints, mutation, label):
    src, written = checkpoints[label]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ckpt"
        shutil.copytree(src, folder)
        shard = sorted(folder.glob("*.safetensors"))[0]
        raw = shard.read_bytes()
        (length,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + length])
        names = sorted(k for k in header if k != "__metadata__")
        field, item, value, pick = mutation
        tensor = header[names[pick % len(names)]]
        if field is None:
            header.pop(names[pick % len(names)])
        elif isinstance(tensor.get(field), list) and tensor[field]:
            tensor[field][item % len(tensor[field])] = value
        else:
            tensor[field] = value
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)
        shard.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + length:])
        _rehash(folder, shard.name)
        _check_outcome(folder, written, unchanged=False)


# -- the loader: index, manifest and data bytes ---------------------------------------------------------

@FUZZ
@given(pick=st.integers(0, 10**6), value=JSON_VALUES, field=st.sampled_from(
    ["encoding", "dtype", "shape", "pattern", "index", "index_bits", "parts", "weight_map", "tensors", None]),
    label=st.sampled_from(["nm", "bitmask"]))
def test_mutated_index(checkpoints, pick, value, field, label):
    src, written = checkpoints[label]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ckpt"
        shutil.copytree(src, folder)
        index = json.loads((folder / INDEX).read_text())
        if field in ("weight_map", "tensors"):
            keys = sorted(index[field])
            index[field][keys[pick % len(keys)]] = value
        elif field is None:
            index = value
        else:
            keys = sorted(index["tensors"])
            index["tensors"][keys[pick % len(keys)]][field] = value
        (folder / INDEX).write_text(json.dumps(index))
        _rehash(folder, INDEX)
        _check_outcome(folder, written, unchanged=False)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1, max_size=4),
       rehash=st.booleans(), label=st.sampled_from(["nm", "bitmask"]))
def test_flipped_bytes(checkpoints, flips, rehash, label):
    """Without a new manifest every flip is refused by the sha256; with one, the data section's flips
    may load (the loader cannot know the values), but never as a crash or with the wrong shapes."""
    src, written = checkpoints[label]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ckpt"
        shutil.copytree(src, folder)
        files = sorted([folder / INDEX, *folder.glob("*.safetensors")])  # what the reader reads
        target = files[flips[0][0] % len(files)]
        original = target.read_bytes()
        data = bytearray(original)
        for offset, xor in flips:
            data[offset % len(data)] ^= xor
        target.write_bytes(bytes(data))
        if bytes(data) == original:  # the flips cancelled out
            _check_outcome(folder, written, unchanged=True)
        elif rehash:
            _rehash(folder, target.name)
        else:
            with pytest.raises(CheckpointError, match="sha256 does not match|not JSON|not a checkpoint"):
                _load_all(folder)
            return
        _check_outcome(folder, written, unchanged=False)


@FUZZ
@given(data=st.binary(max_size=64))
def test_random_manifest(checkpoints, data):
    src, _ = checkpoints["nm"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ckpt"
        shutil.copytree(src, folder)
        (folder / "manifest.json").write_bytes(data)
        with pytest.raises(CheckpointError):
            _load_all(folder)


@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(offset=st.integers(0, 10**9), xor=st.integers(1, 255))
def test_whole_model_loader_refuses_or_loads(checkpoints, offset, xor):
    """load_pretrained itself, on a checkpoint whose index was flipped and rehashed."""
    src, _ = checkpoints["nm"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ckpt"
        shutil.copytree(src, folder)
        data = bytearray((folder / INDEX).read_bytes())
        data[offset % len(data)] ^= xor
        (folder / INDEX).write_bytes(bytes(data))
        _rehash(folder, INDEX)
        try:
            load_pretrained(folder)
        except CheckpointError as err:
            assert str(folder) in str(err)
