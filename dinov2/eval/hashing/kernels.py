"""Fused CPU kernel for Hamming-ranking mAP (optional: used when numba is installed).

Hamming distances take K + 1 values, so the stable rank of database item j for a query is
``(#items at a smaller distance) + (#items before j at the same distance) + 1``: two linear
passes over the database per query (a per-distance histogram, then running counts in index
order) give every rank without sorting. One pass over the database records, for each relevant
item, its distance and the (relevant) items before it at that distance; the per-distance
histograms then turn these into ranks. AP@k needs no sort and no [Q, N] matrix.

The result equals the sort-based evaluation in ``dinov2.eval.hashing`` exactly up to the order of
the floating-point additions inside each AP (differences of the order of 1e-16).
"""

import contextlib

import numpy as np
import torch

try:
    import numba
except ImportError:  # the sort-based numpy path of dinov2.eval.hashing is used instead
    numba = None

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)


@contextlib.contextmanager
def torch_threads_kept():
    """Put torch's intra-op thread count back after numba code.

    numba's OpenMP threading layer sets the process's OpenMP thread count (torch's intra-op count)
    to its own on its first parallel launch: without this, the first evaluation would change the
    threads, and so the summation order of CPU kernels, of every later training step.
    """
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def available() -> bool:
    """Whether the fused kernel can run (numba importable)."""
    return numba is not None


def popcount(x):
    # SWAR popcount; LLVM turns this pattern into the hardware instruction where there is one.
    x = x - ((x >> np.uint64(1)) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return (x * _H01) >> np.uint64(56)


def _average_precisions(q_words, d_words, q_labels, d_labels, multi_hot, num_bits, depth, out):
    num_db = d_words.shape[0]
    n_words = q_words.shape[1]
    n_label_words = q_labels.shape[1]
    for i in numba.prange(q_words.shape[0]):
        # Per relevant item: its distance and the items / relevant items before it at that distance.
        rel_dist = np.empty(num_db, dtype=np.int32)
        rel_seen = np.empty(num_db, dtype=np.int64)
        rel_seen_rel = np.empty(num_db, dtype=np.int64)
        count = np.zeros(num_bits + 1, dtype=np.int64)
        count_rel = np.zeros(num_bits + 1, dtype=np.int64)
        n_rel = 0
        for j in range(num_db):
            # int64 throughout: numba would promote a mix of int64 and uint64 to float64
            d = np.int64(0)
            for w in range(n_words):
                d += np.int64(popcount(q_words[i, w] ^ d_words[j, w]))
            if multi_hot:
                r = False
                for w in range(n_label_words):
                    if q_labels[i, w] & d_labels[j, w]:
                        r = True
                        break
            else:
                r = q_labels[i, 0] == d_labels[j, 0]
            if r:
                rel_dist[n_rel] = d
                rel_seen[n_rel] = count[d]
                rel_seen_rel[n_rel] = count_rel[d]
                n_rel += 1
                count_rel[d] += 1
            count[d] += 1
        # counts -> number of items (relevant items) at a strictly smaller distance
        before = 0
        before_rel = 0
        for d in range(num_bits + 1):
            c, cr = count[d], count_rel[d]
            count[d], count_rel[d] = before, before_rel
            before += c
            before_rel += cr
        total = 0.0
        found = 0
        for t in range(n_rel):
            d = rel_dist[t]
            rank = count[d] + rel_seen[t] + 1
            if rank <= depth:
                total += (count_rel[d] + rel_seen_rel[t] + 1) / rank
                found += 1
        out[i] = total / found if found > 0 else 0.0


if numba is not None:
    popcount = numba.njit(inline="always", cache=True)(popcount)
    _average_precisions = numba.njit(parallel=True, cache=True, nogil=True)(_average_precisions)


def average_precisions(
    q_words: np.ndarray,
    d_words: np.ndarray,
    q_labels: np.ndarray,
    d_labels: np.ndarray,
    multi_hot: bool,
    num_bits: int,
    depth: int,
) -> np.ndarray:
    """AP@depth of every query (float64 [Q]); ranking by Hamming distance, ties by database index.

    Args:
        q_words: packed query codes, uint64 [Q, W] (bit set = code bit +1; zero padding).
        d_words: packed database codes, uint64 [N, W].
        q_labels: int64 [Q, 1] class indices, or uint64 [Q, L] multi-hot label bit words.
        d_labels: the same for the database, [N, 1] or [N, L].
        multi_hot: True for label bit words (relevant = any shared bit), False for class indices.
        num_bits: code length K.
        depth: ranking depth (N for mAP@all).
    Returns:
        AP per query; a query without a relevant item within the depth has AP 0.
    """
    if numba is None:
        raise RuntimeError("the fused mAP kernel needs numba (pip install numba)")
    out = np.empty(q_words.shape[0], dtype=np.float64)
    _average_precisions(q_words, d_words, q_labels, d_labels, multi_hot, num_bits, depth, out)
    return out
