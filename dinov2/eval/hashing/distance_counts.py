"""Metrics of the per-distance counts: precision within a Hamming radius, the precision-recall
curve of radius lookup and the tie-aware mAP (all from histograms of database items per distance).
"""

from typing import Callable, Optional, Tuple

import numpy as np
import torch

from .backends import _BLOCK_ELEMENTS, _chunks, _map_chunks
from .codes import ArrayLike
from .distances import Hamming
from .ranking import Labels, _check_depth, _prepare


def _bucket_counts(ham: Hamming, labels: Labels, rows: slice) -> torch.Tensor:
    """Counts of (all, relevant) database items at each distance: float64 tensor [c, 2, K+1]."""
    ops = ham.ops
    dist, rel = ham(rows), labels.relevance(rows)  # [c, N] each
    c, num_buckets = dist.shape[0], ham.num_bits + 1
    keys = (ops.i64(dist) + (ops.arange(c) * num_buckets)[:, None]).reshape(-1)
    total = ops.bincount(keys, minlength=c * num_buckets)
    relevant = ops.bincount(keys, weights=ops.f64(rel.reshape(-1)), minlength=c * num_buckets)
    return ops.to_torch(ops.stack([ops.f64(total), relevant], 0).reshape(2, c, num_buckets)).permute(1, 0, 2)


