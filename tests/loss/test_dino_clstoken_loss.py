import math

import pytest
import torch

from dinov2.loss import DINOLoss
from dinov2.loss.dino_clstoken_loss import normalized_entropy, sinkhorn_knopp


def _reference_cross_entropy(student, teacher_probs, temp):
    # -mean_b sum_k t_bk * log(exp(s_bk / temp) / sum_j exp(s_bj / temp)), in float64.
    scaled = student.double() / temp
    log_probs = scaled - torch.log(torch.exp(scaled).sum(dim=1, keepdim=True))
    return -(teacher_probs.double() * log_probs).sum(dim=1).mean()


def _reference_sinkhorn(logits, temp, n_iterations):
    # Textbook Sinkhorn-Knopp in float64 on a [B, K] score matrix: alternate column (prototype) sums = B/K and
    # row (sample) sums = 1.
    q = torch.exp(logits.double() / temp)
    n_samples, n_prototypes = q.shape
    q = q / q.sum()
    for _ in range(n_iterations):
        q = q / q.sum(dim=0, keepdim=True) * (n_samples / n_prototypes)
        q = q / q.sum(dim=1, keepdim=True)
    return q


def test_hand_computed_cross_entropy():
    loss = DINOLoss(out_dim=3)  # student_temp 0.1
    # Logits are multiplied by the temperature, so softmax(s / 0.1) sees:
    #   sample 0: [0, 0, 0]      -> log-probs [ln 1/3, ln 1/3, ln 1/3]; teacher [1, 0, 0] -> CE = ln 3
    #   sample 1: [0, ln 2, 0]   -> log-probs [ln 1/4, ln 1/2, ln 1/4]; teacher [0, 1, 0] -> CE = ln 2
    # batch mean = (ln 3 + ln 2) / 2 = ln(6) / 2
    student = 0.1 * torch.tensor([[0.0, 0.0, 0.0], [0.0, math.log(2.0), 0.0]])
    teacher = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    value = loss([student], [teacher])
    assert value.item() == pytest.approx(math.log(6.0) / 2, rel=1e-6)
    # Two student chunks x two teacher chunks: four identical terms.
    assert loss([student, student], [teacher, teacher]).item() == pytest.approx(2 * math.log(6.0), rel=1e-6)


def test_random_inputs_match_formula_sum_over_pairs():
    torch.manual_seed(0)
    loss = DINOLoss(out_dim=7, student_temp=0.2)
    students = [torch.randn(5, 7) for _ in range(3)]
    teachers = [torch.softmax(torch.randn(5, 7), dim=1) for _ in range(2)]
    expected = sum(_reference_cross_entropy(s, t, 0.2) for s in students for t in teachers)
    torch.testing.assert_close(loss(students, teachers).double(), expected, rtol=1e-5, atol=1e-6)


def test_gradient_flows_to_student_only_in_float32():
    loss = DINOLoss(out_dim=4)
    student = torch.randn(3, 4, dtype=torch.bfloat16, requires_grad=True)
    teacher = torch.softmax(torch.randn(3, 4), dim=1)
    value = loss([student], [teacher])
    assert value.dtype == torch.float32
    value.backward()
    assert student.grad is not None and torch.isfinite(student.grad.float()).all()


def test_center_ema_is_applied_lazily_with_momentum():
    torch.manual_seed(0)
    loss = DINOLoss(out_dim=6, center_momentum=0.9)
    first, second, third = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 6)

    loss.update_center(first)
    # Pending until the next teacher softmax, as in DINOv2.
    assert torch.all(loss.center == 0)
    probs = loss.softmax_center_teacher(second, teacher_temp=0.05)
    center_1 = 0.1 * first.mean(dim=0, keepdim=True)
    torch.testing.assert_close(loss.center, center_1)
    torch.testing.assert_close(probs, torch.softmax((second - center_1) / 0.05, dim=1))

    loss.update_center(second)
    loss.update_center(third)  # a second update before the softmax must not drop the first
    loss.apply_center_update()
    center_2 = 0.9 * center_1 + 0.1 * second.mean(dim=0, keepdim=True)
    center_3 = 0.9 * center_2 + 0.1 * third.mean(dim=0, keepdim=True)
    torch.testing.assert_close(loss.center, center_3)
    assert loss.center.shape == (1, 6)
    assert "center" in loss.state_dict()


def test_softmax_center_teacher_casts_half_precision_up():
    loss = DINOLoss(out_dim=5)
    probs = loss.softmax_center_teacher(torch.randn(3, 5).to(torch.bfloat16), teacher_temp=0.04)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))


def test_sinkhorn_rows_are_distributions_and_match_reference():
    torch.manual_seed(0)
    logits = torch.randn(12, 5)
    loss = DINOLoss(out_dim=5)
    q = loss.sinkhorn_knopp_teacher(logits, teacher_temp=0.5, n_iterations=3)
    assert q.shape == (12, 5) and q.dtype == torch.float32
    # The last step normalises samples: exact up to rounding.
    torch.testing.assert_close(q.sum(dim=1), torch.ones(12))
    torch.testing.assert_close(q.double(), _reference_sinkhorn(logits, 0.5, 3), rtol=1e-5, atol=1e-7)


def test_sinkhorn_converges_to_uniform_prototype_marginals():
    torch.manual_seed(1)
    logits = torch.randn(20, 4)
    q = sinkhorn_knopp(logits, teacher_temp=1.0, n_samples_total=20, n_iterations=3)
    # After 3 rounds the prototype masses are already near B/K = 5, and exactly so in the limit.
    assert torch.allclose(q.sum(dim=0), torch.full((4,), 5.0), atol=0.5)
    q_many = sinkhorn_knopp(logits, teacher_temp=1.0, n_samples_total=20, n_iterations=200)
    torch.testing.assert_close(q_many.sum(dim=0), torch.full((4,), 5.0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(q_many.sum(dim=1), torch.ones(20))


def test_sinkhorn_is_stable_for_large_logits():
    # exp(4 / 0.04) overflows float32; the max shift keeps the result finite and equal to the float64 answer.
    torch.manual_seed(2)
    logits = 4 + 0.3 * torch.randn(6, 8)
    assert not torch.isfinite(torch.exp(logits / 0.04)).all()
    q = sinkhorn_knopp(logits, teacher_temp=0.04, n_samples_total=6)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.double(), _reference_sinkhorn(logits, 0.04, 3), rtol=1e-4, atol=1e-6)


def test_normalized_entropy_of_uniform_one_hot_and_hand_computed_rows():
    assert normalized_entropy(torch.full((3, 8), 1 / 8)).item() == pytest.approx(1.0)
    assert normalized_entropy(torch.eye(4)).item() == 0.0
    # [0.5, 0.5, 0, 0]: ln 2 / ln 4 = 0.5; averaged with a uniform row: 0.75. Leading dimensions are averaged.
    rows = torch.tensor([[[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]]])
    assert normalized_entropy(rows).item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="at least 2 classes"):
        normalized_entropy(torch.ones(2, 1))
