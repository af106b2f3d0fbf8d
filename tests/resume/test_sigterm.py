"""SIGTERM mid-run: the worker exits within the grace period with exit_codes.INTERRUPTED; the rerun resumes."""
import json
import signal
import time

import pytest

from prune_job import exit_codes
from resume_helpers import assert_same_checkpoint, calibration_ids, run, start, write_job

GRACE = 4


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_factory):
    tmp = tmp_path_factory.mktemp("reference")
    model = tiny_model_factory("llama", layers=4)
    calib = calibration_ids(tmp / "calib.jsonl")
    done = run(write_job(tmp / "job.yaml", model, str(tmp / "out"), calib), tmp / "work")
    assert done.returncode == 0, done.stderr
    return model, calib, tmp / "out"


def blocks_done(out):
    try:
        return json.loads((out / "journal.json").read_text())["blocksDone"]
    except (FileNotFoundError, ValueError):
        return 0


def test_sigterm_abandons_a_long_block_within_the_grace_period(tmp_path, reference):
    model, calib, ref_out = reference
    out = tmp_path / "out"
    spec = write_job(tmp_path / "job.yaml", model, str(out), calib,
                     runPolicy={"terminationGracePeriodSeconds": GRACE})
    proc = start(spec, tmp_path / "work", fault="block-written:1:sleep120")  # block 1 would take 2 minutes
    deadline = time.monotonic() + 120
    while blocks_done(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert blocks_done(out) == 1
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < GRACE
    assert proc.returncode == exit_codes.INTERRUPTED, stderr
    assert "abandoned" in stderr and "a rerun resumes from block 1 of 4" in stderr
    assert not list(out.glob("*.data")) and blocks_done(out) == 1
    again = run(spec, tmp_path / "work")
    assert again.returncode == 0, again.stderr
    assert "resuming from block 1 of 4" in again.stderr
    assert_same_checkpoint(ref_out, out)


def test_sigterm_between_blocks_stops_after_the_journal(tmp_path, reference):
    model, calib, ref_out = reference
    out = tmp_path / "out"
    spec = write_job(tmp_path / "job.yaml", model, str(out), calib)
    stopped = run(spec, tmp_path / "work", fault="block-committed:1:term")
    assert stopped.returncode == exit_codes.INTERRUPTED, stopped.stderr
    assert "a rerun resumes from block 2 of 4" in stopped.stderr
    again = run(spec, tmp_path / "work")
    assert again.returncode == 0 and "resuming from block 2 of 4" in again.stderr
    assert_same_checkpoint(ref_out, out)
