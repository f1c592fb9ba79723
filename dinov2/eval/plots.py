"""PNG plots of retrieval results: precision-recall curve, precision@k curve and a retrieval grid.

Each function takes plain arrays and a destination path and writes one PNG atomically (temporary
file in the same folder, then ``os.replace``). Figures are drawn with matplotlib's object API on the
Agg canvas, without ``pyplot``: no global state is touched and no display is needed. matplotlib is
an optional dependency (the ``eval`` extra); it is imported when a plot is drawn.
"""

import logging
import os
from typing import Sequence

import numpy as np

from dinov2.checkpoint import atomic_path
from dinov2.logging import read_jsonl

logger = logging.getLogger("dinov2")

# Frame colours of retrieved thumbnails: sharing the query's label or not.
RELEVANT_COLOR = "#1a9850"
IRRELEVANT_COLOR = "#d73027"
QUERY_COLOR = "#4575b4"
_DPI = 100


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # The constrained layout leaves room for titles, the suptitle included, without overlaps.
    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str) -> str:
    with atomic_path(path) as tmp_path:
        figure.savefig(tmp_path, format="png", dpi=_DPI)
    return os.fspath(path)


def _check_curve(x: np.ndarray, y: np.ndarray, x_name: str, y_name: str) -> None:
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError(
            f"{x_name} and {y_name} must be non-empty 1-D arrays of one length, got shapes {x.shape} and {y.shape}"
        )


def plot_precision_recall(precision: np.ndarray, recall: np.ndarray, path: str, title: str = "") -> str:
    """Precision against recall of Hamming-radius lookup, one point per radius.

    Args:
        precision: [R] precision at radius 0..R-1 (``precision_recall_curve``).
        recall: [R] recall at the same radii.
        path: destination PNG file.
        title: figure title.
    Returns:
        ``path``.
    """
    precision, recall = np.asarray(precision, dtype=float), np.asarray(recall, dtype=float)
    _check_curve(recall, precision, "recall", "precision")
    figure = _new_figure(5, 4)
    ax = figure.add_subplot()
    ax.plot(recall, precision, marker="o", markersize=3)
    ax.annotate("r=0", (recall[0], precision[0]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "precision-recall (Hamming radius 0..K)", fontsize=10)
    return _save(figure, path)


def plot_precision_at_k(ks: np.ndarray, precision: np.ndarray, path: str, title: str = "") -> str:
    """Precision among the first k ranked database items against k, on a logarithmic k axis.

    Args:
        ks: [n] positive depths, increasing.
        precision: [n] mean precision@k at each depth.
        path: destination PNG file.
        title: figure title.
    Returns:
        ``path``.
    """
    ks, precision = np.asarray(ks), np.asarray(precision, dtype=float)
    _check_curve(ks, precision, "ks", "precision")
    if (ks <= 0).any():
        raise ValueError(f"ks must be positive depths for a logarithmic axis, got minimum {ks.min()}")
    figure = _new_figure(5, 4)
    ax = figure.add_subplot()
    ax.plot(ks, precision, marker="o", markersize=3)
    ax.set_xscale("log")
    ax.set_xlabel("k (retrieved items)")
    ax.set_ylabel("precision@k")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "precision@k", fontsize=10)
    return _save(figure, path)


def _frame(ax, color: str, width: float = 3.0) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(color)
        spine.set_linewidth(width)


