"""select_mask against exhaustive search; exact counts; N:M validity; bad input."""
import pytest
import torch

from alg_reference import keep_mask
from prune_job.algorithms import removed_count, select_mask
from prune_job.spec import Pattern

PATTERNS = [Pattern(2, 4), Pattern(1, 4), Pattern(4, 8), Pattern(1, 2), Pattern(3, 4)]


def integer_scores(rows, cols, seed, levels=4):
    """Small integers: many ties, exact sums for the brute force."""
    return torch.randint(0, levels, (rows, cols), generator=torch.Generator().manual_seed(seed)).float()


def continuous_scores(rows, cols, seed):
    return torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.7])
@pytest.mark.parametrize("group", ["row", "layer"])
@pytest.mark.parametrize("make", [integer_scores, continuous_scores])
def test_unstructured_matches_brute_force(seed, sparsity, group, make):
    scores = make(3, 5, seed)
    got = select_mask(scores, sparsity, None, group=group)
    assert torch.equal(got, keep_mask(scores, sparsity, None, group))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("make", [integer_scores, continuous_scores])
def test_nm_matches_brute_force(seed, pattern, make):
    scores = make(3, 2 * pattern.m, seed)
    got = select_mask(scores, pattern.sparsity, pattern)
    assert torch.equal(got, keep_mask(scores, pattern.sparsity, pattern, "row"))


@pytest.mark.parametrize("sparsity", [0.1, 0.29, 0.5, 0.77, 0.99])
def test_exact_counts_per_row_and_layer(sparsity):
    scores = integer_scores(7, 100, seed=1, levels=3)  # heavy ties
    rows = select_mask(scores, sparsity, None, group="row")
    assert ((~rows).sum(dim=1) == removed_count(100, sparsity)).all()
    layer = select_mask(scores, sparsity, None, group="layer")
    assert int((~layer).sum()) == removed_count(700, sparsity)


def test_removed_count_forgives_float_error():
    assert removed_count(100, 0.29) == 29  # 0.29 * 100 == 28.999999999999996
    assert removed_count(10, 0.5) == 5 and removed_count(7, 0.5) == 3 and removed_count(5, 0.0) == 0


@pytest.mark.parametrize("pattern", PATTERNS)
def test_nm_keeps_exactly_n_per_group(pattern):
    scores = integer_scores(5, 6 * pattern.m, seed=2, levels=2)  # mostly ties
    keep = select_mask(scores, pattern.sparsity, pattern)
    per_group = keep.view(5, -1, pattern.m).sum(dim=-1)
    assert (per_group == pattern.n).all()


def test_all_equal_scores_keep_lowest_indices():
    scores = torch.ones(2, 8)
    assert select_mask(scores, 0.5, Pattern(2, 4))[0].tolist() == [True, True, False, False] * 2
    assert select_mask(scores, 0.5, None, group="row")[0].tolist() == [False] * 4 + [True] * 4


def test_sparsity_zero_keeps_everything():
    scores = continuous_scores(4, 8, 0)
    assert select_mask(scores, 0.0, None).all()
    assert select_mask(scores, 0.0, None, group="layer").all()


def test_m_not_dividing_width_names_the_width():
    with pytest.raises(ValueError, match="in_features=30"):
        select_mask(torch.rand(4, 30), 0.5, Pattern(2, 4))


@pytest.mark.parametrize(
    ("sparsity", "pattern", "group", "message"),
    [
        (1.0, None, "row", r"\[0, 1\)"),
        (-0.1, None, "row", r"\[0, 1\)"),
        (0.3, Pattern(2, 4), "row", "does not match"),
        (0.5, None, "column", "group"),
    ],
)
def test_bad_arguments(sparsity, pattern, group, message):
    with pytest.raises(ValueError, match=message):
        select_mask(torch.rand(4, 8), sparsity, pattern, group=group)


def test_nan_scores_are_refused():
    scores = torch.rand(2, 4)
    scores[0, :3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        select_mask(scores, 0.5, None)
