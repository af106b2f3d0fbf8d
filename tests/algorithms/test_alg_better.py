"""RIA, ADMM, DSnoT and OWL against direct references on small matrices."""
import pytest
import torch

from prune_job.algorithms.admm import admm_update
from prune_job.algorithms.sparsegpt import FactorizationError
from prune_job.algorithms.dsnot import dsnot_refine, reconstruction_error
from prune_job.algorithms.masks import select_mask
from prune_job.algorithms.owl import OutlierCount, owl_sparsities
from prune_job.algorithms.ria import ria_scores
from prune_job.spec import Pattern


def problem(out=12, inp=16, tokens=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, inp, generator=g) * torch.linspace(0.2, 3.0, inp)
    X[:, 3] += 2.0  # a correlated, offset input, as real activations have
    W = torch.randn(out, inp, generator=g)
    return W, X, X.T @ X


def test_ria_matches_direct_formula():
    W, X, _ = problem()
    norms = (X * X).sum(0)
    got = ria_scores(W, norms, power=0.5)
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            a = abs(float(W[i, j]))
            row = float(W[i].abs().sum())
            col = float(W[:, j].abs().sum())
            want = (a / row + a / col) * float(norms[j]) ** 0.25
            assert abs(float(got[i, j]) - want) < 1e-5 * max(1.0, want)


def test_ria_power_zero_is_relative_importance_only():
    W, X, _ = problem()
    got = ria_scores(W, (X * X).sum(0), power=0.0)
    A = W.abs()
    torch.testing.assert_close(got, A / A.sum(1, keepdim=True) + A / A.sum(0, keepdim=True))


@pytest.mark.parametrize("pattern", [None, Pattern(2, 4)])
def test_admm_converges_to_least_squares_per_row(pattern):
    W, X, H = problem()
    keep = select_mask(torch.rand(W.shape, generator=torch.Generator().manual_seed(1)), 0.5, pattern)
    got = admm_update(W, keep, H, dampening=0.0, iterations=30, cg_iterations=60)
    assert torch.equal(got != 0, keep) or bool((got[~keep] == 0).all())
    for i in range(W.shape[0]):
        S = keep[i].nonzero().squeeze(1)
        # min ||X w - X[:, S] z||  ->  z by least squares
        z = torch.linalg.lstsq(X[:, S].double(), (X @ W[i]).double().unsqueeze(1)).solution.squeeze(1)
        torch.testing.assert_close(got[i, S].double(), z, atol=2e-4, rtol=2e-4)


def test_admm_beats_no_update_and_keeps_zeros():
    W, X, H = problem(out=32, inp=64, tokens=256, seed=4)
    keep = select_mask(W.abs(), 0.6, None)
    new = admm_update(W, keep, H, dampening=0.01)
    assert bool((new[~keep] == 0).all())
    before = ((X @ (W * keep).T - X @ W.T) ** 2).sum()
    after = ((X @ new.T - X @ W.T) ** 2).sum()
    best = admm_update(W, keep, H, dampening=0.0, iterations=100, cg_iterations=300)
    optimum = ((X @ best.T - X @ W.T) ** 2).sum()
    assert optimum < 0.95 * before
    assert after < optimum * 1.001  # the default iterations reach the optimum (damping 0.01 aside)


@pytest.mark.parametrize("pattern", [None, Pattern(2, 4), Pattern(4, 8)])
def test_dsnot_never_raises_error_and_keeps_counts(pattern):
    W, X, H = problem(out=24, inp=32, tokens=128, seed=7)
    scores = W.abs() * (X * X).sum(0).sqrt()
    keep = select_mask(scores, 0.5, pattern)
    refined = dsnot_refine(W, keep, H, pattern)
    before, after = reconstruction_error(W, keep, H), reconstruction_error(W, refined, H)
    assert bool((after <= before * (1 + 1e-12)).all())
    assert float(after.sum()) < float(before.sum())  # it found swaps worth taking
    assert torch.equal(refined.sum(1), keep.sum(1))  # sparsity exact per row
    if pattern is not None:
        groups = refined.view(W.shape[0], -1, pattern.m).sum(-1)
        assert bool((groups == pattern.n).all())  # N:M exact


def test_owl_ratios_mean_is_target_and_within_lambda():
    ratios = [0.01, 0.05, 0.02, 0.2, 0.0, 0.07]
    sizes = [100] * 6
    s = owl_sparsities(ratios, sizes, target=0.6, lam=0.08)
    assert abs(sum(s) / len(s) - 0.6) < 1e-12
    assert all(0.6 - 0.08 - 1e-12 <= v <= 0.6 + 0.08 + 1e-12 for v in s)
    assert max(abs(v - 0.6) for v in s) == pytest.approx(0.08)
    assert s[3] == min(s) and s[4] == max(s)  # most outliers: pruned least


def test_owl_weighted_by_block_size():
    s = owl_sparsities([0.1, 0.3, 0.2], [10, 30, 60], target=0.5, lam=0.1)
    assert abs(sum(v * n for v, n in zip(s, [10, 30, 60])) / 100 - 0.5) < 1e-12
    assert owl_sparsities([0.1, 0.1], [1, 1], 0.5, 0.1) == [0.5, 0.5]
    with pytest.raises(ValueError, match="lambda"):
        owl_sparsities([0.1, 0.2], [1, 1], 0.5, 0.6)


def test_outlier_ratio_counts_above_m_times_mean():
    W = torch.ones(2, 10)
    W[0, 0] = 100.0
    count = OutlierCount(m=5.0)
    count.add(W, torch.ones(10))
    assert count.ratio == pytest.approx(1 / 20)


def test_outlier_threshold_is_the_mean_over_the_whole_block():
    # alone, each layer has no score above 5x its own mean; together, the large layer's scores
    # are above 5x the block's mean (OWL concatenates a block's scores before counting)
    count = OutlierCount(m=5.0)
    count.add(torch.full((1, 100), 0.01), torch.ones(100))
    count.add(torch.ones(1, 4), torch.ones(4))
    assert count.ratio == pytest.approx(4 / 104)


def test_admm_refuses_non_finite_statistics():
    W, X, H = problem()
    H[2, 3] = float("nan")
    with pytest.raises(FactorizationError, match="dampening"):
        admm_update(W, W != 0, H)
