from .hashing import (
    binarize,
    hamming_distance,
    hamming_topk,
    mean_average_precision,
    pack_codes,
    precision_at_k,
    precision_recall_curve,
    precision_within_radius,
    tie_aware_mean_average_precision,
    unpack_codes,
)

__all__ = [
    "binarize",
    "hamming_distance",
    "hamming_topk",
    "mean_average_precision",
    "pack_codes",
    "precision_at_k",
    "precision_recall_curve",
    "precision_within_radius",
    "tie_aware_mean_average_precision",
    "unpack_codes",
]
