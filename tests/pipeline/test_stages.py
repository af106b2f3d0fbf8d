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


def test_cpu_seconds_show_which_stage_kept_a_core_busy():
    clock = StageClock()
    assert clock.cpu_breakdown() is None  # not stopped yet
    with clock.stage("solve"):
        end = time.perf_counter() + 0.05
        while time.perf_counter() < end:  # busy
            pass
    with clock.stage("write"):
        time.sleep(0.05)  # idle
    clock.stop()
    cpu = clock.cpu_breakdown()
    assert set(cpu) == set(STAGES) | {"other"}
    assert cpu["solve"] >= 0.03
    assert cpu["write"] < 0.02
    assert sum(cpu.values()) == pytest.approx(max(clock.cpu_total, sum(clock.cpu_seconds.values())), abs=1e-3)


def test_cores_busy_is_cpu_over_wall_for_stages_long_enough_to_say():
    wall = {"statistics": 10.0, "solve": 2.0, "trim": 0.01, "replay": 0.0}
    cpu = {"statistics": 19.5, "solve": 2.0, "trim": 0.02}
    assert stages.cores_busy(wall, cpu) == {"statistics": 1.95, "solve": 1.0}


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
    cpu = result.clock.cpu_breakdown()  # stopped when prune_model returned
    assert cpu["statistics"] > 0 and cpu["propagate"] > 0
    StageSeconds(**cpu)


def test_sequential_statistics_stop_at_the_group_leader(tiny_model_factory):
    """After the first micro-batch has shown the group's members, the forward stops at the leader."""
    from prune_job.pipeline.forward import capture_block_inputs
    from prune_job.pipeline.prune import block_targets
    from prune_job.pipeline.statistics import GroupCollector
    from prune_job import algorithms

    handle = open_model(tiny_model_factory("llama"), device=torch.device("cpu"))
    pruning = Pruning(method="wanda", sparsity=0.5)
    inputs = capture_block_inputs(handle, calibration(n=8))
    assert len(inputs) == 4
    handle.load_tree(handle.block_prefix(0))
    targets = block_targets(handle, 0, pruning)
    calls = {t.name.rsplit(".", 1)[1]: 0 for t in targets}

    def count(name):
        return lambda _module, _args: calls.__setitem__(name, calls[name] + 1)

    hooks = [t.module.register_forward_pre_hook(count(t.name.rsplit(".", 1)[1])) for t in targets]
    try:
        found = GroupCollector(targets, lambda n, d: algorithms.WandaStats(n, d), first_group_only=True).run(
            handle.blocks[0], inputs, handle.device)
    finally:
        for h in hooks:
            h.remove()
    assert sorted(found[0].names) == sorted(t.name for t in targets[:3])  # q, k, v
    assert calls["q_proj"] == 4 and calls["k_proj"] == 1 and calls["v_proj"] == 1
    assert calls["o_proj"] == 1 and calls["gate_proj"] == 0  # reached once while learning, where it stopped
    assert found[0].stats.n == 4 * inputs[0].hidden.shape[0] * inputs[0].hidden.shape[1]


def test_statistics_forward_stops_once_every_leader_has_its_input(tiny_model_factory):
    """Without `sequential`, after the first micro-batch the forward stops at the last leader's
    input: the block's output (down_proj and after) is computed by the propagation forward only."""
    from prune_job.pipeline.forward import capture_block_inputs
    from prune_job.pipeline.prune import block_targets
    from prune_job.pipeline.statistics import GroupCollector
    from prune_job import algorithms

    handle = open_model(tiny_model_factory("llama"), device=torch.device("cpu"))
    inputs = capture_block_inputs(handle, calibration(n=8))
    handle.load_tree(handle.block_prefix(0))
    targets = block_targets(handle, 0, Pruning(method="sparsegpt", sparsity=0.5, sequential=False))
    down = next(t for t in targets if t.name.endswith("down_proj"))
    ran = []
    hook = down.module.register_forward_hook(lambda *_: ran.append(1))
    try:
        groups = GroupCollector(targets, lambda n, d: algorithms.HessianStats(n, d)).run(
            handle.blocks[0], inputs, handle.device)
    finally:
        hook.remove()
    assert [len(g.members) for g in groups] == [3, 1, 2, 1]  # q/k/v, o, gate/up, down
    assert len(ran) == 1  # down_proj itself ran only in the first (learning) micro-batch
    tokens = sum(mb.hidden.shape[0] * mb.hidden.shape[1] for mb in inputs)
    assert all(g.stats.n == tokens for g in groups)  # every leader saw every micro-batch


def in_memory_sequential(path, pruning, batches):
    """Reference: the whole model in memory; in each block, each group (q/k/v, o, gate/up, down) pruned
    with Wanda from a full forward through everything pruned before it."""
    from transformers import AutoModelForCausalLM
    from prune_job import algorithms

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    groups = [("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",)]
    for block in model.model.layers:
        for names in groups:
            layers = [m for n, m in block.named_modules() if n.rsplit(".", 1)[-1] in names]
            stats = algorithms.WandaStats(layers[0].in_features)
            hook = layers[0].register_forward_pre_hook(lambda mod, a: stats.add(a[0]))
            with torch.no_grad():
                for ids in batches:
                    model(input_ids=ids, use_cache=False)
            hook.remove()
            for m in layers:
                m.weight.data = algorithms.wanda_prune(m.weight.data, pruning.sparsity, None, stats)
    return model.state_dict()


def test_sequential_pipeline_matches_in_memory_reference(tiny_model_factory):
    path = tiny_model_factory("llama", layers=2)
    pruning = Pruning(method="wanda", sparsity=0.5, sequential=True)
    batches = calibration(n=6)
    sink = MemorySink()
    prune_model(open_model(path, device=torch.device("cpu")), pruning, batches, sink)
    expected = in_memory_sequential(path, pruning, batches)
    for key, tensor in sink.tensors.items():
        torch.testing.assert_close(tensor, expected[key], atol=1e-5, rtol=1e-5, msg=key)
