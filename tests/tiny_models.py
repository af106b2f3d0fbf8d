"""Tiny random decoder-only models saved with save_pretrained, for mechanics tests."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    BloomConfig,
    FalconConfig,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    OPTConfig,
    PhiConfig,
    Qwen2Config,
)

VOCAB = 256


def tiny_config(arch: str, layers: int = 2, hidden: int = 64):
    common = dict(vocab_size=VOCAB, num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=4)
    if arch == "llama":
        return LlamaConfig(intermediate_size=2 * hidden, num_key_value_heads=2, tie_word_embeddings=True, **common)
    if arch == "mistral":
        return MistralConfig(intermediate_size=2 * hidden, num_key_value_heads=2, **common)
    if arch == "qwen2":
        return Qwen2Config(intermediate_size=2 * hidden, num_key_value_heads=2, **common)
    if arch == "opt":
        return OPTConfig(vocab_size=VOCAB, num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=4,
                         ffn_dim=2 * hidden, word_embed_proj_dim=hidden, max_position_embeddings=512)
    if arch == "gpt2":
        return GPT2Config(vocab_size=VOCAB, n_layer=layers, n_embd=hidden, n_head=4, n_positions=512)
    if arch == "gpt_neox":  # transformers 5 renames its stored `embed_out` to `lm_head` on load
        return GPTNeoXConfig(intermediate_size=2 * hidden, **common)
    if arch == "gemma":  # scaled embeddings, explicit head_dim
        return GemmaConfig(intermediate_size=2 * hidden, num_key_value_heads=1, head_dim=hidden // 4, **common)
    if arch == "phi":  # parallel attention and MLP, partial rotary
        return PhiConfig(intermediate_size=2 * hidden, **common)
    if arch == "falcon":  # fused query_key_value, parallel attention
        return FalconConfig(**common)
    if arch == "bloom":  # ALiBi: no positions, a mask built outside the blocks
        return BloomConfig(vocab_size=VOCAB, n_layer=layers, hidden_size=hidden, n_head=4)
    if arch == "mixtral":  # stored per expert, fused into one stacked tensor on load
        return MixtralConfig(intermediate_size=2 * hidden, num_key_value_heads=2, num_local_experts=4,
                             num_experts_per_tok=2, **common)
    raise ValueError(arch)


ARCHS = ("llama", "mistral", "qwen2", "opt", "gpt2", "gpt_neox", "gemma", "phi", "falcon", "bloom")


def save_tiny_model(directory: Path, arch: str = "llama", layers: int = 2, hidden: int = 64, seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, layers, hidden)).to(dtype)
    model.save_pretrained(directory)
    return Path(directory)
