"""Resuming a run of several ranks (`--nproc 2`, torchrun's launcher, gloo): rank 0 is killed after a
block, the rerun with two ranks resumes (every rank replays its share through the finished blocks) and
its files equal an uninterrupted two-rank run's byte for byte; a finished run is reported by every rank."""
import json
import subprocess
import sys

import pytest
import yaml

from resume_helpers import assert_same_checkpoint, calibration_ids, env, write_job

LAYERS = 4



def run_ranks(spec, workdir, fault=None, timeout=240):
    return subprocess.run([sys.executable, "-m", "prune_job", "run", str(spec), "--nproc", "2", "--no-progress",
                           "--workdir", str(workdir)], env=env(fault, {"MKL_NUM_THREADS": "1",
                                                                      "CUDA_VISIBLE_DEVICES": ""}),
                          capture_output=True, text=True, timeout=timeout)


def test_two_ranks_killed_after_block_1_resume_byte_identical(tmp_path, tiny_model_factory):
    model = tiny_model_factory("llama", layers=LAYERS)
    calib = calibration_ids(tmp_path / "calib.jsonl")
    ref = write_job(tmp_path / "ref.yaml", model, str(tmp_path / "ref"), calib)
    done = run_ranks(ref, tmp_path / "w-ref")
    assert done.returncode == 0, done.stderr[-4000:]

    spec = write_job(tmp_path / "job.yaml", model, str(tmp_path / "out"), calib)
    killed = run_ranks(spec, tmp_path / "w", fault="block-committed:1:kill")
    assert killed.returncode != 0
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert json.loads((tmp_path / "out" / "journal.json").read_text())["blocksDone"] == 2

    again = run_ranks(spec, tmp_path / "w")
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"resuming from block 2 of {LAYERS}" in again.stderr
    assert_same_checkpoint(tmp_path / "ref", tmp_path / "out")

    finished = run_ranks(spec, tmp_path / "w")  # every rank returns: nothing pruned again
    assert finished.returncode == 0, finished.stderr[-4000:]
    assert "already holds this run's finished checkpoint" in finished.stderr
    assert json.loads((tmp_path / "out" / "results.json").read_text())["layers"] == \
        json.loads((tmp_path / "ref" / "results.json").read_text())["layers"]


