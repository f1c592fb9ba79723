"""Fold an ITQ rotation of the codes into a trained teacher: same network, same layout, better-placed bits.

A trained SDSH teacher's continuous codes u hold more than their signs use: its bits are correlated,
and ITQ fitted on the database codes (centre, PCA to all K directions, ITQ's rotation; no labels)
places the signs better (docs/pretrained_claim.md). The map is affine, so it folds into the hash head's
last linear layer (u' = (u - mean) M, i.e. W' = M^T W, b' = M^T (b - mean)); the teacher checkpoint this
writes has the same keys and shapes and works wherever the original does (retrieval tool, archive index).

::

    python scripts/fold_code_rotation.py --config-file outputs/demo/config.yaml \\
        --weights outputs/demo/eval/best/teacher_checkpoint.pth --output outputs/demo/teacher_rotated.pth
"""

import argparse
import os
import sys
from typing import Dict, Tuple

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from dinov2.checkpoint import atomic_torch_save, load_torch_file  # noqa: E402
from dinov2.data.builders import make_eval_dataset, resolve_data_root  # noqa: E402
from dinov2.eval.baselines.methods import fit_baseline  # noqa: E402
from dinov2.eval.encode import extract_codes  # noqa: E402
from dinov2.eval.metrics import retrieval_metrics  # noqa: E402
from dinov2.models import load_hashing_network  # noqa: E402
from dinov2.utils.config import merge_config  # noqa: E402

LAST_LAYER = "hash_head.hash_layer.2"


def fold_rotation(state: Dict[str, torch.Tensor], mean: np.ndarray, projection: np.ndarray) -> Dict[str, torch.Tensor]:
    """A copy of a teacher state dict whose codes are ``(u - mean) @ projection`` of the original's."""
    weight, bias = state[f"{LAST_LAYER}.weight"], state[f"{LAST_LAYER}.bias"]  # [K, 2D], [K]
    m = torch.as_tensor(projection, dtype=torch.float64)
    if m.shape != (weight.shape[0], weight.shape[0]):
        raise ValueError(f"the rotation must be [{weight.shape[0]}, {weight.shape[0]}], got {tuple(m.shape)}")
    folded = dict(state)
    folded[f"{LAST_LAYER}.weight"] = (m.t() @ weight.double()).to(weight.dtype)
    folded[f"{LAST_LAYER}.bias"] = ((bias.double() - torch.as_tensor(mean, dtype=torch.float64)) @ m).to(bias.dtype)
    return folded


def encode_split(network, cfg, root: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
    codes, labels = extract_codes(network, make_eval_dataset(cfg, root, split), 128, 0, torch.device("cpu"), False, split, shard=False)
    return codes.double().numpy(), labels.numpy()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help="the run's config.yaml")
    parser.add_argument("--weights", required=True, help="a teacher checkpoint of that run")
    parser.add_argument("--output", required=True, help="the teacher checkpoint to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of ITQ's initial rotation")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="-- key=value config overrides")
    args = parser.parse_args(argv)
    cfg = merge_config(args.config_file, [o for o in args.opts if o != "--"])
    cfg.train.output_dir = os.path.dirname(os.path.abspath(args.output))
    root = resolve_data_root(cfg)
    network, _ = load_hashing_network(cfg, args.weights, torch.device("cpu"))
    db, db_y = encode_split(network, cfg, root, "train")
    bits = db.shape[1]
    rotation = fit_baseline("itq", db, bits, seed=args.seed)  # fitted on the database codes only
    payload = load_torch_file(args.weights)
    payload["teacher"] = fold_rotation(payload["teacher"], rotation.mean, rotation.projection)
    payload["code_rotation"] = f"ITQ of the database codes folded into {LAST_LAYER} (seed {args.seed})"
    q, q_y = encode_split(network, cfg, root, "query")
    before = retrieval_metrics(np.where(q >= 0, 1, -1), np.where(db >= 0, 1, -1), q_y, db_y)["mAP"]
    after = retrieval_metrics(rotation.encode(q), rotation.encode(db), q_y, db_y)["mAP"]
    payload["mAP"] = float(after)
    atomic_torch_save(payload, args.output)
    print(f"query mAP@all {before:.4f} -> {after:.4f} ({bits} bits); rotated teacher: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
