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
on the CPU. Two primitives pick the fastest exact kernel for the device: distances are popcounts
of packed 64-bit words on the CPU (torch has no popcount) and +-1 matmuls elsewhere; the stable
row sort is numpy's radix sort on the CPU (torch's CPU sort is a comparison sort, ~10x slower)
and ``torch.sort(stable=True)`` elsewhere. Both give identical integers, so every metric is one
implementation on top of them.
"""

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

logger = logging.getLogger("dinov2")

ArrayLike = Union[torch.Tensor, np.ndarray]

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

# Elements of one [queries, database] block processed at once (per thread): bounds memory while
# keeping the block large enough for vectorised kernels.
_BLOCK_ELEMENTS = 1 << 18
# Database items per block of the top-k search.
_TOPK_DB_CHUNK = 1 << 16
# mAP@k uses the top-k search instead of a full ranking when k is this much smaller than N.
_TOPK_SEARCH_RATIO = 8


# ----------------------------------------------------------------------------------------------
# Inputs


def _as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _found_values(t: torch.Tensor, limit: int = 8) -> str:
    values = torch.unique(t.flatten()).cpu().tolist()
    shown = ", ".join(repr(v) for v in values[:limit])
    more = f", ... ({len(values)} distinct)" if len(values) > limit else ""
    return f"[{shown}{more}]"


def _code_bits(codes: ArrayLike, name: str) -> torch.Tensor:
    """Bits (bool [N, K]) of binary codes, after checking shape and values."""
    t = _as_tensor(codes, name)
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D array [num_codes, num_bits], got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 codes); need at least one code")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has 0 bits per code; need at least one bit")
    if t.dtype == torch.bool:
        return t
    plus_minus = ((t == 1) | (t == -1)).all()
    zero_one = ((t == 0) | (t == 1)).all()
    if not (bool(plus_minus) or bool(zero_one)):
        raise ValueError(
            f"{name} must be binary, with values in {{-1, +1}} or {{0, 1}}; found values {_found_values(t)}"
        )
    return t > 0


def _check_pair(q_bits: torch.Tensor, d_bits: torch.Tensor) -> None:
    if q_bits.shape[1] != d_bits.shape[1]:
        raise ValueError(
            f"code lengths differ: query_codes have K={q_bits.shape[1]} bits, db_codes have K={d_bits.shape[1]} bits"
        )
    if q_bits.device != d_bits.device:
        raise ValueError(f"query_codes are on {q_bits.device} but db_codes are on {d_bits.device}")


class _Labels:
    """Query and database labels, validated, as class indices or multi-hot rows on one device."""

    def __init__(self, query_labels: ArrayLike, db_labels: ArrayLike, num_queries: int, num_db: int, device):
        ql = _as_tensor(query_labels, "query_labels").to(device)
        dl = _as_tensor(db_labels, "db_labels").to(device)
        for name, t, n, codes in (
            ("query_labels", ql, num_queries, "query_codes"),
            ("db_labels", dl, num_db, "db_codes"),
        ):
            if t.dim() not in (1, 2):
                raise ValueError(f"{name} must be class indices [N] or multi-hot [N, C], got shape {tuple(t.shape)}")
            if t.shape[0] != n:
                raise ValueError(f"{name} has {t.shape[0]} labels but {codes} has {n} codes; counts must match")
        if ql.dim() != dl.dim():
            raise ValueError(
                f"query_labels and db_labels must be of the same kind: got shapes {tuple(ql.shape)} and {tuple(dl.shape)}"
            )
        self.multi_hot = ql.dim() == 2
        if self.multi_hot:
            if ql.shape[1] != dl.shape[1]:
                raise ValueError(
                    f"multi-hot labels differ in classes: query_labels C={ql.shape[1]}, db_labels C={dl.shape[1]}"
                )
            for name, t in (("query_labels", ql), ("db_labels", dl)):
                if t.dtype != torch.bool and not bool(((t == 0) | (t == 1)).all()):
                    raise ValueError(f"multi-hot {name} must hold 0/1 values; found values {_found_values(t)}")
            # float32 counts of shared labels are exact up to 2**24 classes
            self.query, self.db = ql.float(), dl.float()
        else:
            for name, t in (("query_labels", ql), ("db_labels", dl)):
                if t.dtype.is_floating_point or t.dtype.is_complex:
                    raise ValueError(f"class-index {name} must be integers, got dtype {t.dtype}")
            self.query, self.db = ql.long(), dl.long()

    def relevance(self, rows: slice, db_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Relevance (bool) of queries ``rows`` to all database items [c, N] or to ``db_index`` [c, k]."""
        q = self.query[rows]
        if db_index is None:
            if self.multi_hot:
                return (q @ self.db.T) > 0
            return q[:, None] == self.db[None, :]
        if self.multi_hot:
            return torch.einsum("qc,qkc->qk", q, self.db[db_index]) > 0
        return self.db[db_index] == q[:, None]


