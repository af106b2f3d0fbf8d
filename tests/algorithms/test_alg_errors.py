"""Failures are loud and say what to change; widths that N:M cannot split are named."""
import pytest
import torch

from prune_job.algorithms import (
    FactorizationError,
    HessianStats,
    WandaStats,
    factorise,
    magnitude_prune,
    sparsegpt_prune,
    wanda_prune,
)
from prune_job.spec import Pattern


def hessian(cols=8, tokens=50, seed=0):
    stats = HessianStats(cols)
    stats.add(torch.randn(tokens, cols, generator=torch.Generator().manual_seed(seed)))
    return stats.H


@pytest.mark.parametrize(
    "H",
    [
        pytest.param(torch.full((4, 4), float("nan")), id="nan"),
        pytest.param(torch.eye(4).mul(float("inf")), id="inf"),
        pytest.param(-torch.eye(4), id="negative-definite"),
        pytest.param(torch.tensor([[1.0, 2.0], [2.0, 1.0]]), id="indefinite"),
    ],
)
def test_bad_hessian_raises_with_advice(H):
    with pytest.raises(FactorizationError, match="dampening") as err:
        factorise(H, 0.01)
    assert "calibration" in str(err.value)
    assert isinstance(err.value, RuntimeError)


def test_more_dampening_heals_an_indefinite_hessian():
    H = torch.tensor([[1.0, 1.2], [1.2, 1.0]])
    with pytest.raises(FactorizationError):
        factorise(H, 0.01)
    factorise(H, 1.0)  # 1 + 1 on the diagonal: positive definite


def test_empty_statistics_are_refused():
    with pytest.raises(FactorizationError, match="calibration"):
        factorise(HessianStats(4).H, 0.01)
    with pytest.raises(ValueError, match="no activations"):
        wanda_prune(torch.randn(2, 4), 0.5, None, WandaStats(4))


def test_all_dead_inputs_zero_the_weight():
    factor = factorise(torch.zeros(4, 4), 0.01)
    assert factor.dead.all()
    assert (sparsegpt_prune(torch.randn(3, 4), factor, 0.5, None, 2) == 0).all()


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_m_not_dividing_width_is_a_clear_error(method):
    W = torch.randn(4, 30)
    with pytest.raises(ValueError, match=r"divisible by M=4.*in_features=30"):
        if method == "magnitude":
            magnitude_prune(W, 0.5, Pattern(2, 4))
        elif method == "wanda":
            wanda_prune(W, 0.5, Pattern(2, 4), torch.ones(30))
        else:
            sparsegpt_prune(W, factorise(hessian(30), 0.01), 0.5, Pattern(2, 4), 16)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="do not fit"):
        wanda_prune(torch.randn(2, 4), 0.5, None, torch.ones(5))
    with pytest.raises(ValueError, match="factor is for 8 inputs"):
        sparsegpt_prune(torch.randn(2, 4), factorise(hessian(8), 0.01), 0.5, None, 4)


def test_nan_off_the_diagonal_is_caught():
    H = torch.eye(4)
    H[0, 1] = H[1, 0] = float("nan")
    with pytest.raises(FactorizationError, match="dampening"):
        factorise(H, 0.01)
