"""How fast do the entry points answer ``--help`` and a bad config key? Beside ``import torch`` as the floor.

Each command runs ``--repeat`` times in a fresh interpreter; the table shows the median wall time in
seconds, whether its exit status was the expected one (0 for help, 2 for the bad key) and whether
the output directory of the bad-key run stayed absent (nothing written before the inputs are
checked)::

    python scripts/bench_cli_startup.py
    python scripts/bench_cli_startup.py --repeat 5
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO_ROOT, "configs", "demo.yaml")

ENTRY_POINTS = {
    "train.py": [os.path.join(REPO_ROOT, "dinov2", "train", "train.py")],
    "retrieval": ["-m", "dinov2.eval.retrieval"],
    "baselines": ["-m", "dinov2.eval.baselines"],
    "search build": ["-m", "dinov2.search", "build"],
    "SLURM launcher": [os.path.join(REPO_ROOT, "dinov2", "run", "train", "train.py")],
}


def _bad_key_argv(name: str, output_dir: str):
    argv = ["--config-file", DEMO, "--output-dir", output_dir, "train.no_such_key=1"]
    if name == "search build":
        argv = ["--images", REPO_ROOT, "--weights", DEMO, *argv]
    return argv


def _time(argv, env) -> tuple:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    return time.perf_counter() - started, result.returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command (median reported; 3)")
    args = parser.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    floor = statistics.median(_time(["-c", "import torch"], env)[0] for _ in range(args.repeat))
    scratch = tempfile.mkdtemp(prefix="bench_cli_")
    rows = []
    try:
        for name, command in ENTRY_POINTS.items():
            helps = [_time([*command, "--help"], env) for _ in range(args.repeat)]
            output_dir = os.path.join(scratch, name.replace(" ", "_"))
            bad = [_time([*command, *_bad_key_argv(name, output_dir)], env) for _ in range(args.repeat)]
            rows.append(
                (
                    name,
                    statistics.median(t for t, _ in helps),
                    all(code == 0 for _, code in helps),
                    statistics.median(t for t, _ in bad),
                    all(code == 2 for _, code in bad),
                    not os.path.exists(output_dir),
                )
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"median of {args.repeat} runs; floor: python -c 'import torch' = {floor:.2f} s")
    print("| entry point | --help s | x floor | exit 0 | bad key s | x floor | exit 2 | nothing written |")
    print("|---|---|---|---|---|---|---|---|")
    for name, help_s, help_ok, bad_s, bad_ok, clean in rows:
        print(
            f"| {name} | {help_s:.2f} | {help_s / floor:.2f} | {'yes' if help_ok else 'NO'} | {bad_s:.2f} | "
            f"{bad_s / floor:.2f} | {'yes' if bad_ok else 'NO'} | {'yes' if clean else 'NO'} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