def _check_topk(topk: Optional[int], name: str = "topk") -> None:
    if topk is None:
        return
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)):
        raise ValueError(f"{name} must be a positive integer or None, got {topk!r}")
    if topk <= 0:
        raise ValueError(f"{name} must be a positive integer or None, got {topk}")


# ----------------------------------------------------------------------------------------------
# Exact kernels: distances and stable row sort


class _Hamming:
    """Hamming distances between chunks of query and database codes (exact integers)."""

    def __init__(self, q_bits: torch.Tensor, d_bits: torch.Tensor):
        _check_pair(q_bits, d_bits)
        self.device = q_bits.device
        self.num_bits = q_bits.shape[1]
        self.num_queries = q_bits.shape[0]
        self.num_db = d_bits.shape[0]
        self.on_cpu = self.device.type == "cpu"
        # u8 holds distances up to 254 and the sentinel K+1 used by the top-k search
        self.dtype = torch.uint8 if self.num_bits < 255 else torch.int32
        if self.on_cpu:
            self.q_words = _pack_words(q_bits)  # [Q, W] uint64
            self.d_words = _pack_words(d_bits)  # [N, W] uint64
        else:
            self.q_signs = q_bits.float() * 2 - 1  # [Q, K] +-1
            self.d_signs = d_bits.float() * 2 - 1  # [N, K] +-1

    def __call__(self, rows: slice, cols: slice = slice(None)) -> torch.Tensor:
        """Distances [c, m] of queries ``rows`` to database items ``cols``."""
        if self.on_cpu:
            q, d = self.q_words[rows], self.d_words[cols]
            out = np.zeros((q.shape[0], d.shape[0]), dtype=_NP_DTYPES[self.dtype])
            tmp = np.empty((q.shape[0], d.shape[0]), dtype=np.uint64)
            for w in range(q.shape[1]):
                np.bitwise_xor(q[:, w, None], d[None, :, w], out=tmp)
                out += np.bitwise_count(tmp).astype(out.dtype, copy=False)
            return torch.from_numpy(out)
        inner = self.q_signs[rows] @ self.d_signs[cols].T  # exact: integer sums of +-1 in float32
        return ((self.num_bits - inner) * 0.5).to(self.dtype)


_NP_DTYPES = {torch.uint8: np.uint8, torch.int32: np.int32}


def _pack_words(bits: torch.Tensor) -> np.ndarray:
    """Bits [N, K] -> uint64 words [N, ceil(K/64)], zero-padded (padding never adds distance)."""
    n, k = bits.shape
    num_words = (k + 63) // 64
    packed = np.packbits(bits.cpu().numpy(), axis=1, bitorder="little")  # [N, ceil(K/8)]
    padded = np.zeros((n, num_words * 8), dtype=np.uint8)
    padded[:, : packed.shape[1]] = packed
    return padded.view(np.uint64)


