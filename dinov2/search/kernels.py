"""numba kernels of ``dinov2.search.index``: exact k-NN in Hamming space, flat scan and multi-index hashing.

Both kernels return the first k database codes in the order (distance, id), so ties are broken by
id. Distances take nbits + 1 values, which the flat scan uses to avoid any sort: per query it keeps,
for every distance d, the ids seen at d in scan order (at most k of them: later ones at the same
distance can never be among the first k), and a threshold ``t`` beyond which nothing can enter the
result (the first t + 1 buckets already hold k ids). Codes of one or two 64-bit words (64 and 128
bits) have kernels without an inner word loop; other widths scan small blocks of queries against
database blocks that stay in cache.

Multi-index hashing (Norouzi, Punjani and Fleet, "Fast Exact Search in Hamming Space with
Multi-Index Hashing", TPAMI 2014): the code is cut into m disjoint substrings, each with a table
from substring value to the ids holding it. If H(q, x) = d then some substring differs in at most
floor(d / m) bits (pigeonhole). Probing radius r in tables 0..a-1 and r - 1 in the other m - a
tables therefore finds every x with H(q, x) <= m * r + a - 1: an unseen x differs in >= r + 1 bits
on each of the first a substrings and >= r bits on the others, so H >= m * r + a. The probe grows
one table at a time until k verified candidates lie within that certified radius; then every code
at the k-th distance or closer has been seen, so the result (ties included) equals the flat scan.
"""

import numpy as np

from dinov2.eval.hashing.kernels import numba, popcount

# Queries scanned together over one database block, and the block length (codes): a block of
# 4096 codes of 128 bits is 64 KiB, which stays in L2 while the queries of the block pass over it.
QUERY_BLOCK = 8
DB_BLOCK = 4096
# Largest per-block bucket memory of the one-scan kernel; larger k use the two-scan kernel.
BUCKET_BYTES = 16 << 20


def _flat_search(queries, codes, k, nbits, out_dist, out_ids):
    num_q = queries.shape[0]
    n = codes.shape[0]
    n_words = codes.shape[1]
    num_blocks = (num_q + QUERY_BLOCK - 1) // QUERY_BLOCK
    for b in numba.prange(num_blocks):
        q0 = b * QUERY_BLOCK
        q1 = min(num_q, q0 + QUERY_BLOCK)
        nq = q1 - q0
        # bucket[i, d, :count[i, d]]: ids at distance d from query q0 + i, in id order
        bucket = np.empty((nq, nbits + 1, k), dtype=np.int64)
        count = np.zeros((nq, nbits + 1), dtype=np.int64)
        thresh = np.full(nq, nbits, dtype=np.int64)
        kept = np.zeros(nq, dtype=np.int64)  # ids held in buckets 0..thresh
        for j0 in range(0, n, DB_BLOCK):
            j1 = min(n, j0 + DB_BLOCK)
            for i in range(nq):
                t = thresh[i]
                for j in range(j0, j1):
                    d = np.int64(0)
                    for w in range(n_words):
                        d += np.int64(popcount(np.uint64(queries[q0 + i, w]) ^ np.uint64(codes[j, w])))
                    if d <= t:
                        t, kept[i] = _take(j, d, k, bucket[i], count[i], t, kept[i])
                thresh[i] = t
        for i in range(nq):
            _emit(bucket[i], count[i], thresh[i], k, out_dist[q0 + i], out_ids[q0 + i])


def _flat_search_two_pass(queries, codes, k, nbits, out_dist, out_ids):
    # For large k: a histogram of the distances, then a second scan writes each id at its rank.
    num_q = queries.shape[0]
    n = codes.shape[0]
    n_words = codes.shape[1]
    for i in numba.prange(num_q):
        hist = np.zeros(nbits + 1, dtype=np.int64)
        for j in range(n):
            d = np.int64(0)
            for w in range(n_words):
                d += np.int64(popcount(np.uint64(queries[i, w]) ^ np.uint64(codes[j, w])))
            hist[d] += 1
        # rank of the next id at distance d; distances beyond the k-th get no place
        pos = np.zeros(nbits + 2, dtype=np.int64)
        for d in range(nbits + 1):
            pos[d + 1] = pos[d] + hist[d]
        for j in range(n):
            d = np.int64(0)
            for w in range(n_words):
                d += np.int64(popcount(np.uint64(queries[i, w]) ^ np.uint64(codes[j, w])))
            p = pos[d]
            if p < k:
                out_dist[i, p] = d
                out_ids[i, p] = j
                pos[d] = p + 1


def _take(j, d, k, bucket, count, t, kept):
    # Put id j (at distance d <= t) in its bucket if the bucket has room; lower the threshold t
    # while the buckets below it already hold k ids. Returns the new (t, kept).
    c = count[d]
    if c < k:
        bucket[d, c] = j
        count[d] = c + 1
        kept += 1
        while kept - count[t] >= k:
            kept -= count[t]
            t -= 1
    return t, kept


