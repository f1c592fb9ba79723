"""dinov2/train/evaluator.py: the per-bit balance recorded at every evaluation."""

import torch

from dinov2.train.evaluator import bit_means


def test_bit_means_are_the_mean_sign_of_each_bit_with_zero_counted_positive():
    codes = torch.tensor([[0.5, -2.0, 0.0], [0.1, 3.0, -1.0], [0.2, -0.1, 0.0], [0.7, -0.3, -4.0]])
    assert bit_means(codes) == [1.0, -0.5, 0.0]
