"""Tensor encodings against brute-force references and hand-worked bit layouts (docs/format.md)."""
from __future__ import annotations

import itertools

import pytest
import torch

from ckpt_helpers import magnitude
from prune_job.checkpoint.encoding import BITS_VIEW, decode, encode, index_scheme
from prune_job.spec import Pattern


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(BITS_VIEW[a.element_size()]),
                                                                    b.view(BITS_VIEW[b.element_size()]))


def roundtrip(t: torch.Tensor, pattern=None) -> tuple[torch.Tensor, dict]:
    enc = encode("w", t, pattern, pruned=True)
    if enc.info["encoding"] == "dense":
        return enc.parts["w"], enc.info
    parts = {role: enc.parts[stored] for role, stored in enc.info["parts"].items()}
    return decode(enc.info, parts), enc.info


def test_bitmask_bit_order_by_hand():
    t = torch.tensor([[1.0, 0, 0, 2, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.float16)
    enc = encode("w", t, None, pruned=True)
    assert enc.info["encoding"] == "bitmask"
    assert enc.parts["w.bitmask"].tolist() == [0b00001001, 0b00000001, 0]  # element i -> bit i % 8 of byte i // 8
    assert enc.parts["w.values"].tolist() == [1.0, 2.0, 3.0]


def test_nm_combination_code_by_hand():
    t = torch.tensor([[0.0, 5, 0, 7, 1, 2, 0, 0]], dtype=torch.bfloat16)
    enc = encode("w", t, Pattern(2, 4), pruned=True)
    assert enc.info["encoding"] == "nm" and enc.info["index"] == "combination" and enc.info["index_bits"] == 3
    # kept sets in lexicographic order: (0,1)=0 (0,2)=1 (0,3)=2 (1,2)=3 (1,3)=4 (2,3)=5
    # codes 4 (=0b100) then 0 (=0b000), LSB first: bits 0,0,1, 0,0,0 -> byte 0b00000100
    assert enc.parts["w.nm_index"].tolist() == [0b00000100]
    assert enc.parts["w.values"].tolist() == [[5.0, 7.0, 1.0, 2.0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(13, 24), (3, 5, 8), (40,)])
def test_unstructured_roundtrip_is_bit_exact(dtype, shape):
    torch.manual_seed(0)
    t = torch.randn(shape).to(dtype)
    t[torch.rand(shape) < 0.6] = 0
    t.view(-1)[1] = -0.0  # kept: decided on bits, not on value
    back, info = roundtrip(t)
    assert info["encoding"] == "bitmask" and same_bits(back, t)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 8), (2, 32), (1, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nm_roundtrip_is_bit_exact(n, m, dtype):
    torch.manual_seed(1)
    t = magnitude(torch.randn(2 * 1024 + 24, 4 * m).to(dtype), Pattern(n, m))  # rows span several chunks
    t[0, :m] = 0  # a group with fewer than N non-zeros
    back, info = roundtrip(t, Pattern(n, m))
    assert info["encoding"] == "nm" and same_bits(back, t)
    assert info["index"] == ("combination" if m <= 16 else "position")


def test_index_bits_are_the_fewest_the_pattern_needs():
    for n, m in [(2, 4), (4, 8), (1, 4), (8, 16), (2, 32)]:
        scheme, bits = index_scheme(Pattern(n, m))
        if scheme == "combination":
            count = len(list(itertools.combinations(range(m), n)))
            assert 2 ** (bits - 1) < count <= 2 ** bits
        else:
            assert 2 ** (bits - 1) < m <= 2 ** bits


def test_not_nm_falls_back_to_bitmask_and_dense_when_not_smaller():
    t = torch.randn(8, 16)
    t[t.abs() < 0.3] = 0  # ~25% zeros, many groups with 3-4 non-zeros
    back, info = roundtrip(t, Pattern(2, 4))
    assert info["encoding"] == "bitmask" and same_bits(back, t)
    dense = torch.randn(8, 16, dtype=torch.float16)  # nothing pruned: the bitmask would be larger
    back, info = roundtrip(dense)
    assert info == {"encoding": "dense", "pruned": True} and same_bits(back, dense)


@pytest.mark.parametrize("pattern", [None, Pattern(2, 4)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_50_percent_is_at_most_057_of_dense(pattern, dtype):
    torch.manual_seed(2)
    t = magnitude(torch.randn(256, 512).to(dtype), pattern)
    enc = encode("w", t, pattern, pruned=True)
    stored = sum(p.numel() * p.element_size() for p in enc.parts.values())
    ratio = stored / (t.numel() * t.element_size())
    assert ratio <= 0.5625 if pattern is None else ratio <= 0.547


@pytest.mark.parametrize("pattern", [Pattern(2, 4), Pattern(3, 8), Pattern(2, 32)])
def test_nm_decode_in_small_chunks(monkeypatch, pattern):
    import prune_job.checkpoint.encoding as encoding

    monkeypatch.setattr(encoding, "GROUPS_PER_CHUNK", 8)
    monkeypatch.setattr(encoding, "ROWS_PER_CHUNK", 8)
    torch.manual_seed(3)
    t = magnitude(torch.randn(37, 3 * pattern.m).to(torch.float16), pattern)
    back, info = roundtrip(t, pattern)
    assert info["encoding"] == "nm" and same_bits(back, t)
