import pytest
import torch

from dinov2.loss import HashQuantizationLoss


def test_binary_codes_cost_nothing():
    codes = torch.tensor([[1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]])
    assert HashQuantizationLoss()(codes).item() == 0.0


def test_hand_computed_value():
    # | |0.5| - 1 | = 0.5, | |-2| - 1 | = 1, | |1| - 1 | = 0, | |0| - 1 | = 1 -> mean 2.5 / 4
    codes = torch.tensor([[0.5, -2.0], [1.0, 0.0]])
    assert HashQuantizationLoss()(codes).item() == pytest.approx(0.625)


def test_matches_formula_and_gradient():
    torch.manual_seed(0)
    codes = (3 * torch.randn(4, 16)).requires_grad_()
    value = HashQuantizationLoss()(codes)
    expected = sum(abs(abs(v) - 1.0) for v in codes.detach().flatten().tolist()) / codes.numel()
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert value.dim() == 0
    value.backward()
    # d/du | |u| - 1 | = sign(u) * sign(|u| - 1), divided by the number of entries.
    detached = codes.detach()
    torch.testing.assert_close(codes.grad, torch.sign(detached) * torch.sign(detached.abs() - 1) / codes.numel())


def test_half_precision_input_gives_float32():
    assert HashQuantizationLoss()(torch.tensor([[0.5, 1.5]], dtype=torch.bfloat16)).dtype == torch.float32
