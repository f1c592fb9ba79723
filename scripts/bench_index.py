"""Benchmark of BinaryIndex (flat scan and multi-index hashing) beside faiss binary indexes.

For every size, code length and data kind: build time, queries per second, memory and recall@k
against the exact answer, for

- BinaryIndex flat and BinaryIndex mih (dinov2.search.index; exact, ties by id),
- faiss IndexBinaryFlat (exact distances; may order ties differently),
- faiss IndexBinaryMultiHash (approximate: probes buckets within ``nflip`` bits in each table).

The exact answer is BinaryIndex flat; a verification step first checks it against a stable
brute force (numpy, every distance and a stable argsort) and against faiss distances.

Data: ``random`` codes are uniform bits (the hardest case for hashing-based search); ``clustered``
codes are 1000 random centres with each bit flipped with probability 1/16, queries drawn the same
way (not in the database), as codes of a trained hashing network group by scene.

Memory (MiB): what BinaryIndex reports holding (codes and, for mih, the tables), the codes of
IndexBinaryFlat, and the serialised size of IndexBinaryMultiHash (codes and hash maps). Build
time includes the multi-index tables. Search times are the best of ``--repeats`` runs on a
machine that may be shared.

    python scripts/bench_index.py                                 # 100k, 1M, 10M; 64 and 128 bits
    python scripts/bench_index.py --sizes 100000,1000000 --bits 64
"""

import argparse
import os
import platform
import time
from typing import Callable, Dict, List, Tuple

import numpy as np

