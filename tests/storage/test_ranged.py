"""Block tensors straight from the bucket (nanio): verified ranged GETs, the next block
prefetched, and pruning from them gives the bytes pruning from local files gives."""
from __future__ import annotations

import torch
import pytest

from prune_job.pipeline.model import WeightIndex, open_model
from prune_job.pipeline.prune import prune_model
from prune_job.spec import Pruning
from prune_job.storage import S3Store
from prune_job.storage.errors import IntegrityError
from prune_job.storage.ranged import RemoteWeightIndex, fetch_model_files, plan_blocks
from memory_sink import MemorySink


@pytest.fixture
def remote_model(bucket, tiny_model_factory):
    folder = tiny_model_factory("llama", layers=3, hidden=64)
    store = S3Store()
    for path in folder.iterdir():
        store.upload(path, bucket, f"models/tiny/{path.name}")
    return folder, f"s3://{bucket}/models/tiny/", store


def test_every_tensor_reads_as_the_local_file_holds_it(remote_model):
    folder, uri, store = remote_model
    local = WeightIndex(sorted(folder.glob("*.safetensors")))
    remote = RemoteWeightIndex(uri, store)
    try:
        assert set(remote.location) == set(local.location)
        keys = sorted(local.location)
        got, want = remote.read(keys), local.read(keys)
        for key in keys:
            assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
    finally:
        remote.close()


def test_pruning_from_the_bucket_matches_pruning_from_disk(remote_model, tmp_path):
    folder, uri, store = remote_model
    small = fetch_model_files(uri, tmp_path / "files", store)
    assert not list(small.glob("*.safetensors")) and (small / "config.json").is_file()
    pruning = Pruning(method="sparsegpt", sparsity=0.5, block_size=16)
    batches = [torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))]
    want = MemorySink()
    prune_model(open_model(folder, device=torch.device("cpu")), pruning, batches, want)
    remote = RemoteWeightIndex(uri, store)
    handle = open_model(small, device=torch.device("cpu"), index=remote)
    plan_blocks(remote, handle)
    got = MemorySink()
    try:
        prune_model(handle, pruning, batches, got)
    finally:
        remote.close()
    assert set(got.tensors) == set(want.tensors)
    assert all(torch.equal(got.tensors[k], want.tensors[k]) for k in want.tensors)


def test_reading_a_block_prefetches_the_next(remote_model, tmp_path):
    _, uri, store = remote_model
    remote = RemoteWeightIndex(uri, store)
    handle = open_model(fetch_model_files(uri, tmp_path / "files", store), device=torch.device("cpu"), index=remote)
    plan_blocks(remote, handle)
    try:
        block1 = {key for _, key in handle.state_keys(handle.block_prefix(1))}
        handle.load_tree(handle.block_prefix(0))
        assert block1 and block1 <= set(remote.pending)  # on their way while block 0 is pruned
        handle.release_tree(handle.block_prefix(0))
        handle.load_tree(handle.block_prefix(1))
        assert not block1 & set(remote.pending)  # taken from the prefetch
    finally:
        remote.close()


def test_an_object_replaced_mid_run_is_refused(remote_model, bucket, tmp_path):
    folder, uri, store = remote_model
    remote = RemoteWeightIndex(uri, store)
    try:
        [weights] = sorted(folder.glob("*.safetensors"))
        changed = tmp_path / weights.name
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        changed.write_bytes(bytes(data))
        store.upload(changed, bucket, f"models/tiny/{weights.name}")
        with pytest.raises(IntegrityError, match="changed while the model was read"):
            remote.read([sorted(remote.location)[0]])
    finally:
        remote.close()


def test_a_header_pointing_outside_its_object_is_refused(bucket, tmp_path):
    import json
    import struct

    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)  # 8 of the 16 bytes
    store = S3Store()
    store.upload(bad, bucket, "bad/model.safetensors")
    with pytest.raises(IntegrityError, match="outside the object"):
        RemoteWeightIndex(f"s3://{bucket}/bad/", store)


