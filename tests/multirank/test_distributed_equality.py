"""World size 2 (gloo, spawned processes on 127.0.0.1) against the plain path, for every
method and pattern: sparsity equal per layer, >= 99.5% of mask entries equal, perplexity
within 0.5%."""
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from prune_job.data import micro_batches
from prune_job.pipeline.distributed import World, assign_owners, share_bounds
from prune_job.pipeline.model import open_model
from prune_job.pipeline.prune import prune_model
from prune_job.spec import Pruning
from memory_sink import MemorySink
from multirank.group import run_group

CASES = [
    {"method": "magnitude", "sparsity": 0.5, "pattern": "unstructured"},
    {"method": "magnitude", "sparsity": 0.5, "pattern": "2:4"},
    {"method": "wanda", "sparsity": 0.5, "pattern": "unstructured"},
    {"method": "wanda", "sparsity": 0.5, "pattern": "2:4"},
    {"method": "sparsegpt", "sparsity": 0.5, "pattern": "unstructured", "sequential": True, "blockSize": 16},
    {"method": "sparsegpt", "sparsity": 0.5, "pattern": "2:4", "sequential": True, "blockSize": 16},
    {"method": "sparsegpt", "sparsity": 0.5, "pattern": "unstructured", "sequential": False, "blockSize": 16},
    {"method": "sparsegpt", "sparsity": 0.5, "pattern": "2:4", "sequential": False, "blockSize": 16},
    {"method": "wanda", "sparsity": 0.5, "pattern": "unstructured", "allocation": "owl"},
    {"method": "wanda", "sparsity": 0.5, "pattern": "2:4", "permute": True, "permuteRounds": 5},
    {"method": "sparsegpt", "sparsity": 0.5, "pattern": "2:4", "sequential": True, "blockSize": 16, "permute": True,
     "permuteRounds": 5},
]
TOKENS_PER_BATCH = 64


def windows(n=9, length=16, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (length,), generator=g) for _ in range(n)]


def plain(model, pruning, ws):
    sink = MemorySink()
    prune_model(open_model(model, device=torch.device("cpu")), pruning, micro_batches(ws, TOKENS_PER_BATCH), sink)
    return sink.tensors


def loss(model_dir, state, ids):
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


@pytest.fixture(scope="module")
def two_ranks(tiny_model_factory, tmp_path_factory):
    model = tiny_model_factory("llama", layers=2, hidden=64)
    tmp = tmp_path_factory.mktemp("dist")
    ws = windows()
    (tmp / "windows.json").write_text(json.dumps([w.tolist() for w in ws]))
    (tmp / "cases.json").write_text(json.dumps(CASES))
    worker = Path(__file__).parent / "dist_worker.py"
    run_group(2, [str(worker), str(model), str(tmp / "windows.json"), str(tmp / "cases.json"), str(tmp)])
    return model, ws, [load_file(tmp / f"case{k}.safetensors") for k in range(len(CASES))]


@pytest.mark.parametrize("k", range(len(CASES)), ids=[f"{c['method']}-{c['pattern']}-{c.get('sequential', '')}"
                                                     f"{'-owl' if c.get('allocation') else ''}"
                                                     f"{'-permute' if c.get('permute') else ''}" for c in CASES])
def test_two_ranks_match_one(two_ranks, k):
    model, ws, results = two_ranks
    pruning = Pruning.model_validate(CASES[k])
    one, two = plain(model, pruning, ws), results[k]
    assert set(one) == set(two)
    agree = total = 0
    for name, w1 in one.items():
        w2 = two[name]
        if not name.endswith("proj.weight"):
            assert torch.equal(w1, w2), name  # untouched tensors travel unchanged
            continue
        assert int((w1 == 0).sum()) == int((w2 == 0).sum()), f"{name}: sparsity differs"
        agree += int(((w1 == 0) == (w2 == 0)).sum())
        total += w1.numel()
    assert agree / total >= 0.995, f"only {agree / total:.4%} of mask entries agree"
    if pruning.method == "magnitude":
        assert agree == total
    if pruning.allocation == "owl":  # the blocks' own sparsities (equal per layer above), not all the target
        per_block = {}
        for name, w in two.items():
            if name.endswith("proj.weight"):
                block = name.split(".layers.")[1].split(".")[0]
                zeros, size = per_block.get(block, (0, 0))
                per_block[block] = (zeros + int((w == 0).sum()), size + w.numel())
        assert len({round(z / n, 3) for z, n in per_block.values()}) > 1, per_block
    ids = torch.stack(windows(4, 32, seed=9))
    l1, l2 = loss(model, one, ids), loss(model, two, ids)
    assert abs(math.exp(l2) / math.exp(l1) - 1) < 0.005


def test_shares_are_contiguous_and_cover_everything():
    for n in range(0, 12):
        for size in range(1, 5):
            parts = [share_bounds(n, r, size) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1
    assert World(rank=1, size=2).share(list(range(5))) == [2, 3, 4]


def test_solves_spread_largest_first(tiny_model_factory):
    from prune_job.pipeline.prune import block_targets
    from prune_job.pipeline.statistics import Group

    handle = open_model(tiny_model_factory("llama", layers=2, hidden=64), device=torch.device("cpu"))
    handle.load_tree(handle.block_prefix(0))
    targets = block_targets(handle, 0, Pruning())
    groups = [Group([t]) for t in targets]
    owners = assign_owners(groups, 2)
    assert set(owners) == {0, 1}
    # the largest solve (down_proj: 128 inputs) goes first to rank 0
    big = max(range(len(groups)), key=lambda k: groups[k].leader.in_features)
    assert owners[big] == 0
    assert assign_owners(groups, 1) == [0] * len(groups)


def test_wanda_solves_are_spread_by_their_own_cost(tiny_model_factory):
    """Wanda sorts rows, it does not factorise: spread by SparseGPT's cost, the down projection's inputs³
    would leave rank 1 most of the block's weights (8192 against 28672 here); by its own, the ranks'
    shares differ by less than the largest group."""
    from prune_job.pipeline.prune import block_targets
    from prune_job.pipeline.statistics import Group

    handle = open_model(tiny_model_factory("llama", layers=2, hidden=64), device=torch.device("cpu"))
    handle.load_tree(handle.block_prefix(0))
    groups = [Group([t]) for t in block_targets(handle, 0, Pruning(method="wanda"))]
    sizes = [g.leader.get_weight().numel() for g in groups]
    for factorises, balanced in ((True, False), (False, True)):
        owners = assign_owners(groups, 2, factorises=factorises)
        share = [sum(n for n, o in zip(sizes, owners) if o == r) for r in (0, 1)]
        assert (abs(share[0] - share[1]) <= max(sizes)) == balanced, (factorises, share)
