"""N:M channel permutations: the search, and the folded model against the unpermuted one."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from prune_job.algorithms.permutation import kept_score, search_permutation
from prune_job.checkpoint.writer import CheckpointWriter
from prune_job.pipeline import prune as prune_module
from prune_job.pipeline.model import open_model
from prune_job.pipeline.permute import PRODUCERS, ChannelPermuter
from prune_job.pipeline.prune import prune_model
from prune_job.spec import Pattern, Pruning
from memory_sink import MemorySink
from tiny_models import tiny_config


@pytest.mark.parametrize("pattern", [Pattern(2, 4), Pattern(4, 8), Pattern(1, 4)])
def test_search_raises_the_kept_score(pattern):
    g = torch.Generator().manual_seed(0)
    S = torch.rand(32, 64, generator=g) * torch.rand(64, generator=g) ** 2
    perm = search_permutation(S, pattern, rounds=30)
    assert torch.equal(perm.sort().values, torch.arange(64))
    assert kept_score(S[:, perm], pattern) > 1.01 * kept_score(S, pattern)


def test_search_with_one_group_is_the_identity():
    assert torch.equal(search_permutation(torch.rand(3, 4), Pattern(2, 4)), torch.arange(4))


def calibration(n=4, length=12, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (2, length), generator=g) for _ in range(n // 2)]


def prune_recording(path, pruning, monkeypatch):
    """Prune through the pipeline; returns (written tensors, {consumer: (perm, producer perm)})."""
    made = []

    class Recording(ChannelPermuter):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(prune_module, "ChannelPermuter", Recording)
    sink = MemorySink()
    result = prune_model(open_model(path, device=torch.device("cpu")), pruning, calibration(), sink)
    assert all(layer.pattern_ok for layer in result.layers)
    return sink.tensors, made[0].applied


def unpermute(state, applied):
    """The same weights with every folded permutation undone: the unpermuted model with the permuted masks."""
    out = dict(state)
    for consumer, (perm, out_perm) in applied.items():
        parent, _, leaf = consumer.rpartition(".")
        out[f"{consumer}.weight"] = state[f"{consumer}.weight"][:, perm.argsort()]
        for producer in PRODUCERS[leaf]:
            for kind in ("weight", "bias"):
                key = f"{parent}.{producer}.{kind}"
                if key in state:
                    out[key] = state[key][out_perm.argsort()]
    return out


def sensitive_model(directory, arch):
    """A tiny model whose block weights are large enough (std 0.4, not 0.02) that every one of them
    shows in the logits: a permutation folded wrongly cannot hide below the tolerance."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, 2, 64))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 or name.endswith("bias"):
                p.normal_(0.0, 0.4)
    model.save_pretrained(directory)
    return directory


def logits(path, state, ids, dtype=torch.float32):
    """fp64 compares two orders of the same sums without fp32 rounding (which these large weights amplify)."""
    model = AutoModelForCausalLM.from_pretrained(path).eval().to(dtype)
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # qwen2: v_proj has a bias
@pytest.mark.parametrize("sequential", [True, False])
def test_permuted_model_equals_unpermuted_model_with_permuted_mask(monkeypatch, tmp_path, arch, sequential):
    path = sensitive_model(tmp_path / "model", arch)
    pruning = Pruning(method="wanda", sparsity=0.5, pattern="2:4", permute=True, permute_rounds=20,
                      sequential=sequential)
    state, applied = prune_recording(path, pruning, monkeypatch)
    assert {c.rsplit(".", 1)[1] for c in applied} == {"down_proj", "o_proj"} and len(applied) == 4
    assert any(not torch.equal(perm, torch.arange(perm.numel())) for perm, _ in applied.values())
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(9))
    dense = AutoModelForCausalLM.from_pretrained(path).state_dict()
    masks = {k: v != 0 for k, v in unpermute(state, applied).items() if k.endswith("proj.weight")}
    # the reference: the dense, unpermuted model with the permuted masks moved back onto its own
    # channels (Wanda changes no kept weight); a fold that moved any producer wrongly differs from it
    reference = {k: dense[k] * masks[k] if k in masks else dense[k] for k in state}
    permuted = logits(path, state, ids, torch.float64)
    assert (permuted - logits(path, dense, ids, torch.float64)).abs().max() > 0.1  # what pruning changes shows
    torch.testing.assert_close(permuted, logits(path, reference, ids, torch.float64), atol=1e-5, rtol=1e-5)

    # written as an ordinary checkpoint, it loads in transformers with no extra code
    with CheckpointWriter(tmp_path / "out", format="dense") as writer:
        for key, tensor in state.items():
            writer.add(key, tensor)
        writer.add_file("config.json", path / "config.json")
        writer.finish({"source": {"uri": str(path)}})
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, logits(path, state, ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", [dict(method="sparsegpt"), dict(method="wanda", score="ria", update="admm"),
                                     dict(method="magnitude")])
def test_permute_composes_with_every_method(tiny_model_factory, monkeypatch, options):
    path = tiny_model_factory("llama", layers=2)
    state, applied = prune_recording(path, Pruning(sparsity=0.5, pattern="4:8", permute=True, permute_rounds=10,
                                                   **options), monkeypatch)
    assert len(applied) == 4


def test_permute_needs_an_nm_pattern():
    with pytest.raises(ValueError, match="permute"):
        Pruning(method="wanda", permute=True)
