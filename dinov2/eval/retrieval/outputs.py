"""What the retrieval tool writes besides metrics.json: codes.npz, the faiss index and the plots, and
the reuse of codes.npz by a later search."""

import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from dinov2.checkpoint import atomic_path
from dinov2.data import make_classification_eval_transform
from dinov2.data.datasets import SplitImageDataset
from dinov2.eval.hashing import hamming_topk, pack_codes_padded, precision_at_k, precision_recall_curve, unpack_codes
from dinov2.eval.plots import plot_awp_heatmaps, plot_precision_at_k, plot_precision_recall, plot_retrieval_grid

logger = logging.getLogger("dinov2")

# Deepest point of the precision@k curve and number of points on its log-spaced grid.
CURVE_MAX_K = 1000
CURVE_POINTS = 40
GRID_QUERIES = 6
GRID_TOPK = 10


def first_labels(dataset: SplitImageDataset) -> List[int]:
    """The first label of every sample (the class of a single-label set)."""
    return [entry.labels[0] for entry in dataset.entries]


def precision_curve_depths(num_database: int, max_k: int = CURVE_MAX_K, points: int = CURVE_POINTS) -> np.ndarray:
    """Distinct integer depths from 1 to min(num_database, max_k), log-spaced (both ends included)."""
    top = min(num_database, max_k)
    return np.unique(np.round(np.geomspace(1, top, num=points)).astype(np.int64))


