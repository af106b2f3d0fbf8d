"""The writer's block boundaries and state: a writer restored from the journal's state after the first
blocks writes the same files as one that ran through (docs/resume.md)."""
import json

import pytest
import torch

from prune_job.checkpoint import CheckpointError, CheckpointWriter
from prune_job.checkpoint.journal import (Journal, WrittenShards, differences, entries, identity, read_journal,
                                          restore_provisional_names, verify_files, write_journal)


def block_tensors(i):
    g = torch.Generator().manual_seed(i)
    w = torch.randn(16, 32, generator=g)
    w[:, ::2] = 0  # pruned: 50%
    return {f"layers.{i}.mlp.weight": (w, True), f"layers.{i}.norm.weight": (torch.randn(32, generator=g), False)}


def write_blocks(writer, blocks):
    for i in blocks:
        for name, (t, pruned) in block_tensors(i).items():
            writer.add(name, t, pattern=None, pruned=pruned)
        yield i, writer.end_block()


@pytest.mark.parametrize("fmt", ["compressed", "dense"])
def test_restored_writer_writes_the_same_bytes(tmp_path, fmt):
    with CheckpointWriter(tmp_path / "a", format=fmt) as w:
        list(write_blocks(w, range(3)))
        w.finish({})
    with CheckpointWriter(tmp_path / "b", format=fmt) as w:
        closed = [p for _, c in write_blocks(w, range(2)) for p in c]
        state = json.loads(json.dumps(w.state()))  # through JSON, as the journal keeps it
    assert [p.name for p in closed] == ["model-00001.safetensors", "model-00002.safetensors"]
    with CheckpointWriter(tmp_path / "b", format=fmt) as w:
        w.restore(state)
        read = WrittenShards(tmp_path / "b", state).read(["layers.1.mlp.weight"])["layers.1.mlp.weight"]
        assert torch.equal(read, block_tensors(1)["layers.1.mlp.weight"][0])
        list(write_blocks(w, [2]))
        w.finish({})
    for path in (tmp_path / "a").iterdir():
        other = (tmp_path / "b" / path.name).read_bytes()
        if path.name == "manifest.json":
            a, b = json.loads(path.read_text()), json.loads(other)
            a.pop("createdAt"), b.pop("createdAt")
            assert a == b
        else:
            assert path.read_bytes() == other, path.name


def test_state_needs_a_closed_shard_and_restore_an_empty_writer(tmp_path):
    with CheckpointWriter(tmp_path) as w:
        w.add("x", torch.ones(4))
        with pytest.raises(CheckpointError, match="end_block"):
            w.state()
        w.end_block()
        state = w.state()
        with pytest.raises(CheckpointError, match="before any tensor"):
            w.restore(state)


def test_journal_round_trip_verification_and_renamed_shards(tmp_path):
    with CheckpointWriter(tmp_path) as w:
        closed = [p for _, c in write_blocks(w, range(2)) for p in c]
        journal = Journal(identity=identity({"a": 1}), blocks_total=4, blocks_done=2,
                          files=entries(tmp_path, closed), writer=w.state())
    write_journal(tmp_path, journal)
    again = read_journal(tmp_path)
    assert again == journal
    (tmp_path / "model-00002.safetensors").rename(tmp_path / "model-00002-of-00003.safetensors")
    restore_provisional_names(tmp_path, again)  # a run stopped while finishing
    verify_files(tmp_path, again)
    (tmp_path / "model-00001.safetensors").write_bytes(b"\0" * 8)
    with pytest.raises(CheckpointError, match="model-00001.safetensors: does not match journal.json"):
        verify_files(tmp_path, again)


def test_identity_differences_name_the_leaf():
    old = {"pruning": {"sparsity": 0.5, "method": "wanda"}, "calibration": {"idsSha256": "a"}}
    new = {"pruning": {"sparsity": 0.6, "method": "wanda"}, "calibration": {"idsSha256": "b"}}
    assert differences(old, new) == [("calibration.idsSha256", "a", "b"), ("pruning.sparsity", 0.5, 0.6)]
    assert identity(old)["sha256"] != identity(new)["sha256"] and identity(old) == identity(dict(old))
