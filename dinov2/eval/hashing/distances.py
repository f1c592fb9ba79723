"""Exact Hamming distances between code sets and the stable top-k search.

Hamming distances ``d = (K - <b_q, b_d>) / 2`` are small integers in [0, K]. On the CPU they are
popcounts of packed code words (torch has no popcount); elsewhere +-1 matmuls. The top-k search
breaks ties by database index, as the full ranking does.
"""

from typing import List, Tuple

import numpy as np
import torch

from .backends import _BLOCK_ELEMENTS, NUMPY_OPS, TorchOps, _chunks, _map_chunks
from .codes import ArrayLike, _check_positive, _code_bits, _pack_words

# Database codes per block of the top-k search, and the most [queries, database] pairs per block.
_TOPK_DB_CHUNK = 1 << 14
_TOPK_BLOCK_ELEMENTS = 1 << 20
_TOPK_MAX_QUERIES = 64


class Hamming:
    """Exact Hamming distances between chunks of query and database codes, as native arrays."""

    def __init__(self, q_bits, d_bits):
        if q_bits.shape[1] != d_bits.shape[1]:
            raise ValueError(
                f"code lengths differ: query_codes have K={q_bits.shape[1]} bits, db_codes have K={d_bits.shape[1]} bits"
            )
        q_device, d_device = (x.device if isinstance(x, torch.Tensor) else "cpu" for x in (q_bits, d_bits))
        if str(q_device) != str(d_device):
            raise ValueError(f"query_codes are on {q_device} but db_codes are on {d_device}; use one device")
        self.num_queries, self.num_bits = q_bits.shape
        self.num_db = d_bits.shape[0]
        if isinstance(q_bits, np.ndarray):
            self.ops = NUMPY_OPS
            # uint8 holds distances up to 254 and the sentinel K+1 of the top-k search
            self.dtype = np.uint8 if self.num_bits < 255 else np.int32
            self.q_words, self.d_words = _pack_words(q_bits), _pack_words(d_bits)  # [., W]
        else:
            self.ops = TorchOps(q_device)
            self.q_signs, self.d_signs = q_bits.float() * 2 - 1, d_bits.float() * 2 - 1  # [., K] +-1

    def __call__(self, rows: slice, cols: slice = slice(None)):
        """Distances [c, m] of queries ``rows`` to database codes ``cols``."""
        if self.ops is NUMPY_OPS:
            q, d = self.q_words[rows], self.d_words[cols]
            words = np.empty((q.shape[0], d.shape[0]), dtype=q.dtype)
            np.bitwise_xor(q[:, 0, None], d[None, :, 0], out=words)
            dist = np.bitwise_count(words).astype(self.dtype, copy=False)
            for w in range(1, q.shape[1]):
                np.bitwise_xor(q[:, w, None], d[None, :, w], out=words)
                dist += np.bitwise_count(words)
            return dist
        inner = self.q_signs[rows] @ self.d_signs[cols].T  # exact: integer sums of +-1 in float32
        return ((self.num_bits - inner) * 0.5).to(torch.int32)


def _local_topk_mask(ops, dist, k: int, num_buckets: int):
    """Mask [c, m] of each row's first k items in the stable ranking (all of a shorter row)."""
    c = dist.shape[0]
    keys = ops.i64(dist) + (ops.arange(c) * num_buckets)[:, None]
    cum = ops.cumsum(ops.bincount(keys.reshape(-1), minlength=c * num_buckets).reshape(c, num_buckets), 1)
    cut = (cum < k).sum(1)  # bucket of the k-th item; num_buckets when the row is shorter than k
    before = ops.where(cut > 0, ops.take_along(cum, (cut - 1 + (cut == 0))[:, None])[:, 0], 0)
    cut_column = ops.cast(cut, dist)[:, None]
    mask = dist < cut_column
    # and the first k - before items at the cut distance, in index order
    r, col = ops.nonzero(dist == cut_column)
    counts = ops.bincount(r, minlength=c)
    keep = ops.arange(r.shape[0]) - (ops.cumsum(counts, 0) - counts)[r] < (k - before)[r]
    mask[r[keep], col[keep]] = True
    return mask


