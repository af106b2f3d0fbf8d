"""The dense format: a plain Hugging Face folder written one tensor at a time."""
from __future__ import annotations

import json

import psutil
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from ckpt_helpers import model_state, write_model
from prune_job.checkpoint import CheckpointError, CheckpointWriter
from prune_job.checkpoint.manifest import sha256_file


def test_dense_folder_loads_with_transformers(tiny_model_factory, tmp_path):
    src = tiny_model_factory("llama")
    seen = []
    summary, written = write_model(src, tmp_path / "out", "dense", max_shard_bytes=60_000, on_file_written=seen.append)
    shards = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert len(shards) > 2 and shards[-1] == f"model-{len(shards):05d}-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(written) and set(index["weight_map"].values()) == set(shards)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    state = model.state_dict()
    for name, tensor in written.items():
        assert torch.equal(state[name], tensor), name
    assert seen[-1].name == "manifest.json" and seen[-1] == summary.manifest
    assert summary.tensor_bytes == summary.dense_tensor_bytes
    assert summary.dense_bytes < summary.bytes < summary.dense_bytes * 1.05  # headers, index, manifest


def test_shards_respect_max_size_and_safetensors_reads_them(tmp_path):
    w = CheckpointWriter(tmp_path, format="dense", max_shard_bytes=1000)
    tensors = {f"t{i}": (torch.randn(7, 11) * 100).to(dt) for i, dt in
               enumerate([torch.float32, torch.float16, torch.bfloat16, torch.float32, torch.int64])}
    tensors["flag"] = torch.tensor([True, False, True])
    tensors["byte"] = torch.arange(5, dtype=torch.uint8)
    tensors["strided"] = torch.randn(8, 6).t()  # not contiguous
    for name, t in tensors.items():
        w.add(name, t)
    summary = w.finish({})
    found = {}
    for entry in summary.files:
        if entry.name.endswith(".safetensors"):
            assert entry.size <= 1000 + 512  # data limit + header
            with safe_open(tmp_path / entry.name, framework="pt") as f:
                for key in f.keys():
                    found[key] = f.get_tensor(key)
    assert found.keys() == tensors.keys()
    for name, t in tensors.items():
        assert torch.equal(found[name], t), name


def test_manifest_lists_every_file_with_sha256(tiny_model_factory, tmp_path):
    summary, _ = write_model(tiny_model_factory("llama"), tmp_path, "dense", max_shard_bytes=100_000)
    doc = json.loads(summary.manifest.read_text())
    assert doc["format"] == "dense" and doc["formatVersion"] == 1 and doc["source"]["uri"]
    names = {f["name"] for f in doc["files"]}
    on_disk = {p.name for p in tmp_path.iterdir()} - {"manifest.json"}
    assert names == on_disk
    for f in doc["files"]:
        assert sha256_file(tmp_path / f["name"]) == f["sha256"] and (tmp_path / f["name"]).stat().st_size == f["size"]
    assert doc["configSha256"] == sha256_file(tiny_model_factory("llama") / "config.json")  # the source's


def test_config_dtype_is_the_stored_one(tiny_model_factory, tmp_path):
    src = tiny_model_factory("llama")  # saved in float32
    write_model(src, tmp_path, "dense", dtype=torch.bfloat16)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(tmp_path)  # no dtype argument
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("fmt", ["dense", "compressed"])
def test_bytes_reach_disk_at_once_and_memory_stays_flat(tmp_path, fmt):
    w = CheckpointWriter(tmp_path, format=fmt, max_shard_bytes=64 << 20)
    block = torch.randn(1024, 1024)  # 4 MiB
    block[:, ::2] = 0  # half pruned
    rss = psutil.Process().memory_info().rss
    for i in range(100):  # 400 MiB of tensors
        w.add(f"b{i}", block, pruned=True)
        if i == 3:
            data = next(tmp_path.glob("*.data"))
            expected = block.numel() * 4 if fmt == "dense" else block.numel() * 2 + block.numel() // 8
            assert data.stat().st_size == 4 * expected
    growth = psutil.Process().memory_info().rss - rss
    w.finish({})
    assert growth < 64 << 20, f"RSS grew by {growth >> 20} MiB while writing 400 MiB"


def test_duplicate_names_and_use_after_finish_are_refused(tmp_path):
    w = CheckpointWriter(tmp_path, format="dense")
    w.add("a", torch.zeros(2))
    with pytest.raises(ValueError):
        w.add("a", torch.zeros(2))
    w.finish({})
    with pytest.raises(CheckpointError):
        w.add("b", torch.zeros(2))


def test_rewriting_a_folder_removes_the_old_manifest_first(tmp_path):
    w = CheckpointWriter(tmp_path, format="dense")
    w.add("a", torch.zeros(2))
    w.finish({})
    CheckpointWriter(tmp_path, format="dense")
    assert not (tmp_path / "manifest.json").exists()
