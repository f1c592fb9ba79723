"""dinov2/loss/code_balance_loss.py: zero for balanced, uncorrelated bits; large for a constant or a copied bit."""

import pytest
import torch

from dinov2.loss import CodeBalanceLoss


def test_balanced_independent_bits_score_near_zero():
    torch.manual_seed(0)
    codes = torch.randn(4096, 8) * 3  # tanh saturates: nearly independent, balanced +-1 bits
    parts = CodeBalanceLoss().parts(codes)
    assert parts["balance"] < 1e-3 and parts["decorrelation"] < 1e-3


def test_a_constant_bit_and_a_copied_bit_are_each_seen_by_their_term():
    torch.manual_seed(0)
    codes = torch.randn(512, 4) * 3
    constant = codes.clone()
    constant[:, 0] = 3.0
    copied = codes.clone()
    copied[:, 1] = copied[:, 2]
    loss = CodeBalanceLoss()
    base = loss.parts(codes)
    assert loss.parts(constant)["balance"] > base["balance"] + 0.2
    # One pair of the 4 x 3 ordered off-diagonal entries is perfectly correlated: 2 / 12.
    assert loss.parts(copied)["decorrelation"] == pytest.approx(2 / 12, abs=0.02)
    assert loss(copied) == pytest.approx(sum(loss.parts(copied).values()))


def test_gradient_pushes_a_biased_bit_towards_balance():
    codes = torch.full((16, 2), 0.5)
    codes[:, 1] = torch.linspace(-1, 1, 16)
    codes.requires_grad_(True)
    CodeBalanceLoss()(codes).backward()
    assert (codes.grad[:, 0] > 0).all()  # descending the gradient lowers the always-positive bit


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="N >= 2"):
        CodeBalanceLoss()(torch.zeros(1, 4))
