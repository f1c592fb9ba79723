"""Benchmark of the Hamming-ranking retrieval metrics against a reference-style evaluator and faiss.

Part A: mAP@all of Q queries against N database codes at several code lengths, timed for the
reference-style evaluator (one numpy argsort per query in a Python loop) and for
dinov2.eval.hashing, with both values and their difference.
Part B: mAP@k and top-k search over a large database, with time and peak memory, beside faiss
IndexBinaryFlat (distances compared; faiss may order ties differently).

Codes are drawn around noisy class prototypes so that mAP is far from chance.

    python scripts/bench_retrieval.py            # full sizes
    python scripts/bench_retrieval.py --quick    # small sizes
"""

import argparse
import os
import resource
import sys
import time
from typing import Callable, List, Tuple

import numpy as np
import torch

from dinov2.eval.hashing import hamming_topk, mean_average_precision


def make_codes(
    rng: np.random.Generator, num: int, bits: int, prototypes: np.ndarray, flip: float
) -> Tuple[np.ndarray, np.ndarray]:
    """Codes [num, bits] in {-1,+1} (int8) near the prototype of a random class, and the classes [num]."""
    labels = rng.integers(0, prototypes.shape[0], num)
    codes = prototypes[labels].copy()
    codes[rng.random((num, bits)) < flip] *= -1
    return codes, labels


def reference_map(query_codes, db_codes, query_onehot, db_onehot, topk=None) -> float:
    """The usual reference evaluator: per query, float Hamming distances, a stable argsort of the
    whole database, and AP from the positions of the relevant items."""
    num_bits = query_codes.shape[1]
    total = 0.0
    for i in range(query_codes.shape[0]):
        relevant = (np.dot(query_onehot[i], db_onehot.T) > 0).astype(np.float32)
        hamming = 0.5 * (num_bits - np.dot(query_codes[i], db_codes.T))
        ranked = relevant[np.argsort(hamming, kind="stable")][:topk]
        count = int(ranked.sum())
        if count == 0:
            continue
        positions = np.flatnonzero(ranked) + 1.0
        total += np.mean(np.linspace(1, count, count) / positions)
    return total / query_codes.shape[0]