def _emit(bucket, count, t, k, out_dist, out_ids):
    # The first k ids of buckets 0..t, in (distance, id) order.
    filled = 0
    for d in range(t + 1):
        for c in range(count[d]):
            if filled == k:
                return
            out_dist[filled] = d
            out_ids[filled] = bucket[d, c]
            filled += 1


def _flat_search_1word(queries, codes, k, nbits, out_dist, out_ids):
    # Codes of one uint64 word (up to 64 bits): one query per pass, everything in registers.
    num_q = queries.shape[0]
    n = codes.shape[0]
    for i in numba.prange(num_q):
        bucket = np.empty((nbits + 1, k), dtype=np.int64)
        count = np.zeros(nbits + 1, dtype=np.int64)
        t = np.int64(nbits)
        kept = np.int64(0)
        q = queries[i, 0]
        for j in range(n):
            d = _ctpop(q ^ codes[j, 0])
            if d <= np.uint64(t):
                t, kept = _take(j, np.int64(d), k, bucket, count, t, kept)
        _emit(bucket, count, t, k, out_dist[i], out_ids[i])


def _flat_search_2words(queries, codes, k, nbits, out_dist, out_ids):
    # Codes of two uint64 words (65 to 128 bits): two queries per pass share each code load.
    num_q = queries.shape[0]
    n = codes.shape[0]
    for p in numba.prange((num_q + 1) // 2):
        i0 = 2 * p
        i1 = min(num_q - 1, i0 + 1)  # an odd last query is searched twice, written once
        bucket0 = np.empty((nbits + 1, k), dtype=np.int64)
        bucket1 = np.empty((nbits + 1, k), dtype=np.int64)
        count0 = np.zeros(nbits + 1, dtype=np.int64)
        count1 = np.zeros(nbits + 1, dtype=np.int64)
        t0 = np.int64(nbits)
        t1 = np.int64(nbits)
        kept0 = np.int64(0)
        kept1 = np.int64(0)
        a0, b0 = queries[i0, 0], queries[i0, 1]
        a1, b1 = queries[i1, 0], queries[i1, 1]
        for j in range(n):
            x = codes[j, 0]
            y = codes[j, 1]
            d0 = _ctpop(a0 ^ x) + _ctpop(b0 ^ y)
            d1 = _ctpop(a1 ^ x) + _ctpop(b1 ^ y)
            if d0 <= np.uint64(t0):
                t0, kept0 = _take(j, np.int64(d0), k, bucket0, count0, t0, kept0)
            if d1 <= np.uint64(t1):
                t1, kept1 = _take(j, np.int64(d1), k, bucket1, count1, t1, kept1)
        _emit(bucket0, count0, t0, k, out_dist[i0], out_ids[i0])
        if i1 != i0:
            _emit(bucket1, count1, t1, k, out_dist[i1], out_ids[i1])


def _substring_values(codes_u8, start, length, out):
    # Substring bits [start, start + length) of every code (little-endian bit order), as integers.
    n, nbytes = codes_u8.shape
    b0 = start >> 3
    shift = start & 7
    nb = min(nbytes - b0, (shift + length + 7) >> 3)
    mask = (np.uint64(1) << np.uint64(length)) - np.uint64(1)
    for j in numba.prange(n):
        v = np.uint64(0)
        for t in range(nb):
            v |= np.uint64(codes_u8[j, b0 + t]) << np.uint64(8 * t)
        out[j] = (v >> np.uint64(shift)) & mask


def _counting_sort(values, num_buckets, offsets, ids):
    # offsets[v]..offsets[v+1]: positions in ids of the codes with substring value v, ids ascending.
    offsets[:] = 0
    for j in range(values.shape[0]):
        offsets[values[j] + 1] += 1
    for v in range(num_buckets):
        offsets[v + 1] += offsets[v]
    fill = offsets[:-1].copy()
    for j in range(values.shape[0]):
        v = values[j]
        ids[fill[v]] = j
        fill[v] += 1


def _next_combination(x):
    # Gosper's hack: the next larger integer with the same number of set bits.
    low = x & -x
    ripple = x + low
    return (((ripple ^ x) >> 2) // low) | ripple


def _mih_query(q_words, q_subs, codes, lengths, masks, offsets, ids, k, nbits, max_len, out_dist, out_ids):
    # One query; returns the number of codes whose distance was computed.
    m = lengths.shape[0]
    n_words = codes.shape[1]
    count = np.zeros(nbits + 1, dtype=np.int64)  # accepted candidates per distance
    cap = 4 * k + 64
    cand_d = np.empty(cap, dtype=np.int64)
    cand_id = np.empty(cap, dtype=np.int64)
    num_cand = 0
    thresh = nbits  # candidates farther than this cannot be among the first k
    below = 0  # candidates closer than the threshold
    probed = 0
    done = False
    for r in range(max_len + 1):
        for t in range(m):
            if r <= lengths[t]:
                base = q_subs[t]
                # every substring value at exactly r bits from the query's
                mask = np.int64((1 << r) - 1)
                limit = np.int64(1) << np.int64(lengths[t])
                while mask < limit:
                    v = base ^ mask
                    for p in range(offsets[t, v], offsets[t, v + 1]):
                        j = ids[t, p]
                        probed += 1
                        d = np.int64(0)
                        for w in range(n_words):
                            d += np.int64(popcount(np.uint64(q_words[w]) ^ np.uint64(codes[j, w])))
                        if d > thresh:
                            continue
                        # count j only at its first sighting: the least (substring distance, table)
                        first = True
                        for u in range(m):
                            if u != t:
                                du = np.int64(0)
                                for w in range(n_words):
                                    mw = masks[u, w]
                                    if mw != 0:
                                        du += np.int64(popcount((np.uint64(q_words[w]) ^ np.uint64(codes[j, w])) & mw))
                                if du < r or (du == r and u < t):
                                    first = False
                                    break
                        if first:
                            if num_cand == cap:
                                # keep only candidates still within the threshold, then grow if needed
                                kept = 0
                                for c in range(num_cand):
                                    if cand_d[c] <= thresh:
                                        cand_d[kept] = cand_d[c]
                                        cand_id[kept] = cand_id[c]
                                        kept += 1
                                num_cand = kept
                                if num_cand * 2 > cap:
                                    cap *= 2
                                    grown_d = np.empty(cap, dtype=np.int64)
                                    grown_id = np.empty(cap, dtype=np.int64)
                                    grown_d[:num_cand] = cand_d[:num_cand]
                                    grown_id[:num_cand] = cand_id[:num_cand]
                                    cand_d = grown_d
                                    cand_id = grown_id
                            cand_d[num_cand] = d
                            cand_id[num_cand] = j
                            num_cand += 1
                            count[d] += 1
                            if d < thresh:
                                below += 1
                            # lower the threshold while the candidates below it number k
                            while thresh > 0 and below >= k:
                                thresh -= 1
                                below -= count[thresh]
                    if r == 0:
                        break
                    mask = _next_combination(mask)
            # after table t at radius r (tables after t at r - 1) every code within this radius was seen
            certified = m * r + t
            within = 0
            for e in range(min(certified, nbits) + 1):
                within += count[e]
            if within >= k:
                done = True
                break
        if done:
            break
    # the first k candidates by (distance, id); only those within the threshold can be
    n_db = np.int64(codes.shape[0])
    keys = np.empty(num_cand, dtype=np.int64)
    nk = 0
    for c in range(num_cand):
        if cand_d[c] <= thresh:
            keys[nk] = cand_d[c] * n_db + cand_id[c]
            nk += 1
    order = np.sort(keys[:nk])
    for c in range(k):
        out_dist[c] = order[c] // n_db
        out_ids[c] = order[c] % n_db
    return probed


def _mih_search(queries, codes, q_subs, lengths, masks, offsets, ids, k, nbits, out_dist, out_ids, out_probed):
    max_len = 0
    for t in range(lengths.shape[0]):
        max_len = max(max_len, lengths[t])
    for qi in numba.prange(queries.shape[0]):
        out_probed[qi] = _mih_query(
            queries[qi], q_subs[qi], codes, lengths, masks, offsets, ids, k, nbits, max_len, out_dist[qi], out_ids[qi]
        )


if numba is not None:
    from numba import types as _types
    from numba.extending import intrinsic as _intrinsic

    @_intrinsic
    def _ctpop(typingctx, x):
        # LLVM's population count of a uint64: one instruction where the CPU has one.
        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])

        return _types.uint64(_types.uint64), codegen

    _take = numba.njit(inline="always", cache=True)(_take)
    _emit = numba.njit(inline="always", cache=True)(_emit)
    _flat_search_1word = numba.njit(parallel=True, cache=True, nogil=True)(_flat_search_1word)
    _flat_search_2words = numba.njit(parallel=True, cache=True, nogil=True)(_flat_search_2words)
    _next_combination = numba.njit(cache=True)(_next_combination)
    _flat_search = numba.njit(parallel=True, cache=True, nogil=True)(_flat_search)
    _flat_search_two_pass = numba.njit(parallel=True, cache=True, nogil=True)(_flat_search_two_pass)
    _substring_values = numba.njit(parallel=True, cache=True, nogil=True)(_substring_values)
    _counting_sort = numba.njit(cache=True, nogil=True)(_counting_sort)
    _mih_query = numba.njit(cache=True, nogil=True)(_mih_query)
    _mih_search = numba.njit(parallel=True, cache=True, nogil=True)(_mih_search)


