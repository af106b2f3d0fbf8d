"""The new recipe options (score, update, refine, allocation) through the block pipeline."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from prune_job import algorithms
from prune_job.algorithms import recipe
from prune_job.pipeline.model import PRUNABLE, open_model
from prune_job.pipeline.prune import prune_model
from prune_job.spec import Pruning, SpecError, parse_prunejob
from memory_sink import MemorySink

RECIPES = [
    dict(method="wanda", score="ria"),
    dict(method="wanda", update="admm"),
    dict(method="wanda", refine="dsnot"),
    dict(method="wanda", score="ria", refine="dsnot", update="admm"),
    dict(method="sparsegpt", update="admm"),
    dict(method="sparsegpt", refine="dsnot", update="admm"),
]


def calibration(n=4, length=12, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (2, length), generator=g) for _ in range(n // 2)]


@pytest.mark.parametrize("options", RECIPES, ids=lambda o: "+".join(map(str, o.values())))
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
@pytest.mark.parametrize("sequential", [True, False])
def test_every_recipe_runs_with_exact_sparsity(tiny_model_factory, options, pattern, sequential):
    sink = MemorySink()
    handle = open_model(tiny_model_factory("llama"), device=torch.device("cpu"))
    pruning = Pruning(sparsity=0.5, pattern=pattern, sequential=sequential, **options)
    result = prune_model(handle, pruning, calibration(), sink)
    assert len(result.layers) == 2 * 7
    for layer in result.layers:
        w = sink.tensors[layer.name + ".weight"]
        assert torch.isfinite(w).all()
        if pattern == "2:4":
            assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all(), layer.name
            assert layer.pattern_ok
        elif options["method"] == "wanda":
            assert (w == 0).sum().item() == w.numel() // 2, layer.name
    assert abs(result.sparsity - 0.5) < 0.01


def weight_of(module):
    return module.weight.data.t() if not isinstance(module, torch.nn.Linear) else module.weight.data


def reference_prune(path, pruning, batches):
    """Whole model in memory, block by block, through recipe.prune_weight with Hessian statistics."""
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    _, blocks = next((n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList))
    for block in blocks:
        layers = [m for m in block.modules() if isinstance(m, PRUNABLE)]
        stats = {id(m): algorithms.HessianStats(weight_of(m).shape[1]) for m in layers}
        hooks = [m.register_forward_pre_hook(lambda mod, a: stats[id(mod)].add(a[0])) for m in layers]
        with torch.no_grad():
            for ids in batches:
                model(input_ids=ids, use_cache=False)
        for h in hooks:
            h.remove()
        for m in layers:
            new = recipe.prune_weight(weight_of(m), pruning, pruning.sparsity, stats[id(m)])
            m.weight.data = new if isinstance(m, torch.nn.Linear) else new.t().contiguous()
    return model.state_dict()


@pytest.mark.parametrize("options", [dict(score="ria", update="admm"), dict(update="admm")])
def test_wanda_mask_with_admm_matches_in_memory_reference(tiny_model_factory, options):
    path = tiny_model_factory("llama", layers=2)
    pruning = Pruning(method="wanda", sparsity=0.5, sequential=False, **options)
    batches = calibration()
    sink = MemorySink()
    prune_model(open_model(path, device=torch.device("cpu")), pruning, batches, sink)
    expected = reference_prune(path, pruning, batches)
    for key, tensor in sink.tensors.items():
        torch.testing.assert_close(tensor, expected[key], atol=1e-4, rtol=1e-4, msg=key)


def test_admm_lowers_the_output_error_of_wanda(tiny_model_factory):
    path = tiny_model_factory("llama", layers=2)
    batches = calibration(n=8, length=16)
    dense = AutoModelForCausalLM.from_pretrained(path).eval()
    errors = {}
    for update in ("none", "admm"):
        sink = MemorySink()
        prune_model(open_model(path, device=torch.device("cpu")), Pruning(method="wanda", update=update), batches, sink)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        model.load_state_dict(sink.tensors, strict=False)
        with torch.no_grad():
            errors[update] = sum(float((model(input_ids=b).logits - dense(input_ids=b).logits).square().sum())
                                 for b in batches)
    assert errors["admm"] < errors["none"]


@pytest.mark.parametrize("sequential", [True, False])
def test_owl_allocation_keeps_the_model_wide_sparsity(tiny_model_factory, sequential):
    handle = open_model(tiny_model_factory("llama", layers=4), device=torch.device("cpu"))
    pruning = Pruning(method="wanda", sparsity=0.6, allocation="owl", owl_lambda=0.1, owl_m=3.0, sequential=sequential)
    result = prune_model(handle, pruning, calibration(), MemorySink())
    by_block = {}
    for layer in result.layers:
        z, n = by_block.get(layer.block, (0, 0))
        by_block[layer.block] = (z + layer.zeros, n + layer.numel)
    block_sparsity = [z / n for z, n in by_block.values()]
    assert all(0.5 - 0.01 <= s <= 0.7 + 0.01 for s in block_sparsity)
    assert max(block_sparsity) - min(block_sparsity) > 0.05  # the blocks were not all pruned alike
    uniform = prune_model(open_model(tiny_model_factory("llama", layers=4), device=torch.device("cpu")),
                          pruning.model_copy(update={"allocation": "uniform"}), calibration(), MemorySink())
    # the block sparsities average exactly 0.6; what is written differs from uniform's only by each
    # row's rounding down of its count (here rows of 64 inputs: under 1/64)
    assert abs(result.sparsity - uniform.sparsity) < 1 / 64


BAD = [
    (dict(method="magnitude", update="admm"), "update"),
    (dict(method="magnitude", allocation="owl"), "allocation"),
    (dict(method="sparsegpt", score="ria"), "score"),
    (dict(method="wanda", update="obs"), "update"),
    (dict(method="sparsegpt", update="none"), "update"),
    (dict(method="sparsegpt", refine="dsnot"), "refine"),
    (dict(method="wanda", allocation="owl", pattern="2:4"), "allocation"),
    (dict(method="wanda", allocation="owl", sparsity=0.5, owlLambda=0.5), "owlLambda"),
    (dict(method="wanda", update="lbfgs"), "update"),
]


@pytest.mark.parametrize("pruning,field", BAD)
def test_contradictory_recipes_are_refused_naming_the_field(pruning, field):
    doc = {"apiVersion": "pruning.dev/v1alpha1", "kind": "PruneJob", "metadata": {"name": "x"},
           "spec": {"model": {"uri": "builtin:smollm2-135m"}, "pruning": {"sparsity": 0.5, **pruning},
                    "output": {"uri": "/tmp/out"}}}
    with pytest.raises(SpecError) as err:
        parse_prunejob(doc)
    assert "spec.pruning" in str(err.value) and field in str(err.value)


def test_recipe_name():
    assert Pruning(method="sparsegpt").recipe_name == "sparsegpt"
    assert Pruning(method="wanda", score="ria", refine="dsnot", update="admm", allocation="owl").recipe_name == \
        "wanda+ria+dsnot+admm+owl"
    assert Pruning(method="sparsegpt", pattern="2:4", permute=True, update="admm").recipe_name == "sparsegpt+permute+admm"
