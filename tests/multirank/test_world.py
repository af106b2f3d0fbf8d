"""The single-process World and the run's per-rank choices: who writes, who reads which copy."""
from pathlib import Path

import pytest
import torch

from prune_job.pipeline.distributed import (
    REPLICA, SingleProcess, World, check_calibration_share, checkpoint_dirs, first_on_each_node, peak_over_ranks,
)
from prune_job.spec import SpecError, parse_prunejob

OUT, WORK = Path("/out"), Path("/work")


@pytest.mark.parametrize("world, evaluating, expected", [
    (World(rank=0, size=4, local_rank=0, local_size=2, node=0), True, (OUT, OUT)),
    (World(rank=1, size=4, local_rank=1, local_size=2, node=0), True, (None, OUT)),
    (World(rank=2, size=4, local_rank=0, local_size=2, node=1), True, (WORK / REPLICA, WORK / REPLICA)),
    (World(rank=3, size=4, local_rank=1, local_size=2, node=1), True, (None, WORK / REPLICA)),
    (World(rank=2, size=4, local_rank=0, local_size=2, node=1), False, (None, WORK / REPLICA)),
])
def test_rank_0_writes_and_other_nodes_keep_a_replica_for_evaluation(world, evaluating, expected):
    assert checkpoint_dirs(world, OUT, WORK, evaluating) == expected


def test_single_process_collectives_change_nothing():
    world = SingleProcess()
    t = torch.tensor([1.5, 2.0], dtype=torch.float64)
    assert world.all_reduce(t) is t and torch.equal(t, torch.tensor([1.5, 2.0], dtype=torch.float64))
    assert peak_over_ranks(world, 12345) == 12345
    assert first_on_each_node(world, lambda: "done") == "done"
    assert world.share([1, 2, 3]) == [1, 2, 3] and world.is_writer


def test_more_ranks_than_windows_names_the_field():
    with pytest.raises(SpecError) as err:
        check_calibration_share(World(rank=0, size=4), [torch.zeros(3)] * 3)
    assert err.value.problems[0][0] == "spec.calibration.samples"
    check_calibration_share(World(rank=0, size=4), [])  # magnitude reads no calibration


def test_hf_token_secret_is_for_hf_models_only():
    doc = {"spec": {"model": {"uri": "s3://models/llama/", "credentialsSecret": "hf"}, "output": {"uri": "/tmp/o"}}}
    with pytest.raises(SpecError) as err:
        parse_prunejob(doc)
    assert err.value.problems[0][0] == "spec.model"
    doc["spec"]["model"]["uri"] = "hf://org/name"
    assert parse_prunejob(doc).spec.model.credentials_secret == "hf"


def test_groups_that_differ_between_ranks_are_refused(tmp_path):
    """Rank 1 reports one group fewer than rank 0: both fail with a message, neither hangs."""
    from multirank.group import run_group

    script = tmp_path / "groups.py"
    script.write_text(
        "import torch\n"
        "from prune_job.pipeline.distributed import check_same_groups, world_from_env\n"
        "from prune_job.pipeline.statistics import Group\n"
        "class T:\n    def __init__(self, n): self.name = n\n"
        "world = world_from_env()\n"
        "groups = [Group([T('a')]), Group([T('b')])][: 2 - world.rank]\n"
        "try:\n    check_same_groups(world, groups)\nexcept RuntimeError as err:\n    print('refused', err)\n"
        "check_same_groups(world, [Group([T('a')])])\n"  # equal groups pass
        "world.close()\n")
    outs = run_group(2, [str(script)], timeout=120)
    assert all("refused" in o.stdout and "different layers" in o.stdout for o in outs)