def _require_numba() -> None:
    if numba is None:
        raise RuntimeError("the binary index needs numba (pip install numba)")


def flat_search(queries: np.ndarray, codes: np.ndarray, k: int, nbits: int):
    """Exact k-NN by a linear scan.

    Args:
        queries: query codes as unsigned words [Q, W] (any unsigned width, the codes' width).
        codes: database codes as unsigned words [N, W].
        k: neighbours per query, 1 <= k <= N.
        nbits: bits per code (the distance range is 0..nbits).
    Returns:
        (distances int32 [Q, k], ids int64 [Q, k]) in the order (distance, id).
    """
    _require_numba()
    dist = np.empty((queries.shape[0], k), dtype=np.int64)
    ids = np.empty((queries.shape[0], k), dtype=np.int64)
    if codes.dtype == np.uint64 and codes.shape[1] in (1, 2) and 2 * (nbits + 1) * k * 8 <= BUCKET_BYTES:
        # 64 and 128 bits: one pass per query (or pair of queries) with no inner word loop
        kernel = _flat_search_1word if codes.shape[1] == 1 else _flat_search_2words
        kernel(queries, codes, k, nbits, dist, ids)
    elif QUERY_BLOCK * (nbits + 1) * k * 8 <= BUCKET_BYTES:
        _flat_search(queries, codes, k, nbits, dist, ids)
    else:
        # per-distance buckets of k ids would be large: two scans with O(nbits) memory instead
        _flat_search_two_pass(queries, codes, k, nbits, dist, ids)
    return dist.astype(np.int32), ids