def test_a_streamed_run_writes_what_a_downloaded_run_writes(remote_model, tmp_path, monkeypatch):
    import json

    import yaml

    from prune_job.cli import main

    folder, uri, _ = remote_model
    ids = tmp_path / "ids.jsonl"
    ids.write_text("\n".join(json.dumps({"input_ids": [(3 * i + j) % 256 for j in range(16)]}) for i in range(4)))
    outs = {}
    for stream in (False, True):
        monkeypatch.setenv("PRUNE_JOB_CACHE", str(tmp_path / f"cache-{stream}"))
        out = tmp_path / f"out-{stream}"
        doc = {"kind": "PruneJob", "metadata": {"name": "streamed"},
               "spec": {"model": {"uri": uri, "stream": stream}, "output": {"uri": str(out)},
                        "pruning": {"method": "wanda", "sparsity": 0.5},
                        "calibration": {"uri": str(ids), "samples": 4, "sequenceLength": 16},
                        "evaluation": {"perplexity": {"uri": str(ids), "samples": 4, "sequenceLength": 16},
                                       "generation": {"batchSizes": [1], "promptTokens": 4, "newTokens": 2,
                                                      "repeats": 1}}}}
        spec = tmp_path / f"job-{stream}.yaml"
        spec.write_text(yaml.safe_dump(doc))
        if stream:  # pruning read the tensors from the bucket: only the small files were stored
            from prune_job.run import prepare
            from prune_job.spec import parse_prunejob

            prepared = prepare(parse_prunejob(doc))
            assert prepared.model_dir.is_relative_to(tmp_path / "cache-True" / "s3-files")
            assert (prepared.model_dir / "config.json").is_file()
            assert not list(prepared.model_dir.glob("*.safetensors"))
        assert main(["run", str(spec), "--no-progress", "--workdir", str(tmp_path / f"w-{stream}")]) == 0
        outs[stream] = out
    shards = sorted(p.name for p in outs[False].glob("*.safetensors"))
    assert shards and shards == sorted(p.name for p in outs[True].glob("*.safetensors"))
    for name in shards:
        assert (outs[False] / name).read_bytes() == (outs[True] / name).read_bytes()
    results = [json.loads((outs[s] / "results.json").read_text()) for s in (False, True)]
    assert results[0]["perplexity"] == results[1]["perplexity"]  # dense and sparse, to the last bit
    runs = results[1]["generationRuns"]  # the whole dense model built from ranged reads, here and in footprint's process
    assert runs and all(r.get("figures") and not r.get("skipped") for r in runs)
    assert not [n for n in results[1].get("notes", []) if "not measured" in n]
    # the downloaded run stored the weights; the streamed one (pruning and evaluation) stored none of them
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert sum(p.stat().st_size for p in (tmp_path / "cache-False").rglob("*.safetensors")) == weights
    for scratch in (tmp_path / "cache-True", tmp_path / "w-True"):
        assert not list(scratch.rglob("*.safetensors"))
        assert sum(p.stat().st_size for p in scratch.rglob("*") if p.is_file()) < weights // 10


