"""The same with an s3:// output on a real S3 server (nanio): kill, stop and restart the server, rerun in a
fresh pod (an empty workdir): the bucket ends up byte-identical to an uninterrupted run's."""
import json
import time

import pytest
from urllib3.exceptions import ProtocolError

from prune_job.checkpoint import CheckpointError
from prune_job.checkpoint.reader import load_pretrained
from resume_helpers import VARYING, calibration_ids, run, start, write_job

LAYERS = 3


def bucket_files(server, bucket, prefix):
    from minio import Minio
    from minio.error import S3Error

    client = Minio(server.endpoint.removeprefix("http://"), server.env()["AWS_ACCESS_KEY_ID"],
                   server.env()["AWS_SECRET_ACCESS_KEY"], secure=False)
    out = {}
    for obj in client.list_objects(bucket, prefix=prefix + "/", recursive=True):
        try:
            resp = client.get_object(bucket, obj.object_name)
        except S3Error as e:  # removed since the listing (a shard renamed while the worker runs)
            if e.code == "NoSuchKey":
                continue
            raise
        out[obj.object_name.removeprefix(prefix + "/")] = resp.read()
        resp.close()
    return out


def assert_same_bucket(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        if name not in VARYING:
            assert a[name] == b[name], name
    ma, mb = json.loads(a["manifest.json"]), json.loads(b["manifest.json"])
    ma.pop("createdAt"), mb.pop("createdAt")
    assert ma == mb


@pytest.fixture
def setup(tmp_path, tiny_model_factory, s3, monkeypatch):
    for key, value in s3.env().items():  # for load_pretrained in this process
        monkeypatch.setenv(key, value)
    model = tiny_model_factory("llama", layers=LAYERS)
    calib = calibration_ids(tmp_path / "calib.jsonl")

    def job(name, prefix, **overrides):
        return write_job(tmp_path / f"{name}.yaml", model, f"s3://{s3.bucket}/{prefix}/", calib, **overrides)

    ref = run(job("ref", "ref"), tmp_path / "w-ref", extra_env=s3.env())
    assert ref.returncode == 0, ref.stderr
    return job, bucket_files(s3, s3.bucket, "ref")


def kill_when(proc, ready, timeout=120):
    """SIGKILL the worker once `ready()` (what the bucket holds) is true; the fault point holds it there."""
    deadline = time.monotonic() + timeout
    while not _settled(ready):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.kill()
    proc.communicate()


def _settled(ready) -> bool:
    """ready(), or False when an object was replaced while this poll read it (the worker runs on)."""
    try:
        return ready()
    except ProtocolError:
        return False


def journal_says(s3, prefix, blocks):
    def ready():
        doc = bucket_files(s3, s3.bucket, prefix).get("journal.json")
        return doc is not None and json.loads(doc)["blocksDone"] == blocks
    return ready


def index_sent(s3, prefix):
    return lambda: "model.compressed.index.json" in bucket_files(s3, s3.bucket, prefix)


@pytest.mark.parametrize("fault, resumed_from", [
    ("block-committed:0:sleep60", 1),  # after block 0 (its journal in the bucket)
    ("block-written:1:sleep60", 1),  # mid-block 1
    ("index-written:-:sleep60", LAYERS),  # after the last block, before manifest.json
])
def test_kill_stop_server_restart_rerun_in_a_fresh_pod(tmp_path, s3, setup, fault, resumed_from):
    job, ref = setup
    spec = job("run", "run")
    proc = start(spec, tmp_path / "w1", fault=fault, extra_env=s3.env())
    kill_when(proc, index_sent(s3, "run") if resumed_from == LAYERS else journal_says(s3, "run", resumed_from))
    s3.stop()
    s3.start()
    with pytest.raises(CheckpointError, match="in progress"):
        load_pretrained(f"s3://{s3.bucket}/run/", cache_dir=tmp_path / "cache")
    again = run(spec, tmp_path / "w2", extra_env=s3.env())  # a new pod: nothing local
    assert again.returncode == 0, again.stderr
    assert f"resuming from block {resumed_from} of {LAYERS}" in again.stderr
    assert_same_bucket(ref, bucket_files(s3, s3.bucket, "run"))


def test_interrupted_overwrite_of_a_complete_checkpoint_loads_as_in_progress(tmp_path, s3, setup):
    job, ref = setup
    other = job("other", "ref", pruning={"sparsity": 0.25}, output={"overwrite": True})
    proc = start(other, tmp_path / "w1", fault="block-committed:0:sleep60", extra_env=s3.env())
    kill_when(proc, journal_says(s3, "ref", 1))
    names = bucket_files(s3, s3.bucket, "ref")
    assert "manifest.json" not in names and "journal.json" in names
    with pytest.raises(CheckpointError, match=r"in progress \(block 0 of 3 done"):
        load_pretrained(f"s3://{s3.bucket}/ref/", cache_dir=tmp_path / "cache")
    again = run(other, tmp_path / "w2", extra_env=s3.env())
    assert again.returncode == 0, again.stderr
    assert "resuming from block 1 of 3" in again.stderr
    manifest = json.loads(bucket_files(s3, s3.bucket, "ref")["manifest.json"])
    assert manifest["pruning"]["sparsity"] == 0.25
    load_pretrained(f"s3://{s3.bucket}/ref/", cache_dir=tmp_path / "cache")


def test_rerun_of_a_finished_s3_job_verifies_the_bucket_and_prunes_nothing(tmp_path, s3, setup):
    job, ref = setup
    again = run(job("ref", "ref"), tmp_path / "w-again", fault="block-written:0:kill", extra_env=s3.env())
    assert again.returncode == 0, again.stderr  # the fault would kill a run that pruned again
    assert "nothing to prune again" in again.stderr and "phase: Succeeded" in again.stdout
    assert_same_bucket(ref, bucket_files(s3, s3.bucket, "ref"))
