"""Magnitude, Wanda and SparseGPT against slow references; statistics; dtypes; sparsity 0."""
import pytest
import torch

from alg_reference import damped_hessian, keep_mask, sparsegpt_naive
from prune_job.algorithms import (
    HessianStats,
    WandaStats,
    factorise,
    magnitude_prune,
    removed_count,
    sparsegpt_prune,
    sparsegpt_prune_shared,
    wanda_prune,
)
from prune_job.algorithms import sparsegpt
from prune_job.spec import Pattern

PATTERNS = [None, Pattern(2, 4), Pattern(1, 4), Pattern(4, 8)]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def weight(rows, cols, seed=0, dtype=torch.float32):
    return torch.randn(rows, cols, generator=gen(seed)).to(dtype)


def activations(tokens, cols, seed=1, rank=None):
    """Correlated inputs: X = Z A + noise, A of low-ish rank, columns of very different scale."""
    g = gen(seed)
    rank = rank or max(cols // 4, 1)
    A = torch.randn(rank, cols, generator=g) * torch.randn(cols, generator=g).mul(0.5).exp()
    return torch.randn(tokens, rank, generator=g) @ A + 0.1 * torch.randn(tokens, cols, generator=g)


def sparsity_of(pattern, unstructured=0.5):
    return unstructured if pattern is None else pattern.sparsity


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("seed", range(2))
def test_magnitude_matches_brute_force(pattern, seed):
    W = weight(2, 8, seed)
    s = sparsity_of(pattern, 0.4)
    expected = W * keep_mask(W.abs(), s, pattern, "layer")
    assert torch.equal(magnitude_prune(W, s, pattern), expected)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("seed", range(2))
def test_wanda_matches_brute_force(pattern, seed):
    W, X = weight(3, 8, seed), activations(20, 8, seed)
    stats = WandaStats(8)
    for chunk in X.split(7):
        stats.add(chunk)
    s = sparsity_of(pattern, 0.4)
    scores = W.abs() * X.norm(dim=0)  # |W_ij| * ||X_j||_2, compared within each output row
    expected = W * keep_mask(scores, s, pattern, "row")
    assert torch.equal(wanda_prune(W, s, pattern, stats), expected)
    assert torch.equal(wanda_prune(W, s, pattern, stats.col_sq_norm), expected)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize(("block_size", "sub_block"), [(4, 16), (8, 16), (3, 16), (8, 2), (16, 4)])
def test_sparsegpt_matches_naive_obs(pattern, block_size, sub_block, monkeypatch):
    monkeypatch.setattr(sparsegpt, "SUB_BLOCK", sub_block)  # rank-1 steps before each GEMM
    rows, cols = 2, 16
    W, X = weight(rows, cols, 5), activations(64, cols, 6)
    X[:, 5] = 0  # one dead input
    stats = HessianStats(cols)
    stats.add(X)
    s = sparsity_of(pattern)
    got = sparsegpt_prune(W, factorise(stats.H, 0.01), s, pattern, block_size)
    eff_block = block_size if pattern is None else -(-block_size // pattern.m) * pattern.m
    expected, keep = sparsegpt_naive(W, stats.H, 0.01, s, pattern, eff_block)
    assert torch.equal(got != 0, keep)
    torch.testing.assert_close(got, expected.float(), atol=1e-4, rtol=1e-4)
    assert (got[:, 5] == 0).all()


@pytest.mark.parametrize("pattern", [None, Pattern(2, 4)])
def test_sparsegpt_matches_naive_obs_on_a_wider_layer(pattern):
    rows, cols = 6, 96  # blocks of 64 and 32 columns, sub-blocks of 16
    W, X = weight(rows, cols, 11), activations(400, cols, 12)
    stats = HessianStats(cols)
    stats.add(X)
    got = sparsegpt_prune(W, factorise(stats.H, 0.01), 0.5, pattern, 64)
    expected, keep = sparsegpt_naive(W, stats.H, 0.01, 0.5, pattern, 64)
    assert torch.equal(got != 0, keep)
    torch.testing.assert_close(got, expected.float(), atol=1e-4, rtol=1e-4)


def test_wanda_runs_from_hessian_statistics():
    W, X = weight(4, 16, 3), activations(50, 16, 4)
    hs, ws = HessianStats(16), WandaStats(16)
    hs.add(X)
    ws.add(X)
    assert torch.equal(wanda_prune(W, 0.5, None, hs), wanda_prune(W, 0.5, None, ws))


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.61])
def test_sparsegpt_removes_exactly_per_column_block(sparsity):
    rows, cols, block = 6, 40, 16  # last block has 8 columns
    W, X = weight(rows, cols, 2), activations(200, cols, 3)
    stats = HessianStats(cols)
    stats.add(X)
    got = sparsegpt_prune(W, factorise(stats.H, 0.01), sparsity, None, block)
    for start in range(0, cols, block):
        width = min(block, cols - start)
        assert int((got[:, start : start + width] == 0).sum()) == removed_count(rows * width, sparsity)


