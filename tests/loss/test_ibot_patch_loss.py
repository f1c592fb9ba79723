import math

import pytest
import torch

from dinov2.loss import DINOLoss, iBOTPatchLoss

LN2, LN3 = math.log(2.0), math.log(3.0)


def _hand_example():
    # 3 images of 3 patches, K = 2. Masked: image 0 -> patches 0, 2; image 1 -> patch 1; image 2 -> none.
    masks = torch.tensor([[True, False, True], [False, True, False], [False, False, False]])
    # Student logits are multiplied by the temperature 0.1, so softmax(s / 0.1) sees the bracketed values.
    student = 0.1 * torch.tensor(
        [
            [[0.0, LN3], [9.0, 9.0], [0.0, 0.0]],  # masked [0, ln 3] -> p = [1/4, 3/4]; masked [0, 0] -> [1/2, 1/2]
            [[5.0, 5.0], [0.0, LN3], [7.0, 7.0]],  # masked [0, ln 3] -> p = [1/4, 3/4]
            [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
        ]
    )
    teacher = torch.tensor(
        [
            [[1.0, 0.0], [0.5, 0.5], [1.0, 0.0]],  # CE: -ln 1/4 = ln 4;   -ln 1/2 = ln 2
            [[0.5, 0.5], [0.0, 1.0], [0.5, 0.5]],  # CE: -ln 3/4 = ln 4 - ln 3
            [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]],
        ]
    )
    # Image means: image 0 (ln 4 + ln 2) / 2 = 1.5 ln 2; image 1 ln 4 - ln 3; image 2 has no masked patch -> 0.
    # Loss = sum / 3 images.
    expected = (1.5 * LN2 + (2 * LN2 - LN3)) / 3
    return student, teacher, masks, expected


def test_hand_computed_forward_and_forward_masked():
    loss = iBOTPatchLoss(patch_out_dim=2)
    student, teacher, masks, expected = _hand_example()
    assert loss(student, teacher, masks).item() == pytest.approx(expected, rel=1e-6)
    masked = loss.forward_masked(student[masks], teacher[masks], masks)
    assert masked.item() == pytest.approx(expected, rel=1e-6)


def test_forward_masked_matches_formula_and_handles_padding():
    torch.manual_seed(0)
    n_images, n_patches, k = 4, 6, 5
    masks = torch.rand(n_images, n_patches) < 0.5
    masks[0] = False  # an image without masked patches contributes 0 but still counts in the batch size
    masks[1, :2] = True
    student = torch.randn(n_images, n_patches, k)
    teacher = torch.softmax(torch.randn(n_images, n_patches, k), dim=-1)
    loss = iBOTPatchLoss(patch_out_dim=k, student_temp=0.2)

    # Independent formula: loop over images and their masked patches, float64.
    total = torch.zeros((), dtype=torch.float64)
    for b in range(n_images):
        idx = torch.nonzero(masks[b]).flatten()
        for n in idx:
            log_p = torch.log_softmax(student[b, n].double() / 0.2, dim=-1)
            total += -(teacher[b, n].double() * log_p).sum() / len(idx)
    expected = total / n_images

    value = loss.forward_masked(student[masks], teacher[masks], masks)
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss(student, teacher, masks).double(), expected, rtol=1e-5, atol=1e-6)

    # Token buffers padded past the real masked tokens: n_masked_patches cuts the padding off.
    m = int(masks.sum())
    padded_student = torch.cat([student[masks], torch.randn(3, k)])
    padded_teacher = torch.cat([teacher[masks], torch.softmax(torch.randn(3, k), dim=-1)])
    padded = loss.forward_masked(padded_student, padded_teacher, masks, n_masked_patches=m)
    torch.testing.assert_close(padded.double(), expected, rtol=1e-5, atol=1e-6)

    # Explicit weights equal to the default ones give the same loss.
    weights = (1.0 / masks.sum(dim=1).clamp(min=1)).unsqueeze(1).expand_as(masks)[masks]
    explicit = loss.forward_masked(student[masks], teacher[masks], masks, masks_weight=weights)
    torch.testing.assert_close(explicit, value)


def test_center_update_of_patch_tokens():
    torch.manual_seed(0)
    loss = iBOTPatchLoss(patch_out_dim=4, center_momentum=0.9)
    grid = torch.randn(3, 5, 4)  # [B, N, K]
    loss.update_center(grid)
    loss.apply_center_update()
    center_1 = 0.1 * grid.mean(dim=(0, 1))
    torch.testing.assert_close(loss.center, center_1.view(1, 1, 4))

    tokens = torch.randn(7, 4)  # [M, K]: one group of M masked tokens
    probs = loss.softmax_center_teacher(tokens, teacher_temp=0.07)
    assert probs.shape == (7, 4)
    torch.testing.assert_close(probs, torch.softmax((tokens - center_1) / 0.07, dim=-1))
    loss.update_center(tokens)
    loss.apply_center_update()
    torch.testing.assert_close(loss.center.view(4), 0.9 * center_1 + 0.1 * tokens.mean(dim=0))

    with pytest.raises(ValueError, match=r"\[B, N, K\]"):
        loss.update_center(torch.randn(4))


def test_sinkhorn_equals_dino_version_and_keeps_caller_tensor():
    torch.manual_seed(0)
    logits = torch.randn(9, 6)
    n_masked = torch.tensor(9)
    q = iBOTPatchLoss(patch_out_dim=6).sinkhorn_knopp_teacher(logits, 0.1, n_masked)
    assert n_masked.item() == 9
    torch.testing.assert_close(q.sum(dim=1), torch.ones(9))
    torch.testing.assert_close(q, DINOLoss(out_dim=6).sinkhorn_knopp_teacher(logits, 0.1))
    q_int = iBOTPatchLoss(patch_out_dim=6).sinkhorn_knopp_teacher(logits, 0.1, 9)
    torch.testing.assert_close(q_int, q)
