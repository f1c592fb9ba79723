"""Where do a trained teacher's codes lose what ITQ on its CLS token keeps? One number per stage.

For a teacher checkpoint and its data, ITQ at the code length on each stage of the encoder, and the
codes themselves:

- ``cls``: the normalised CLS token (what "ITQ on the fine-tuned backbone" hashes);
- ``pooled``: the hash head's pooled descriptor v (LayerNorm of the CLS token beside the AWP-weighted
  mean of the patches), the input of the hash projection;
- ``u``: the continuous codes u, rotated by ITQ (a fitted rotation of the learned projection);
- ``sign(u)``: the codes as SDSH evaluates them;
- ``sign(u - mean)``: the codes centred on the database mean before the sign (what a bit-balancing
  threshold would give).

::

    python scripts/code_information.py --config-file outputs/claim/runs/demo/b32_s0/config.yaml \\
        --weights outputs/claim/runs/demo/b32_s0/eval/last/teacher_checkpoint.pth
"""

import argparse
import json
import os
import sys
from typing import Dict

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from dinov2.data.builders import make_eval_dataset  # noqa: E402
from dinov2.eval.baselines.tool import evaluate_baselines  # noqa: E402
from dinov2.eval.encode import extract_codes  # noqa: E402
from dinov2.eval.metrics import retrieval_metrics  # noqa: E402
from dinov2.models import load_hashing_network  # noqa: E402
from dinov2.utils.config import merge_config  # noqa: E402


class _Stages(torch.nn.Module):
    """Teacher network -> [CLS token, pooled v, codes u] side by side."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network
        d = network.backbone.embed_dim
        self.sizes = (d, 2 * d, network.hash_bit)
        self.hash_bit = sum(self.sizes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.network.backbone.forward_features(images)
        hashed = self.network.hash_head(out["x_norm_clstoken"], out["x_norm_patchtokens"], view="global")
        return torch.cat((out["x_norm_clstoken"], hashed["pooled"], hashed["codes"]), dim=1)


def stage_scores(cfg, weights: str, seed: int = 0) -> Dict[str, float]:
    network, _ = load_hashing_network(cfg, weights, torch.device("cpu"))
    stages = _Stages(network).eval()
    root = cfg.train.data_path
    out = {}
    for split in ("train", "query"):
        feats, labels = extract_codes(stages, make_eval_dataset(cfg, root, split), 128, 0, torch.device("cpu"), False, split, shard=False)
        out[split] = (feats.double().numpy(), labels.numpy())
    (db, db_y), (q, q_y) = out["train"], out["query"]
    d, d2, k = stages.sizes
    parts = {"cls": slice(0, d), "pooled": slice(d, d + d2), "u": slice(d + d2, d + d2 + k)}
    scores = {}
    for name, cols in parts.items():
        scores[f"itq({name})"] = evaluate_baselines(db[:, cols], db_y, q[:, cols], q_y, ["itq"], [k], seed=seed)[0]["mAP"]
    u_db, u_q = db[:, parts["u"]], q[:, parts["u"]]
    sign = lambda x: np.where(x >= 0, 1, -1).astype(np.int8)  # noqa: E731
    scores["sign(u)"] = retrieval_metrics(sign(u_q), sign(u_db), q_y, db_y)["mAP"]
    mean = u_db.mean(axis=0)
    scores["sign(u - mean)"] = retrieval_metrics(sign(u_q - mean), sign(u_db - mean), q_y, db_y)["mAP"]
    return scores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help="the run's config.yaml")
    parser.add_argument("--weights", required=True, help="a teacher checkpoint of that run")
    parser.add_argument("--seed", type=int, default=0, help="ITQ's seed")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cfg = merge_config(args.config_file, [o for o in args.opts if o != "--"])
    print(json.dumps({k: round(v, 4) for k, v in stage_scores(cfg, args.weights, args.seed).items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