@pytest.mark.parametrize("pattern", [Pattern(2, 4), Pattern(1, 4), Pattern(4, 8)])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_nm_validity(pattern, method):
    W, X = weight(8, 32, 7), activations(100, 32, 8)
    got = prune(method, W, X, pattern.sparsity, pattern)
    per_group = (got != 0).view(8, -1, pattern.m).sum(dim=-1)
    assert (per_group == pattern.n).all()


def prune(method, W, X, sparsity, pattern, block_size=16):
    if method == "magnitude":
        return magnitude_prune(W, sparsity, pattern)
    if method == "wanda":
        stats = WandaStats(W.shape[1])
        stats.add(X)
        return wanda_prune(W, sparsity, pattern, stats)
    stats = HessianStats(W.shape[1])
    stats.add(X)
    return sparsegpt_prune(W, factorise(stats.H, 0.01), sparsity, pattern, block_size)


def reconstruction_error(W, Wp, X):
    return float(torch.linalg.matrix_norm(X @ (W - Wp).T))


@pytest.mark.parametrize("pattern", [None, Pattern(2, 4)])
@pytest.mark.parametrize("seed", range(3))
def test_error_orders_sparsegpt_wanda_magnitude(pattern, seed):
    W, X = weight(32, 64, seed), activations(512, 64, seed + 10)
    err = {m: reconstruction_error(W, prune(m, W, X, 0.5, pattern), X) for m in ("magnitude", "wanda", "sparsegpt")}
    assert err["sparsegpt"] < err["wanda"] < err["magnitude"], err


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pattern", [None, Pattern(2, 4)])
def test_sparsity_zero_returns_the_weight_untouched(method, dtype, pattern):
    W, X = weight(4, 8, 1, dtype), activations(30, 8)
    got = prune(method, W, X, 0.0, pattern)
    assert got.dtype == dtype and torch.equal(got, W)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pattern", [None, Pattern(2, 4)])
def test_half_dtypes_round_trip(method, dtype, pattern):
    W32, X = weight(8, 16, 3), activations(100, 16)
    W = W32.to(dtype)
    got = prune(method, W, X.to(dtype), sparsity_of(pattern), pattern)
    assert got.dtype == dtype and got.shape == W.shape
    assert int((got == 0).sum()) == W.numel() // 2
    if method != "sparsegpt":  # kept weights are the original values, bit for bit
        kept = got != 0
        assert torch.equal(got[kept], W[kept])
    else:  # same maths as fp32 on the rounded weights, then one rounding
        ref = prune(method, W.float(), X.to(dtype).float(), sparsity_of(pattern), pattern).to(dtype)
        torch.testing.assert_close(got, ref, atol=0, rtol=0)


def test_hessian_stats_is_the_running_mean_over_batches():
    X = activations(1000, 12, 4) * 50
    stats = HessianStats(12)
    for chunk in X.reshape(10, 4, 25, 12):  # [batch, seq, in] chunks of varying count
        stats.add(chunk)
    expected = 2.0 / X.shape[0] * (X.double().T @ X.double())
    torch.testing.assert_close(stats.H.double(), expected, rtol=1e-5, atol=1e-3)
    assert stats.n == 1000 and stats.H.dtype == torch.float32


def test_hessian_stats_upper_slabs_give_the_full_symmetric_product(monkeypatch):
    """`add` computes only the upper block triangle, a slab of rows at a time; H as read is the
    whole product, exactly symmetric, also when batches arrive after a read."""
    monkeypatch.setattr(HessianStats, "SLAB", 5)  # 12 inputs: slabs of 5, 5, 2
    X = activations(300, 12, 4) * 10
    stats = HessianStats(12)
    stats.add(X[:100])
    first = stats.H.clone()
    stats.add(X[100:])
    for H, part in ((first, X[:100]), (stats.H, X)):
        assert torch.equal(H, H.T)
        expected = 2.0 / part.shape[0] * (part.double().T @ part.double())
        torch.testing.assert_close(H.double(), expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("pattern", [None, Pattern(2, 4)])
@pytest.mark.parametrize("rows", [(64, 32, 32), (16, 8, 6)])
def test_one_sweep_of_weights_sharing_a_factor_equals_one_at_a_time(pattern, rows):
    """q/k/v (or gate/up) swept together as stacked rows: the same results as each alone (the same
    bits where BLAS takes the same kernel for both widths, as for SmolLM2's layers; weights of a
    few rows may differ in the last bit), and each weight keeps its own count per column block."""
    cols = 32
    stats = HessianStats(cols)
    stats.add(activations(300, cols, 5))
    factor = factorise(stats.H, 0.01)
    weights = [weight(r, cols, seed) for seed, r in enumerate(rows)]
    together = sparsegpt_prune_shared(weights, factor, 0.5, pattern, 16)
    for W, got in zip(weights, together):
        alone = sparsegpt_prune(W, factor, 0.5, pattern, 16)
        if rows[-1] >= 32:
            assert torch.equal(got, alone)
        torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-5)
        assert torch.equal(got == 0, alone == 0)
        if pattern is None:
            zeros = (got.reshape(W.shape[0], 2, 16) == 0).sum(dim=(0, 2))
            assert zeros.tolist() == [removed_count(W.shape[0] * 16, 0.5)] * 2


