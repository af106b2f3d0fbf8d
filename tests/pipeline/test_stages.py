"""The stage clock: where the pruning seconds go (pipeline/stages.py)."""
import threading
import time

import pytest
import torch

from prune_job.pipeline import stages
from prune_job.pipeline.model import open_model
from prune_job.pipeline.prune import prune_model
from prune_job.pipeline.stages import STAGES, StageClock
from prune_job.spec import Pruning, StageSeconds
from memory_sink import MemorySink
from test_prune import calibration


def test_stage_accumulates_and_other_is_the_rest():
    clock = StageClock()
    for _ in range(2):
        with clock.stage("solve"):
            time.sleep(0.01)
    assert 0.02 <= clock.seconds["solve"] < 0.5
    out = clock.breakdown(1.0)
    assert set(out) == set(STAGES) | {"other"}
    assert out["other"] == pytest.approx(1.0 - clock.seconds["solve"], abs=1e-3)
    assert clock.breakdown(0.0)["other"] == 0.0  # never negative


def test_inner_stage_is_charged_to_the_outer_one():
    clock = StageClock()
    with stages.active(clock):
        with stages.stage("replay"):
            with stages.stage("trim"):
                time.sleep(0.01)
    assert clock.seconds["replay"] >= 0.01
    assert clock.seconds["trim"] == 0.0


def test_other_threads_and_no_active_clock_are_not_charged():
    clock = StageClock()

    def work():
        with clock.stage("write"):
            time.sleep(0.01)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert clock.seconds["write"] == 0.0
    with stages.stage("write"):  # no clock active: a no-op
        pass


def test_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="unknown stage 'sovle'"):
        with StageClock().stage("sovle"):
            pass


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_prune_model_reports_its_stages(tiny_model_factory, method):
    handle = open_model(tiny_model_factory("llama"), device=torch.device("cpu"))
    t0 = time.perf_counter()
    result = prune_model(handle, Pruning(method=method, sparsity=0.5), calibration(), MemorySink())
    total = time.perf_counter() - t0
    s = result.clock.seconds
    for name in ("capture", "read", "statistics", "solve", "propagate", "write", "trim"):
        assert s[name] > 0, name
    if method == "sparsegpt":
        assert s["factorise"] > 0
    assert s["replay"] == 0
    assert sum(s.values()) <= total
    assert stages._active is None  # the clock is active only while prune_model runs
    StageSeconds(**result.clock.breakdown(total))  # fits results.json's model
