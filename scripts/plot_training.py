"""Plot a training run: loss terms, schedules and the teacher's retrieval mAP against the iteration.

Reads ``<output-dir>/training_metrics.json`` and ``<output-dir>/eval/retrieval_metrics.jsonl`` (both
JSON lines) and writes ``<output-dir>/training_curves.png`` (or ``--out``). Training writes this
figure itself at the end of a run; this script redraws it at any time, also while a run is going on.

    python scripts/plot_training.py outputs/demo
"""

import argparse
import os
import sys

from dinov2.eval.plots import plot_training_curves
from dinov2.logging import read_jsonl


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", help="the --output-dir of a training run")
    parser.add_argument("--out", default="", help="PNG file to write (default: <output_dir>/training_curves.png)")
    args = parser.parse_args(argv)
    training = read_jsonl(os.path.join(args.output_dir, "training_metrics.json"))
    if not training:
        print(f"error: no records in {os.path.join(args.output_dir, 'training_metrics.json')}", file=sys.stderr)
        return 2
    evaluations = read_jsonl(os.path.join(args.output_dir, "eval", "retrieval_metrics.jsonl"))
    out = args.out or os.path.join(args.output_dir, "training_curves.png")
    plot_training_curves(training, evaluations, out, title=os.path.basename(os.path.abspath(args.output_dir)))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
