"""Tests of dinov2/eval/plots.py on hand-made arrays: valid PNG files, frame colours, errors."""

import os

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from dinov2.eval.plots import (
    DINO_ENTROPY_COLOR,
    IRRELEVANT_COLOR,
    RELEVANT_COLOR,
    plot_awp_heatmaps,
    plot_precision_at_k,
    plot_precision_recall,
    plot_retrieval_grid,
    plot_training_curves,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    assert os.path.getsize(path) > 2000
    return mpimg.imread(path)  # float [H, W, 3 or 4] in [0, 1]


def pixels_of_color(image, color, tolerance=0.02):
    rgb = np.asarray(to_rgb(color))
    return int((np.abs(image[..., :3] - rgb).max(-1) < tolerance).sum())


def test_curves_are_png_files_and_leave_no_temporary_files(tmp_path):
    pr = plot_precision_recall(np.array([1.0, 0.8, 0.5]), np.array([0.1, 0.5, 1.0]), tmp_path / "pr.png")
    pk = plot_precision_at_k(np.array([1, 2, 5, 10, 50]), np.array([1.0, 0.9, 0.8, 0.6, 0.4]), tmp_path / "pk.png")
    for path in (pr, pk):
        image = read_png(path)
        assert image.shape[0] >= 300 and image.shape[1] >= 400  # 5 x 4 inches at 100 dpi
    assert sorted(os.listdir(tmp_path)) == ["pk.png", "pr.png"]


def test_curve_errors_name_the_arrays(tmp_path):
    with pytest.raises(ValueError, match="recall and precision"):
        plot_precision_recall(np.array([1.0, 0.5]), np.array([0.1]), tmp_path / "x.png")
    with pytest.raises(ValueError, match="positive depths"):
        plot_precision_at_k(np.array([0, 1]), np.array([1.0, 1.0]), tmp_path / "x.png")
    assert not os.listdir(tmp_path)


def solid(color, size=16):
    return np.full((size, size, 3), np.asarray(to_rgb(color)) * 255, dtype=np.uint8)


def test_retrieval_grid_frames_follow_relevance(tmp_path):
    # Thumbnails are grey so that only the frames are green or red.
    grey = solid("#808080")
    all_relevant = plot_retrieval_grid(
        [grey, grey], [[grey] * 3, [grey] * 3], np.ones((2, 3), bool), tmp_path / "green.png", ["a", "b"]
    )
    mixed = plot_retrieval_grid(
        [grey, grey],
        [[grey] * 3, [grey] * 3],
        np.array([[True, False, False], [False, True, False]]),
        tmp_path / "mixed.png",
        ["a", "b"],
        [["a\nd=0", "b\nd=1", "b\nd=2"], ["a\nd=0", "b\nd=3", "c\nd=3"]],
        title="grid",
    )
    green = read_png(all_relevant)
    assert pixels_of_color(green, RELEVANT_COLOR) > 100
    assert pixels_of_color(green, IRRELEVANT_COLOR) == 0
    image = read_png(mixed)
    # 4 of 6 retrieved thumbnails are framed red, 2 green: the red frame area is about twice the green.
    red_pixels, green_pixels = pixels_of_color(image, IRRELEVANT_COLOR), pixels_of_color(image, RELEVANT_COLOR)
    assert green_pixels > 50 and red_pixels > 1.5 * green_pixels
    assert image.shape[1] > image.shape[0]  # 4 columns, 2 rows


def test_retrieval_grid_rejects_rows_that_do_not_match(tmp_path):
    grey = solid("#808080")
    with pytest.raises(ValueError, match="row 1 has 2 retrieved images, expected k=3"):
        plot_retrieval_grid([grey, grey], [[grey] * 3, [grey] * 2], np.ones((2, 3), bool), tmp_path / "x.png")
    with pytest.raises(ValueError, match="one row per query"):
        plot_retrieval_grid([grey], [[grey] * 3], np.ones((2, 3), bool), tmp_path / "x.png")
    with pytest.raises(ValueError, match="query_titles has 1 entries, expected 2"):
        plot_retrieval_grid([grey, grey], [[grey], [grey]], np.ones((2, 1), bool), tmp_path / "x.png", ["a"])
    with pytest.raises(ValueError, match="at least one query"):
        plot_retrieval_grid([], [], np.ones((0, 3), bool), tmp_path / "x.png")


def test_training_curves_figure_and_missing_terms(tmp_path):
    training = [
        {"iteration": i, "total_loss": 10 - i, "ibot_loss": 2.0, "lr": 1e-3 * i, "teacher_temp": 0.04} for i in range(5)
    ]
    evaluations = [{"iteration": 1, "mAP": 0.4}, {"iteration": 3, "mAP": 0.6}, {"iteration": 3, "mAP": 0.5, "split": "query"}]
    image = read_png(plot_training_curves(training, evaluations, tmp_path / "curves.png", title="run"))
    assert image.shape[1] >= 1000  # three panels side by side
    # Without evaluations or schedules it still draws the losses.
    read_png(plot_training_curves([{"iteration": 0, "total_loss": 1.0}], [], tmp_path / "bare.png"))
    with pytest.raises(ValueError, match="iteration"):
        plot_training_curves([{"total_loss": 1.0}], [], tmp_path / "none.png")


def test_training_curves_draw_the_dino_target_entropy_when_logged(tmp_path):
    training = [{"iteration": i, "total_loss": 10 - i, "teacher_temp": 0.04} for i in range(20)]
    without = read_png(plot_training_curves(training, [], tmp_path / "without.png"))
    for i, record in enumerate(training):
        record["dino_target_entropy"] = 0.5 + 0.02 * i
    with_entropy = read_png(plot_training_curves(training, [], tmp_path / "with.png"))
    assert pixels_of_color(without, DINO_ENTROPY_COLOR) == 0
    assert pixels_of_color(with_entropy, DINO_ENTROPY_COLOR) > 50


def test_training_curves_gain_a_per_bit_balance_panel_when_evaluations_have_bit_means(tmp_path):
    training = [{"iteration": i, "total_loss": 10 - i} for i in range(10)]
    evaluations = [{"iteration": 4, "mAP": 0.4}, {"iteration": 9, "mAP": 0.5}]
    plain = read_png(plot_training_curves(training, evaluations, tmp_path / "plain.png"))
    for e in evaluations:
        e["bit_means"] = [1.0, -1.0, 0.0, 0.9]  # a constant +1 bit, a constant -1 bit
    balanced = read_png(plot_training_curves(training, evaluations, tmp_path / "bits.png"))
    assert balanced.shape[1] > plain.shape[1]  # a fourth panel
    # coolwarm draws +1 red and -1 blue: both appear only with the balance panel.
    red, blue = (0.706, 0.016, 0.150), (0.230, 0.299, 0.754)
    assert pixels_of_color(plain, red, 0.05) == 0 and pixels_of_color(plain, blue, 0.05) == 0
    assert pixels_of_color(balanced, red, 0.05) > 50 and pixels_of_color(balanced, blue, 0.05) > 50


def test_awp_heatmaps_put_the_bright_weights_where_the_patches_are(tmp_path):
    images = [np.full((64, 64, 3), 0.5) for _ in range(3)]
    weights = np.zeros((3, 4, 4))
    weights[:, 0, 0] = 1.0  # the top-left patch only
    image = read_png(plot_awp_heatmaps(images, weights, tmp_path / "awp.png", ["a", "b", "c"], title="t"))
    bright = (image[..., :3].min(-1) > 0.85) & (image[..., 0] > 0.95)  # inferno's top end, pale yellow
    rows, cols = np.nonzero(bright)
    assert rows.size > 20
    with pytest.raises(ValueError, match="side"):
        plot_awp_heatmaps(images, np.zeros((2, 4, 4)), tmp_path / "bad.png")
