"""Do two CPU trainings on one machine share it politely? A short demo alone, then two side by side.

Runs ``configs/demo.yaml`` for ``--iterations`` iterations (no evaluation) as a subprocess, first
alone, then two at once, and prints the median seconds per iteration of each run (from the
``iter_time`` of ``training_metrics.json``, the first record left out as warm-up) and the ratio of
side-by-side to alone. A fair share of 2 cores between 2 runs is about 2x; far more means the runs'
threads fight for the cores (oversubscription). ``--env KEY=VALUE`` sets a variable in the runs
(e.g. ``OMP_NUM_THREADS=2`` to pin the old behaviour of one thread per core regardless of the budget)::

    python scripts/bench_cpu_sharing.py --output-dir outputs/bench_cpu_sharing
    python scripts/bench_cpu_sharing.py --output-dir outputs/bench_cpu_sharing_pinned --env OMP_NUM_THREADS=2
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(output_dir: str, iterations: int):
    return [
        sys.executable,
        os.path.join(REPO_ROOT, "dinov2", "train", "train.py"),
        "--config-file",
        os.path.join(REPO_ROOT, "configs", "demo.yaml"),
        "--output-dir",
        output_dir,
        "--no-resume",
        "train.OFFICIAL_EPOCH_LENGTH=1",
        f"optim.epochs={iterations}",
        "optim.warmup_epochs=1",
        "train.log_period=1",
        "evaluation.eval_period_iterations=0",
        f"train.data_path={os.path.join(output_dir, '..', 'demo_data')}",
    ]


def _seconds_per_iteration(output_dir: str) -> float:
    with open(os.path.join(output_dir, "training_metrics.json"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    times = [r["iter_time"] for r in records if "iter_time" in r and r.get("iteration", 0) > 0]
    if not times:
        raise SystemExit(f"no iteration times in {output_dir}/training_metrics.json")
    return statistics.median(times)


def _run_together(dirs, iterations: int, env) -> float:
    started = time.perf_counter()
    procs = [
        subprocess.Popen(_command(d, iterations), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for d in dirs
    ]
    for proc, d in zip(procs, dirs):
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"run in {d} failed ({proc.returncode}):\n{err[-2000:]}")
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="outputs/bench_cpu_sharing", help="where the runs write")
    parser.add_argument("--iterations", type=int, default=30, help="training iterations per run (30)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment of the runs")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    os.makedirs(args.output_dir, exist_ok=True)
    alone_dir = os.path.join(args.output_dir, "alone")
    pair_dirs = [os.path.join(args.output_dir, f"pair_{i}") for i in range(2)]
    # The demo data is generated once by the first run, outside the timed iterations.
    wall_alone = _run_together([alone_dir], args.iterations, env)
    wall_pair = _run_together(pair_dirs, args.iterations, env)
    alone = _seconds_per_iteration(alone_dir)
    pair = [_seconds_per_iteration(d) for d in pair_dirs]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"demo preset, {args.iterations} iterations per run, {cores} usable core(s), env: {' '.join(args.env) or '-'}")
    print("| runs | s/iteration (median) | ratio to alone | wall s |")
    print("|---|---|---|---|")
    print(f"| alone | {alone:.3f} | 1.00 | {wall_alone:.0f} |")
    for i, value in enumerate(pair):
        print(f"| side by side, run {i + 1} | {value:.3f} | {value / alone:.2f} | {wall_pair:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
