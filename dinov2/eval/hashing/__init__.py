"""Hamming-ranking retrieval metrics for binary hash codes.

All metrics rank the database for each query by ascending Hamming distance
``d = (K - <b_q, b_d>) / 2`` and break ties by database index (stable), so results are exact and
reproducible. Relevance: query and database item share at least one label (class indices [N] or
multi-hot [N, C]).

Codes may be given as torch tensors (on any device) or numpy arrays, with values in {-1, +1} or
{0, 1} (bool included); a code bit is set where the value is positive. Metrics return Python floats
or numpy arrays.

Speed: Hamming distances are small integers in [0, K], which makes the stable ranking a counting
sort. Queries are processed in chunks so memory stays bounded, and chunks run in parallel threads
on the CPU. The array primitives pick the fastest exact kernel for the device: on the CPU,
distances are popcounts of packed code words (torch has no popcount) and the stable row sort is
numpy's radix sort (torch's CPU sort is a comparison sort, several times slower); elsewhere,
distances are +-1 matmuls and the sort is ``torch.sort(stable=True)``. Both give identical
integers, so every metric is one implementation on top of them.

Modules, by concept:
- ``codes``: input checks, ``binarize``, ``pack_codes`` / ``pack_codes_padded`` / ``unpack_codes``;
- ``kernels``: the fused numba kernel of the per-query average precision (optional numba);
- ``backends``: the numpy and torch array primitives and the chunked, threaded query loop;
- ``distances``: exact Hamming distances and the stable top-k search (``hamming_topk``);
- ``ranking``: mAP and precision@k of the ranking;
- ``distance_counts``: precision within a radius, the PR curve and the tie-aware mAP, computed from
  per-distance counts;
- ``collapse``: how much of the code space the codes use (distinct codes, largest bucket, constant
  bits, bit entropy) and the collapse verdict.
"""

from .codes import binarize, pack_codes, pack_codes_padded, unpack_codes
from .collapse import code_collapse_stats, collapse_verdict
from .distance_counts import precision_recall_curve, precision_within_radius, tie_aware_mean_average_precision
from .distances import hamming_distance, hamming_topk
from .ranking import mean_average_precision, precision_at_k

__all__ = [
    "binarize",
    "code_collapse_stats",
    "collapse_verdict",
    "hamming_distance",
    "hamming_topk",
    "mean_average_precision",
    "pack_codes",
    "pack_codes_padded",
    "precision_at_k",
    "precision_recall_curve",
    "precision_within_radius",
    "tie_aware_mean_average_precision",
    "unpack_codes",
]
