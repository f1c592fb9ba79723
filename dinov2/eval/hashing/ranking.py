"""Metrics of the Hamming ranking: mAP (mAP@k) and precision@k, with relevance from labels.

Per query the database is ranked by ascending Hamming distance with ties broken by database index
(stable), so results are exact and reproducible. Relevance: query and database item share at
least one label (class indices [N] or multi-hot [N, C]).
"""

from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from dinov2.eval.hashing import kernels as hashing_kernels

from . import distances
from .backends import _BLOCK_ELEMENTS, NUMPY_OPS, _chunks, _map_chunks
from .codes import ArrayLike, _check_positive, _code_bits, _found_values, _kind, _native, _words64
from .distances import Hamming, _topk_chunk, _topk_chunks

# mAP@k and precision@k search the top k instead of ranking everything when k <= N / this.
_TOPK_SEARCH_RATIO = 8
# mAP of CPU data uses the fused sort-free kernel of hashing_kernels when numba is installed.
_USE_FUSED_KERNEL = True


class Labels:
    """Validated query and database labels (class indices or multi-hot rows) as native arrays."""

    def __init__(self, query_labels: ArrayLike, db_labels: ArrayLike, ham: Hamming):
        ql = ham.ops.native(_native(query_labels, "query_labels"))
        dl = ham.ops.native(_native(db_labels, "db_labels"))
        for name, x, n, codes in (
            ("query_labels", ql, ham.num_queries, "query_codes"),
            ("db_labels", dl, ham.num_db, "db_codes"),
        ):
            if x.ndim not in (1, 2):
                raise ValueError(f"{name} must be class indices [N] or multi-hot [N, C], got shape {tuple(x.shape)}")
            if x.shape[0] != n:
                raise ValueError(f"{name} has {x.shape[0]} labels but {codes} has {n} codes; counts must match")
        if ql.ndim != dl.ndim:
            raise ValueError(
                f"query_labels and db_labels must be of the same kind: got shapes {tuple(ql.shape)} and {tuple(dl.shape)}"
            )
        self.ops = ham.ops
        self.multi_hot = ql.ndim == 2
        if self.multi_hot:
            if ql.shape[1] != dl.shape[1]:
                raise ValueError(
                    f"multi-hot labels differ in classes: query_labels C={ql.shape[1]}, db_labels C={dl.shape[1]}"
                )
            for name, x in (("query_labels", ql), ("db_labels", dl)):
                if _kind(x) != "b" and not bool(((x == 0) | (x == 1)).all()):
                    raise ValueError(f"multi-hot {name} must hold 0/1 values; found values {_found_values(x)}")
            # float32 counts of shared labels are exact up to 2**24 classes
            self.query, self.db = ham.ops.f32(ql), ham.ops.f32(dl)
        else:
            for name, x in (("query_labels", ql), ("db_labels", dl)):
                if _kind(x) not in "iu":
                    raise ValueError(f"class-index {name} must be integers, got dtype {x.dtype}")
            # the narrowest type holding every class index makes the per-pair gathers cheaper
            low, high = min(int(ql.min()), int(dl.min())), max(int(ql.max()), int(dl.max()))
            self.query, self.db = ham.ops.narrow_ints(ql, low, high), ham.ops.narrow_ints(dl, low, high)

    def relevance(self, rows: slice, db_index=None):
        """Relevance (bool) of queries ``rows`` to all database items [c, N] or to ``db_index`` [c, k]."""
        q = self.query[rows]
        if db_index is None:
            if self.multi_hot:
                return (q @ self.db.T) > 0
            return q[:, None] == self.db[None, :]
        if not self.multi_hot:
            return self.db[db_index] == q[:, None]
        if 2 * db_index.shape[1] >= self.db.shape[0]:  # most of the database: one product, then pick
            return self.ops.take_along((q @ self.db.T) > 0, db_index)
        # gathered label rows [rows, k, C], a few query rows at a time to bound memory
        step = max(1, _BLOCK_ELEMENTS // (db_index.shape[1] * self.db.shape[1]))
        return self.ops.cat(
            [(self.db[db_index[i : i + step]] * q[i : i + step, None, :]).sum(-1) > 0 for i in range(0, len(q), step)]
        )


def _prepare(query_codes, db_codes, query_labels, db_labels) -> Tuple[Hamming, Labels]:
    ham = Hamming(_code_bits(query_codes, "query_codes"), _code_bits(db_codes, "db_codes"))
    return ham, Labels(query_labels, db_labels, ham)


def _check_depth(topk: Optional[int], num_db: int) -> int:
    if topk is None:
        return num_db
    _check_positive(topk, "topk")
    return min(int(topk), num_db)


def _ranked_relevance(ham: Hamming, labels: Labels, depth: int) -> Tuple[Callable[[slice], Any], List[slice]]:
    """A function of a query chunk giving the relevance (bool [c, depth]) of its first ``depth``
    ranked database items, and the query chunks to call it on."""
    if depth * _TOPK_SEARCH_RATIO <= ham.num_db:

        def by_search(rows: slice):
            keys = _topk_chunk(ham, rows, depth, distances._TOPK_DB_CHUNK)
            return labels.relevance(rows, keys % ham.num_db)

        return by_search, _topk_chunks(ham, distances._TOPK_DB_CHUNK, depth)

    def by_sort(rows: slice):
        order = ham.ops.argsort_stable(ham(rows))
        return labels.relevance(rows, order[:, :depth])

    return by_sort, _chunks(ham.num_queries, _BLOCK_ELEMENTS // ham.num_db)


def _average_precision(ops, rows, positions, num_rows: int):
    """AP per row [num_rows] (float64) from the 1-based ranking positions of the relevant items,
    ordered by row then position: AP = (1/R) sum_m m / position_m, and 0 when R = 0."""
    counts = ops.bincount(rows, minlength=num_rows)
    # m: relevant items up to and including this one
    m = ops.arange(rows.shape[0]) - (ops.cumsum(counts, 0) - counts)[rows] + 1
    sums = ops.bincount(rows, weights=ops.f64(m) / ops.f64(positions), minlength=num_rows)
    return ops.where(counts > 0, sums / ops.f64(counts + (counts == 0)), 0.0)


def _fused_average_precisions(ham: Hamming, labels: Labels, depth: int) -> np.ndarray:
    """AP@depth per query with the fused kernel (CPU, numba): no sort, no [Q, N] matrix."""
    if labels.multi_hot:
        q_labels, d_labels = (_words64(np.packbits(x > 0, axis=1, bitorder="little")) for x in (labels.query, labels.db))
    else:
        q_labels, d_labels = (x.astype(np.int64).reshape(-1, 1) for x in (labels.query, labels.db))
    with hashing_kernels.torch_threads_kept():
        threads = max(1, min(torch.get_num_threads(), hashing_kernels.numba.config.NUMBA_NUM_THREADS))
        hashing_kernels.numba.set_num_threads(threads)
        return hashing_kernels.average_precisions(
            _words64(ham.q_words), _words64(ham.d_words), q_labels, d_labels, labels.multi_hot, ham.num_bits, depth
        )


def mean_average_precision(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    topk: Optional[int] = None,
) -> float:
    """Mean average precision of Hamming ranking (mAP@topk; the paper's metric is mAP@all).

    Per query the database is ranked by ascending Hamming distance, ties broken by database index.
    AP = (1/R) sum over relevant positions k <= topk of (#relevant in the first k) / k, where R is
    the number of relevant items within the first topk. A query without any relevant item there
    has AP 0 and still counts in the mean over all queries (the reference behaviour).

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
    depth = _check_depth(topk, ham.num_db)
    if ham.ops is NUMPY_OPS and _USE_FUSED_KERNEL and hashing_kernels.available():
        return float(_fused_average_precisions(ham, labels, depth).mean())
    ranked, chunks = _ranked_relevance(ham, labels, depth)
    ops = ham.ops

    def chunk_ap(rows: slice):
        r, col = ops.nonzero(ranked(rows))
        return _average_precision(ops, r, col + 1, rows.stop - rows.start)

    return float(ops.cat(_map_chunks(chunk_ap, chunks, ops)).mean())


def precision_at_k(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    k: Union[int, Sequence[int]],
) -> Union[float, np.ndarray]:
    """Mean over queries of the fraction of relevant items among the first k ranked items.

    Args:
        query_codes, db_codes, query_labels, db_labels: as in ``mean_average_precision``.
        k: a depth or a sequence of depths, each in [1, N].
    Returns:
        A float for one depth; for a sequence, a float64 numpy array with one value per depth.
    """
    ham, labels = _prepare(query_codes, db_codes, query_labels, db_labels)
    single = not isinstance(k, (list, tuple, np.ndarray))
    ks = [k] if single else list(k)
    if not ks:
        raise ValueError("k is an empty sequence; give at least one depth")
    for value in ks:
        _check_positive(value, "k")
        if value > ham.num_db:
            raise ValueError(f"k={value} exceeds the database size N={ham.num_db}")
    ranked, chunks = _ranked_relevance(ham, labels, max(ks))
    ops = ham.ops
    index = ops.array(ks) - 1

    def chunk_precision(rows: slice):
        hits = ops.cumsum(ops.i64(ranked(rows)), 1)  # [c, max k]
        return ops.f64(hits[:, index]) / ops.f64(index + 1)

    values = ops.numpy(ops.cat(_map_chunks(chunk_precision, chunks, ops)).mean(0))
    return float(values[0]) if single else values