def save_codes(path: str, db_codes, query_codes, db, queries, fingerprint: str, weights: str) -> str:
    """Write codes.npz: packed codes, labels, relative files of both sets, class names, bits, fingerprint."""
    bits = db_codes.shape[1]
    arrays = {
        "db_codes": pack_codes_padded(db_codes),
        "query_codes": pack_codes_padded(query_codes),
        "db_labels": np.asarray(db.targets, dtype=np.int64),
        "query_labels": np.asarray(queries.targets, dtype=np.int64),
        "db_files": np.asarray(db.relative_files(), dtype=str),
        "query_files": np.asarray(queries.relative_files(), dtype=str),
        "class_names": np.asarray(db.classes, dtype=str),
        "bits": np.asarray(bits, dtype=np.int64),
        "weights": np.asarray(os.path.abspath(weights) if weights else "", dtype=str),
        "fingerprint": np.asarray(fingerprint, dtype=str),
    }
    with atomic_path(path) as tmp_path, open(tmp_path, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    return path


def write_faiss_index(path: str, packed_db_codes: np.ndarray, bits: int) -> Tuple[Optional[str], str]:
    """Write a faiss IndexBinaryFlat of the packed database codes.

    Returns:
        (path or None, a note): None with the reason when faiss is not installed.
    """
    try:
        import faiss
    except ImportError:
        note = "faiss is not installed (pip install 'sdsh[eval]'): database.faissindex was not written"
        logger.warning(note)
        return None, note
    # faiss stores whole bytes; codes of K bits not a multiple of 8 are padded with zero bits.
    index = faiss.IndexBinaryFlat(8 * packed_db_codes.shape[1])
    index.add(np.ascontiguousarray(packed_db_codes))
    with atomic_path(path) as tmp_path:
        faiss.write_index_binary(index, tmp_path)
    padded = 8 * packed_db_codes.shape[1] - bits
    return path, f"IndexBinaryFlat of {index.ntotal} codes, {bits} bits" + (f" + {padded} zero bits" if padded else "")


def grid_query_indices(labels: Sequence[int], count: int = GRID_QUERIES) -> List[int]:
    """Deterministic queries for the retrieval grid, spread over classes.

    The first query of each class in class order, then the second of each, and so on.
    """
    labels = np.asarray(labels)
    position = np.zeros(len(labels), dtype=np.int64)
    seen: Dict[int, int] = {}
    for i, label in enumerate(labels.tolist()):
        position[i] = seen.get(label, 0)
        seen[label] = position[i] + 1
    order = np.lexsort((labels, position))  # by position within the class, then by class
    return order[:count].tolist()


def _thumbnail(dataset: SplitImageDataset, index: int, resize_crop) -> np.ndarray:
    # get_image reads a file or a parquet row alike.
    return np.asarray(resize_crop(dataset.get_image(index)))


def awp_patch_weights(network, images) -> Optional[np.ndarray]:
    """AWP patch weights [n, side, side] of the hash head for evaluation-size ``images`` [n, 3, H, W]; None
    when the head does not pool with learned weights (``hash.pooling`` mean or grid)."""
    with torch.no_grad():
        out = network.backbone.forward_features(images)
        weights = network.hash_head(out["x_norm_clstoken"], out["x_norm_patchtokens"], view="global").get("patch_weights")
    if weights is None:
        return None
    weights = weights.float().cpu().numpy()
    side = int(round(weights.shape[1] ** 0.5))
    return weights.reshape(weights.shape[0], side, side)


def draw_plots(output_dir: str, cfg, q_bits, d_bits, q_labels, d_labels, db, queries, network=None) -> List[str]:
    """The PR curve, the precision@k curve, the retrieval grid and, given the ``network`` and when its hash
    head pools with AWP, the AWP patch weights of the grid's queries (``awp_heatmaps.png``); returns the
    files written."""
    bits = d_bits.shape[1]
    precision, recall = precision_recall_curve(q_bits, d_bits, q_labels, d_labels)
    written = [
        plot_precision_recall(
            precision, recall, os.path.join(output_dir, "pr_curve.png"), f"Hamming-radius lookup, {bits}-bit codes"
        )
    ]
    ks = precision_curve_depths(d_bits.shape[0])
    values = np.atleast_1d(precision_at_k(q_bits, d_bits, q_labels, d_labels, k=ks.tolist()))
    written.append(
        plot_precision_at_k(
            ks, values, os.path.join(output_dir, "precision_at_k.png"), f"Hamming ranking, {bits}-bit codes"
        )
    )

    # Thumbnails show what the network saw: the evaluation resize and centre crop, without normalisation.
    eval_transform = make_classification_eval_transform(crop_size=cfg.crops.global_crops_size)
    resize_crop = type(eval_transform)(eval_transform.transforms[:2])
    chosen = grid_query_indices(first_labels(queries))
    k = min(GRID_TOPK, d_bits.shape[0])
    distances, neighbours = hamming_topk(q_bits[chosen], d_bits, k=k)
    q_images = [_thumbnail(queries, i, resize_crop) for i in chosen]
    r_images = [[_thumbnail(db, j, resize_crop) for j in row] for row in neighbours]
    # Relevant: at least one shared label (the class, for a single-label set).
    relevant = np.array(
        [[bool(set(queries.entries[i].labels) & set(db.entries[j].labels)) for j in row] for i, row in zip(chosen, neighbours)]
    )
    q_titles = [f"query: {';'.join(queries.label_names(i))}" for i in chosen]
    r_titles = [
        [f"{';'.join(db.label_names(j))}\nd={d}" for j, d in zip(row, drow)] for row, drow in zip(neighbours, distances)
    ]
    written.append(
        plot_retrieval_grid(
            q_images,
            r_images,
            relevant,
            os.path.join(output_dir, "retrieval_grid.png"),
            q_titles,
            r_titles,
            title=f"top-{k} by Hamming distance ({bits} bits); green: same class, red: other class",
        )
    )
    if network is not None:
        device = next(network.parameters()).device
        images = torch.stack([queries[i][0] for i in chosen]).to(device)
        weights = awp_patch_weights(network, images)
        if weights is not None:
            written.append(
                plot_awp_heatmaps(
                    q_images,
                    weights,
                    os.path.join(output_dir, "awp_heatmaps.png"),
                    q_titles,
                    title="AWP patch weights of the hash head (bottom, over the image): what the code pools",
                )
            )
    return written


def load_cached_codes(path: str, fingerprint: str, db_files: List[str]) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """Database codes (+-1) and labels from codes.npz when written for the same fingerprint and files."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["fingerprint"]) != fingerprint or data["db_files"].tolist() != db_files:
                logger.info(f"{path} was written for other weights, settings or files: encoding the database")
                return None
            return unpack_codes(data["db_codes"], int(data["bits"])), data["db_labels"]
    except (OSError, KeyError, ValueError) as exc:
        logger.warning(f"cannot reuse {path} ({type(exc).__name__}: {exc}): encoding the database")
        return None
