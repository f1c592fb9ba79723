import math

import pytest
import torch

from dinov2.loss import KoLeoLoss


def _brute_force(x):
    # Unit vectors, every pairwise distance, self excluded, nearest by distance.
    unit = x.double() / x.double().norm(dim=1, keepdim=True)
    distances = torch.cdist(unit, unit)
    distances.fill_diagonal_(float("inf"))
    return -torch.log(distances.min(dim=1).values).mean()


def test_hand_computed_three_points():
    # (2, 0) and (-3, 0) normalise to (1, 0) and (-1, 0); with (0, 1) every nearest distance is sqrt 2.
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-3.0, 0.0]])
    assert KoLeoLoss()(x).item() == pytest.approx(-0.5 * math.log(2.0), abs=1e-6)


def test_matches_brute_force_nearest_neighbour():
    torch.manual_seed(0)
    x = torch.randn(16, 8)
    torch.testing.assert_close(KoLeoLoss()(x).double(), _brute_force(x), rtol=1e-5, atol=1e-6)


def test_antipodal_pair_never_picks_itself():
    # Cosine -1 to the only other sample: the neighbour is still the other sample (distance 2).
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert KoLeoLoss()(x).item() == pytest.approx(-math.log(2.0), abs=1e-6)


def test_gradient_and_dtype():
    x = torch.randn(6, 4, dtype=torch.bfloat16, requires_grad=True)
    value = KoLeoLoss()(x)
    assert value.dtype == torch.float32
    value.backward()
    assert torch.isfinite(x.grad.float()).all() and x.grad.abs().sum() > 0


def test_needs_two_samples():
    with pytest.raises(ValueError, match=r"B >= 2.*\(1, 4\)"):
        KoLeoLoss()(torch.randn(1, 4))
