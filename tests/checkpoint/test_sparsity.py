"""Sparsity counted from written weights: exact on a hand-built checkpoint."""
from __future__ import annotations

import torch
from safetensors.torch import save_file

from prune_job.checkpoint import sparsity
from prune_job.spec import Pattern


def hand_built(folder):
    """Two shards; known zeros in every block Linear; non-block tensors that must not be counted."""
    folder.mkdir()
    q0 = torch.ones(8, 16)
    q0[0, :5] = 0  # 5 zeros
    up0 = torch.arange(1, 129, dtype=torch.float32).reshape(16, 8)
    up0[:, ::2] = 0  # 64 zeros, 2:4 along inputs
    q1 = torch.zeros(8, 16)  # 128 zeros
    save_file({"model.layers.0.self_attn.q_proj.weight": q0, "model.layers.0.mlp.up_proj.weight": up0,
               "model.embed_tokens.weight": torch.zeros(32, 8)}, folder / "model-00001-of-00002.safetensors")
    save_file({"model.layers.1.self_attn.q_proj.weight": q1, "model.layers.1.input_layernorm.weight": torch.zeros(8),
               "lm_head.weight": torch.zeros(32, 8)}, folder / "model-00002-of-00002.safetensors")
    return folder


def test_exact_counts_on_hand_built_checkpoint(tmp_path):
    layers = sparsity.measure_layers(sparsity.iter_safetensors(hand_built(tmp_path / "ckpt")))
    by_name = {layer.name: layer for layer in layers}
    assert set(by_name) == {"model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj",
                            "model.layers.1.self_attn.q_proj"}
    assert (by_name["model.layers.0.self_attn.q_proj"].zeros, by_name["model.layers.0.self_attn.q_proj"].numel) == (5, 128)
    assert by_name["model.layers.0.mlp.up_proj"].zeros == 64
    assert by_name["model.layers.1.self_attn.q_proj"].sparsity == 1.0
    assert by_name["model.layers.1.self_attn.q_proj"].block == 1
    assert sparsity.overall_sparsity(layers) == (5 + 64 + 128) / (128 * 3)


def test_select_exactly_those(tmp_path):
    select = lambda key, _tensor: key == "model.layers.0.mlp.up_proj.weight"  # noqa: E731
    layers = sparsity.measure_layers(sparsity.iter_safetensors(hand_built(tmp_path / "ckpt")), select=select)
    assert [layer.name for layer in layers] == ["model.layers.0.mlp.up_proj"]
    assert sparsity.overall_sparsity(layers) == 0.5


def test_nm_check_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        w = torch.randn(6, 16, generator=g) * (torch.rand(6, 16, generator=g) > 0.55)
        for n, m in [(2, 4), (4, 8), (1, 4)]:
            expect = all(int((w[r, c:c + m] != 0).sum()) <= n for r in range(6) for c in range(0, 16, m))
            assert sparsity.satisfies_nm(w, Pattern(n, m)) == expect


def test_transposed_storage_checks_inputs_along_rows():
    w_out_in = torch.tensor([[1.0, 0, 2, 0, 0, 3, 4, 0]] * 4)  # 2:4 along inputs
    stored = w_out_in.t().contiguous()  # Conv1D stores [in, out]
    layer = sparsity.count_layer("h.0.attn.c_attn.weight", stored, Pattern(2, 4), transposed=True)
    assert layer.pattern_ok and layer.shape == [4, 8]
    assert not sparsity.count_layer("h.0.attn.c_attn.weight", stored, Pattern(2, 4)).pattern_ok


def test_layer_kind_and_block():
    assert sparsity.layer_kind("model.layers.12.self_attn.q_proj.weight") == "self_attn.q_proj"
    assert sparsity.block_of("transformer.h.3.mlp.c_fc.weight") == 3
    assert sparsity.block_of("lm_head.weight") is None
