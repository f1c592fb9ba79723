"""Print a Markdown table of methods x code lengths (mAP@all), as hashing papers report results.

Inputs, in any number and order:
- a training run directory (the ``--output-dir`` of ``dinov2/train/train.py``): one SDSH cell at the
  run's ``hash.hash_bit`` (from ``config.yaml``). The value is the run's best evaluation
  (``eval/summary.json``: ``best_mAP``, or ``test_query_mAP`` when the model was selected on validation
  queries); without a summary (a run still going on), the best line of ``eval/retrieval_metrics.jsonl``.
  ``--run-value last`` takes the last evaluation instead. A finished run also gives a ``random codes``
  cell: the chance level of ``eval/summary.json`` (random +-1 codes of that length on the same split).
- a ``baselines.json`` written by ``dinov2/eval/baselines`` (or the directory holding it): one row
  per method and features, e.g. ``ITQ (pixels)``.
Prefix an input with ``LABEL=`` to name its row(s): ``"SDSH w/o AWP=runs/ablation"``.

    python scripts/results_table.py outputs/demo16 outputs/demo32 outputs/demo64 outputs/demo_baselines/baselines.json
"""

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import OmegaConf

METHOD_NAMES = {"lsh": "LSH", "pcah": "PCAH", "itq": "ITQ", "sh": "SH"}
# Row order of the table: chance level, the classical methods by features then method, learned runs
# last (in the order given).
_BASELINE_ORDER = ("lsh", "pcah", "sh", "itq")
_FEATURE_ORDER = ("pixels", "backbone")
# Keys of the metric schema (dinov2/eval/metrics.py), written alike by training runs and baselines.
METRICS = ("mAP", "mAP_tie_aware")


class TableError(RuntimeError):
    """An input that is neither a training run directory nor a baselines.json file."""


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise TableError(f"{path} is not valid JSON: {exc}") from None


def _read_jsonl(path: str) -> List[Dict[str, Any]]:
    lines = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                # A run killed mid-write leaves a cut-off last line; earlier lines are complete.
                print(f"warning: {path} line {number} is not complete JSON, ignored", file=sys.stderr)
    return lines


def run_cells(run_dir: str, metric: str, value: str = "best", label: str = "") -> List[Dict[str, Any]]:
    """The SDSH cell of one training run: [{"row", "bits", "value", "source"}]."""
    config_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(config_path):
        raise TableError(f"{run_dir}: no config.yaml (not the output directory of dinov2/train/train.py)")
    cfg = OmegaConf.load(config_path)
    try:
        bits = int(cfg.hash.hash_bit)
    except Exception:
        raise TableError(f"{config_path}: no hash.hash_bit") from None
    metrics_path = os.path.join(run_dir, "eval", "retrieval_metrics.jsonl")
    summary_path = os.path.join(run_dir, "eval", "summary.json")
    key = metric
    lines = _read_jsonl(metrics_path) if os.path.isfile(metrics_path) else []
    # Lines of the selection queries (the periodic evaluations), not eval-only or test-split extras.
    periodic = [line for line in lines if "split" not in line and not line.get("eval_only") and key in line]
    test_lines = [line for line in lines if line.get("split") == "query" and key in line]
    if value == "last":
        if not periodic:
            raise TableError(f"{run_dir}: no evaluation in {metrics_path}")
        chosen, source = periodic[-1][key], f"last evaluation (iteration {periodic[-1]['iteration']})"
    elif test_lines:
        chosen, source = test_lines[-1][key], "test queries, model selected on validation queries"
    elif metric == "mAP" and os.path.isfile(summary_path) and _read_json(summary_path).get("best_mAP") is not None:
        summary = _read_json(summary_path)
        chosen, source = summary["best_mAP"], f"best evaluation (iteration {summary.get('best_iteration')})"
    elif periodic:
        best = max(periodic, key=lambda line: line["mAP"])  # the trainer keeps the teacher of the best mAP
        chosen, source = best[key], f"best evaluation (iteration {best['iteration']})"
    else:
        raise TableError(f"{run_dir}: no evaluation yet ({metrics_path} missing or empty)")
    cells = [{"row": label or "SDSH", "bits": bits, "value": float(chosen), "source": f"{run_dir}: {source}"}]
    if metric == "mAP" and os.path.isfile(summary_path):
        chance = _read_json(summary_path).get("random_codes_mAP")
        if chance is not None:
            # The trainer's chance level: random +-1 codes of the run's length on the same split.
            cells.append({"row": "random codes", "bits": bits, "value": float(chance), "source": summary_path, "order": (0,)})
    return cells


