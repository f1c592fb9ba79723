"""scripts/pretrained_claim.py: validation carved from the database, the 2-std marks and the table."""

import importlib.util
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def claim():
    spec = importlib.util.spec_from_file_location("pretrained_claim", os.path.join(REPO, "scripts", "pretrained_claim.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_validation_split_is_the_tail_of_each_class_of_the_database(claim):
    labels = np.array([0] * 20 + [1] * 8 + [2] * 2)
    val, rest = claim.validation_split(labels, 0.25)
    assert set(val).isdisjoint(rest) and sorted([*val, *rest]) == list(range(30))
    assert list(val) == [15, 16, 17, 18, 19, 26, 27, 29]
    # Every class keeps at least one image on each side.
    for c in range(3):
        assert (labels[val] == c).any() and (labels[rest] == c).any()


def test_compare_marks_only_differences_beyond_two_standard_deviations(claim):
    assert claim.compare([0.80, 0.81, 0.82], [0.70, 0.71, 0.72]).endswith(">")
    assert claim.compare([0.70, 0.71, 0.72], [0.80, 0.81, 0.82]).endswith("<")
    # Means 0.02 apart with a spread of 0.05 each: not a difference.
    assert claim.compare([0.75, 0.80, 0.85], [0.73, 0.78, 0.83]).endswith("≈")
    assert claim.fmt([0.5, 0.7]) == "0.600 ± 0.141"
    # One run has no spread: no mark.
    assert claim.fmt([0.5]) == "0.500 (one run)" and claim.compare([0.9], [0.1, 0.1]) == "+0.800 (one run)"


def test_bit_stats_see_a_constant_bit_and_two_equal_bits(claim):
    rng = np.random.default_rng(0)
    codes = rng.choice([-1.0, 1.0], size=(400, 3))
    balanced = claim.bit_stats(codes)
    assert balanced["bit_imbalance"] < 0.1 and balanced["bit_correlation"] < 0.1
    codes[:, 1] = codes[:, 0]
    codes[:, 2] = 1.0
    skewed = claim.bit_stats(codes)
    assert skewed["bit_imbalance"] > 0.3 and skewed["bit_correlation"] > 0.3


def test_the_table_has_both_selections_and_the_margins(claim):
    def run(seed, ref, val):
        pick = {"test_mAP": val}
        return {"bits": 32, "seed": seed, "reference": {"test_mAP": ref}, "validation": pick, "last": pick,
                "validation_rotated": {"test_mAP_rotated": 0.95}, "itq_finetuned_cls": 0.5}  # fmt: skip

    baselines = [
        {"features": kind, "method": m, "bits": 32, "seed": s, "mAP": 0.6}
        for kind, methods in (("frozen", claim.FROZEN_METHODS), ("pixels", claim.PIXEL_METHODS))
        for m in methods
        for s in range(3)
    ]
    results = {"shapes": {"runs": [run(s, 0.9, 0.8 + 0.01 * s) for s in range(3)], "baselines": baselines}}
    text = claim.markdown(results, [32], [0, 1, 2], "header")
    row = next(line for line in text.splitlines() if line.startswith("| shapes"))
    assert "0.900 ± 0.000" in row and "**0.810 ± 0.010**" in row
    assert "+0.210 >" in row and "+0.310 >" in row
    assert "0.950 ± 0.000 | +0.350 > | +0.450 >" in row


def test_rotated_codes_keep_the_information_of_correlated_codes(claim):
    # Two clusters separated along a diagonal: the raw signs of u split each cluster, the rotated ones do not.
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    centres = np.array([[1.0, 1.0], [-1.0, -1.0]])[labels] * 3 + np.array([5.0, -5.0])
    u = centres + rng.normal(0, 0.3, (200, 2))
    raw = claim.code_map(u[::2], u[1::2], labels[::2], labels[1::2])
    db_r, q_r = claim.rotated_codes(u[1::2], u[::2], 2, seed=0)
    rotated = claim.code_map(q_r, db_r, labels[::2], labels[1::2])
    assert rotated > 0.95 > raw