def test_stats_accept_half_inputs_and_accumulate_in_fp32_or_wider():
    X = activations(64, 8).to(torch.bfloat16)
    hs, ws = HessianStats(8), WandaStats(8)
    hs.add(X)
    ws.add(X)
    Xf = X.double()
    torch.testing.assert_close(ws.col_sq_norm.double(), (Xf**2).sum(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hs.H.double(), 2 / 64 * Xf.T @ Xf, rtol=1e-5, atol=1e-4)
    assert hs.H.dtype == torch.float32 and ws.col_sq_norm.dtype == torch.float64  # Wanda: micro-batches in fp64
    torch.testing.assert_close(hs.col_sq_norm, ws.col_sq_norm.float(), rtol=1e-5, atol=1e-4)


def test_factor_matches_definition_and_is_shared():
    cols = 24
    X = activations(300, cols, 9)
    X[:, [2, 7]] = 0
    stats = HessianStats(cols)
    stats.add(X)
    H_before = stats.H.clone()
    factor = factorise(stats.H, 0.05)
    assert torch.equal(stats.H, H_before)  # input untouched
    Hd, dead = damped_hessian(H_before, 0.05)
    torch.testing.assert_close(factor.U.double().T @ factor.U.double(), torch.linalg.inv(Hd), rtol=1e-3, atol=1e-6)
    assert torch.equal(factor.dead, dead) and torch.equal(factor.U, factor.U.triu())
    U_before = factor.U.clone()
    W1, W2 = weight(5, cols, 1), weight(7, cols, 2)
    cases = [(W, p) for W in (W1, W2) for p in (None, Pattern(2, 4))]
    shared = [sparsegpt_prune(W, factor, 0.5, p, 8) for W, p in cases]
    assert torch.equal(factor.U, U_before)  # the Factor is not mutated
    separate = [sparsegpt_prune(W, factorise(stats.H, 0.05), 0.5, p, 8) for W, p in cases]
    for a, b in zip(shared, separate):
        assert torch.equal(a, b)


def test_factorise_overwrite_reuses_the_hessian_buffer():
    stats = HessianStats(10)
    stats.add(activations(100, 10))
    expected = factorise(stats.H, 0.01)
    got = factorise(stats.H, 0.01, overwrite=True)
    assert torch.equal(got.U, expected.U)


def test_hessian_running_mean_stays_accurate_over_many_batches():
    X = activations(4000, 8, 13) + 3.0  # non-zero mean: large, correlated entries
    stats = HessianStats(8)
    for chunk in X.split(2):  # 2000 tiny batches
        stats.add(chunk)
    expected = 2.0 / X.shape[0] * (X.double().T @ X.double())
    torch.testing.assert_close(stats.H.double(), expected, rtol=1e-4, atol=1e-4)


def test_wanda_norms_do_not_depend_on_how_the_micro_batches_are_shared():
    """Two ranks each summing half the micro-batches, reduced in fp64, score with the same fp32
    norms as one process summing them all (no near-tie flips that would grow through later blocks)."""
    from prune_job.algorithms.wanda import WandaStats, column_sq_norms

    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(2, 64, 96, generator=g) * (1 + 10 * torch.rand(96, generator=g)) for _ in range(16)]
    one = WandaStats(96)
    for b in batches:
        one.add(b)
    halves = [WandaStats(96), WandaStats(96)]
    for i, b in enumerate(batches):
        halves[i * 2 // len(batches)].add(b)
    reduced = halves[1].col_sq_norm.double() + halves[0].col_sq_norm.double()  # the other rank first
    assert torch.equal(column_sq_norms(one).float(), reduced.float())
    plain32 = torch.zeros(96)
    for b in batches:  # what fp32 accumulation gives: not always the same bits
        plain32 += torch.linalg.vector_norm(b.reshape(-1, 96), dim=0).square()
    assert torch.allclose(plain32, one.col_sq_norm.float(), rtol=1e-5)
