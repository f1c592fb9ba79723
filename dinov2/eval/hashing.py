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
"""

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from dinov2.eval import hashing_kernels

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

# Elements of one [queries, database] block of a full ranking, per thread: bounds memory while
# keeping blocks large enough for vectorised kernels.
_BLOCK_ELEMENTS = 1 << 18
# Database codes per block of the top-k search, and the most [queries, database] pairs per block.
_TOPK_DB_CHUNK = 1 << 14
_TOPK_BLOCK_ELEMENTS = 1 << 20
_TOPK_MAX_QUERIES = 64
# mAP@k and precision@k search the top k instead of ranking everything when k <= N / this.
_TOPK_SEARCH_RATIO = 8
# mAP of CPU data uses the fused sort-free kernel of hashing_kernels when numba is installed.
_USE_FUSED_KERNEL = True


# ----------------------------------------------------------------------------------------------
# Inputs. Arrays stay "native": numpy for CPU data (numpy's kernels are single-threaded, so they
# stay fast on a busy machine, and chunks run in parallel threads), torch tensors on other devices.


def _native(x: ArrayLike, name: str):
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.device.type != "cpu":
            return x
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _kind(x) -> str:
    """numpy dtype kind of a native array: b(ool), i(nt), u(nsigned), f(loat), c(omplex)."""
    if isinstance(x, np.ndarray):
        return x.dtype.kind
    if x.dtype == torch.bool:
        return "b"
    if x.dtype.is_floating_point:
        return "f"
    if x.dtype.is_complex:
        return "c"
    return "u" if x.dtype == torch.uint8 else "i"


def _found_values(x, limit: int = 8) -> str:
    values = np.unique(x) if isinstance(x, np.ndarray) else torch.unique(x).cpu().numpy()
    shown = ", ".join(repr(v.item()) for v in values[:limit])
    more = f", ... ({len(values)} distinct)" if len(values) > limit else ""
    return f"[{shown}{more}]"


def _code_bits(codes: ArrayLike, name: str):
    """Bits (native bool [N, K]) of binary codes, after checking shape and values."""
    x = _native(codes, name)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [num_codes, num_bits], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 codes); need at least one code")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has 0 bits per code; need at least one bit")
    if _kind(x) == "b":
        return x
    if not bool(((x == 1) | (x == -1)).all()) and not bool(((x == 0) | (x == 1)).all()):
        raise ValueError(
            f"{name} must be binary, with values in {{-1, +1}} or {{0, 1}}; found values {_found_values(x)}"
        )
    return x > 0


def _check_positive(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


# ----------------------------------------------------------------------------------------------
# Array primitives. Every metric below is written once on these; the CPU set uses numpy, whose
# kernels are single-threaded (chunks run in parallel threads) and include popcount and radix
# sort, the other set uses torch on the codes' device.


class _NumpyOps:
    parallel = True

    @staticmethod
    def native(x) -> np.ndarray:
        return x.cpu().numpy() if isinstance(x, torch.Tensor) else x

    @staticmethod
    def f32(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32)

    @staticmethod
    def narrow_ints(x: np.ndarray, low: int, high: int) -> np.ndarray:
        return x.astype(np.promote_types(np.min_scalar_type(low), np.min_scalar_type(high)))

    @staticmethod
    def numpy(x: np.ndarray) -> np.ndarray:
        return x

    @staticmethod
    def to_torch(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x))

    @staticmethod
    def argsort_stable(x: np.ndarray) -> np.ndarray:
        # numpy's stable sort of 8/16-bit integers is a radix sort: linear time
        return np.argsort(x if x.dtype == np.uint8 else x.astype(np.int16), axis=1, kind="stable")

    @staticmethod
    def nonzero(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        flat = np.flatnonzero(x)  # several times faster than the 2-D np.nonzero
        return flat // x.shape[1], flat % x.shape[1]

    @staticmethod
    def arange(n: int) -> np.ndarray:
        return np.arange(n)

    @staticmethod
    def array(values: Sequence[int]) -> np.ndarray:
        return np.asarray(values, dtype=np.int64)

    @staticmethod
    def full(shape: Tuple[int, ...], value: int) -> np.ndarray:
        return np.full(shape, value, dtype=np.int64)

    @staticmethod
    def bincount(x: np.ndarray, weights=None, minlength: int = 0) -> np.ndarray:
        return np.bincount(x, weights=weights, minlength=minlength)

    @staticmethod
    def f64(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float64)

    @staticmethod
    def i64(x: np.ndarray) -> np.ndarray:
        return x.astype(np.int64)

    @staticmethod
    def cast(x: np.ndarray, like: np.ndarray) -> np.ndarray:
        return x.astype(like.dtype)

    @staticmethod
    def cumsum(x: np.ndarray, axis: int) -> np.ndarray:
        return np.cumsum(x, axis=axis)

    @staticmethod
    def sort_rows(x: np.ndarray) -> np.ndarray:
        return np.sort(x, axis=1)

    @staticmethod
    def searchsorted(a: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.searchsorted(a, v)

    @staticmethod
    def take_along(x: np.ndarray, index: np.ndarray) -> np.ndarray:
        return np.take_along_axis(x, index, axis=1)

    @staticmethod
    def cat(xs: List[np.ndarray]) -> np.ndarray:
        return np.concatenate(xs)

    @staticmethod
    def stack(xs: List[np.ndarray], axis: int) -> np.ndarray:
        return np.stack(xs, axis=axis)

    where = staticmethod(np.where)


class _TorchOps:
    parallel = False

    def __init__(self, device: torch.device):
        self.device = device

    def native(self, x) -> torch.Tensor:
        return torch.as_tensor(x, device=self.device)

    @staticmethod
    def f32(x: torch.Tensor) -> torch.Tensor:
        return x.float()

    @staticmethod
    def narrow_ints(x: torch.Tensor, low: int, high: int) -> torch.Tensor:
        return x.long()

    @staticmethod
    def numpy(x: torch.Tensor) -> np.ndarray:
        return x.cpu().numpy()

    @staticmethod
    def to_torch(x: torch.Tensor) -> torch.Tensor:
        return x

    @staticmethod
    def argsort_stable(x: torch.Tensor) -> torch.Tensor:
        return torch.sort(x, dim=1, stable=True).indices

    @staticmethod
    def nonzero(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return x.nonzero(as_tuple=True)

    def arange(self, n: int) -> torch.Tensor:
        return torch.arange(n, device=self.device)

    def array(self, values: Sequence[int]) -> torch.Tensor:
        return torch.tensor(list(values), dtype=torch.int64, device=self.device)

    def full(self, shape: Tuple[int, ...], value: int) -> torch.Tensor:
        return torch.full(shape, value, dtype=torch.int64, device=self.device)

    @staticmethod
    def bincount(x: torch.Tensor, weights=None, minlength: int = 0) -> torch.Tensor:
        return torch.bincount(x, weights=weights, minlength=minlength)

    @staticmethod
    def f64(x: torch.Tensor) -> torch.Tensor:
        return x.double()

    @staticmethod
    def i64(x: torch.Tensor) -> torch.Tensor:
        return x.long()

    @staticmethod
    def cast(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.to(like.dtype)

    @staticmethod
    def cumsum(x: torch.Tensor, axis: int) -> torch.Tensor:
        return x.cumsum(axis)

    @staticmethod
    def sort_rows(x: torch.Tensor) -> torch.Tensor:
        return torch.sort(x, dim=1).values

    @staticmethod
    def searchsorted(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(a, v)

    @staticmethod
    def take_along(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.gather(x, 1, index)

    @staticmethod
    def cat(xs: List[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs)

    @staticmethod
    def stack(xs: List[torch.Tensor], axis: int) -> torch.Tensor:
        return torch.stack(xs, dim=axis)

    where = staticmethod(torch.where)


_NUMPY_OPS = _NumpyOps()


class _Hamming:
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
            self.ops = _NUMPY_OPS
            # uint8 holds distances up to 254 and the sentinel K+1 of the top-k search
            self.dtype = np.uint8 if self.num_bits < 255 else np.int32
            self.q_words, self.d_words = _pack_words(q_bits), _pack_words(d_bits)  # [., W]
        else:
            self.ops = _TorchOps(q_device)
            self.q_signs, self.d_signs = q_bits.float() * 2 - 1, d_bits.float() * 2 - 1  # [., K] +-1

    def __call__(self, rows: slice, cols: slice = slice(None)):
        """Distances [c, m] of queries ``rows`` to database codes ``cols``."""
        if self.ops is _NUMPY_OPS:
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


def _pack_words(bits: np.ndarray) -> np.ndarray:
    """Bits [N, K] -> words [N, W], zero-padded (padding adds no distance): one word of the
    smallest unsigned type that holds K bits, or uint64 words for K > 64."""
    n, k = bits.shape
    packed = np.packbits(bits, axis=1, bitorder="little")  # [N, ceil(K/8)]
    word = next(t for t in (np.uint8, np.uint16, np.uint32) if k <= 8 * np.dtype(t).itemsize) if k <= 32 else np.uint64
    word_bytes = np.dtype(word).itemsize
    padded = np.zeros((n, -(-packed.shape[1] // word_bytes) * word_bytes), dtype=np.uint8)
    padded[:, : packed.shape[1]] = packed
    return padded.view(word)


class _Labels:
    """Validated query and database labels (class indices or multi-hot rows) as native arrays."""

    def __init__(self, query_labels: ArrayLike, db_labels: ArrayLike, ham: _Hamming):
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


def _prepare(query_codes, db_codes, query_labels, db_labels) -> Tuple[_Hamming, _Labels]:
    ham = _Hamming(_code_bits(query_codes, "query_codes"), _code_bits(db_codes, "db_codes"))
    return ham, _Labels(query_labels, db_labels, ham)


def _chunks(num_queries: int, per_chunk: int) -> List[slice]:
    per_chunk = max(1, per_chunk)
    return [slice(s, min(s + per_chunk, num_queries)) for s in range(0, num_queries, per_chunk)]


def _map_chunks(fn: Callable[[slice], Any], chunks: List[slice], ops) -> List[Any]:
    """``fn`` on every query chunk, in order; numpy chunks run in as many threads as torch uses."""
    workers = min(torch.get_num_threads(), len(chunks)) if ops.parallel else 1
    if workers <= 1:
        return [fn(c) for c in chunks]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, chunks))


# ----------------------------------------------------------------------------------------------
# Stable top-k search


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


def _topk_chunk(ham: _Hamming, rows: slice, k: int, db_chunk: int):
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


def _topk_chunks(ham: _Hamming, db_chunk: int, k: int) -> List[slice]:
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
    ham = _Hamming(_code_bits(query_codes, "query_codes"), _code_bits(db_codes, "db_codes"))
    _check_positive(k, "k")
    _check_positive(chunk_size, "chunk_size")
    if k > ham.num_db:
        raise ValueError(f"k={k} exceeds the database size N={ham.num_db}")
    chunks = _topk_chunks(ham, chunk_size, k)
    keys = ham.ops.numpy(ham.ops.cat(_map_chunks(lambda rows: _topk_chunk(ham, rows, k, chunk_size), chunks, ham.ops)))
    dist = keys // ham.num_db
    return dist.astype(np.int32), keys - dist * ham.num_db


# ----------------------------------------------------------------------------------------------
# Metrics of the ranking


def _check_depth(topk: Optional[int], num_db: int) -> int:
    if topk is None:
        return num_db
    _check_positive(topk, "topk")
    return min(int(topk), num_db)


def _ranked_relevance(ham: _Hamming, labels: _Labels, depth: int) -> Tuple[Callable[[slice], Any], List[slice]]:
    """A function of a query chunk giving the relevance (bool [c, depth]) of its first ``depth``
    ranked database items, and the query chunks to call it on."""
    if depth * _TOPK_SEARCH_RATIO <= ham.num_db:

        def by_search(rows: slice):
            keys = _topk_chunk(ham, rows, depth, _TOPK_DB_CHUNK)
            return labels.relevance(rows, keys % ham.num_db)

        return by_search, _topk_chunks(ham, _TOPK_DB_CHUNK, depth)

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


def _words64(words: np.ndarray) -> np.ndarray:
    """Packed words of any unsigned width [N, W] -> uint64 words [N, W'] (zero padding)."""
    if words.dtype == np.uint64:
        return np.ascontiguousarray(words)
    raw = np.ascontiguousarray(words).view(np.uint8)
    padded = np.zeros((raw.shape[0], -(-raw.shape[1] // 8) * 8), dtype=np.uint8)
    padded[:, : raw.shape[1]] = raw
    return padded.view(np.uint64)


def _fused_average_precisions(ham: _Hamming, labels: _Labels, depth: int) -> np.ndarray:
    """AP@depth per query with the fused kernel (CPU, numba): no sort, no [Q, N] matrix."""
    if labels.multi_hot:
        q_labels, d_labels = (_words64(np.packbits(x > 0, axis=1, bitorder="little")) for x in (labels.query, labels.db))
    else:
        q_labels, d_labels = (x.astype(np.int64).reshape(-1, 1) for x in (labels.query, labels.db))
    hashing_kernels.numba.set_num_threads(max(1, min(torch.get_num_threads(), hashing_kernels.numba.config.NUMBA_NUM_THREADS)))
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
    if ham.ops is _NUMPY_OPS and _USE_FUSED_KERNEL and hashing_kernels.available():
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


# ----------------------------------------------------------------------------------------------
# Metrics of the per-distance counts


def _bucket_counts(ham: _Hamming, labels: _Labels, rows: slice) -> torch.Tensor:
    """Counts of (all, relevant) database items at each distance: float64 tensor [c, 2, K+1]."""
    ops = ham.ops
    dist, rel = ham(rows), labels.relevance(rows)  # [c, N] each
    c, num_buckets = dist.shape[0], ham.num_bits + 1
    keys = (ops.i64(dist) + (ops.arange(c) * num_buckets)[:, None]).reshape(-1)
    total = ops.bincount(keys, minlength=c * num_buckets)
    relevant = ops.bincount(keys, weights=ops.f64(rel.reshape(-1)), minlength=c * num_buckets)
    return ops.to_torch(ops.stack([ops.f64(total), relevant], 0).reshape(2, c, num_buckets)).permute(1, 0, 2)


def _map_bucket_counts(ham: _Hamming, labels: _Labels, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
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


# ----------------------------------------------------------------------------------------------
# Codes


def binarize(u: ArrayLike) -> ArrayLike:
    """Binary codes from continuous ones: sign with sign(0) = +1.

    Args:
        u: real values [..., K], torch tensor (any device) or numpy array.
    Returns:
        int8 codes in {-1, +1} of the same shape and container (and device) as ``u``.
    """
    x = _native(u, "u")
    if _kind(x) == "c":
        raise ValueError(f"u must be real, got dtype {x.dtype}")
    if _kind(x) == "f" and bool((x != x).any()):
        raise ValueError("u contains NaN, whose sign is undefined")
    if isinstance(u, np.ndarray):
        return np.where(x >= 0, 1, -1).astype(np.int8)
    codes = torch.where(torch.as_tensor(x) >= 0, 1, -1).to(torch.int8)
    return codes if codes.device == u.device else codes.to(u.device)


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
    return np.packbits(_NUMPY_OPS.native(bits), axis=1, bitorder="little")


def unpack_codes(packed: ArrayLike, nbits: Optional[int] = None) -> np.ndarray:
    """Codes in {-1, +1} from ``pack_codes`` bytes.

    Args:
        packed: uint8 array [N, B].
        nbits: code length K <= 8B (default 8B).
    Returns:
        int8 numpy array [N, K] in {-1, +1}.
    """
    p = _NUMPY_OPS.native(_native(packed, "packed"))
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
    chunks = _chunks(ham.num_queries, _BLOCK_ELEMENTS // ham.num_db)
    return np.concatenate([ham.ops.numpy(ham(rows)).astype(np.int32) for rows in chunks])
