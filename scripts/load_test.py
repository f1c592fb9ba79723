"""Load test of the archive search service: concurrent searches on loopback, every answer checked.

The service runs in this process on 127.0.0.1 (a free port; nothing else is ever contacted) over an
index directory built by ``python -m dinov2.search build``. The queries are indexed images, read back
from the index (files or parquet rows). Before the load, each query is encoded once here and its exact
answer computed by brute force: Hamming distance to every indexed code, stable order (ties by id).
Each concurrency level then sends ``--requests`` searches (or stops at ``--time-limit`` seconds)
from that many client threads with keep-alive connections, and every answer is compared with the
exact one: same ids, same distances.

Printed: one row per concurrency level (requests, wrong answers, errors, QPS, p50 and p99 latency in
ms) and the process's resident memory before the server started, after the load, and its peak. The
exit status is 1 when any answer was wrong or failed.

    python scripts/load_test.py --index indexes/demo --weights outputs/demo/eval/best/teacher_checkpoint.pth \\
        --concurrency 1,4,8 --requests 400
"""

import argparse
import http.client
import io
import json
import os
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from dinov2.search.archive import ArchiveSearcher
from dinov2.search.service import make_server

HOST = "127.0.0.1"  # loopback only, by construction
MAX_REQUESTS = 10000
MAX_CONCURRENCY = 64
MAX_TIME_S = 600.0


def memory_mib() -> Dict[str, float]:
    """Resident memory of this process now and at its peak, MiB (``/proc/self/status``, else getrusage)."""
    values = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    return {"rss": values.get("VmRSS", float("nan")), "peak": values.get("VmHWM", peak)}


def exact_answers(searcher: ArchiveSearcher, queries: Dict[int, bytes], k: int) -> Dict[int, Tuple[List[int], List[int]]]:
    """(ids, distances) of the k nearest indexed codes of each query's own code: every distance, stable sort."""
    bits = np.unpackbits(np.asarray(searcher.index.codes), axis=1)  # [N, nbits]
    answers = {}
    for image_id, data in queries.items():
        code = np.unpackbits(searcher.encode(Image.open(io.BytesIO(data)).convert("RGB")), axis=1)  # [1, nbits]
        distances = (bits != code).sum(1)
        order = np.argsort(distances, kind="stable")[: min(k, searcher.count)]
        answers[image_id] = (order.tolist(), distances[order].tolist())
    return answers


class Client:
    """One keep-alive connection per thread; reconnects after an error."""

    def __init__(self, port: int):
        self.port = port
        self.local = threading.local()

    def post(self, target: str, body: bytes) -> Tuple[int, bytes]:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(HOST, self.port, timeout=120)
        try:
            conn.request("POST", target, body=body, headers={"Content-Type": "application/octet-stream"})
            response = conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            self.local.conn = None
            raise


def run_level(client: Client, queries, answers, k: int, concurrency: int, requests: int, time_limit: float) -> Dict:
    """Send up to ``requests`` searches from ``concurrency`` threads; latencies, wrong answers and errors."""
    ids = list(queries)
    deadline = time.monotonic() + time_limit
    latencies: List[float] = []
    counts = {"wrong": 0, "errors": 0}
    lock = threading.Lock()

    def one(n: int) -> None:
        if time.monotonic() > deadline:
            return
        image_id = ids[n % len(ids)]
        start = time.perf_counter()
        try:
            status, body = client.post(f"/api/search?k={k}", queries[image_id])
            ok = status == 200
            answer = json.loads(body) if ok else None
        except (OSError, ValueError, http.client.HTTPException):
            ok, answer = False, None
        elapsed = time.perf_counter() - start
        with lock:
            if not ok:
                counts["errors"] += 1
                return
            latencies.append(elapsed)
            got = ([r["id"] for r in answer["results"]], [r["distance"] for r in answer["results"]])
            if got != answers[image_id]:
                counts["wrong"] += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - started
    done = len(latencies) + counts["errors"]
    ms = np.asarray(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": done,
        "wrong": counts["wrong"],
        "errors": counts["errors"],
        "qps": len(latencies) / wall if wall > 0 else float("nan"),
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "stopped_by_time": done < requests,
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="index directory (python -m dinov2.search build --output-dir)")
    parser.add_argument("--weights", default=None, help="teacher checkpoint (default: the one recorded in meta.json)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--concurrency", default="1,4,8", help=f"client threads per level, comma-separated (at most {MAX_CONCURRENCY})")
    parser.add_argument("--requests", type=int, default=200, help=f"searches per level (at most {MAX_REQUESTS})")
    parser.add_argument("--queries", type=int, default=32, help="distinct indexed images used as queries (default 32)")
    parser.add_argument("-k", type=int, default=10, help="results per search (default 10)")
    parser.add_argument("--time-limit", type=float, default=120.0, help=f"seconds per level at most (at most {MAX_TIME_S:.0f})")
    parser.add_argument("--json", default="", metavar="FILE", help="also write the rows and memory as JSON")
    return parser