def _stable_argsort_rows(dist: torch.Tensor) -> torch.Tensor:
    """Stable argsort of each row of small non-negative integers [c, m] -> int64 [c, m]."""
    if dist.device.type == "cpu":
        # numpy's stable sort of 8/16-bit integers is a radix sort: linear time
        small = dist if dist.dtype == torch.uint8 else dist.to(torch.int16)
        return torch.from_numpy(np.argsort(small.numpy(), axis=1, kind="stable"))
    return torch.sort(dist, dim=1, stable=True).indices


def _query_chunks(num_queries: int, row_elements: int) -> List[slice]:
    chunk = max(1, min(num_queries, _BLOCK_ELEMENTS // max(1, row_elements)))
    return [slice(s, min(s + chunk, num_queries)) for s in range(0, num_queries, chunk)]


def _map_chunks(fn: Callable[[slice], torch.Tensor], chunks: List[slice], device: torch.device) -> List[torch.Tensor]:
    """``fn`` on every query chunk, in order; on the CPU in as many threads as torch uses."""
    workers = torch.get_num_threads() if device.type == "cpu" else 1
    if workers <= 1 or len(chunks) <= 1:
        return [fn(c) for c in chunks]
    with ThreadPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
        return list(pool.map(fn, chunks))


# ----------------------------------------------------------------------------------------------
# Stable top-k search


def _local_topk_mask(dist: torch.Tensor, k: int, num_buckets: int) -> torch.Tensor:
    """Mask [c, m] of each row's k first items in the stable ranking (all items if the row is shorter)."""
    c = dist.shape[0]
    hist = torch.zeros(c, num_buckets, dtype=torch.int64, device=dist.device)
    hist.scatter_add_(1, dist.long(), torch.ones_like(dist, dtype=torch.int64))
    cum = hist.cumsum(1)
    # bucket holding the k-th item (num_buckets when the row has fewer than k items)
    cut = (cum < k).sum(1)
    before = torch.where(cut > 0, cum.gather(1, (cut - 1).clamp(min=0)[:, None])[:, 0], torch.zeros_like(cut))
    cut_col = cut[:, None].to(dist.dtype) if num_buckets <= 255 else cut[:, None]
    at_cut = dist == cut_col
    take_at_cut = at_cut & (at_cut.cumsum(1) <= (k - before)[:, None])
    return (dist < cut_col) | take_at_cut


def _merge_sorted(best: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """First best.shape[1] keys of two row-sorted key sets [c, k] and [c, M] (keys unique but for padding)."""
    k, m = best.shape[1], cand.shape[1]
    pos_best = torch.arange(k, device=best.device) + torch.searchsorted(cand, best)
    pos_cand = torch.arange(m, device=best.device) + torch.searchsorted(best, cand)
    # padding keys (all equal to the sentinel) may share a slot; they write the same value
    merged = torch.full((best.shape[0], k + m), torch.iinfo(torch.int64).max, dtype=torch.int64, device=best.device)
    merged.scatter_(1, pos_best, best)
    merged.scatter_(1, pos_cand, cand)
    return merged[:, :k]


def _topk_chunk(ham: _Hamming, rows: slice, k: int, db_chunk: int) -> torch.Tensor:
    """Sort keys ``d * N + index`` [c, k] of the k first database items of queries ``rows``."""
    n = ham.num_db
    num_buckets = ham.num_bits + 1
    sentinel = num_buckets * n  # above every real key: distance K+1
    c = rows.stop - rows.start
    best = torch.full((c, k), sentinel, dtype=torch.int64, device=ham.device)
    for start in range(0, n, db_chunk):
        dist = ham(rows, slice(start, min(start + db_chunk, n)))  # [c, m]
        # k-th best distance so far (K+1 while a row has fewer than k). A later item loses a tie
        # against every earlier one, so only a strictly smaller distance can enter a full row.
        kth = torch.div(best[:, -1], n, rounding_mode="floor").to(dist.dtype)
        cand = dist < kth[:, None]
        r, col = cand.nonzero(as_tuple=True)
        if r.numel() == 0:
            continue
        counts = torch.bincount(r, minlength=c)
        if int(counts.max()) > k:
            cand &= _local_topk_mask(dist, k, num_buckets)
            r, col = cand.nonzero(as_tuple=True)
            counts = torch.bincount(r, minlength=c)
        keys = dist[r, col].long() * n + (col + start)
        starts = counts.cumsum(0) - counts
        slot = torch.arange(r.numel(), device=ham.device) - starts[r]
        padded = torch.full((c, int(counts.max())), sentinel, dtype=torch.int64, device=ham.device)
        padded[r, slot] = keys
        best = _merge_sorted(best, torch.sort(padded, dim=1).values)
    return best


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.cpu().numpy()


def hamming_topk(
    query_codes: ArrayLike, db_codes: ArrayLike, k: int, chunk_size: int = _TOPK_DB_CHUNK
) -> Tuple[np.ndarray, np.ndarray]:
    """The k nearest database codes of every query, by Hamming distance, ties broken by index.

    The database is scanned in blocks of ``chunk_size`` codes and queries in chunks, so memory is
    bounded by a block of [query chunk, chunk_size] distances whatever the database size.

    Args:
        query_codes: binary codes [Q, K] ({-1,+1} or {0,1}).
        db_codes: binary codes [N, K].
        k: number of neighbours, 1 <= k <= N.
        chunk_size: database codes per block.
    Returns:
        (distances int32 [Q, k], indices int64 [Q, k]), both in ranking order.
    """
    ham = _Hamming(_code_bits(query_codes, "query_codes"), _code_bits(db_codes, "db_codes"))
    _check_topk(k, "k")
    if k > ham.num_db:
        raise ValueError(f"k={k} exceeds the database size N={ham.num_db}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    chunks = _query_chunks(ham.num_queries, k + min(chunk_size, ham.num_db))
    keys = torch.cat(_map_chunks(lambda rows: _topk_chunk(ham, rows, k, chunk_size), chunks, ham.device))
    dist = torch.div(keys, ham.num_db, rounding_mode="floor")
    return _as_numpy(dist.to(torch.int32)), _as_numpy(keys - dist * ham.num_db)


# ----------------------------------------------------------------------------------------------
# Ranked relevance and average precision


def _ap_from_positions(rows: torch.Tensor, positions: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Average precision per row [num_rows] (float64) from the 1-based ranking positions of the
    relevant items, sorted by row then position; AP = (1/R) sum_m m / position_m, 0 when R = 0."""
    counts = torch.bincount(rows, minlength=num_rows)
    starts = counts.cumsum(0) - counts
    # m: how many relevant items up to and including this one
    m = (torch.arange(rows.numel(), device=rows.device) - starts[rows] + 1).double()
    sums = torch.zeros(num_rows, dtype=torch.float64, device=rows.device)
    sums.index_add_(0, rows, m / positions.double())
    return torch.where(counts > 0, sums / counts.clamp(min=1).double(), torch.zeros_like(sums))


def _ranked_relevance(
    ham: _Hamming, labels: _Labels, depth: int
) -> Callable[[slice], Tuple[torch.Tensor, torch.Tensor]]:
    """Function of a query chunk giving relevance [c, depth] of its first ``depth`` ranked items."""
    if depth * _TOPK_SEARCH_RATIO <= ham.num_db:

        def by_search(rows: slice) -> torch.Tensor:
            keys = _topk_chunk(ham, rows, depth, _TOPK_DB_CHUNK)
            return labels.relevance(rows, keys % ham.num_db)

        return by_search

    def by_sort(rows: slice) -> torch.Tensor:
        order = _stable_argsort_rows(ham(rows))[:, :depth]
        return labels.relevance(rows, order)

    return by_sort


def _prepare(query_codes, db_codes, query_labels, db_labels) -> Tuple[_Hamming, _Labels]:
    ham = _Hamming(_code_bits(query_codes, "query_codes"), _code_bits(db_codes, "db_codes"))
    labels = _Labels(query_labels, db_labels, ham.num_queries, ham.num_db, ham.device)
    return ham, labels


def mean_average_precision(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    topk: Optional[int] = None,
) -> float:
    """Mean average precision of Hamming ranking (mAP@topk; the paper's metric is mAP@all).

    Per query, the database is ranked by ascending Hamming distance, ties broken by database index.
    AP = (1/R) sum over relevant positions k <= topk of (#relevant in the first k) / k, with R the
    number of relevant items within the first topk. A query without any relevant item there has
    AP 0 and still counts in the mean over all queries (the reference behaviour).

    Args:
        query_codes: binary codes [Q, K] ({-1,+1} or {0,1}).
        db_codes: binary codes [N, K].
        query_labels: class indices [Q] or multi-hot [Q, C].
        db_labels: class indices [N] or multi-hot [N, C].
        topk: ranking depth; None (or >= N) means the whole database.
    Returns:
        mAP as a Python float.
    """
    ham, labels = _prepare(query_codes, db_codes, query_labels, db_labels)
    _check_topk(topk)
    depth = ham.num_db if topk is None else min(topk, ham.num_db)
    ranked = _ranked_relevance(ham, labels, depth)

    def chunk_ap(rows: slice) -> torch.Tensor:
        r, col = ranked(rows).nonzero(as_tuple=True)
        return _ap_from_positions(r, col + 1, rows.stop - rows.start)

    aps = _map_chunks(chunk_ap, _query_chunks(ham.num_queries, ham.num_db), ham.device)
    return float(torch.cat(aps).mean())


def precision_at_k(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    k: Union[int, Sequence[int]],
) -> Union[float, np.ndarray]:
    """Mean over queries of the fraction of relevant items among the first k of the ranking.

    Args:
        query_codes, db_codes, query_labels, db_labels: as in ``mean_average_precision``.
        k: one depth or a sequence of depths, each in [1, N].
    Returns:
        A float for one k, a float64 numpy array (one value per k, in the given order) otherwise.
    """
    ham, labels = _prepare(query_codes, db_codes, query_labels, db_labels)
    ks = [k] if not isinstance(k, (list, tuple, np.ndarray)) else list(k)
    if len(ks) == 0:
        raise ValueError("k is an empty sequence; give at least one depth")
    for value in ks:
        _check_topk(value, "k")
        if value > ham.num_db:
            raise ValueError(f"k={value} exceeds the database size N={ham.num_db}")
    ranked = _ranked_relevance(ham, labels, max(ks))
    index = torch.tensor(ks, device=ham.device) - 1

    def chunk_precision(rows: slice) -> torch.Tensor:
        hits = ranked(rows).to(torch.int64).cumsum(1)  # [c, max k]
        return hits[:, index].double() / (index + 1).double()

    values = torch.cat(_map_chunks(chunk_precision, _query_chunks(ham.num_queries, ham.num_db), ham.device)).mean(0)
    out = _as_numpy(values)
    return float(out[0]) if not isinstance(k, (list, tuple, np.ndarray)) else out


# ----------------------------------------------------------------------------------------------
# Metrics from per-distance counts


def _bucket_counts(ham: _Hamming, labels: _Labels) -> Callable[[slice], torch.Tensor]:
    """Function of a query chunk giving counts [c, 2, K+1] of (all, relevant) database items per distance."""

    def counts(rows: slice) -> torch.Tensor:
        dist = ham(rows).long()  # [c, N]
        rel = labels.relevance(rows)  # [c, N]
        out = torch.zeros(dist.shape[0], 2, ham.num_bits + 1, dtype=torch.int64, device=ham.device)
        out[:, 0].scatter_add_(1, dist, torch.ones_like(dist))
        out[:, 1].scatter_add_(1, dist, rel.long())
        return out

    return counts


def _all_bucket_counts(ham: _Hamming, labels: _Labels) -> torch.Tensor:
    chunks = _query_chunks(ham.num_queries, ham.num_db)
    return torch.cat(_map_chunks(_bucket_counts(ham, labels), chunks, ham.device)).double()


def precision_within_radius(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    radius: int = 2,
) -> float:
    """Mean over all queries of the precision among database items within Hamming radius ``radius``.

    A query with no database item within the radius has precision 0 (hash-lookup convention: an
    empty answer is a failed lookup) and still counts in the mean.

    Args:
        query_codes, db_codes, query_labels, db_labels: as in ``mean_average_precision``.
        radius: Hamming radius r >= 0; items with distance <= r are retrieved.
    Returns:
        The mean precision as a Python float.
    """
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
    ham, labels = _prepare(query_codes, db_codes, query_labels, db_labels)
    counts = _all_bucket_counts(ham, labels)[:, :, : radius + 1].sum(2)  # [Q, 2]
    retrieved, relevant = counts[:, 0], counts[:, 1]
    precision = torch.where(retrieved > 0, relevant / retrieved.clamp(min=1), torch.zeros_like(relevant))
    return float(precision.mean())


def precision_recall_curve(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
) -> Tuple[np.ndarray, np.ndarray]:
    """Precision and recall of Hamming-radius lookup at every radius r = 0..K.

    At radius r a query retrieves the database items within distance r. ``precision[r]`` is the mean,
    over the queries that retrieve at least one item, of the fraction of retrieved items that are
    relevant (0 where no query retrieves anything); ``recall[r]`` is the mean, over the queries with
    at least one relevant database item, of the fraction of their relevant items retrieved (0 where
    no query has any). Unlike ``precision_within_radius``, empty answers are left out of the
    precision mean rather than counted as 0, so the curve shows the precision of what is returned.

    Args:
        query_codes, db_codes, query_labels, db_labels: as in ``mean_average_precision``.
    Returns:
        (precision, recall), float64 numpy arrays [K+1] indexed by radius.
    """
    ham, labels = _prepare(query_codes, db_codes, query_labels, db_labels)
    counts = _all_bucket_counts(ham, labels).cumsum(2)  # [Q, 2, K+1], items within radius r
    retrieved, relevant = counts[:, 0], counts[:, 1]
    total_relevant = relevant[:, -1:]  # [Q, 1]
    has_answer = retrieved > 0
    precision = (relevant / retrieved.clamp(min=1) * has_answer).sum(0) / has_answer.sum(0).clamp(min=1)
    has_relevant = (total_relevant > 0).expand_as(relevant)
    recall = (relevant / total_relevant.clamp(min=1) * has_relevant).sum(0) / has_relevant.sum(0).clamp(min=1)
    return _as_numpy(precision), _as_numpy(recall)


def _harmonic_sum(first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """sum_{t=first}^{last} 1/t (0 when last < first), via digamma differences (no cancellation of
    long cumulative sums)."""
    value = torch.special.digamma(last + 1) - torch.special.digamma(first)
    return torch.where(last >= first, value, torch.zeros_like(value))


def _tie_aware_ap(counts: torch.Tensor, depth: int) -> torch.Tensor:
    """Expected AP per query [c] over uniformly random orders within equal-distance groups.

    counts: [c, 2, K+1] float64 (all, relevant) items per distance.
    depth: ranking depth (<= N); the group it cuts through is handled exactly by conditioning on
    the hypergeometric number of its relevant items that fall inside the depth.
    """
    n, r = counts[:, 0], counts[:, 1]  # [c, B]
    before_n = n.cumsum(1) - n  # items ranked before each group
    before_r = r.cumsum(1) - r  # relevant items ranked before each group
    # Inside a group of n items (r relevant) starting after position a, a slot t is relevant with
    # probability r/n and, if so, holds in expectation (t - a - 1)(r - 1)/(n - 1) other relevant
    # items of the group before it. The group's expected sum of precision at relevant slots t in
    # (a, a + p] is (r/n) [(R_before + 1) H + (r - 1)/(n - 1) (p - (a + 1) H)], H = sum 1/t.
    full = before_n + n <= depth
    p = torch.where(full, n, (depth - before_n).clamp(min=0))
    harmonic = _harmonic_sum(before_n + 1, before_n + p)
    spread = torch.where(n > 1, (r - 1) / (n - 1).clamp(min=1), torch.zeros_like(n))
    group_sum = torch.where(
        n > 0,
        r / n.clamp(min=1) * ((before_r + 1) * harmonic + spread * (p - (before_n + 1) * harmonic)),
        torch.zeros_like(n),
    )
    full_sum = (group_sum * full).sum(1)  # [c]
    full_relevant = (r * full).sum(1)
    # The cut group: first p of its n items are inside the depth; m ~ Hypergeometric(n, r, p)
    # relevant ones among them, placed uniformly over the p slots.
    cut = ~full & (before_n < depth)
    has_cut = cut.any(1)
    ap = torch.where(full_relevant > 0, full_sum / full_relevant.clamp(min=1), torch.zeros_like(full_sum))
    if not bool(has_cut.any()):
        return ap
    g = cut.double().argmax(1, keepdim=True)
    nc, rc, ac, bc, pc = (x.gather(1, g) for x in (n, r, before_n, before_r, p))  # [c, 1] each
    m_max = int(torch.minimum(rc, pc).max())
    m = torch.arange(m_max + 1, dtype=torch.float64, device=counts.device)[None, :]  # [1, M]
    feasible = (m <= torch.minimum(rc, pc)) & (m >= pc - (nc - rc))
    log_pmf = _log_binomial(rc, m) + _log_binomial(nc - rc, pc - m) - _log_binomial(nc, pc)  # [c, M]
    pmf = torch.where(
        feasible, torch.exp(torch.where(feasible, log_pmf, torch.zeros_like(log_pmf))), torch.zeros_like(log_pmf)
    )
    h1 = _harmonic_sum(ac + 1, ac + pc)  # [c, 1]
    h2 = pc - (ac + 1) * h1
    inner = torch.where(pc > 1, (m - 1) / (pc - 1).clamp(min=1) * h2, torch.zeros_like(m))
    cut_sum = m / pc.clamp(min=1) * ((bc + 1) * h1 + inner)  # [c, M]
    relevant_total = full_relevant[:, None] + m
    ap_m = torch.where(
        relevant_total > 0, (full_sum[:, None] + cut_sum) / relevant_total.clamp(min=1), torch.zeros_like(m)
    )
    return torch.where(has_cut, (pmf * ap_m).sum(1), ap)


def _log_binomial(n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    k = k.clamp(min=0)
    n = torch.maximum(n, k)
    return torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


def tie_aware_mean_average_precision(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    topk: Optional[int] = None,
) -> float:
    """Tie-aware mAP: the expected mAP when items at equal Hamming distance come in random order.

    Hamming ranking has many ties, and an index tie-break rewards the order of the database. This
    averages AP over all orders within each equal-distance group (McFee & Lanckriet, 2009; as used
    for hashing by He et al., CVPR 2018), in closed form from per-distance counts of all and
    relevant items, with no sampling. For ``topk`` < N, the group cut by the depth contributes an
    exact expectation over the hypergeometric number of its relevant items inside the depth, and
    AP divides by the relevant items within the depth (0 when there are none), as in
    ``mean_average_precision``.

    Args:
        query_codes, db_codes, query_labels, db_labels: as in ``mean_average_precision``.
        topk: ranking depth; None (or >= N) means the whole database.
    Returns:
        The tie-aware mAP as a Python float.
    """
    ham, labels = _prepare(query_codes, db_codes, query_labels, db_labels)
    _check_topk(topk)
    depth = ham.num_db if topk is None else min(topk, ham.num_db)
    counts_fn = _bucket_counts(ham, labels)

    def chunk_ap(rows: slice) -> torch.Tensor:
        return _tie_aware_ap(counts_fn(rows).double(), depth)

    aps = _map_chunks(chunk_ap, _query_chunks(ham.num_queries, ham.num_db), ham.device)
    return float(torch.cat(aps).mean())


# ----------------------------------------------------------------------------------------------
# Codes


def binarize(u: ArrayLike) -> ArrayLike:
    """Binary codes from continuous ones: sign with sign(0) = +1.

    Args:
        u: real values [..., K], torch tensor (any device) or numpy array.
    Returns:
        int8 codes in {-1, +1} of the same shape and container (and device) as ``u``.
    """
    if isinstance(u, np.ndarray):
        return np.where(u >= 0, 1, -1).astype(np.int8)
    t = _as_tensor(u, "u")
    if t.dtype.is_complex:
        raise ValueError(f"u must be real, got dtype {t.dtype}")
    if t.dtype.is_floating_point and bool(torch.isnan(t).any()):
        raise ValueError("u contains NaN; its sign is undefined")
    return torch.where(t >= 0, 1, -1).to(torch.int8)


def pack_codes(codes: ArrayLike) -> np.ndarray:
    """Pack binary codes into bytes, 8 bits per byte, first bit in the lowest bit (faiss layout).

    Args:
        codes: binary codes [N, K] in {-1,+1} or {0,1}; K must be a multiple of 8.
    Returns:
        uint8 numpy array [N, K/8].
    """
    bits = _code_bits(codes, "codes")
    if bits.shape[1] % 8 != 0:
        raise ValueError(f"pack_codes needs a code length K that is a multiple of 8, got K={bits.shape[1]}")
    return np.packbits(_as_numpy(bits), axis=1, bitorder="little")


def unpack_codes(packed: ArrayLike, nbits: Optional[int] = None) -> np.ndarray:
    """Codes in {-1, +1} from ``pack_codes`` bytes.

    Args:
        packed: uint8 array [N, B].
        nbits: code length K <= 8B (default 8B).
    Returns:
        int8 numpy array [N, K] in {-1, +1}.
    """
    p = _as_numpy(_as_tensor(packed, "packed"))
    if p.dtype != np.uint8 or p.ndim != 2:
        raise ValueError(f"packed must be a 2-D uint8 array [N, K/8], got dtype {p.dtype} and shape {p.shape}")
    total = 8 * p.shape[1]
    nbits = total if nbits is None else nbits
    if not 0 < nbits <= total:
        raise ValueError(f"nbits must be in [1, {total}] for {p.shape[1]} bytes per code, got {nbits}")
    bits = np.unpackbits(p, axis=1, count=nbits, bitorder="little")
    return (bits.astype(np.int8) * 2 - 1).astype(np.int8)


def hamming_distance(query_codes: ArrayLike, db_codes: ArrayLike) -> np.ndarray:
    """All Hamming distances d = (K - <b_q, b_d>) / 2.

    Args:
        query_codes: binary codes [Q, K] ({-1,+1} or {0,1}).
        db_codes: binary codes [N, K].
    Returns:
        int32 numpy array [Q, N].
    """
    ham = _Hamming(_code_bits(query_codes, "query_codes"), _code_bits(db_codes, "db_codes"))
    chunks = _query_chunks(ham.num_queries, ham.num_db)
    return _as_numpy(torch.cat([ham(rows).to(torch.int32) for rows in chunks]))