def best_time(repeats: int, fn: Callable, *args, **kwargs):
    """Smallest wall time of ``repeats`` calls ``fn(*args, **kwargs)`` (the machine may be shared)
    and the last result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times), result


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / (1024 * 1024)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def print_table(title: str, header: List[str], rows: List[List[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))


def part_a(args, rng: np.random.Generator) -> None:
    rows = []
    threads = torch.get_num_threads()
    # (device, torch threads) settings; the CPU also runs single-threaded, which shows the work
    # done per core on a machine that others share
    settings = [(device, threads) for device in args.devices] + ([("cpu", 1)] if threads > 1 else [])
    for bits in args.bits:
        prototypes = np.where(rng.random((args.classes, bits)) < 0.5, -1, 1).astype(np.int8)
        q, ql = make_codes(rng, args.queries, bits, prototypes, args.flip)
        d, dl = make_codes(rng, args.database, bits, prototypes, args.flip)
        eye = np.eye(args.classes, dtype=np.float32)
        reference_args = (q.astype(np.float32), d.astype(np.float32), eye[ql], eye[dl])
        ours_args = {device: [torch.from_numpy(a).to(device) for a in (q, d, ql, dl)] for device in dict(settings)}
        for device_args in ours_args.values():
            mean_average_precision(*device_args)  # warm-up (threads, kernels)
        # alternate the evaluators so that both see the same load; keep each one's best time
        t_ref, t_ours, v_ours = float("inf"), {setting: float("inf") for setting in settings}, {}
        for _ in range(args.repeats):
            elapsed, v_ref = best_time(1, reference_map, *reference_args)
            t_ref = min(t_ref, elapsed)
            for device, num_threads in settings:
                torch.set_num_threads(num_threads)
                elapsed, v_ours[device] = best_time(1, mean_average_precision, *ours_args[device])
                t_ours[(device, num_threads)] = min(t_ours[(device, num_threads)], elapsed)
                torch.set_num_threads(threads)
        for (device, num_threads), elapsed in t_ours.items():
            rows.append(
                [
                    str(bits),
                    device,
                    str(num_threads),
                    f"{t_ref:.3f}",
                    f"{elapsed:.4f}",
                    f"{t_ref / elapsed:.1f}x",
                    f"{v_ref:.12f}",
                    f"{v_ours[device]:.12f}",
                    f"{abs(v_ref - v_ours[device]):.1e}",
                ]
            )
    print_table(
        f"Part A: mAP@all, {args.queries} queries x {args.database} database codes, {args.classes} classes, "
        f"best of {args.repeats} (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)",
        ["bits", "device", "threads", "reference s", "ours s", "speed-up", "reference mAP", "ours mAP", "|diff|"],
        rows,
    )


def part_b(args, rng: np.random.Generator) -> None:
    bits = args.scale_bits
    prototypes = np.where(rng.random((args.classes, bits)) < 0.5, -1, 1).astype(np.int8)
    q, ql = make_codes(rng, args.scale_queries, bits, prototypes, args.flip)
    d, dl = make_codes(rng, args.scale_database, bits, prototypes, args.flip)
    rows = []
    ours_dist = None
    for device in args.devices:
        tq, td = torch.from_numpy(q).to(device), torch.from_numpy(d).to(device)
        tql, tdl = torch.from_numpy(ql).to(device), torch.from_numpy(dl).to(device)
        t_map, v_map = best_time(1, mean_average_precision, tq, td, tql, tdl, topk=args.map_k)
        rows.append([f"mAP@{args.map_k}", device, f"{t_map:.2f}", f"{peak_rss_mb():.0f}", f"{v_map:.6f}"])
        t_top, (dist, _) = best_time(1, hamming_topk, tq, td, args.search_k)
        rows.append([f"top-{args.search_k} search", device, f"{t_top:.2f}", f"{peak_rss_mb():.0f}", "-"])
        ours_dist = dist if ours_dist is None else ours_dist
    try:
        import faiss
    except ImportError:
        rows.append([f"faiss top-{args.search_k}", "cpu", "-", "-", "faiss not installed"])
    else:
        index = faiss.IndexBinaryFlat(bits)
        index.add(np.packbits(d > 0, axis=1))
        packed_q = np.packbits(q > 0, axis=1)
        t_faiss, (f_dist, _) = best_time(1, index.search, packed_q, args.search_k)
        agree = "distances equal" if np.array_equal(f_dist, ours_dist) else "DISTANCES DIFFER"
        rows.append([f"faiss top-{args.search_k}", "cpu", f"{t_faiss:.2f}", f"{peak_rss_mb():.0f}", agree])
    print_table(
        f"Part B: {args.scale_queries} queries x {args.scale_database} database codes, {bits} bits "
        f"(peak RSS of the whole process so far)",
        ["task", "device", "seconds", "peak RSS MB", "value / check"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes for a fast check")
    parser.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--database", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--flip", type=float, default=0.25, help="probability of flipping a prototype bit")
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing (best is reported)")
    parser.add_argument("--scale-queries", type=int, default=10_000)
    parser.add_argument("--scale-database", type=int, default=1_000_000)
    parser.add_argument("--scale-bits", type=int, default=64)
    parser.add_argument("--map-k", type=int, default=1000)
    parser.add_argument("--search-k", type=int, default=100)
    parser.add_argument("--skip-scale", action="store_true", help="run part A only")
    parser.add_argument(
        "--device",
        dest="devices",
        nargs="+",
        default=None,
        help="devices to run on (default: cpu, and cuda if present)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.devices is None:
        args.devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.quick:
        args.queries, args.database = 1000, 1000
        args.scale_queries, args.scale_database = 500, 100_000
        args.repeats = 1
    rng = np.random.default_rng(args.seed)
    part_a(args, rng)
    if not args.skip_scale:
        part_b(args, rng)


if __name__ == "__main__":
    main()
