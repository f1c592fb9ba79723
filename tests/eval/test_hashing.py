"""Hamming-ranking metrics against deliberately naive per-query implementations and hand-computed cases."""

import itertools
import math

import numpy as np
import pytest
import torch

from dinov2.eval import hashing
from dinov2.eval.hashing import (
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
from dinov2.eval.hashing import kernels as hashing_kernels

TOL = 1e-9


# ----------------------------------------------------------------------------------------------
# Naive reference: one query at a time, Python loops, numpy stable argsort.


def naive_distances(query: np.ndarray, db: np.ndarray) -> np.ndarray:
    """Hamming distances of one {-1,+1} query [K] to every database code [N, K], by counting bits."""
    return np.array([int(np.count_nonzero(query != code)) for code in db])


def naive_relevant(query_label, db_labels: np.ndarray) -> np.ndarray:
    if db_labels.ndim == 1:
        return db_labels == query_label
    return np.array([bool(np.any((row > 0) & (query_label > 0))) for row in db_labels])


def naive_ranked_relevance(query, db, query_label, db_labels) -> np.ndarray:
    order = np.argsort(naive_distances(query, db), kind="stable")
    return naive_relevant(query_label, db_labels)[order]


def naive_ap(ranked_relevance: np.ndarray, topk=None) -> float:
    hits, total = 0, 0.0
    for position, relevant in enumerate(ranked_relevance[:topk], start=1):
        if relevant:
            hits += 1
            total += hits / position
    return total / hits if hits else 0.0


def naive_map(q, db, ql, dl, topk=None) -> float:
    return float(np.mean([naive_ap(naive_ranked_relevance(q[i], db, ql[i], dl), topk) for i in range(len(q))]))


def naive_precision_at_k(q, db, ql, dl, k) -> float:
    return float(np.mean([naive_ranked_relevance(q[i], db, ql[i], dl)[:k].sum() / k for i in range(len(q))]))


def naive_precision_radius(q, db, ql, dl, radius) -> float:
    values = []
    for i in range(len(q)):
        inside = naive_distances(q[i], db) <= radius
        relevant = naive_relevant(ql[i], dl)
        values.append(relevant[inside].sum() / inside.sum() if inside.sum() else 0.0)
    return float(np.mean(values))


def naive_pr_curve(q, db, ql, dl):
    num_bits = q.shape[1]
    precision, recall = [], []
    for radius in range(num_bits + 1):
        p_values, r_values = [], []
        for i in range(len(q)):
            inside = naive_distances(q[i], db) <= radius
            relevant = naive_relevant(ql[i], dl)
            if inside.sum():
                p_values.append(relevant[inside].sum() / inside.sum())
            if relevant.sum():
                r_values.append(relevant[inside].sum() / relevant.sum())
        precision.append(np.mean(p_values) if p_values else 0.0)
        recall.append(np.mean(r_values) if r_values else 0.0)
    return np.array(precision), np.array(recall)


def brute_force_tie_aware_ap(query, db, query_label, db_labels, topk=None) -> float:
    """Mean AP over every ordering of the items inside each equal-distance group (tiny N only)."""
    dist = naive_distances(query, db)
    relevant = naive_relevant(query_label, db_labels)
    groups = [np.flatnonzero(dist == value) for value in sorted(set(dist.tolist()))]
    aps = [
        naive_ap(relevant[np.concatenate(orders)], topk)
        for orders in itertools.product(*(itertools.permutations(group) for group in groups))
    ]
    return float(np.mean(aps))


# ----------------------------------------------------------------------------------------------
# Data


def random_case(seed: int, num_queries: int, num_db: int, bits: int, classes: int, multi_hot: bool = False):
    """Codes in {-1,+1} (few bits: many ties) and labels; class ``classes`` of some queries has no
    database item, so those queries have nothing relevant."""
    rng = np.random.default_rng(seed)
    q = rng.choice([-1, 1], size=(num_queries, bits)).astype(np.int8)
    db = rng.choice([-1, 1], size=(num_db, bits)).astype(np.int8)
    if multi_hot:
        ql = (rng.random((num_queries, classes + 1)) < 0.3).astype(np.int64)
        dl = (rng.random((num_db, classes + 1)) < 0.3).astype(np.int64)
        dl[:, classes] = 0  # the last class is only on queries
        ql[:3] = 0
        ql[:3, classes] = 1  # queries 0-2 have nothing relevant
        return q, db, ql, dl
    ql = rng.integers(0, classes + 1, num_queries)
    dl = rng.integers(0, classes, num_db)
    ql[0] = classes  # at least one query with nothing relevant
    return q, db, ql, dl


CASES = [
    # (seed, Q, N, bits, classes, multi_hot)
    (0, 25, 160, 1, 3, False),
    (1, 25, 160, 3, 4, False),
    (2, 25, 200, 8, 5, False),
    (3, 25, 200, 16, 5, False),
    (4, 20, 150, 6, 4, True),
    (5, 20, 180, 16, 6, True),
    (6, 15, 120, 130, 5, False),  # several code words
    (7, 15, 120, 12, 70, True),  # several label words
]


# ----------------------------------------------------------------------------------------------
# Against the naive reference


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("topk", [None, 1, 7, 20, 100, "N", "N+5"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused-kernel", "sort"])
def test_map_matches_naive(case, topk, fused, monkeypatch):
    if fused and not hashing_kernels.available():
        pytest.skip("numba is not installed")
    monkeypatch.setattr(hashing.ranking, "_USE_FUSED_KERNEL", fused)
    q, db, ql, dl = random_case(*case)
    depth = {"N": len(db), "N+5": len(db) + 5}.get(topk, topk)
    expected = naive_map(q, db, ql, dl, depth)
    assert abs(mean_average_precision(q, db, ql, dl, topk=depth) - expected) < TOL


def test_map_search_path_with_small_database_blocks(monkeypatch):
    # mAP@k for k << N goes through the chunked top-k search; tiny blocks make it merge many times
    q, db, ql, dl = random_case(7, 30, 400, 5, 4)
    monkeypatch.setattr(hashing.distances, "_TOPK_DB_CHUNK", 23)
    monkeypatch.setattr(hashing.ranking, "_USE_FUSED_KERNEL", False)
    for topk in (1, 10, 50):
        assert abs(mean_average_precision(q, db, ql, dl, topk=topk) - naive_map(q, db, ql, dl, topk)) < TOL
        assert abs(precision_at_k(q, db, ql, dl, k=topk) - naive_precision_at_k(q, db, ql, dl, topk)) < TOL


@pytest.mark.parametrize("case", CASES)
def test_precision_at_k_matches_naive(case):
    q, db, ql, dl = random_case(*case)
    ks = [1, 5, 19, len(db)]
    got = precision_at_k(q, db, ql, dl, k=ks)
    assert isinstance(got, np.ndarray) and got.shape == (len(ks),)
    for value, k in zip(got, ks):
        assert abs(value - naive_precision_at_k(q, db, ql, dl, k)) < TOL
    single = precision_at_k(q, db, ql, dl, k=5)
    assert isinstance(single, float) and abs(single - naive_precision_at_k(q, db, ql, dl, 5)) < TOL


@pytest.mark.parametrize("case", CASES)
def test_radius_metrics_match_naive(case):
    q, db, ql, dl = random_case(*case)
    for radius in (0, 1, 2, q.shape[1] + 3):
        expected = naive_precision_radius(q, db, ql, dl, radius)
        assert abs(precision_within_radius(q, db, ql, dl, radius=radius) - expected) < TOL
    precision, recall = precision_recall_curve(q, db, ql, dl)
    naive_p, naive_r = naive_pr_curve(q, db, ql, dl)
    assert precision.shape == recall.shape == (q.shape[1] + 1,)
    np.testing.assert_allclose(precision, naive_p, atol=TOL, rtol=0)
    np.testing.assert_allclose(recall, naive_r, atol=TOL, rtol=0)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("topk", [None, 1, 2, 3, 5])
def test_tie_aware_map_matches_brute_force(seed, topk):
    rng = np.random.default_rng(100 + seed)
    bits, num_db = int(rng.integers(1, 4)), int(rng.integers(4, 8))
    multi_hot = seed % 2 == 1
    q, db, ql, dl = random_case(200 + seed, 6, num_db, bits, 2, multi_hot=multi_hot)
    expected = np.mean([brute_force_tie_aware_ap(q[i], db, ql[i], dl, topk) for i in range(len(q))])
    assert abs(tie_aware_mean_average_precision(q, db, ql, dl, topk=topk) - expected) < TOL


def test_tie_aware_map_monte_carlo():
    # a larger case than brute force allows: average AP over random orders inside ties
    q, db, ql, dl = random_case(11, 4, 60, 4, 3)
    rng = np.random.default_rng(0)
    for topk in (None, 10):
        samples = []
        for _ in range(1500):
            aps = []
            for i in range(len(q)):
                dist = naive_distances(q[i], db)
                order = np.lexsort((rng.random(len(db)), dist))  # by distance, random inside ties
                aps.append(naive_ap(naive_relevant(ql[i], dl)[order], topk))
            samples.append(np.mean(aps))
        exact = tie_aware_mean_average_precision(q, db, ql, dl, topk=topk)
        assert abs(exact - np.mean(samples)) < 5 * np.std(samples) / math.sqrt(len(samples)) + 1e-12


def test_torch_primitives_match(monkeypatch):
    # the primitives used off the CPU (torch.sort, torch.nonzero, matmul distances), run on the CPU
    q, db, ql, dl = random_case(3, 25, 200, 16, 5)
    expected = {
        "map": naive_map(q, db, ql, dl),
        "map7": naive_map(q, db, ql, dl, 7),
        "p5": naive_precision_at_k(q, db, ql, dl, 5),
        "r2": naive_precision_radius(q, db, ql, dl, 2),
    }
    tie_aware = tie_aware_mean_average_precision(q, db, ql, dl, topk=30)
    for module in (hashing.codes, hashing.ranking):
        monkeypatch.setattr(module, "_native", lambda x, name: torch.as_tensor(x))
    tq, tdb, tql, tdl = (torch.from_numpy(a) for a in (q, db, ql, dl))
    # the patch routes CPU tensors to the torch primitives
    ham = hashing.distances.Hamming(hashing.codes._code_bits(tq, "q"), hashing.codes._code_bits(tdb, "db"))
    assert isinstance(ham.ops, hashing.backends.TorchOps)
    assert abs(mean_average_precision(tq, tdb, tql, tdl) - expected["map"]) < TOL
    assert abs(mean_average_precision(tq, tdb, tql, tdl, topk=7) - expected["map7"]) < TOL
    assert abs(precision_at_k(tq, tdb, tql, tdl, k=5) - expected["p5"]) < TOL
    assert abs(precision_within_radius(tq, tdb, tql, tdl, radius=2) - expected["r2"]) < TOL
    assert abs(tie_aware_mean_average_precision(tq, tdb, tql, tdl, topk=30) - tie_aware) < TOL
    dist, index = hamming_topk(tq, tdb, 9, chunk_size=17)
    ref = np.stack([np.argsort(naive_distances(q[i], db), kind="stable")[:9] for i in range(len(q))])
    np.testing.assert_array_equal(index, ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    q, db, ql, dl = random_case(5, 20, 180, 16, 6, multi_hot=True)
    cuda = [torch.from_numpy(a).cuda() for a in (q, db, ql, dl)]
    assert abs(mean_average_precision(*cuda) - mean_average_precision(q, db, ql, dl)) < TOL
    assert (
        abs(tie_aware_mean_average_precision(*cuda, topk=9) - tie_aware_mean_average_precision(q, db, ql, dl, topk=9))
        < TOL
    )
    np.testing.assert_array_equal(hamming_topk(cuda[0], cuda[1], 5)[1], hamming_topk(q, db, 5)[1])


def test_torch_and_numpy_inputs_agree():
    q, db, ql, dl = random_case(2, 25, 200, 8, 5)
    tq, tdb = torch.from_numpy(q).float(), torch.from_numpy(db > 0)  # float {-1,+1} and bool {0,1} codes
    assert abs(mean_average_precision(tq, tdb, torch.from_numpy(ql), dl) - naive_map(q, db, ql, dl)) < TOL


# ----------------------------------------------------------------------------------------------
# Hand-computed case
#
# K = 2, query q = (+1, +1) with label 0. Database (index: code, label, distance to q):
#   0: (-1, -1), 0, d=2      1: (+1, +1), 1, d=0      2: (+1, -1), 0, d=1      3: (+1, +1), 0, d=0
# Ranking (ties by index): 1 (d0), 3 (d0), 2 (d1), 0 (d2) -> relevance 0, 1, 1, 1.
#   AP@all = (1/3)(1/2 + 2/3 + 3/4) = 23/36;  AP@2 = 1/2 (one relevant item in the top 2, at 2).
#   P@1 = 0, P@2 = 1/2, P@3 = 2/3.
#   Tie-aware: the d=0 group {1, 3} comes in two orders, 1,3 (AP 23/36) or 3,1 (rel 1,0,1,1:
#   AP = (1/3)(1 + 2/3 + 3/4) = 29/36), expected 13/18; at depth 1 the first item is relevant
#   with probability 1/2 (AP 1) or not (AP 0): 1/2.
#   Radius 0: {1, 3} -> precision 1/2, recall 1/3; radius 1: {1, 3, 2} -> 2/3, 2/3;
#   radius 2: all -> 3/4, 1.
# A second query (-1, +1) with label 2 has nothing relevant: AP 0, precision 0 at every radius.

HAND_Q = np.array([[1, 1], [-1, 1]])
HAND_DB = np.array([[-1, -1], [1, 1], [1, -1], [1, 1]])
HAND_QL = np.array([0, 2])
HAND_DL = np.array([0, 1, 0, 0])


def test_hand_computed_single_query():
    args = (HAND_Q[:1], HAND_DB, HAND_QL[:1], HAND_DL)
    assert abs(mean_average_precision(*args) - 23 / 36) < 1e-12
    assert abs(mean_average_precision(*args, topk=2) - 1 / 2) < 1e-12
    np.testing.assert_allclose(precision_at_k(*args, k=[1, 2, 3]), [0, 1 / 2, 2 / 3], atol=1e-12)
    assert abs(tie_aware_mean_average_precision(*args) - 13 / 18) < 1e-12
    assert abs(tie_aware_mean_average_precision(*args, topk=1) - 1 / 2) < 1e-12
    precision, recall = precision_recall_curve(*args)
    np.testing.assert_allclose(precision, [1 / 2, 2 / 3, 3 / 4], atol=1e-12)
    np.testing.assert_allclose(recall, [1 / 3, 2 / 3, 1], atol=1e-12)
    np.testing.assert_array_equal(hamming_distance(*args[:2]), [[2, 0, 1, 0]])
    dist, index = hamming_topk(*args[:2], 3)
    np.testing.assert_array_equal(dist, [[0, 0, 1]])
    np.testing.assert_array_equal(index, [[1, 3, 2]])


def test_hand_computed_query_without_relevant_items_counts_zero():
    assert abs(mean_average_precision(HAND_Q, HAND_DB, HAND_QL, HAND_DL) - (23 / 36) / 2) < 1e-12
    assert abs(tie_aware_mean_average_precision(HAND_Q, HAND_DB, HAND_QL, HAND_DL) - (13 / 18) / 2) < 1e-12
    # the second query has distances 1, 1, 2, 1: within radius 1 it retrieves 0, 1, 3, none relevant
    assert abs(precision_within_radius(HAND_Q, HAND_DB, HAND_QL, HAND_DL, radius=1) - (2 / 3) / 2) < 1e-12
    precision, recall = precision_recall_curve(HAND_Q, HAND_DB, HAND_QL, HAND_DL)
    # radius 0: only the first query retrieves anything; recall is over the first query only
    assert abs(precision[0] - 1 / 2) < 1e-12 and abs(recall[0] - 1 / 3) < 1e-12
    assert abs(precision[1] - (2 / 3 + 0) / 2) < 1e-12


def test_multi_hot_relevance_is_any_shared_label():
    q = np.array([[1, 1, 1]])
    db = np.array([[1, 1, 1], [1, 1, -1], [-1, -1, -1]])
    ql = np.array([[1, 0, 1]])
    dl = np.array([[0, 1, 0], [0, 0, 1], [1, 1, 1]])  # relevant: 1 and 2 (share class 2 / class 0)
    # ranking 0 (d0, not relevant), 1 (d1), 2 (d3): AP = (1/2)(1/2 + 2/3) = 7/12
    assert abs(mean_average_precision(q, db, ql, dl) - 7 / 12) < 1e-12


# ----------------------------------------------------------------------------------------------
# Codes


def test_binarize_maps_zero_to_plus_one():
    u = np.array([[-2.0, 0.0, -0.0, 3.5]])
    expected = np.array([[-1, 1, 1, 1]], dtype=np.int8)
    np.testing.assert_array_equal(binarize(u), expected)
    out = binarize(torch.from_numpy(u))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int8
    np.testing.assert_array_equal(out.numpy(), expected)
    assert binarize(np.zeros((1, 1)))[0, 0] == 1
    with pytest.raises(ValueError, match="NaN"):
        binarize(torch.tensor([[0.0, float("nan")]]))


def test_pack_unpack_round_trip_and_layout():
    rng = np.random.default_rng(0)
    codes = rng.choice([-1, 1], size=(13, 24)).astype(np.int8)
    packed = pack_codes(codes)
    assert packed.dtype == np.uint8 and packed.shape == (13, 3)
    np.testing.assert_array_equal(unpack_codes(packed), codes)
    np.testing.assert_array_equal(unpack_codes(packed, nbits=20), codes[:, :20])
    np.testing.assert_array_equal(pack_codes(torch.from_numpy(codes > 0)), packed)  # {0,1} codes too
    first_bit_only = -np.ones((1, 8), dtype=np.int8)
    first_bit_only[0, 0] = 1
    assert pack_codes(first_bit_only)[0, 0] == 1  # bit 0 is the lowest bit of byte 0


@pytest.mark.parametrize("bits", [3, 16, 64, 100, 130])
def test_hamming_distance_popcount_equals_matmul(bits):
    rng = np.random.default_rng(bits)
    q = rng.choice([-1, 1], size=(9, bits)).astype(np.int8)
    db = rng.choice([-1, 1], size=(31, bits)).astype(np.int8)
    by_matmul = (bits - q.astype(np.int64) @ db.T.astype(np.int64)) // 2
    got = hamming_distance(q, db)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, by_matmul)
    if bits % 8 == 0:
        xor = np.bitwise_xor(pack_codes(q)[:, None, :], pack_codes(db)[None, :, :])
        np.testing.assert_array_equal(got, np.unpackbits(xor, axis=2).sum(2))


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
def test_hamming_topk_is_the_stable_ranking(chunk_size):
    q, db, _, _ = random_case(9, 12, 300, 4, 3)
    dist, index = hamming_topk(q, db, 40, chunk_size=chunk_size)
    assert dist.shape == index.shape == (12, 40)
    for i in range(len(q)):
        naive = naive_distances(q[i], db)
        order = np.argsort(naive, kind="stable")[:40]
        np.testing.assert_array_equal(index[i], order)
        np.testing.assert_array_equal(dist[i], naive[order])


def test_hamming_topk_distances_match_faiss():
    faiss = pytest.importorskip("faiss")
    q, db, _, _ = random_case(10, 20, 500, 32, 3)
    index = faiss.IndexBinaryFlat(32)
    index.add(pack_codes(db))
    faiss_dist, _ = index.search(pack_codes(q), 25)
    np.testing.assert_array_equal(hamming_topk(q, db, 25)[0], faiss_dist)


# ----------------------------------------------------------------------------------------------
# Errors


def _valid():
    return random_case(0, 4, 10, 8, 2)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: (a[0][:, :6], *a[1:]), r"K=6 .*K=8"),
        (lambda a: (a[0] * 0.5, *a[1:]), r"query_codes must be binary.*found values \[-0.5, 0.5\]"),
        (lambda a: (a[0], np.where(a[1] > 0, 1, 0) - (a[1] > 0) * 3, *a[2:]), r"db_codes must be binary"),
        (lambda a: (a[0], a[1], a[2][:3], a[3]), r"query_labels has 3 labels but query_codes has 4 codes"),
        (lambda a: (a[0], a[1], a[2], a[3][:9]), r"db_labels has 9 labels but db_codes has 10 codes"),
        (lambda a: (a[0], a[1][:0], a[2], a[3][:0]), r"db_codes is empty"),
        (lambda a: (a[0][:0], a[1], a[2][:0], a[3]), r"query_codes is empty"),
        (lambda a: (a[0][0], *a[1:]), r"query_codes must be a 2-D array"),
        (lambda a: (a[0], a[1], a[2].astype(float), a[3]), r"class-index query_labels must be integers"),
        (lambda a: (a[0], a[1], np.eye(3)[a[2]], np.eye(2)[a[3]]), r"C=3, db_labels C=2"),
        (lambda a: (a[0], a[1], np.eye(3)[a[2]], a[3]), r"same kind"),
        (lambda a: (a[0], a[1], 2 * np.eye(3)[a[2]], np.eye(3)[a[3]]), r"0/1 values"),
    ],
)
def test_input_errors(change, message):
    args = change(_valid())
    with pytest.raises(ValueError, match=message):
        mean_average_precision(*args)


