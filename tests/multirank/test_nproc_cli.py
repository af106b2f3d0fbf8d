"""`prune-job run SPEC --nproc N` end to end (torchrun's launcher, gloo, local ranks): world
size 1 writes the plain path's bytes; 2 ranks give the same sparsity per layer and the same
perplexity; a rank killed mid-run ends the group with a message naming it."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from prune_job.cli import main
from multirank.group import REPO

PLAIN_ENV = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR")}


def spec(tmp_path, model, out, **extra):
    ids = tmp_path / "ids.jsonl"
    ids.write_text("\n".join(json.dumps({"input_ids": [(7 * i + j) % 256 for j in range(16)]}) for i in range(9)))
    doc = {"apiVersion": "pruning.dev/v1alpha1", "kind": "PruneJob", "metadata": {"name": "tiny"},
           "spec": {"model": {"uri": str(model)}, "output": {"uri": str(out)},
                    "pruning": {"method": "sparsegpt", "sparsity": 0.5, "blockSize": 16},
                    "calibration": {"uri": str(ids), "samples": 9, "sequenceLength": 16},
                    "evaluation": {"perplexity": {"uri": str(ids), "samples": 9, "sequenceLength": 16},
                                   "generation": {"batchSizes": [1], "promptTokens": 4, "newTokens": 2, "repeats": 1}}, **extra}}
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def env():
    e = dict(PLAIN_ENV, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    e["PYTHONPATH"] = os.pathsep.join([str(REPO / "job_image"), str(REPO / "operator")])
    return e


def prune_job(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "prune_job", *args], env=env(), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def checkpoint_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix == ".safetensors" or p.name == "manifest.json"}


def test_nproc_1_is_byte_identical_and_nproc_2_matches(tmp_path, tiny_model_factory):
    model = tiny_model_factory("llama", layers=2, hidden=64)
    plain_spec = spec(tmp_path, model, tmp_path / "plain")
    assert main(["run", str(plain_spec), "--no-progress", "--workdir", str(tmp_path / "w0")]) == 0
    one = prune_job("run", str(spec(tmp_path, model, tmp_path / "one")), "--nproc", "1", "--no-progress",
                    "--workdir", str(tmp_path / "w1"), cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    plain_files, one_files = checkpoint_files(tmp_path / "plain"), checkpoint_files(tmp_path / "one")
    assert set(plain_files) == set(one_files) and len(plain_files) >= 2
    for name in plain_files:
        if name == "manifest.json":  # the clock is the one thing that differs
            a, b = json.loads(plain_files[name]), json.loads(one_files[name])
            assert {k: v for k, v in a.items() if k != "createdAt"} == {k: v for k, v in b.items() if k != "createdAt"}
        else:
            assert plain_files[name] == one_files[name], name

    two = prune_job("run", str(spec(tmp_path, model, tmp_path / "two")), "--nproc", "2", "--no-progress",
                    "--workdir", str(tmp_path / "w2"), cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("phase: Succeeded") == 1  # rank 0 alone prints the status
    r1 = json.loads((tmp_path / "plain" / "results.json").read_text())
    r2 = json.loads((tmp_path / "two" / "results.json").read_text())
    assert [(l["name"], l["sparsity"]) for l in r1["layers"]] == [(l["name"], l["sparsity"]) for l in r2["layers"]]
    for kind in ("dense", "sparse"):
        assert abs(r2["perplexity"][kind] / r1["perplexity"][kind] - 1) < 0.005
    assert r2["perplexity"]["dense"] == pytest.approx(r1["perplexity"]["dense"], rel=1e-6)  # same windows, split
    assert not (tmp_path / "w2" / "replica-checkpoint").exists()  # one node: every rank reads rank 0's copy


def test_too_few_samples_for_the_ranks_names_the_field(tmp_path, tiny_model_factory):
    model = tiny_model_factory("llama", layers=2, hidden=64)
    path = spec(tmp_path, model, tmp_path / "few", calibration={"uri": str(tmp_path / "ids.jsonl"), "samples": 1,
                                                               "sequenceLength": 16})
    t0 = time.monotonic()
    run = prune_job("run", str(path), "--nproc", "2", "--no-progress", "--workdir", str(tmp_path / "w"), cwd=tmp_path)
    assert run.returncode == 1 and time.monotonic() - t0 < 120
    assert "rank 0" in run.stderr or "rank 1" in run.stderr
    assert "spec.calibration.samples" in run.stderr


def rank_pid(launcher: int, rank: int):
    for child in Path("/proc").iterdir():
        if not child.name.isdigit():
            continue
        try:
            stat = (child / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            if ppid == launcher and f"\0RANK={rank}\0" in "\0" + (child / "environ").read_text() + "\0":
                return int(child.name)
        except (OSError, ValueError):
            continue
    return None


def test_a_killed_rank_ends_the_job_naming_it(tmp_path, tiny_model_factory):
    model = tiny_model_factory("llama", layers=4, hidden=64)
    path = spec(tmp_path, model, tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "-m", "prune_job", "run", str(path), "--nproc", "2", "--no-progress",
                             "--workdir", str(tmp_path / "w")], env=env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        pid = None
        while pid is None and time.monotonic() < deadline and proc.poll() is None:
            pid = rank_pid(proc.pid, 1)
            time.sleep(0.2)
        assert pid is not None, "rank 1 never started"
        time.sleep(1.0)  # mid-run: importing, rendezvous or pruning
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert time.monotonic() - t_kill < 60
    assert "rank 1 (local rank 1) failed" in err and "SIGKILL" in err
    assert not (tmp_path / "killed" / "manifest.json").exists()
