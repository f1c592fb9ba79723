"""Peak memory and time of retrieval evaluation on a large database, against the naive full matrix.

Each measurement runs in its own subprocess, so its peak resident set size (``ru_maxrss``) is its
own. Rows:

- ``inputs only``: interpreter, numpy/torch and the random codes and labels; the floor under every row.
- ``mean_average_precision(topk)`` and ``hamming_topk(k)`` of ``dinov2.eval.hashing``, which work on
  query chunks against database blocks, so memory does not grow with queries x database.
- ``naive full matrix``: the [queries, database] distance matrix, a stable argsort of it and the
  relevance of the top k, the way the reference code evaluates. It is measured at a smaller database
  (default 100,000) and its extra memory extrapolated linearly to the full size.

    python scripts/bench_eval_memory.py [--queries 1000] [--database 1000000] [--bits 64] [--naive-database 100000]

Prints a Markdown table.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MB = 1024 * 1024


def _codes_and_labels(num_queries: int, num_db: int, bits: int, classes: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    # Codes as int8 {-1, +1}: 1 byte per bit, as the encoder's sign() output would be stored.
    q = (rng.integers(0, 2, (num_queries, bits), dtype=np.int8) * 2 - 1).astype(np.int8)
    d = (rng.integers(0, 2, (num_db, bits), dtype=np.int8) * 2 - 1).astype(np.int8)
    return q, d, rng.integers(0, classes, num_queries), rng.integers(0, classes, num_db)


def _naive_map(q, d, q_labels, d_labels, topk: int) -> float:
    """Reference-style mAP@topk: the full distance matrix, a full stable argsort, then the top k."""
    import numpy as np

    bits = q.shape[1]
    dist = 0.5 * (bits - q.astype(np.float32) @ d.astype(np.float32).T)  # [Q, N] float32
    order = np.argsort(dist, axis=1, kind="stable")[:, :topk]  # argsort holds a [Q, N] int64 array
    relevant = d_labels[order] == q_labels[:, None]  # [Q, topk]
    hits = np.cumsum(relevant, axis=1)
    positions = np.arange(1, topk + 1)
    counts = relevant.sum(1)
    ap = np.where(counts > 0, (hits / positions * relevant).sum(1) / np.maximum(counts, 1), 0.0)
    return float(ap.mean())


def measure(name: str, num_queries: int, num_db: int, bits: int, k: int, topk: int, classes: int) -> dict:
    """One measurement in this process; returns seconds, peak RSS and the result."""
    import numpy as np  # noqa: F401  (imported before the clock starts, like torch below)
    import torch  # noqa: F401

    from dinov2.eval.hashing import hamming_topk, mean_average_precision

    q, d, ql, dl = _codes_and_labels(num_queries, num_db, bits, classes)
    start = time.perf_counter()
    if name == "inputs":
        result = None
    elif name == "map":
        result = mean_average_precision(q, d, ql, dl, topk=topk)
    elif name == "topk":
        dist, idx = hamming_topk(q, d, k)
        result = int(dist[:, -1].max())
    elif name == "naive":
        result = _naive_map(q, d, ql, dl, topk)
    else:
        raise ValueError(f"unknown measurement '{name}'")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # ru_maxrss is in KiB on Linux
    return {"seconds": seconds, "peak_bytes": peak, "result": result}


def _run_child(name: str, args, num_db: int) -> dict:
    command = [
        sys.executable, os.path.abspath(__file__), "--measure", name, "--queries", str(args.queries),
        "--database", str(num_db), "--bits", str(args.bits), "--k", str(args.k), "--topk", str(args.topk),
        "--classes", str(args.classes),
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--database", type=int, default=1_000_000)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--k", type=int, default=100, help="neighbours of hamming_topk")
    parser.add_argument("--topk", type=int, default=1000, help="depth of mAP@topk")
    parser.add_argument("--classes", type=int, default=30)
    parser.add_argument("--naive-database", type=int, default=100_000, help="database size of the naive baseline")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure:
        print(json.dumps(measure(args.measure, args.queries, args.database, args.bits, args.k, args.topk, args.classes)))
        return

    rows = []
    floor = {}
    for name, label, num_db in (
        ("inputs", "inputs only (floor)", args.database),
        ("map", f"mean_average_precision@{args.topk}", args.database),
        ("topk", f"hamming_topk(k={args.k})", args.database),
        ("inputs", "inputs only (floor)", args.naive_database),
        ("naive", f"naive full matrix mAP@{args.topk}", args.naive_database),
    ):
        m = _run_child(name, args, num_db)
        if name == "inputs":
            floor[num_db] = m["peak_bytes"]
        extra = m["peak_bytes"] - floor[num_db]
        rows.append((label, num_db, m["seconds"], m["peak_bytes"], extra, m["result"]))

    # The naive method's extra memory is proportional to queries x database: scale it to the full size.
    naive_extra = rows[-1][4] * args.database / args.naive_database
    print(f"{args.queries} queries, {args.bits}-bit codes, {args.classes} classes; peak RSS per subprocess\n")
    print("| method | database | time (s) | peak RSS (MiB) | above inputs (MiB) | result |")
    print("|---|---:|---:|---:|---:|---|")
    for label, num_db, seconds, peak, extra, result in rows:
        shown = f"{result:.4f}" if isinstance(result, float) else ("" if result is None else str(result))
        print(f"| {label} | {num_db:,} | {seconds:.2f} | {peak / MB:.0f} | {extra / MB:.0f} | {shown} |")
    print(
        f"| naive full matrix mAP@{args.topk}, extrapolated | {args.database:,} | "
        f"~{rows[-1][2] * args.database / args.naive_database:.0f} | "
        f"~{(floor[args.database] + naive_extra) / MB:.0f} | ~{naive_extra / MB:.0f} | |"
    )


if __name__ == "__main__":
    main()