def plot_retrieval_grid(
    query_images: Sequence[np.ndarray],
    retrieved_images: Sequence[Sequence[np.ndarray]],
    relevant: np.ndarray,
    path: str,
    query_titles: Sequence[str] = (),
    retrieved_titles: Sequence[Sequence[str]] = (),
    title: str = "",
) -> str:
    """One row per query: the query image, then its ranked database images framed by relevance.

    Args:
        query_images: Q images, each [H, W, 3] uint8 (or float in [0, 1]).
        retrieved_images: Q rows of k images each.
        relevant: bool [Q, k]; True frames a retrieved image green (shares the query's label), False red.
        path: destination PNG file.
        query_titles: Q small titles above the queries (e.g. the class).
        retrieved_titles: Q rows of k small titles (e.g. class and Hamming distance).
        title: figure title.
    Returns:
        ``path``.
    """
    relevant = np.asarray(relevant, dtype=bool)
    num_queries = len(query_images)
    if num_queries == 0:
        raise ValueError("plot_retrieval_grid needs at least one query image")
    if relevant.ndim != 2 or relevant.shape[0] != num_queries or len(retrieved_images) != num_queries:
        raise ValueError(
            f"got {num_queries} query images, {len(retrieved_images)} rows of retrieved images and relevance of "
            f"shape {relevant.shape}; expected one row per query and relevance [queries, k]"
        )
    k = relevant.shape[1]
    for row, images in enumerate(retrieved_images):
        if len(images) != k:
            raise ValueError(f"row {row} has {len(images)} retrieved images, expected k={k} like the relevance")
    for name, titles, expected in (
        ("query_titles", query_titles, num_queries),
        ("retrieved_titles", retrieved_titles, num_queries),
    ):
        if len(titles) not in (0, expected):
            raise ValueError(f"{name} has {len(titles)} entries, expected {expected} (or none)")

    cell = 1.25  # inches per thumbnail; titles take the extra height
    figure = _new_figure(cell * (k + 1) + 0.2, (cell + 0.45) * num_queries + (0.4 if title else 0.1))
    axes = figure.subplots(num_queries, k + 1, squeeze=False)
    for q in range(num_queries):
        ax = axes[q, 0]
        ax.imshow(query_images[q])
        _frame(ax, QUERY_COLOR)
        ax.set_title(query_titles[q] if query_titles else "query", fontsize=7, fontweight="bold")
        for j in range(k):
            ax = axes[q, j + 1]
            ax.imshow(retrieved_images[q][j])
            _frame(ax, RELEVANT_COLOR if relevant[q, j] else IRRELEVANT_COLOR)
            if retrieved_titles:
                ax.set_title(retrieved_titles[q][j], fontsize=6)
    if title:
        figure.suptitle(title, fontsize=9)
    return _save(figure, path)


# The normalised entropy of the DINO targets, dashed on the mAP panel (a colour no loss line takes).
DINO_ENTROPY_COLOR = "tab:cyan"
# Loss terms drawn on the training-curve figure, in this order when present.
_LOSS_TERMS = (
    "total_loss",
    "dino_global_crops_loss",
    "dino_local_crops_loss",
    "ibot_loss",
    "koleo_loss",
    "contrastive_loss",
    "balance_loss",
    "hash_reg_loss",
)


def plot_training_curves(training: Sequence[dict], evaluations: Sequence[dict], path: str, title: str = "") -> str:
    """Loss terms, learning rate and teacher temperature, and retrieval mAP against the iteration.

    The mAP panel also shows ``dino_target_entropy`` (dashed) when the records have it, and a fourth
    panel the per-bit balance of the database codes (``bit_means``: the mean of each bit, one column per
    evaluation; 0 = the bit splits the database in half, +-1 = a constant bit) when the evaluations have it.

    Args:
        training: records of ``training_metrics.json`` (``iteration`` and the logged values).
        evaluations: records of ``eval/retrieval_metrics.jsonl`` (``iteration``, ``mAP``); may be empty.
        path: destination PNG file.
        title: figure title.
    Returns:
        ``path``.
    """
    training = [r for r in training if "iteration" in r]
    if not training:
        raise ValueError("no training records with an 'iteration' to plot")
    iterations = np.asarray([r["iteration"] for r in training])
    balance_records = [e for e in evaluations if "bit_means" in e and "split" not in e]
    figure = _new_figure(16 if balance_records else 12, 3.6)
    panels = figure.subplots(1, 4 if balance_records else 3)
    losses, schedule, retrieval = panels[:3]
    if balance_records:
        _plot_bit_balance(panels[3], balance_records)
    for term in _LOSS_TERMS:
        values = [r.get(term) for r in training]
        if any(v is not None for v in values):
            losses.plot(iterations, [np.nan if v is None else v for v in values], label=term, linewidth=1.2)
    losses.set_xlabel("iteration")
    losses.set_ylabel("loss")
    losses.legend(fontsize=7)
    losses.grid(True, alpha=0.3)
    losses.set_title("losses", fontsize=10)
    if any("lr" in r for r in training):
        schedule.plot(iterations, [r.get("lr", np.nan) for r in training], label="lr", color="tab:blue")
        schedule.set_ylabel("learning rate")
    temperature = schedule.twinx()
    if any("teacher_temp" in r for r in training):
        temperature.plot(
            iterations, [r.get("teacher_temp", np.nan) for r in training], label="teacher temp", color="tab:orange"
        )
        temperature.set_ylabel("teacher temperature")
    schedule.set_xlabel("iteration")
    schedule.grid(True, alpha=0.3)
    schedule.set_title("schedules (lr: blue, teacher temperature: orange)", fontsize=10)
    points = [(e["iteration"], e["mAP"]) for e in evaluations if "iteration" in e and "mAP" in e and "split" not in e]
    if points:
        x, y = zip(*points)
        retrieval.plot(x, y, marker="o", markersize=3)
        best = int(np.argmax(y))
        retrieval.annotate(f"best {y[best]:.4f}", (x[best], y[best]), textcoords="offset points", xytext=(4, -12), fontsize=8)
    entropy = [r.get("dino_target_entropy") for r in training]
    retrieval_title = "teacher retrieval mAP"
    if any(v is not None for v in entropy):
        # Same 0-1 scale as mAP: near 1 the DINO targets are uniform and the DINO term carries no signal.
        retrieval.plot(
            iterations, [np.nan if v is None else v for v in entropy], linestyle="--", linewidth=1.2,
            color=DINO_ENTROPY_COLOR, label="DINO target entropy",
        )  # fmt: skip
        retrieval.legend(fontsize=7, loc="lower right")
        retrieval_title += " (dashed: DINO target entropy)"
    retrieval.set_xlabel("iteration")
    retrieval.set_ylabel("mAP")
    retrieval.set_ylim(-0.02, 1.02)
    retrieval.grid(True, alpha=0.3)
    retrieval.set_title(retrieval_title, fontsize=10)
    if title:
        figure.suptitle(title, fontsize=11)
    return _save(figure, path)