def test_two_nodes_resume_an_s3_output_each_from_the_bucket(tmp_path, tiny_model_factory, s3):
    """s3:// output: the group (one pod, two ranks) is killed after block 1's journal reached the bucket;
    the rerun is two pods of one rank each, both with empty scratch: rank 1 (node 1) fetches the finished
    blocks' shards from the bucket into its own scratch, and the bucket ends as the uninterrupted run's."""
    import os
    import signal
    import time

    from multirank.group import free_port, rank_env, wait_for_ranks
    from multirank.test_nproc_cli import rank_pid
    from test_resume_s3 import assert_same_bucket, bucket_files, journal_says

    model = tiny_model_factory("llama", layers=LAYERS)
    calib = calibration_ids(tmp_path / "calib.jsonl")
    extra = {**s3.env(), "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}

    def job(prefix):
        return write_job(tmp_path / f"{prefix}.yaml", model, f"s3://{s3.bucket}/{prefix}/", calib)

    def cli(spec, workdir):
        return [sys.executable, "-m", "prune_job", "run", str(spec), "--no-progress", "--workdir", str(workdir)]

    ref = subprocess.run(cli(job("ref"), tmp_path / "w-ref") + ["--nproc", "2"], env=env(None, extra),
                         capture_output=True, text=True, timeout=240)
    assert ref.returncode == 0, ref.stderr[-4000:]

    spec = job("run")
    proc = subprocess.Popen(cli(spec, tmp_path / "w") + ["--nproc", "2"], env=env("block-committed:1:sleep60", extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, deadline = journal_says(s3, "run", 2), time.monotonic() + 180
        while not ready():
            assert proc.poll() is None, proc.communicate()[1][-4000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:  # SIGKILL of every rank (each in a session of its own under torchrun), then the launcher ends
        for rank in (0, 1):
            pid = rank_pid(proc.pid, rank)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
        proc.communicate(timeout=120)

    port = free_port()
    ranks = []
    for rank in range(2):
        e = rank_env(rank, 2, port, local_size=1)  # two nodes: GROUP_RANK = rank
        e.update(extra)
        e.pop("PRUNE_JOB_FAULT", None)
        ranks.append(subprocess.Popen(cli(spec, tmp_path / f"pod{rank}"), env=e, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    errs = [done.stderr for done in wait_for_ranks(ranks)]
    assert f"resuming from block 2 of {LAYERS}" in errs[0]
    fetched = sorted(p.name for p in (tmp_path / "pod1" / "resume-shards").iterdir())
    assert fetched and all(name.endswith(".safetensors") for name in fetched)
    assert_same_bucket(bucket_files(s3, s3.bucket, "ref"), bucket_files(s3, s3.bucket, "run"))


def test_two_nodes_local_output_with_evaluation_continue_the_replica(tmp_path, tiny_model_factory):
    """A local output every node reads (here: one machine): rank 1 (node 1) verifies the finished shards in
    the output folder, copies them into its evaluation replica, which continues after them; the resumed
    checkpoint and its perplexity equal an uninterrupted run's."""
    from multirank.group import free_port, rank_env, wait_for_ranks

    model = tiny_model_factory("llama", layers=LAYERS)
    calib = calibration_ids(tmp_path / "calib.jsonl")
    evaluation = {"enabled": True, "perplexity": {"uri": str(calib), "samples": 8, "sequenceLength": 16},
                  "generation": {"batchSizes": [1], "promptTokens": 4, "newTokens": 2, "repeats": 1}}
    ref = write_job(tmp_path / "ref.yaml", model, str(tmp_path / "ref"), calib, evaluation=evaluation)
    done = run_ranks(ref, tmp_path / "w-ref")
    assert done.returncode == 0, done.stderr[-4000:]

    spec = write_job(tmp_path / "job.yaml", model, str(tmp_path / "out"), calib, evaluation=evaluation)
    assert run_ranks(spec, tmp_path / "w", fault="block-committed:1:kill").returncode != 0
    port = free_port()
    ranks = []
    for rank in range(2):
        e = env(None, {"MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
        e.update({k: v for k, v in rank_env(rank, 2, port, local_size=1).items() if k not in ("PYTHONPATH",)})
        ranks.append(subprocess.Popen([sys.executable, "-m", "prune_job", "run", str(spec), "--no-progress",
                                       "--workdir", str(tmp_path / f"pod{rank}")], env=e, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    errs = [done.stderr for done in wait_for_ranks(ranks)]
    assert f"resuming from block 2 of {LAYERS}" in errs[0]
    assert_same_checkpoint(tmp_path / "ref", tmp_path / "out")
    replica = tmp_path / "pod1" / "replica-checkpoint"
    for name in json.loads((tmp_path / "out" / "journal.json").read_text())["writer"]["shards"]:
        assert (replica / name).is_file() or any(replica.glob(name.removesuffix(".safetensors") + "-of-*"))
    r1 = json.loads((tmp_path / "ref" / "results.json").read_text())
    r2 = json.loads((tmp_path / "out" / "results.json").read_text())
    assert r2["perplexity"]["sparse"] == pytest.approx(r1["perplexity"]["sparse"], rel=1e-6)


def test_a_node_that_cannot_read_a_local_output_refuses_clearly(tmp_path):
    """Several nodes, a local output the other node does not see: every rank stops with what is needed."""
    from prune_job.checkpoint.journal import Journal
    from prune_job.checkpoint.manifest import FileEntry
    from prune_job.pipeline.distributed import World
    from prune_job.resume_ranks import replay_journal
    from prune_job.spec import PruneJob

    job = PruneJob.model_validate(yaml.safe_load(write_job(tmp_path / "job.yaml", tmp_path / "model",
                                                           str(tmp_path / "out"), tmp_path / "c.jsonl").read_text()))
    journal = Journal(identity={}, blocks_total=4, blocks_done=2,
                      files=[FileEntry(name="model-00001.safetensors", size=10, sha256="0" * 64)])
    node1 = World(rank=1, size=2, node=1)
    with pytest.raises(RuntimeError, match="needs a folder every node shares"):
        replay_journal(node1, job, journal, tmp_path / "out", tmp_path / "w", tmp_path / "w" / "replica")
    assert replay_journal(World(rank=1, size=2, node=0), job, journal, tmp_path / "out", tmp_path / "w",
                          tmp_path / "out") is not None  # node 0: rank 0's own folder, verified by rank 0