def test_two_ranks_stream_the_model(remote_model, s3_env, tmp_path):
    """Each rank reads the block tensors from the bucket itself (`--nproc 2`, gloo)."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    from multirank.group import REPO

    _, uri, _ = remote_model
    ids = tmp_path / "ids.jsonl"
    ids.write_text("\n".join(json.dumps({"input_ids": [(3 * i + j) % 256 for j in range(16)]}) for i in range(4)))
    doc = {"kind": "PruneJob", "metadata": {"name": "streamed"},
           "spec": {"model": {"uri": uri, "stream": True}, "output": {"uri": str(tmp_path / "out")},
                    "pruning": {"method": "sparsegpt", "sparsity": 0.5, "blockSize": 16},
                    "calibration": {"uri": str(ids), "samples": 4, "sequenceLength": 16},
                    "evaluation": {"perplexity": {"uri": str(ids), "samples": 4, "sequenceLength": 16},
                                   "generation": {"batchSizes": [1], "promptTokens": 4, "newTokens": 2,
                                                  "repeats": 1}}}}
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(doc))
    env = dict(os.environ, **s3_env.env(), PRUNE_JOB_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join([str(REPO / "job_image"), str(REPO / "operator")]))
    run = subprocess.run([sys.executable, "-m", "prune_job", "run", str(spec), "--nproc", "2", "--no-progress",
                          "--workdir", str(tmp_path / "w")], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["sparsity"] == 0.5 and len(results["layers"]) == 21
    ppl = results["perplexity"]  # windows split over the ranks, the dense model read from the bucket too
    assert 1 < ppl["dense"] < float("inf") and 1 < ppl["sparse"] < float("inf")
    assert results["generationRuns"]
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # nothing of the model's weights on disk


def test_the_dense_model_for_evaluation_is_filled_from_the_bucket(remote_model, tmp_path):
    """Evaluation's whole dense model (generation, lm-eval) from ranged reads: the tensors
    from_pretrained gives, the head tied to the embeddings again, no weight file on disk."""
    from transformers import AutoModelForCausalLM

    from prune_job.evaluation.weights import load_full_model

    folder, uri, store = remote_model
    small = fetch_model_files(uri, tmp_path / "files", store)
    remote = RemoteWeightIndex(uri, store)
    try:
        got = load_full_model(small, "float32", torch.device("cpu"), dense=remote)
    finally:
        remote.close()
    want = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert got.state_dict().keys() == want.state_dict().keys()
    for name, tensor in want.state_dict().items():
        assert torch.equal(got.state_dict()[name], tensor), name
    assert got.lm_head.weight is got.model.embed_tokens.weight  # tied: one tensor, not two
    ids = torch.arange(16).reshape(1, 16)
    assert torch.equal(got(input_ids=ids).logits, want(input_ids=ids).logits)
    assert not list(tmp_path.rglob("*.safetensors"))


def test_an_object_replaced_before_the_evaluation_reads_it_is_refused(remote_model, bucket, tmp_path, monkeypatch):
    """The weights change in the bucket after pruning read them: the evaluation's ranged reads refuse
    the new version (ETag and size no longer the listed ones) instead of comparing against other weights."""
    import json

    from prune_job import run as run_module
    from prune_job.run import run_job
    from prune_job.spec import parse_prunejob

    monkeypatch.setenv("PRUNE_JOB_CACHE", str(tmp_path / "cache"))
    folder, uri, store = remote_model
    ids = tmp_path / "ids.jsonl"
    ids.write_text("\n".join(json.dumps({"input_ids": [(3 * i + j) % 256 for j in range(16)]}) for i in range(4)))
    job = parse_prunejob({
        "kind": "PruneJob", "metadata": {"name": "replaced"},
        "spec": {"model": {"uri": uri, "stream": True}, "output": {"uri": str(tmp_path / "out")},
                 "pruning": {"method": "magnitude", "sparsity": 0.5},
                 "evaluation": {"perplexity": {"uri": str(ids), "samples": 4, "sequenceLength": 16},
                                "generation": {"enabled": False}}}})
    [weights] = sorted(folder.glob("*.safetensors"))
    evaluate = run_module.evaluate

    def replace_then_evaluate(**kwargs):
        shorter = tmp_path / weights.name
        shorter.write_bytes(weights.read_bytes()[:-4])  # another size, another ETag
        store.upload(shorter, bucket, f"models/tiny/{weights.name}")
        return evaluate(**kwargs)

    monkeypatch.setattr(run_module, "evaluate", replace_then_evaluate)
    with pytest.raises(IntegrityError, match="changed while the model was read"):
        run_job(job, tmp_path / "w", show_bar=False)


def test_bucket_headers_that_disagree_with_the_config_are_refused_before_any_read(remote_model, tmp_path):
    import json

    from prune_job.sources.models import ModelFormatError

    _, uri, store = remote_model
    small = fetch_model_files(uri, tmp_path / "files", store)
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps(dict(config, intermediate_size=2 * config["intermediate_size"])))
    remote = RemoteWeightIndex(uri, store)
    try:
        with pytest.raises(ModelFormatError, match="config.json makes"):
            open_model(small, device=torch.device("cpu"), index=remote)
        assert not remote.pending  # refused from the headers alone
    finally:
        remote.close()


# -- the sha256 the source records ---------------------------------------------------------------

def test_a_digest_fed_in_any_order_within_a_small_budget_checks_the_whole_object():
    import hashlib
    import random

    from prune_job.storage.ranged import HoldBudget, ObjectDigest

    data = bytes(random.Random(0).randrange(256) for _ in range(10_000))
    ranges = [(s, min(s + 700, len(data))) for s in range(0, len(data), 700)]
    random.Random(1).shuffle(ranges)
    budget = HoldBudget(limit=2_000)  # holds at most two ranges ahead: the rest is read again at the end
    digest = ObjectDigest("s3://b/k", len(data), hashlib.sha256(data).hexdigest(), budget)
    for start, end in ranges[:-3]:  # three ranges never read, like a tensor the run does not use
        digest.feed(start, data[start:end])
    reads = []
    digest.finish(lambda offset, length: reads.append(length) or bytearray(data[offset:offset + length]))
    assert digest.checked and budget.used == 0
    assert 3 * 700 <= sum(reads) < len(data)  # the missing bytes, not the whole object

    wrong = ObjectDigest("s3://b/k", len(data), hashlib.sha256(b"other").hexdigest(), HoldBudget())
    with pytest.raises(IntegrityError, match="sha256 of the bytes read"):
        for start, end in sorted(ranges):
            wrong.feed(start, data[start:end])


def test_bytes_that_disagree_with_the_recorded_sha256_are_refused(remote_model, bucket):
    """The object's `x-amz-meta-sha256` (our uploads set it) says what the bytes must hash to."""
    import io

    folder, uri, store = remote_model
    [weights] = sorted(folder.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the last tensor, under the original file's sha256
    from prune_job.storage.checksums import sha256_file
    from prune_job.storage.transfer import SHA_META
    store.client.put_object(bucket, f"models/tiny/{weights.name}", io.BytesIO(bytes(data)), len(data),
                            metadata={SHA_META: sha256_file(weights)})
    remote = RemoteWeightIndex(uri, store)
    try:
        with pytest.raises(IntegrityError, match="sha256 of the bytes read"):
            remote.read(sorted(remote.location))
            remote.verify()
    finally:
        remote.close()


def test_a_checkpoint_of_ours_is_checked_against_its_manifest_block_by_block(bucket, tiny_model_factory, tmp_path):
    """A dense checkpoint written by this project (one block per shard, a manifest with each
    file's sha256): each shard is checked as its block is read, before it is pruned; a shard
    changed in the bucket after the manifest was written is refused."""
    import io

    from prune_job.checkpoint.writer import CheckpointWriter
    from prune_job.pipeline.model import WeightIndex

    folder = tiny_model_factory("llama", layers=3, hidden=64)
    local = WeightIndex(sorted(folder.glob("*.safetensors")))
    handle = open_model(folder, device=torch.device("cpu"))
    ckpt = tmp_path / "ckpt"
    with CheckpointWriter(ckpt, format="dense") as writer:
        blocks = [[key for _, key in handle.state_keys(handle.block_prefix(i))] for i in range(handle.num_blocks)]
        in_blocks = {k for keys in blocks for k in keys}
        for keys in [sorted(set(local.location) - in_blocks), *blocks]:
            for key, value in local.read(keys).items():
                writer.add(key, value)
            writer.end_block()
        writer.add_file("config.json", folder / "config.json")
        writer.finish()
    store = S3Store()
    for path in ckpt.iterdir():  # plain puts: the manifest alone records the sha256s
        store.client.put_object(bucket, f"ours/{path.name}", io.BytesIO(path.read_bytes()), path.stat().st_size)
    uri = f"s3://{bucket}/ours/"

    remote = RemoteWeightIndex(uri, store)
    try:
        assert len(remote.digests) == len(list(ckpt.glob("*.safetensors")))
        remote.read(blocks[1])
        block1_shard = remote.location[blocks[1][0]].key
        assert remote.digests[block1_shard].checked  # as soon as its block was read
        remote.verify()
        assert all(d.checked for d in remote.digests.values())
    finally:
        remote.close()

    data = bytearray((ckpt / block1_shard.rsplit("/", 1)[1]).read_bytes())
    data[-1] ^= 0x01
    store.client.put_object(bucket, block1_shard, io.BytesIO(bytes(data)), len(data))
    remote = RemoteWeightIndex(uri, store)
    try:
        remote.read(blocks[0])
        with pytest.raises(IntegrityError, match="sha256 of the bytes read"):
            remote.read(blocks[1])
    finally:
        remote.close()