def substring_layout(nbits: int, m: int):
    """Start bit and length of each of the m substrings (lengths differ by at most one bit)."""
    lengths = np.full(m, nbits // m, dtype=np.int64)
    lengths[: nbits % m] += 1
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return starts, lengths


def substring_masks(starts: np.ndarray, lengths: np.ndarray, word_bits: int, n_words: int) -> np.ndarray:
    """Per substring, its bits as masks over the code words: uint64 [m, W]."""
    masks = np.zeros((len(starts), n_words), dtype=np.uint64)
    for t, (s, length) in enumerate(zip(starts.tolist(), lengths.tolist())):
        for bit in range(s, s + length):
            masks[t, bit // word_bits] |= np.uint64(1) << np.uint64(bit % word_bits)
    return masks


def substrings(codes_u8: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Substring values of packed codes: int64 [N, m]."""
    _require_numba()
    out = np.empty((codes_u8.shape[0], len(starts)), dtype=np.int64)
    column = np.empty(codes_u8.shape[0], dtype=np.uint64)
    for t, (s, length) in enumerate(zip(starts.tolist(), lengths.tolist())):
        _substring_values(codes_u8, s, length, column)
        out[:, t] = column
    return out


def build_tables(codes_u8: np.ndarray, starts: np.ndarray, lengths: np.ndarray):
    """The m substring tables in CSR form.

    Returns:
        offsets int64 [m, 2^max_len + 1] and ids [m, N] (int32 when N < 2^31, else int64): the ids
        with value v in table t are ``ids[t, offsets[t, v]:offsets[t, v + 1]]``, ascending.
    """
    _require_numba()
    n = codes_u8.shape[0]
    m = len(starts)
    num_buckets = 1 << int(lengths.max())
    offsets = np.zeros((m, num_buckets + 1), dtype=np.int64)
    ids = np.empty((m, n), dtype=np.int32 if n < 2**31 else np.int64)
    column = np.empty(n, dtype=np.uint64)
    for t, (s, length) in enumerate(zip(starts.tolist(), lengths.tolist())):
        _substring_values(codes_u8, s, length, column)
        _counting_sort(column.astype(np.int64), 1 << length, offsets[t, : (1 << length) + 1], ids[t])
        offsets[t, (1 << length) + 1 :] = offsets[t, 1 << length]
    return offsets, ids


def mih_search(
    queries: np.ndarray,
    codes: np.ndarray,
    query_subs: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    masks: np.ndarray,
    offsets: np.ndarray,
    ids: np.ndarray,
    k: int,
    nbits: int,
):
    """Exact k-NN by multi-index hashing (same result as ``flat_search``).

    Returns:
        (distances int32 [Q, k], ids int64 [Q, k], candidates verified per query int64 [Q]).
    """
    _require_numba()
    num_q = queries.shape[0]
    dist = np.empty((num_q, k), dtype=np.int64)
    out_ids = np.empty((num_q, k), dtype=np.int64)
    probed = np.empty(num_q, dtype=np.int64)
    _mih_search(queries, codes, query_subs, lengths, masks, offsets, ids, k, nbits, dist, out_ids, probed)
    return dist.astype(np.int32), out_ids, probed