def _plot_bit_balance(axis, evaluations: Sequence[dict]) -> None:
    """Bits (rows) x evaluations (columns) of the per-bit mean of the database codes, -1 blue to +1 red."""
    means = np.asarray([e["bit_means"] for e in evaluations], dtype=float).T  # [K, evaluations]
    image = axis.imshow(means, aspect="auto", cmap="coolwarm", vmin=-1.0, vmax=1.0, interpolation="nearest")
    ticks = np.arange(len(evaluations))
    step = max(1, len(ticks) // 6)
    axis.set_xticks(ticks[::step])
    axis.set_xticklabels([str(evaluations[i]["iteration"]) for i in ticks[::step]], fontsize=7)
    axis.set_xlabel("evaluation (iteration)")
    axis.set_ylabel("bit")
    imbalance = float(np.abs(means[:, -1]).mean())
    axis.set_title(f"per-bit mean of the database codes (last: mean |.| {imbalance:.2f})", fontsize=10)
    axis.figure.colorbar(image, ax=axis, fraction=0.046, pad=0.02)


def draw_training_curves(output_dir: str, eval_metrics_file: str) -> str:
    """Draw ``<output_dir>/training_curves.png`` from the metric files; "" without records or matplotlib."""
    training = read_jsonl(os.path.join(output_dir, "training_metrics.json"))
    if not training:
        return ""
    path = os.path.join(output_dir, "training_curves.png")
    try:
        return plot_training_curves(training, read_jsonl(eval_metrics_file), path, os.path.basename(output_dir))
    except ImportError:
        logger.warning("matplotlib is not installed: no training_curves.png (pip install -e '.[eval]')")
        return ""


def plot_awp_heatmaps(images: Sequence[np.ndarray], weights: np.ndarray, path: str, titles: Sequence[str] = (), title: str = "") -> str:
    """Each query image above its attention-weighted pooling (AWP) patch weights laid over it.

    Args:
        images: n thumbnails [H, W, 3] (uint8 or floats in [0, 1]), as the network saw them (resize, crop).
        weights: [n, side, side] AWP weights, one per patch position (sigmoid outputs in [0, 1]).
        path: destination PNG file.
        titles: optional caption per image.
        title: figure title.
    Returns:
        ``path``.
    """
    weights = np.asarray(weights, dtype=float)
    if weights.ndim != 3 or weights.shape[0] != len(images) or weights.shape[1] != weights.shape[2]:
        raise ValueError(f"weights must be [n, side, side] for {len(images)} images, got {weights.shape}")
    n = len(images)
    figure = _new_figure(2.0 * n + 0.8, 4.4)
    axes = np.asarray(figure.subplots(2, n, squeeze=False))
    shown = None
    for i, image in enumerate(images):
        height, width = np.asarray(image).shape[:2]
        axes[0, i].imshow(image)
        axes[1, i].imshow(image)
        shown = axes[1, i].imshow(
            weights[i], cmap="inferno", alpha=0.6, vmin=0.0, vmax=1.0, extent=(0, width, height, 0), interpolation="nearest"
        )
        if i < len(titles):
            axes[0, i].set_title(titles[i], fontsize=8)
        axes[1, i].set_title(f"weights {weights[i].min():.2f}-{weights[i].max():.2f}", fontsize=7)
        for axis in axes[:, i]:
            axis.set_xticks([])
            axis.set_yticks([])
    if shown is not None:
        figure.colorbar(shown, ax=axes[1, :].tolist(), fraction=0.02, pad=0.01)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)