def check_bounds(args) -> List[int]:
    """The concurrency levels, after checking every bound (ValueError naming the option)."""
    try:
        levels = [int(v) for v in str(args.concurrency).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--concurrency={args.concurrency}: expected integers separated by commas") from None
    if not levels or any(not 1 <= c <= MAX_CONCURRENCY for c in levels):
        raise ValueError(f"--concurrency={args.concurrency}: each level must be 1..{MAX_CONCURRENCY}")
    if not 1 <= args.requests <= MAX_REQUESTS:
        raise ValueError(f"--requests={args.requests} must be 1..{MAX_REQUESTS}")
    if not 0 < args.time_limit <= MAX_TIME_S:
        raise ValueError(f"--time-limit={args.time_limit} must be in (0, {MAX_TIME_S:.0f}] seconds")
    if args.queries < 1 or args.k < 1:
        raise ValueError(f"--queries={args.queries} and -k={args.k} must be positive")
    return levels


def print_table(rows: Sequence[Dict], memory: Dict[str, float], out=sys.stdout) -> None:
    print(f"{'clients':>7}  {'requests':>8}  {'wrong':>5}  {'errors':>6}  {'QPS':>8}  {'p50 ms':>8}  {'p99 ms':>8}", file=out)
    for r in rows:
        line = f"{r['concurrency']:>7}  {r['requests']:>8}  {r['wrong']:>5}  {r['errors']:>6}  {r['qps']:>8.1f}  "
        line += f"{r['p50_ms']:>8.1f}  {r['p99_ms']:>8.1f}" + ("  (time limit)" if r["stopped_by_time"] else "")
        print(line, file=out)
    print(
        f"memory (RSS, MiB): before {memory['before']:.0f}, after {memory['after']:.0f}, peak {memory['peak']:.0f}",
        file=out,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        levels = check_bounds(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    searcher = ArchiveSearcher(args.index, args.weights, args.device)
    step = max(1, searcher.count // args.queries)
    queries = {i: searcher.image_data(i) for i in range(0, searcher.count, step)[: args.queries]}
    answers = exact_answers(searcher, queries, args.k)
    before = memory_mib()["rss"]
    server = make_server(searcher, HOST, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = Client(server.server_address[1])
        rows = [run_level(client, queries, answers, args.k, c, args.requests, args.time_limit) for c in levels]
    finally:
        server.shutdown()
        thread.join(timeout=30)
        server.server_close()
    now = memory_mib()
    memory = {"before": before, "after": now["rss"], "peak": now["peak"]}
    print(f"{searcher.count} indexed images, {searcher.nbits}-bit codes, k={args.k}, {len(queries)} distinct queries, "
          f"device {searcher.device}, {os.cpu_count()} CPUs")
    print_table(rows, memory)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "memory_mib": memory, "count": searcher.count, "k": args.k}, f, indent=2)
    return 1 if any(r["wrong"] or r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
