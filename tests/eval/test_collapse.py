"""Code-collapse statistics on hand-made code matrices, against a naive per-code count."""

import math
from collections import Counter

import numpy as np
import pytest
import torch

from dinov2.eval.hashing import code_collapse_stats, collapse_verdict, pack_codes


def naive_stats(codes: np.ndarray):
    """Distinct codes, largest bucket, constant-bit share and mean entropy by counting tuples and bits."""
    n, k = codes.shape
    buckets = Counter(tuple(int(v) for v in row) for row in codes)
    constant, entropy = 0, 0.0
    for j in range(k):
        ones = sum(1 for v in codes[:, j] if v > 0)
        p = ones / n
        constant += abs(2 * p - 1) > 0.95
        entropy += sum(-q * math.log2(q) for q in (p, 1 - p) if q > 0)
    return len(buckets), max(buckets.values()) / n, constant / k, entropy / k


def check_against_naive(codes: np.ndarray):
    stats = code_collapse_stats(codes)
    distinct, bucket, constant, entropy = naive_stats(codes)
    assert stats["distinct_codes"] == distinct
    assert stats["distinct_codes_fraction"] == pytest.approx(distinct / len(codes))
    assert stats["largest_bucket_fraction"] == pytest.approx(bucket)
    assert stats["constant_bits_fraction"] == pytest.approx(constant)
    assert stats["bit_entropy"] == pytest.approx(entropy)
    return stats


def test_all_equal_codes_are_a_full_collapse():
    codes = np.tile(np.array([1, -1] * 16, dtype=np.int8), (300, 1))
    stats = check_against_naive(codes)
    assert stats["distinct_codes"] == 1 and stats["largest_bucket_fraction"] == 1.0
    assert stats["constant_bits_fraction"] == 1.0 and stats["bit_entropy"] == 0.0
    assert stats["collapse"] == "full"


def test_half_constant_bits_is_not_yet_full_but_more_than_half_is():
    rng = np.random.default_rng(0)
    codes = rng.choice([-1, 1], size=(500, 32)).astype(np.int8)
    codes[:, :16] = 1  # exactly half of the bits constant: distinct codes still spread over 16 free bits
    stats = check_against_naive(codes)
    assert stats["constant_bits_fraction"] == 0.5
    assert stats["bit_entropy"] == pytest.approx(0.5, abs=0.01)
    assert stats["collapse"] != "full"
    codes[:, 16] = -1
    stats = check_against_naive(codes)
    assert stats["constant_bits_fraction"] == pytest.approx(17 / 32) and stats["collapse"] == "full"


def test_nearly_constant_bit_counts_as_constant():
    codes = np.ones((100, 8), dtype=np.int8)
    codes[:2, 0] = -1  # mean 0.96 > 0.95: constant
    codes[:3, 1] = -1  # mean 0.94: not constant
    codes[:, 2:] = np.random.default_rng(1).choice([-1, 1], size=(100, 6))
    assert check_against_naive(codes)["constant_bits_fraction"] == pytest.approx(1 / 8)


def test_random_codes_are_ok_and_inputs_in_every_form_agree():
    rng = np.random.default_rng(2)
    codes = rng.choice([-1, 1], size=(400, 64)).astype(np.int8)
    stats = check_against_naive(codes)
    assert stats["distinct_codes"] == 400 and stats["constant_bits_fraction"] == 0.0
    assert stats["bit_entropy"] > 0.99 and stats["collapse"] == "ok"
    assert code_collapse_stats(torch.from_numpy(codes).float()) == stats
    assert code_collapse_stats(codes > 0) == stats
    assert code_collapse_stats(pack_codes(codes), nbits=64) == stats


def test_few_codes_for_many_images_is_partial_from_32_bits():
    rng = np.random.default_rng(3)
    centres = rng.choice([-1, 1], size=(40, 32)).astype(np.int8)  # 40 codes for 1000 images: 4%, above 1%
    codes = centres[rng.integers(0, 40, 1000)]
    stats = check_against_naive(codes)
    assert stats["distinct_codes"] == 40 and stats["collapse"] == "partial"
    # The same pattern at 16 bits is not judged partial: buckets are expected with few bits.
    assert code_collapse_stats(codes[:, :16])["collapse"] == "ok"


def test_verdict_thresholds():
    assert collapse_verdict(1000, 64, 9, 10, 0.0) == "full"  # < 1% distinct
    assert collapse_verdict(1000, 64, 10, 10, 0.0) == "partial"  # 1% distinct, < 50%
    assert collapse_verdict(1000, 64, 600, 51, 0.1) == "partial"  # one code holds 5.1%
    assert collapse_verdict(1000, 64, 600, 50, 0.5) == "ok"
    assert collapse_verdict(1000, 64, 600, 50, 0.51) == "full"
    assert collapse_verdict(12, 64, 12, 1, 0.0) == "ok"  # a bucket of one code is no collision
    assert collapse_verdict(1000, 16, 100, 300, 0.0) == "ok"


def test_bad_codes_are_refused_with_their_values():
    with pytest.raises(ValueError, match="must be binary"):
        code_collapse_stats(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="empty"):
        code_collapse_stats(np.zeros((0, 8), dtype=np.int8))