def _merge_sorted(ops, best, cand, sentinel: int):
    """First k keys of each row of two row-sorted key arrays [c, k] and [c, M]; keys are unique
    except the padding ``sentinel``, which sorts last."""
    c, k = best.shape
    m = cand.shape[1]
    # Offsetting row r by r * (sentinel + 1) makes all rows one sorted sequence for a 1-D search.
    offset = (ops.arange(c) * (sentinel + 1))[:, None]
    flat_best, flat_cand = (best + offset).reshape(-1), (cand + offset).reshape(-1)
    rows = ops.arange(c)[:, None]
    pos_best = ops.arange(k) + ops.searchsorted(flat_cand, flat_best).reshape(c, k) - rows * m
    pos_cand = ops.arange(m) + ops.searchsorted(flat_best, flat_cand).reshape(c, m) - rows * k
    merged = ops.full((c, k + m), sentinel)
    # padding keys may share a slot; they write the same value there
    merged[rows, pos_best] = best
    merged[rows, pos_cand] = cand
    return merged[:, :k]


def _topk_chunk(ham: Hamming, rows: slice, k: int, db_chunk: int):
    """Keys ``distance * N + index`` [c, k] of the first k database items of queries ``rows``."""
    ops, n = ham.ops, ham.num_db
    num_buckets = ham.num_bits + 1
    sentinel = num_buckets * n  # distance K+1: above every real key
    c = rows.stop - rows.start
    best = ops.full((c, k), sentinel)
    for start in range(0, n, db_chunk):
        dist = ham(rows, slice(start, min(start + db_chunk, n)))  # [c, m]
        # k-th best distance so far (K+1 while a row holds fewer than k). A later item loses a
        # tie against every earlier one, so only a strictly smaller distance enters a full row.
        kth = ops.cast(best[:, -1] // n, dist)
        cand = dist < kth[:, None]
        r, col = ops.nonzero(cand)
        if r.shape[0] == 0:
            continue
        counts = ops.bincount(r, minlength=c)
        if int(counts.max()) > k:
            cand &= _local_topk_mask(ops, dist, k, num_buckets)
            r, col = ops.nonzero(cand)
            counts = ops.bincount(r, minlength=c)
        slot = ops.arange(r.shape[0]) - (ops.cumsum(counts, 0) - counts)[r]
        padded = ops.full((c, int(counts.max())), sentinel)
        padded[r, slot] = ops.i64(dist[r, col]) * n + (col + start)
        best = _merge_sorted(ops, best, ops.sort_rows(padded), sentinel)
    return best


def _topk_chunks(ham: Hamming, db_chunk: int, k: int) -> List[slice]:
    per_chunk = min(_TOPK_MAX_QUERIES, _TOPK_BLOCK_ELEMENTS // (min(db_chunk, ham.num_db) + k))
    return _chunks(ham.num_queries, per_chunk)


def hamming_topk(
    query_codes: ArrayLike, db_codes: ArrayLike, k: int, chunk_size: int = _TOPK_DB_CHUNK
) -> Tuple[np.ndarray, np.ndarray]:
    """The k nearest database codes of every query by Hamming distance, ties broken by index.

    The database is scanned in blocks of ``chunk_size`` codes for chunks of queries, so memory is
    bounded by a few [query chunk, chunk_size] arrays whatever the database size.

    Args:
        query_codes: binary codes [Q, K] ({-1,+1} or {0,1}).
        db_codes: binary codes [N, K].
        k: number of neighbours, 1 <= k <= N.
        chunk_size: database codes per block.
    Returns:
        (distances int32 [Q, k], indices int64 [Q, k]), both in ranking order.
    """
    ham = Hamming(_code_bits(query_codes, "query_codes"), _code_bits(db_codes, "db_codes"))
    _check_positive(k, "k")
    _check_positive(chunk_size, "chunk_size")
    if k > ham.num_db:
        raise ValueError(f"k={k} exceeds the database size N={ham.num_db}")
    chunks = _topk_chunks(ham, chunk_size, k)
    keys = ham.ops.numpy(ham.ops.cat(_map_chunks(lambda rows: _topk_chunk(ham, rows, k, chunk_size), chunks, ham.ops)))
    dist = keys // ham.num_db
    return dist.astype(np.int32), keys - dist * ham.num_db


def hamming_distance(query_codes: ArrayLike, db_codes: ArrayLike) -> np.ndarray:
    """All Hamming distances d = (K - <b_q, b_d>) / 2.

    Args:
        query_codes: binary codes [Q, K] ({-1,+1} or {0,1}).
        db_codes: binary codes [N, K].
    Returns:
        int32 numpy array [Q, N].
    """
    ham = Hamming(_code_bits(query_codes, "query_codes"), _code_bits(db_codes, "db_codes"))
    chunks = _chunks(ham.num_queries, _BLOCK_ELEMENTS // ham.num_db)
    return np.concatenate([ham.ops.numpy(ham(rows)).astype(np.int32) for rows in chunks])