@pytest.mark.parametrize("topk", [0, -3, 2.5])
def test_topk_must_be_positive(topk):
    for fn in (mean_average_precision, tie_aware_mean_average_precision):
        with pytest.raises(ValueError, match="topk must be a positive integer"):
            fn(*_valid(), topk=topk)


def test_other_argument_errors():
    args = _valid()
    with pytest.raises(ValueError, match="k=11 exceeds the database size N=10"):
        precision_at_k(*args, k=[1, 11])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        precision_at_k(*args, k=0)
    with pytest.raises(ValueError, match="radius must be a non-negative integer"):
        precision_within_radius(*args, radius=-1)
    with pytest.raises(ValueError, match="k=11 exceeds"):
        hamming_topk(args[0], args[1], 11)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        hamming_topk(args[0], args[1], 3, chunk_size=0)
    with pytest.raises(ValueError, match="multiple of 8, got K=6"):
        pack_codes(args[0][:, :6])
    with pytest.raises(ValueError, match="nbits must be in"):
        unpack_codes(pack_codes(args[0]), nbits=9)
    with pytest.raises(ValueError, match=r"found values \[-1, 0, 1\]"):
        hamming_distance(np.array([[-1, 0, 1]]), np.array([[1, 1, 1]]))
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray"):
        hamming_distance([[1, -1]], np.array([[1, 1]]))


@pytest.mark.skipif(not hashing_kernels.available(), reason="numba is not installed")
def test_fused_kernel_leaves_torch_thread_count_alone():
    """numba's OpenMP layer would otherwise set the process's thread count, changing later training steps."""
    codes = np.sign(np.random.default_rng(0).standard_normal((12, 16)))
    labels = np.arange(12) % 3
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mean_average_precision(codes, codes, labels, labels)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
