"""The block-sequential pipeline against an in-memory reference, for several architectures."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from prune_job import algorithms
from prune_job.pipeline.model import PRUNABLE, ModelFormatError, open_model
from prune_job.pipeline.prune import prune_model
from prune_job.spec import Pruning
from memory_sink import MemorySink
from tiny_models import ARCHS


def calibration(n=4, length=12, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (2, length), generator=g) for _ in range(n // 2)]


def weight_of(module):
    return module.weight.data.t() if not isinstance(module, torch.nn.Linear) else module.weight.data


def reference_prune(path, pruning, batches):
    """Prune a fully loaded model block by block: statistics of block i from a
    forward through the already-pruned blocks 0..i-1 and the dense block i."""
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    _, blocks = next((n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList))
    for block in blocks:
        layers = [m for m in block.modules() if isinstance(m, PRUNABLE)]
        stats = {id(m): (algorithms.WandaStats(weight_of(m).shape[1])) for m in layers}
        hooks = [m.register_forward_pre_hook(lambda mod, a: stats[id(mod)].add(a[0])) for m in layers]
        with torch.no_grad():
            for ids in batches:
                model(input_ids=ids, use_cache=False)
        for h in hooks:
            h.remove()
        for m in layers:
            new = algorithms.wanda_prune(weight_of(m), pruning.sparsity, pruning.nm, stats[id(m)])
            m.weight.data = new if isinstance(m, torch.nn.Linear) else new.t().contiguous()
    return model.state_dict()


@pytest.mark.parametrize("arch", ARCHS)
def test_pipeline_matches_in_memory_reference(tiny_model_factory, arch):
    path = tiny_model_factory(arch, layers=3)
    pruning = Pruning(method="wanda", sparsity=0.5, sequential=False)
    batches = calibration()
    sink = MemorySink()
    handle = open_model(path, device=torch.device("cpu"))
    result = prune_model(handle, pruning, batches, sink)
    expected = reference_prune(path, pruning, batches)
    assert set(sink.tensors) == set(handle.index.location)  # written under the keys the source used
    model_name = {key: name for name, key in handle.stored_as.items()}  # e.g. GPT-NeoX's embed_out is lm_head
    for key, tensor in sink.tensors.items():
        name = model_name.get(key, key)
        torch.testing.assert_close(tensor, expected[name], atol=1e-5, rtol=1e-5, msg=key)
    assert abs(result.sparsity - 0.5) < 1e-6
    assert all(p.is_meta for p in handle.blocks.parameters())  # every block released
    assert all(p.is_meta for p in handle.model.parameters())  # embeddings too, once block 0's inputs were captured


def test_shared_inputs_form_groups(tiny_model_factory):
    handle = open_model(tiny_model_factory("llama"), device=torch.device("cpu"))
    result = prune_model(handle, Pruning(method="sparsegpt", sparsity=0.5), calibration(), MemorySink())
    groups = {tuple(sorted(l.group)) for l in result.layers if l.block == 0}
    short = {tuple(n.rsplit(".", 1)[1] for n in g) for g in groups}
    assert short == {("k_proj", "q_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",)}


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
@pytest.mark.parametrize("sequential", [True, False])
def test_every_method_and_pattern_runs(tiny_model_factory, method, pattern, sequential):
    sink = MemorySink()
    handle = open_model(tiny_model_factory("llama"), device=torch.device("cpu"))
    pruning = Pruning(method=method, sparsity=0.5, pattern=pattern, sequential=sequential)
    result = prune_model(handle, pruning, calibration(), sink)
    assert len(result.layers) == 2 * 7
    for layer in result.layers:
        w = sink.tensors[layer.name + ".weight"]
        assert (w == 0).sum().item() == w.numel() // 2, layer.name
        if pattern == "2:4":
            assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
    assert set(sink.patterns) == {l.name + ".weight" for l in result.layers}


def test_sparsity_zero_is_identity(tiny_model_factory):
    path = tiny_model_factory("qwen2")
    sink = MemorySink()
    prune_model(open_model(path, device=torch.device("cpu")), Pruning(method="sparsegpt", sparsity=0.0), calibration(), sink)
    expected = AutoModelForCausalLM.from_pretrained(path).state_dict()
    for name, tensor in sink.tensors.items():
        assert torch.equal(tensor, expected[name]), name


def test_targets_exclude(tiny_model_factory):
    handle = open_model(tiny_model_factory("llama"), device=torch.device("cpu"))
    pruning = Pruning(method="magnitude", sparsity=0.5, targets={"exclude": ["lm_head", r"mlp\."]})
    result = prune_model(handle, pruning, [], MemorySink())
    assert result.layers and all("mlp" not in l.name for l in result.layers)


def test_checkpoints_fused_on_load_are_refused_before_reading(tiny_model_factory):
    """Mixtral's experts are stored one by one and stacked into one tensor on load:
    not readable block by block, and said so when the model is opened."""
    pytest.importorskip("transformers.conversion_mapping")  # transformers >= 5 fuses them
    with pytest.raises(ModelFormatError, match="fuses the stored tensor"):
        open_model(tiny_model_factory("mixtral"), device=torch.device("cpu"))

