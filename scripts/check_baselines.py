"""Check the project's ITQ against an independent ITQ, and against LSH, on held-out data.

Data sets (database = first half of each class in file order, queries = the rest, as the project's split):
- ``digits``: the 1,797 handwritten 8x8 digit images that ship inside scikit-learn
  (``sklearn.datasets.load_digits``, 10 classes, 64 grey values each; nothing is downloaded). Skipped
  when scikit-learn is not installed (it is not a dependency of the project).
- ``demo``: the generated demo data of ``configs/demo.yaml`` (6 classes x 40 images), as 16x16 RGB
  pixels of the evaluation crop (the features of ``dinov2/eval/baselines --features pixels``), and,
  with ``--weights``, as the CLS token of that checkpoint's frozen backbone.

For each set and code length: mAP@all of the project's ITQ (seed 0), of the independent ITQ below
(torch; PCA by SVD of the centred data, Procrustes rotation in a plain loop from a different random
start), their difference, and LSH's mAP over ``--lsh-seeds`` seeds (mean and max). The script prints a
table and exits 1 when the two ITQs differ by more than ``--tolerance`` (0.02).

    python scripts/check_baselines.py --output-dir outputs/check_baselines \\
        [--weights outputs/demo32/eval/best/teacher_checkpoint.pth]
"""

import argparse
import os
import sys
from typing import Dict, List, Tuple

import numpy as np
import torch

from dinov2.eval.baselines.tool import fit_baseline
from dinov2.eval.hashing import mean_average_precision


def independent_itq(db: np.ndarray, queries: np.ndarray, bits: int, iterations: int = 50, seed: int = 1):
    """ITQ (Gong & Lazebnik) written separately from dinov2.eval.baselines.tool, in torch.

    PCA: right singular vectors of the centred database. Rotation: start from the Q of a QR of a
    Gaussian matrix; each iteration B = sign(V R), then SVD of B^T V = U S W^T and R = W U^T.

    Returns:
        (database codes, query codes), int8 in {-1, +1}.
    """
    x = torch.as_tensor(db, dtype=torch.float64)
    mean = x.mean(0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    pcs = vh[:bits].T  # [D, bits]
    v = (x - mean) @ pcs
    generator = torch.Generator().manual_seed(seed)
    r, _ = torch.linalg.qr(torch.randn(bits, bits, generator=generator, dtype=torch.float64))
    for _ in range(iterations):
        z = v @ r
        b = torch.ones_like(z)
        b[z < 0] = -1
        u, _, wt = torch.linalg.svd(b.T @ v)
        r = wt.T @ u.T

    def codes(features):
        z = (torch.as_tensor(features, dtype=torch.float64) - mean) @ pcs @ r
        return torch.where(z >= 0, 1, -1).to(torch.int8).numpy()

    return codes(db), codes(queries)


def per_class_split(labels: np.ndarray, ratio: float = 0.5) -> Tuple[np.ndarray, np.ndarray]:
    """Indices of database (first ``int(n * ratio)`` of each class, in order) and queries."""
    db, q = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = int(len(members) * ratio)
        db += members[:n].tolist()
        q += members[n:].tolist()
    return np.array(db), np.array(q)


def digits_set():
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = data.data.astype(np.float64), data.target.astype(np.int64)
    db, q = per_class_split(y)
    return x[db], y[db], x[q], y[q]


def demo_sets(output_dir: str, weights: str) -> Dict[str, tuple]:
    """Demo pixels (and backbone CLS with weights) through the baselines tool's own feature code."""
    from dinov2.data.builders import resolve_data_root
    from dinov2.eval.baselines import tool as baselines
    from dinov2.eval.retrieval.tool import make_dataset
    from dinov2.utils.config import get_cfg_from_args

    args = argparse.Namespace(
        config_file=os.path.join(os.path.dirname(__file__), "..", "configs", "demo.yaml"),
        output_dir=output_dir,
        opts=["evaluation.num_workers=0"],
        pixel_size=baselines.DEFAULT_PIXEL_SIZE,
        batch_size=None,
        weights=weights,
    )
    cfg = get_cfg_from_args(args)
    root = resolve_data_root(cfg)
    datasets = {"database": make_dataset(cfg, root, "train"), "queries": make_dataset(cfg, root, "query")}
    sets = {}
    for kind in ["pixels"] + (["backbone"] if weights else []):
        db, db_y, q, q_y, _ = baselines.compute_features(kind, args, cfg, datasets, torch.device("cpu"))
        sets[f"demo {kind}"] = (db, db_y, q, q_y)
    return sets


def score(db, db_y, q, q_y, bits: int, lsh_seeds: int) -> Dict[str, float]:
    ours = fit_baseline("itq", db, bits, seed=0)
    ref_db, ref_q = independent_itq(db, q, bits)
    lsh = []
    for seed in range(lsh_seeds):
        model = fit_baseline("lsh", db, bits, seed=seed)
        lsh.append(mean_average_precision(model.encode(q), model.encode(db), q_y, db_y))
    return {
        "itq": mean_average_precision(ours.encode(q), ours.encode(db), q_y, db_y),
        "itq_independent": mean_average_precision(ref_q, ref_db, q_y, db_y),
        "lsh_mean": float(np.mean(lsh)),
        "lsh_max": float(np.max(lsh)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/check_baselines", help="where the demo data is generated")
    parser.add_argument("--weights", default="", help="also check the CLS token of this checkpoint's backbone")
    parser.add_argument("--bits", default="16,32,48,64", help="code lengths")
    parser.add_argument("--lsh-seeds", type=int, default=5, help="LSH seeds averaged (default 5)")
    parser.add_argument("--tolerance", type=float, default=0.02, help="largest accepted ITQ difference")
    args = parser.parse_args(argv)
    bits_list = [int(b) for b in args.bits.split(",")]
    if args.weights and not os.path.isfile(args.weights):
        print(f"error: weights file not found: {args.weights}", file=sys.stderr)
        return 2

    sets: Dict[str, tuple] = {}
    try:
        sets["digits (scikit-learn)"] = digits_set()
    except ImportError:
        print("scikit-learn is not installed: the digits set is skipped (pip install scikit-learn)")
    sets.update(demo_sets(args.output_dir, args.weights))

    header = f"{'data':<22} {'dim':>4} {'bits':>4} {'ITQ':>7} {'ITQ ind.':>8} {'|diff|':>7} {'LSH mean':>8} {'LSH max':>7}  ITQ>LSH"
    lines: List[str] = [header]
    worst = 0.0
    for name, (db, db_y, q, q_y) in sets.items():
        for bits in bits_list:
            if bits > db.shape[1]:
                continue
            s = score(db, db_y, q, q_y, bits, args.lsh_seeds)
            diff = abs(s["itq"] - s["itq_independent"])
            worst = max(worst, diff)
            beats = "yes" if s["itq"] > s["lsh_mean"] else "no"
            lines.append(
                f"{name:<22} {db.shape[1]:>4} {bits:>4} {s['itq']:7.4f} {s['itq_independent']:8.4f} {diff:7.4f} "
                f"{s['lsh_mean']:8.4f} {s['lsh_max']:7.4f}  {beats}"
            )
    print("\n".join(lines))
    print(f"largest |ITQ - independent ITQ|: {worst:.4f} (tolerance {args.tolerance})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
