"""The fused soft cross-entropy (dinov2/loss/soft_cross_entropy.py) against the unfused formula."""

import pytest
import torch
import torch.nn.functional as F

from dinov2.loss.soft_cross_entropy import soft_cross_entropy


def unfused(logits, targets, temperature):
    return -(targets.float() * F.log_softmax(logits.float() / temperature, dim=-1)).sum(dim=-1)


@pytest.mark.parametrize("shape", [(7, 300), (3, 5, 64)])
@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_values_and_gradients_equal_the_unfused_formula(shape, temperature):
    torch.manual_seed(0)
    logits = (torch.randn(*shape, dtype=torch.float64) * 3).float()
    # rows that sum to 1, and unnormalised weights (the DINO local term sums two teachers: mass 2)
    targets = torch.softmax(torch.randn(*shape) / 0.04, dim=-1)
    targets[..., 0, :] *= 2.0
    weights = torch.rand(shape[:-1])
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    fused = soft_cross_entropy(a, targets, temperature)
    reference = unfused(b, targets, temperature)
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)
    (fused * weights).sum().backward()
    (reference * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_double_precision_gradcheck():
    torch.manual_seed(1)
    logits = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    targets = torch.softmax(torch.randn(4, 9, dtype=torch.float64), dim=-1)

    def f(x):
        # float() inside would drop to float32: check the formula itself in float64
        scaled = x / 0.3
        return (torch.logsumexp(scaled, -1) * targets.sum(-1) - (targets * scaled).sum(-1)).sum()

    fused = soft_cross_entropy(logits, targets, 0.3).sum()
    torch.testing.assert_close(fused.double(), f(logits), rtol=1e-5, atol=1e-5)
    g_fused = torch.autograd.grad(fused, logits)[0]
    g_ref = torch.autograd.grad(f(logits), logits)[0]
    torch.testing.assert_close(g_fused.double(), g_ref, rtol=1e-4, atol=1e-6)


def test_bf16_logits_under_autocast_give_float32_loss_and_bf16_gradients():
    torch.manual_seed(2)
    logits = torch.randn(6, 128).bfloat16().requires_grad_(True)
    targets = torch.softmax(torch.randn(6, 128), dim=-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = soft_cross_entropy(logits, targets, 0.1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, unfused(logits.detach(), targets, 0.1), rtol=1e-5, atol=1e-5)
    loss.sum().backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad.float()).all()


def test_extreme_logits_stay_finite():
    logits = torch.tensor([[1e4, -1e4, 0.0], [-3e4, -3e4, -3e4]], requires_grad=True)
    targets = torch.tensor([[0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])
    loss = soft_cross_entropy(logits, targets, 0.1)
    torch.testing.assert_close(loss, unfused(logits.detach(), targets, 0.1))
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="differ"):
        soft_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 4), 0.1)
    with pytest.raises(ValueError, match="temperature"):
        soft_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match="row and a class"):
        soft_cross_entropy(torch.zeros(3), torch.zeros(3), 0.1)