def baseline_cells(path: str, metric: str, label: str = "") -> List[Dict[str, Any]]:
    """The cells of a baselines.json: one row per (method, features)."""
    rows = _read_json(path)
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "method" in r and "bits" in r for r in rows):
        raise TableError(f"{path}: expected a list of rows with 'method' and 'bits' (a baselines.json)")
    cells = []
    for r in rows:
        name = METHOD_NAMES.get(r["method"], r["method"])
        row = f"{label} {name} ({r.get('features', '?')})".strip()
        value = r.get(metric)
        cells.append(
            {
                "row": row,
                "bits": int(r["bits"]),
                "value": None if value is None else float(value),
                "source": path,
                "order": (
                    1,
                    _FEATURE_ORDER.index(r.get("features")) if r.get("features") in _FEATURE_ORDER else 9,
                    _BASELINE_ORDER.index(r["method"]) if r["method"] in _BASELINE_ORDER else 9,
                ),
            }
        )
    return cells


def _split_label(item: str) -> Tuple[str, str]:
    if "=" in item and not os.path.exists(item):
        label, path = item.split("=", 1)
        return label, path
    return "", item


def collect(inputs: Sequence[str], metric: str = "mAP", run_value: str = "best") -> List[Dict[str, Any]]:
    """Cells of every input (run directory, baselines.json, or a directory holding one)."""
    cells: List[Dict[str, Any]] = []
    for item in inputs:
        label, path = _split_label(item)
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.yaml")):
            cells += run_cells(path, metric, run_value, label)
        elif os.path.isdir(path) and os.path.isfile(os.path.join(path, "baselines.json")):
            cells += baseline_cells(os.path.join(path, "baselines.json"), metric, label)
        elif os.path.isfile(path):
            cells += baseline_cells(path, metric, label)
        else:
            raise TableError(f"{path}: not found, or neither a training run directory nor a baselines.json")
    return cells


def markdown_table(cells: Sequence[Dict[str, Any]], metric: str = "mAP") -> str:
    """Methods (rows) x code lengths (columns): chance level, baselines by features then method, runs last."""
    bits_list = sorted({c["bits"] for c in cells})
    rows: Dict[str, Dict[int, Optional[float]]] = {}
    order: Dict[str, Tuple] = {}
    for position, c in enumerate(cells):
        if c["row"] in rows and c["bits"] in rows[c["row"]]:
            print(f"warning: two values for '{c['row']}' at {c['bits']} bits; keeping {c['source']}", file=sys.stderr)
        rows.setdefault(c["row"], {})[c["bits"]] = c["value"]
        order.setdefault(c["row"], (c.get("order", (2,)), position))
    header = "| Method | " + " | ".join(f"{b} bits" for b in bits_list) + " |"
    lines = [header, "|---|" + "---:|" * len(bits_list)]
    for name in sorted(rows, key=lambda n: order[n]):
        values = [rows[name].get(b) for b in bits_list]
        lines.append(f"| {name} | " + " | ".join("–" if v is None else f"{v:.4f}" for v in values) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="RUN_DIR|baselines.json", help="[LABEL=]path, see above")
    parser.add_argument(
        "--metric", choices=sorted(METRICS), default="mAP", help="mAP (mAP@all, default) or mAP_tie_aware"
    )
    parser.add_argument("--run-value", choices=("best", "last"), default="best", help="which evaluation of a run")
    parser.add_argument("--sources", action="store_true", help="list where each value comes from")
    args = parser.parse_args(argv)
    try:
        cells = collect(args.inputs, args.metric, args.run_value)
    except (TableError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not cells:
        print("error: the inputs hold no results", file=sys.stderr)
        return 2
    print(markdown_table(cells, args.metric))
    if args.sources:
        print()
        for source in dict.fromkeys(c["source"] for c in cells):
            print(f"- {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
