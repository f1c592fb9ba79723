import math

import pytest
import torch

from dinov2.loss import CodeContrastiveLoss


def _by_hand(a, b, temperature):
    # Every entry written out: cosine similarities, then -log softmax of the matching pair, both ways.
    a = [row / row.norm() for row in a.double()]
    b = [row / row.norm() for row in b.double()]
    n = len(a)
    total = 0.0
    for i in range(n):
        row = [float(a[i] @ b[j]) / temperature for j in range(n)]
        col = [float(a[j] @ b[i]) / temperature for j in range(n)]
        total += -(row[i] - math.log(sum(math.exp(v) for v in row)))
        total += -(col[i] - math.log(sum(math.exp(v) for v in col)))
    return total / (2 * n)


def test_matches_hand_computation():
    torch.manual_seed(0)
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    value = CodeContrastiveLoss(temperature=0.3)(a, b)
    assert value.item() == pytest.approx(_by_hand(a, b, 0.3), rel=1e-5)


def test_two_points_closed_form():
    # Views equal and the two images orthogonal: each row is -log(e^{1/t} / (e^{1/t} + 1)).
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 1.0))
    assert CodeContrastiveLoss(temperature=t)(a, a.clone()).item() == pytest.approx(expected, abs=1e-6)


def test_codes_without_image_information_give_log_batch():
    # Every image has the same code in both views: no row can find its partner, the loss is ln B.
    codes = torch.ones(8, 16)
    assert CodeContrastiveLoss()(codes, codes).item() == pytest.approx(math.log(8), abs=1e-5)


def test_matching_views_beat_shuffled_views():
    torch.manual_seed(1)
    a = torch.randn(16, 32)
    b = a + 0.1 * torch.randn(16, 32)
    loss = CodeContrastiveLoss(temperature=0.2)
    assert loss(a, b) < loss(a, b[torch.randperm(16)]) - 1.0


def test_scale_invariant_and_symmetric():
    torch.manual_seed(2)
    a, b = torch.randn(6, 8), torch.randn(6, 8)
    loss = CodeContrastiveLoss(temperature=0.7)
    torch.testing.assert_close(loss(a, b), loss(3.0 * a, 0.5 * b))
    torch.testing.assert_close(loss(a, b), loss(b, a))


def test_gradient_and_dtype():
    a = torch.randn(6, 4, dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(6, 4, dtype=torch.bfloat16, requires_grad=True)
    value = CodeContrastiveLoss()(a, b)
    assert value.dtype == torch.float32
    value.backward()
    assert torch.isfinite(a.grad.float()).all() and a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


@pytest.mark.parametrize("temperature", [0.0, -0.1])
def test_temperature_must_be_positive(temperature):
    with pytest.raises(ValueError, match=f"temperature > 0, got {temperature}"):
        CodeContrastiveLoss(temperature=temperature)


@pytest.mark.parametrize("shape_a, shape_b", [((1, 4), (1, 4)), ((4, 8), (4, 6)), ((4,), (4,))])
def test_bad_shapes(shape_a, shape_b):
    with pytest.raises(ValueError, match=r"two \[B, K\] views"):
        CodeContrastiveLoss()(torch.randn(*shape_a), torch.randn(*shape_b))
