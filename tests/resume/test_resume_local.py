"""Kill the worker at three points, rerun: it resumes, and the files equal an uninterrupted run's byte for byte."""
import json

import pytest

from prune_job import exit_codes
from prune_job.checkpoint import CheckpointError
from prune_job.checkpoint.reader import load_pretrained
from resume_helpers import assert_same_checkpoint, calibration_ids, run, write_job

LAYERS = 4


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_factory):
    """An uninterrupted run of the job every test interrupts."""
    tmp = tmp_path_factory.mktemp("reference")
    model = tiny_model_factory("llama", layers=LAYERS)
    calib = calibration_ids(tmp / "calib.jsonl")
    spec = write_job(tmp / "job.yaml", model, str(tmp / "out"), calib)
    done = run(spec, tmp / "work")
    assert done.returncode == 0, done.stderr
    return model, calib, tmp / "out"


@pytest.mark.parametrize("fault, resumed_from", [
    ("block-committed:0:kill", 1),  # after block 0
    ("block-written:2:kill", 2),  # mid-block: block 2's tensors in the open shard, the journal not updated
    ("index-written:-:kill", LAYERS),  # after the last block, shards renamed, before manifest.json
])
def test_kill_and_rerun_is_byte_identical(tmp_path, reference, fault, resumed_from):
    model, calib, ref_out = reference
    out = tmp_path / "out"
    spec = write_job(tmp_path / "job.yaml", model, str(out), calib)
    killed = run(spec, tmp_path / "work", fault=fault)
    assert killed.returncode == -9
    assert not (out / "manifest.json").exists()
    with pytest.raises(CheckpointError, match="in progress"):
        load_pretrained(out)
    again = run(spec, tmp_path / "work")
    assert again.returncode == 0, again.stderr
    assert f"resuming from block {resumed_from} of {LAYERS}" in again.stderr
    assert_same_checkpoint(ref_out, out)
    journal = json.loads((out / "journal.json").read_text())
    assert journal["resumes"] == 1 and journal["resumedFromBlock"] == resumed_from


def test_in_progress_location_names_the_blocks_done(tmp_path, reference):
    model, calib, _ = reference
    out = tmp_path / "out"
    spec = write_job(tmp_path / "job.yaml", model, str(out), calib)
    assert run(spec, tmp_path / "work", fault="block-committed:1:kill").returncode == -9
    with pytest.raises(CheckpointError, match=r"blocks 0-1 of 4 done"):
        load_pretrained(out)


def test_rerun_of_a_finished_job_reports_without_pruning(tmp_path, reference):
    model, calib, _ = reference
    out = tmp_path / "out"
    spec = write_job(tmp_path / "job.yaml", model, str(out), calib)
    assert run(spec, tmp_path / "work").returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run(spec, tmp_path / "work", fault="block-written:0:kill")  # would die if it pruned again
    assert again.returncode == 0, again.stderr
    assert "nothing to prune again" in again.stderr and "phase: Succeeded" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_corrupt_finished_shard_is_refused_on_resume(tmp_path, reference):
    model, calib, _ = reference
    out = tmp_path / "out"
    spec = write_job(tmp_path / "job.yaml", model, str(out), calib)
    assert run(spec, tmp_path / "work", fault="block-committed:1:kill").returncode == -9
    shard = out / json.loads((out / "journal.json").read_text())["files"][0]["name"]
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x00")
    again = run(spec, tmp_path / "work")
    assert again.returncode == exit_codes.FAILED and "does not match journal.json" in again.stderr


@pytest.mark.parametrize("change, field", [
    ({"pruning": {"sparsity": 0.6}}, "spec.pruning.sparsity"),
    ("calibration", "spec.calibration.idsSha256"),
])
def test_identity_mismatch_is_refused_naming_the_field_and_overwrite_starts_over(tmp_path, reference, change, field):
    model, calib, _ = reference
    out = tmp_path / "out"
    spec = write_job(tmp_path / "job.yaml", model, str(out), calib)
    assert run(spec, tmp_path / "work", fault="block-committed:0:kill").returncode == -9
    if change == "calibration":
        other = calibration_ids(tmp_path / "other.jsonl", offset=3)
        change = {"calibration": {"uri": str(other)}}
        field = "spec.calibration.idsSha256"
    other_spec = write_job(tmp_path / "other.yaml", model, str(out), calib, **change)
    refused = run(other_spec, tmp_path / "work")
    assert refused.returncode == exit_codes.BAD_SPEC
    assert field in refused.stderr and "overwrite" in refused.stderr
    forced = write_job(tmp_path / "forced.yaml", model, str(out), calib, **change, output={"overwrite": True})
    done = run(forced, tmp_path / "work")
    assert done.returncode == 0, done.stderr
    assert "resuming" not in done.stderr and "retired" in done.stderr
    assert json.loads((out / "journal.json").read_text())["resumes"] == 0
    load_pretrained(out)


def test_overwrite_of_a_complete_checkpoint_retires_its_manifest_first(tmp_path, reference):
    model, calib, _ = reference
    out = tmp_path / "out"
    assert run(write_job(tmp_path / "job.yaml", model, str(out), calib), tmp_path / "work").returncode == 0
    other = write_job(tmp_path / "other.yaml", model, str(out), calib, pruning={"sparsity": 0.25},
                      output={"overwrite": True})
    assert run(other, tmp_path / "work", fault="block-written:0:kill").returncode == -9
    assert not (out / "manifest.json").exists() and not (out / "journal.json").exists()
    with pytest.raises(CheckpointError, match="incomplete"):
        load_pretrained(out)  # never the old manifest beside new shards
    done = run(other, tmp_path / "work")
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "manifest.json").read_text())["pruning"]["sparsity"] == 0.25
    load_pretrained(out)
