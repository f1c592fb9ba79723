"""The retrieval metric schema: one function from binary codes and labels to the dict every tool writes.

The training-time evaluator (``eval/retrieval_metrics.jsonl``), the retrieval tool (``metrics.json``)
and the baselines (``baselines.json``) all compute their metrics with ``retrieval_metrics``, so a
key means the same number everywhere:

- ``mAP``: mAP@all (the paper's metric) of the Hamming ranking, ties broken by database index;
- ``mAP_tie_aware``: its expectation over random orders within equal-distance groups;
- ``mAP@k`` and ``mAP_tie_aware@k``: the same at depth k, for each depth of ``map_depths``;
- ``P@k``: precision among the first k ranked items, for k in ``PRECISION_KS`` up to the database size;
- ``precision_radius2``: precision of Hamming-radius-2 lookup (an empty lookup counts 0);
- ``topk`` (``evaluation.topk``, ``"all"`` when unset), ``num_queries``, ``num_database``, ``bits``;
- the code-collapse statistics of the database codes (``dinov2.eval.hashing.collapse``):
  ``distinct_codes``, ``distinct_codes_fraction``, ``largest_bucket_fraction``,
  ``constant_bits_fraction``, ``bit_entropy`` and the verdict ``collapse`` (full, partial or ok).
"""

from typing import Any, Dict, List, Optional

from dinov2.eval.hashing import (
    binarize,
    code_collapse_stats,
    mean_average_precision,
    precision_at_k,
    precision_within_radius,
    tie_aware_mean_average_precision,
)
from dinov2.eval.hashing.codes import ArrayLike
from dinov2.utils.config import ConfigError

PRECISION_KS = (1, 5, 10, 50, 100)
# mAP@k depths reported beside mAP@all when evaluation.topk is not set (each only when below the database size).
DEFAULT_MAP_DEPTHS = (100, 1000)
HAMMING_RADIUS = 2


def map_depths(topk: Optional[int], num_database: int) -> List[int]:
    """The mAP@k depths to report: ``evaluation.topk`` if set, else those of DEFAULT_MAP_DEPTHS below N."""
    if topk is not None:
        if topk < 1:
            raise ConfigError(f"evaluation.topk={topk} must be a positive depth or null (mAP@all)")
        return [topk] if topk < num_database else []
    return [k for k in DEFAULT_MAP_DEPTHS if k < num_database]


def retrieval_metrics(
    query_codes: ArrayLike, db_codes: ArrayLike, query_labels: ArrayLike, db_labels: ArrayLike, topk: Optional[int] = None
) -> Dict[str, Any]:
    """The metrics of the schema (see the module docstring) for binary codes.

    Args:
        query_codes: binary codes [Q, K] ({-1,+1} or {0,1}).
        db_codes: binary codes [N, K].
        query_labels: class indices [Q] or multi-hot [Q, C].
        db_labels: class indices [N] or multi-hot [N, C].
        topk: ``evaluation.topk`` (None: only the default depths below N).
    Returns:
        ``{"mAP", "mAP_tie_aware", "mAP@k", "mAP_tie_aware@k", "P@k", "precision_radius2", "topk",
        "num_queries", "num_database", "bits"}`` and the collapse statistics of ``db_codes``
        (``COLLAPSE_KEYS``), numbers as Python floats and ints.
    """
    args = (query_codes, db_codes, query_labels, db_labels)
    num_db = int(db_codes.shape[0])
    depths = map_depths(topk, num_db)
    metrics: Dict[str, Any] = {
        "mAP": float(mean_average_precision(*args)),
        "mAP_tie_aware": float(tie_aware_mean_average_precision(*args)),
    }
    for k in depths:
        metrics[f"mAP@{k}"] = float(mean_average_precision(*args, topk=k))
        metrics[f"mAP_tie_aware@{k}"] = float(tie_aware_mean_average_precision(*args, topk=k))
    ks = [k for k in PRECISION_KS if k <= num_db]
    for k, value in zip(ks, precision_at_k(*args, k=ks)):
        metrics[f"P@{k}"] = float(value)
    metrics[f"precision_radius{HAMMING_RADIUS}"] = float(precision_within_radius(*args, radius=HAMMING_RADIUS))
    metrics.update(
        {
            "topk": topk if topk is not None else "all",
            "num_queries": int(query_codes.shape[0]),
            "num_database": num_db,
            "bits": int(db_codes.shape[1]),
        }
    )
    metrics.update(code_collapse_stats(db_codes))
    return metrics


def evaluate_codes(
    query_codes: ArrayLike, db_codes: ArrayLike, query_labels: ArrayLike, db_labels: ArrayLike, topk: Optional[int] = None
) -> Dict[str, Any]:
    """``retrieval_metrics`` of continuous codes, binarised with ``sign`` (sign(0) = +1) first."""
    return retrieval_metrics(binarize(query_codes), binarize(db_codes), query_labels, db_labels, topk)


def selection_value(metrics: Dict[str, Any], topk: Optional[int] = None) -> float:
    """The number the trainer selects models on: ``mAP@topk`` when ``evaluation.topk`` is set and below
    the database size, else ``mAP`` (mAP@all, which mAP@topk equals for a depth of N or more)."""
    key = f"mAP@{topk}" if topk is not None else "mAP"
    return float(metrics.get(key, metrics["mAP"]))
