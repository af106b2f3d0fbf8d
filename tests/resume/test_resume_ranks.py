"""Resuming a run of several ranks (`--nproc 2`, torchrun's launcher, gloo): rank 0 is killed after a
block, the rerun with two ranks resumes (every rank replays its share through the finished blocks) and
its files equal an uninterrupted two-rank run's byte for byte; a finished run is reported by every rank."""
import json
import subprocess
import sys

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