from dinov2.search.index import BinaryIndex, default_mih_tables

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def make_codes(rng: np.random.Generator, n: int, nbits: int, kind: str, centers: np.ndarray) -> np.ndarray:
    """Packed codes uint8 [n, nbits/8], generated in chunks (10M codes never need a float matrix)."""
    out = np.empty((n, nbits // 8), dtype=np.uint8)
    for start in range(0, n, 1 << 20):
        stop = min(n, start + (1 << 20))
        shape = (stop - start, nbits // 8)
        if kind == "random":
            out[start:stop] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            # each bit set with probability 1/16: the AND of four uniform bytes
            noise = rng.integers(0, 256, shape, dtype=np.uint8)
            for _ in range(3):
                noise &= rng.integers(0, 256, shape, dtype=np.uint8)
            out[start:stop] = centers[rng.integers(0, len(centers), stop - start)] ^ noise
    return out


def stable_brute_force(queries: np.ndarray, codes: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Every distance (byte popcount table) and a stable argsort per query: the reference order."""
    dist_out = np.empty((len(queries), k), dtype=np.int32)
    ids_out = np.empty((len(queries), k), dtype=np.int64)
    for i, q in enumerate(queries):
        dist = _POPCOUNT8[np.bitwise_xor(codes, q)].sum(axis=1, dtype=np.int32)
        order = np.argsort(dist, kind="stable")[:k]
        dist_out[i], ids_out[i] = dist[order], order
    return dist_out, ids_out


def best_time(repeats: int, fn: Callable):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def recall(ids: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of the fraction of the exact k ids returned (-1 = no result)."""
    hits = [len(np.intersect1d(a[a >= 0], b)) for a, b in zip(ids, exact)]
    return float(np.mean(hits)) / exact.shape[1]


def run_methods(codes, queries, nbits, k, repeats, faiss, mih_tables) -> List[Dict]:
    rows = []

    def record(name, build, search, memory_held, note=""):
        start = time.perf_counter()
        index = build()
        build_s = time.perf_counter() - start
        search_s, (dist, ids) = best_time(repeats, lambda: search(index))
        rows.append(
            {
                "method": name,
                "build_s": build_s,
                "qps": len(queries) / search_s,
                "memory_mib": memory_held(index) / 2**20,
                "dist": dist,
                "ids": ids,
                "note": note,
            }
        )

    def ours(mode):
        def build():
            index = BinaryIndex(nbits, mode, mih_tables=mih_tables if mode == "mih" else None)
            index.add(codes)
            index.build()
            return index

        return build

    # compile the kernels outside the timings
    warm = BinaryIndex(nbits, "mih")
    warm.add(codes[:1000])
    warm.search(queries[:2], 5)
    BinaryIndex(nbits, "flat").add(codes[:10])

    record("BinaryIndex flat", ours("flat"), lambda ix: ix.search(queries, k), lambda ix: ix.memory_bytes())
    m = mih_tables or default_mih_tables(nbits, len(codes))
    record("BinaryIndex mih", ours("mih"), lambda ix: ix.search(queries, k), lambda ix: ix.memory_bytes(), f"m={m}")
    if faiss is not None:

        def faiss_flat():
            index = faiss.IndexBinaryFlat(nbits)
            index.add(codes)
            return index

        record(
            "faiss IndexBinaryFlat", faiss_flat, lambda ix: ix.search(queries, k), lambda ix: ix.ntotal * ix.code_size
        )
        nhash = m
        b = min(nbits // nhash, 24)

        def faiss_multihash():
            index = faiss.IndexBinaryMultiHash(nbits, nhash, b)
            index.nflip = 2
            index.add(codes)
            return index

        record(
            "faiss IndexBinaryMultiHash",
            faiss_multihash,
            lambda ix: ix.search(queries, k),
            lambda ix: len(faiss.serialize_index_binary(ix)),
            note=f"nhash={nhash} b={b} nflip=2",
        )
    exact_dist, exact_ids = rows[0]["dist"], rows[0]["ids"]
    for row in rows:
        row["recall"] = recall(row["ids"], exact_ids)
        row["exact_dist"] = bool(np.array_equal(row["dist"], exact_dist))
        row["exact_ids"] = bool(np.array_equal(row["ids"], exact_ids))
    return rows


def verify(rng, n: int, num_queries: int, k: int, faiss) -> List[str]:
    """BinaryIndex (both modes) against a stable brute force (ids) and faiss (distances), 64 bits."""
    lines = []
    centers = make_codes(rng, 1000, 64, "random", None)
    for kind in ("random", "clustered"):
        codes = make_codes(rng, n, 64, kind, centers)
        queries = make_codes(rng, num_queries, 64, kind, centers)
        ref_dist, ref_ids = stable_brute_force(queries, codes, k)
        faiss_dist = None
        if faiss is not None:
            flat = faiss.IndexBinaryFlat(64)
            flat.add(codes)
            faiss_dist, _ = flat.search(queries, k)
        for mode in ("flat", "mih"):
            index = BinaryIndex(64, mode)
            index.add(codes)
            dist, ids = index.search(queries, k)
            ok_ids = np.array_equal(ids, ref_ids) and np.array_equal(dist, ref_dist)
            ok_faiss = "n/a" if faiss_dist is None else str(bool(np.array_equal(dist, faiss_dist)))
            lines.append(f"| {kind} | {n:,} | {num_queries} | {k} | {mode} | {ok_ids} | {ok_faiss} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000,10000000", help="comma-separated database sizes")
    parser.add_argument("--bits", default="64,128", help="comma-separated code lengths")
    parser.add_argument("--kinds", default="random,clustered", help="random and/or clustered")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("-k", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2, help="searches per method (best time kept)")
    parser.add_argument("--mih-tables", type=int, default=None, help="tables of BinaryIndex mih (default by size)")
    parser.add_argument("--verify-size", type=int, default=200_000, help="database of the brute-force check (0: skip)")
    parser.add_argument("--threads", type=int, default=None, help="threads of numba and faiss (default: all)")
    parser.add_argument("--no-faiss", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        import faiss
    except ImportError:
        faiss = None
    if args.no_faiss:
        faiss = None
    import numba

    threads = args.threads or numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(threads)
    if faiss is not None:
        faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(args.seed)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), {threads} threads; "
        f"numpy {np.__version__}, numba {numba.__version__}, faiss {faiss.__version__ if faiss else 'absent'}"
    )
    print(f"{args.queries} queries, k={args.k}\n")

    if args.verify_size:
        print("| data | N | queries | k | mode | ids and distances = stable brute force | distances = faiss |")
        print("|---|---|---|---|---|---|---|")
        for line in verify(rng, args.verify_size, args.queries, args.k, faiss):
            print(line, flush=True)
        print()

    print("| data | bits | N | method | build s | QPS | memory MiB | recall@k | = exact (dist / ids) | notes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for nbits in [int(b) for b in args.bits.split(",")]:
        centers = make_codes(rng, 1000, nbits, "random", None)
        for kind in args.kinds.split(","):
            for n in [int(s) for s in args.sizes.split(",")]:
                codes = make_codes(rng, n, nbits, kind, centers)
                queries = make_codes(rng, args.queries, nbits, kind, centers)
                rows = run_methods(codes, queries, nbits, args.k, args.repeats, faiss, args.mih_tables)
                for r in rows:
                    print(
                        f"| {kind} | {nbits} | {n:,} | {r['method']} | {r['build_s']:.2f} | {r['qps']:,.0f} | "
                        f"{r['memory_mib']:.1f} | {r['recall']:.4f} | {r['exact_dist']} / {r['exact_ids']} | "
                        f"{r['note']} |",
                        flush=True,
                    )
                del codes
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