def _map_bucket_counts(ham: Hamming, labels: Labels, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``fn`` of the per-distance counts of every query chunk, concatenated over chunks."""
    chunks = _chunks(ham.num_queries, _BLOCK_ELEMENTS // ham.num_db)
    return torch.cat(_map_chunks(lambda rows: fn(_bucket_counts(ham, labels, rows)), chunks, ham.ops))


def precision_within_radius(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    radius: int = 2,
) -> float:
    """Mean over all queries of the precision among the database items within Hamming ``radius``.

    A query with no database item within the radius has precision 0 (an empty hash lookup is a
    failed one) and still counts in the mean.

    Args:
        query_codes, db_codes, query_labels, db_labels: as in ``mean_average_precision``.
        radius: r >= 0; the items at distance <= r are retrieved.
    Returns:
        The mean precision as a Python float.
    """
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
    ham, labels = _prepare(query_codes, db_codes, query_labels, db_labels)

    def precision(counts: torch.Tensor) -> torch.Tensor:
        retrieved, relevant = counts[:, :, : radius + 1].sum(2).unbind(1)
        return torch.where(retrieved > 0, relevant / retrieved.clamp(min=1), torch.zeros_like(relevant))

    return float(_map_bucket_counts(ham, labels, precision).mean())


def precision_recall_curve(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
) -> Tuple[np.ndarray, np.ndarray]:
    """Precision and recall of Hamming-radius lookup at every radius r = 0..K.

    At radius r a query retrieves the database items within distance r. ``precision[r]`` is the
    mean, over the queries that retrieve at least one item, of the fraction of retrieved items that
    are relevant; ``recall[r]`` is the mean, over the queries with at least one relevant database
    item, of the fraction of those retrieved (either is 0 where no query qualifies). Unlike
    ``precision_within_radius``, empty answers are left out of the precision mean instead of
    counting 0, so the curve shows the precision of what is returned.

    Args:
        query_codes, db_codes, query_labels, db_labels: as in ``mean_average_precision``.
    Returns:
        (precision, recall): float64 numpy arrays [K+1], indexed by radius.
    """
    ham, labels = _prepare(query_codes, db_codes, query_labels, db_labels)

    def sums(counts: torch.Tensor) -> torch.Tensor:
        retrieved, relevant = counts.cumsum(2).unbind(1)  # [c, K+1] items within radius r
        total_relevant = relevant[:, -1:].expand_as(relevant)
        answered, has_relevant = retrieved > 0, total_relevant > 0
        precision = torch.where(answered, relevant / retrieved.clamp(min=1), torch.zeros_like(relevant))
        recall = torch.where(has_relevant, relevant / total_relevant.clamp(min=1), torch.zeros_like(relevant))
        # per chunk: sums of precision and recall and how many queries each mean runs over
        return torch.stack([precision.sum(0), answered.sum(0), recall.sum(0), has_relevant.sum(0)])[None]

    total = _map_bucket_counts(ham, labels, sums).sum(0)  # [4, K+1]
    precision = total[0] / total[1].clamp(min=1)
    recall = total[2] / total[3].clamp(min=1)
    return precision.cpu().numpy(), recall.cpu().numpy()


def _harmonic_sum(first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """sum_{t=first}^{last} 1/t, 0 when last < first (digamma differences: no long running sums)."""
    value = torch.special.digamma(last + 1) - torch.special.digamma(first)
    return torch.where(last >= first, value, torch.zeros_like(value))


def _log_binomial(n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    k = k.clamp(min=0)
    n = torch.maximum(n, k)
    return torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


def _tie_aware_ap(counts: torch.Tensor, depth: int) -> torch.Tensor:
    """Expected AP per query [c] over uniformly random orders within equal-distance groups.

    Args:
        counts: float64 [c, 2, K+1], (all, relevant) items per distance.
        depth: ranking depth <= N.
    """
    n, r = counts[:, 0], counts[:, 1]  # [c, B]
    before_n = n.cumsum(1) - n  # items ranked before each group
    before_r = r.cumsum(1) - r  # relevant items ranked before each group
    zero = torch.zeros_like(n)
    # In a group of n items (r relevant) after position a, slot t is relevant with probability
    # r/n and then holds (t - a - 1)(r - 1)/(n - 1) other relevant items of the group before it,
    # in expectation. Summing precision over its first p slots:
    #   (r/n) [(R_before + 1) H + (r - 1)/(n - 1) (p - (a + 1) H)],  H = sum_{t=a+1}^{a+p} 1/t.
    full = before_n + n <= depth
    p = torch.where(full, n, (depth - before_n).clamp(min=0))
    harmonic = _harmonic_sum(before_n + 1, before_n + p)
    spread = torch.where(n > 1, (r - 1) / (n - 1).clamp(min=1), zero)
    group_sum = torch.where(
        n > 0, r / n.clamp(min=1) * ((before_r + 1) * harmonic + spread * (p - (before_n + 1) * harmonic)), zero
    )
    full_sum = (group_sum * full).sum(1)  # [c]
    full_relevant = (r * full).sum(1)
    ap = torch.where(full_relevant > 0, full_sum / full_relevant.clamp(min=1), torch.zeros_like(full_sum))
    cut = ~full & (before_n < depth)  # the group the depth cuts through, if any
    has_cut = cut.any(1)
    if not bool(has_cut.any()):
        return ap
    # Its first p slots hold m ~ Hypergeometric(n, r, p) relevant items, uniformly placed; AP
    # divides by the relevant items within the depth, so condition on m and sum over it.
    g = cut.double().argmax(1, keepdim=True)
    nc, rc, ac, bc, pc = (x.gather(1, g) for x in (n, r, before_n, before_r, p))  # [c, 1] each
    m = torch.arange(int(torch.minimum(rc, pc).max()) + 1, dtype=torch.float64, device=counts.device)[None, :]
    feasible = (m <= torch.minimum(rc, pc)) & (m >= pc - (nc - rc))
    log_pmf = _log_binomial(rc, m) + _log_binomial(nc - rc, pc - m) - _log_binomial(nc, pc)  # [c, M]
    pmf = torch.where(feasible, torch.exp(torch.where(feasible, log_pmf, torch.zeros_like(log_pmf))), 0.0)
    h1 = _harmonic_sum(ac + 1, ac + pc)
    inner = torch.where(pc > 1, (m - 1) / (pc - 1).clamp(min=1) * (pc - (ac + 1) * h1), torch.zeros_like(m))
    cut_sum = m / pc.clamp(min=1) * ((bc + 1) * h1 + inner)  # [c, M]
    within = full_relevant[:, None] + m
    ap_m = torch.where(within > 0, (full_sum[:, None] + cut_sum) / within.clamp(min=1), torch.zeros_like(m))
    return torch.where(has_cut, (pmf * ap_m).sum(1), ap)


def tie_aware_mean_average_precision(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    topk: Optional[int] = None,
) -> float:
    """Tie-aware mAP: the expected mAP when items at equal Hamming distance come in random order.

    Hamming ranking has many ties, and an index tie-break makes the score depend on the database
    order. This averages AP over all orders within each equal-distance group (McFee & Lanckriet,
    2009; used for hashing by He et al., CVPR 2018), in closed form from the per-distance counts of
    all and relevant items, without sampling. With ``topk`` < N, the group cut by the depth is
    handled exactly by conditioning on the hypergeometric number of its relevant items inside the
    depth; AP divides by the relevant items within the depth and is 0 without any, as in
    ``mean_average_precision``.

    Args:
        query_codes, db_codes, query_labels, db_labels: as in ``mean_average_precision``.
        topk: ranking depth; None (or >= N) means the whole database.
    Returns:
        The tie-aware mAP as a Python float.
    """
    ham, labels = _prepare(query_codes, db_codes, query_labels, db_labels)
    depth = _check_depth(topk, ham.num_db)
    return float(_map_bucket_counts(ham, labels, lambda counts: _tie_aware_ap(counts, depth)).mean())
