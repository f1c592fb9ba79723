"""Command-line tool: the classical hashing baselines (``dinov2.eval.baselines.methods``: LSH, PCAH,
ITQ, Spectral Hashing) on the split and metric of the training-time evaluation.

Run ``python -m dinov2.eval.baselines --help`` for the options; the methods and their fitting are
importable from here as from ``dinov2.eval.baselines.methods``.
"""

import argparse
import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from omegaconf import OmegaConf
from torchvision import transforms

from dinov2.checkpoint import CheckpointError, CheckpointFormatError, atomic_write_text
from dinov2.data import ImageLoadError, make_classification_eval_transform
from dinov2.data.builders import make_eval_dataset, resolve_data_root
from dinov2.distributed.devices import select_device
from dinov2.eval.baselines.methods import (  # noqa: F401  (the methods, importable from the tool's module)
    ITQ_ITERATIONS,
    METHODS,
    ArrayLike,
    BaselineError,
    HashingBaseline,
    SpectralHashing,
    describe,
    fit_baseline,
    itq_rotation,
    spectral_modes,
)
from dinov2.eval.encode import extract_codes
from dinov2.eval.metrics import retrieval_metrics
from dinov2.logging import setup_logging
from dinov2.models.hashing_network import load_hashing_network
from dinov2.utils.config import ConfigError, get_cfg_from_args
from dinov2.utils.validation import check_run_inputs

logger = logging.getLogger("dinov2")

FEATURE_KINDS = ("pixels", "backbone")
DEFAULT_PIXEL_SIZE = 16

_EXAMPLES = """examples:
  # LSH, PCAH, ITQ and SH on 16x16 pixels of the demo data (the split of configs/demo.yaml)
  python -m dinov2.eval.baselines --config-file configs/demo.yaml --output-dir outputs/demo_baselines --bits 16,32,64

  # "DINOv2 + ITQ": the CLS token of the public DINOv2 ViT-S/14 on AID, and pixels, at the paper's lengths
  python -m dinov2.eval.baselines --config-file configs/aid_64bit.yaml --output-dir runs/aid_baselines \\
      --bits 16,32,48,64 --weights /w/dinov2_vits14_pretrain.pth train.data_path=/data/AID

  # the frozen backbone of a trained SDSH teacher
  python -m dinov2.eval.baselines --config-file configs/demo.yaml --output-dir outputs/demo_baselines \\
      --features backbone --weights outputs/demo/eval/best/teacher_checkpoint.pth

Features (computed for the database = train split and the queries = query split of the config):
  pixels    the evaluation resize and centre crop of crops.global_crops_size (e.g. 256 bicubic -> 224),
            then an antialiased bilinear resize to --pixel-size x --pixel-size, RGB in [0, 1], flattened
            (16 x 16 x 3 = 768 values; no mean/std normalisation: every method centres the features)
  backbone  the normalised CLS token (x_norm_clstoken) of the frozen backbone of --weights (a DINOv2
            backbone such as dinov2_vits14_pretrain.pth, or an SDSH teacher/training checkpoint), on the
            evaluation transform (resize, centre crop, ImageNet mean/std), as the teacher is evaluated
Each method is fitted on the database features only, then encodes database and queries; mAP@all ranks by
Hamming distance with ties broken by database index (the training-time evaluation's metric).
Writes to --output-dir: baselines.json (one row per features x method x bits), baselines_config.yaml,
split_manifest.csv and baselines_log.txt. Every key=value option must name a key of
dinov2/configs/ssl_default_config.yaml. Exit status: 0 on success, 2 on bad input (the message names
the file, key or value).
"""


def get_args_parser(add_help: bool = True):
    """Command-line options of the baselines tool."""

    parser = argparse.ArgumentParser(
        "SDSH hashing baselines",
        description="Fit LSH, PCAH, ITQ and Spectral Hashing on database features (small image pixels and/or "
        "a frozen backbone's CLS token) and score Hamming-ranking retrieval on the split of the training-time "
        "evaluation.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=add_help,
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="YAML overrides of the default config")
    parser.add_argument(
        "--output-dir", "--output_dir", default="", metavar="DIR", help="where results are written (required)"
    )
    parser.add_argument("--bits", default="16,32,48,64", metavar="K,K,..", help="code lengths (default 16,32,48,64)")
    parser.add_argument(
        "--features",
        choices=("pixels", "backbone", "both"),
        default=None,
        help="features to hash (default: pixels, plus backbone when --weights is given)",
    )
    parser.add_argument(
        "--weights", default="", metavar="CKPT", help="backbone weights: DINOv2 weights or an SDSH checkpoint"
    )
    parser.add_argument(
        "--methods", default=",".join(METHODS), metavar="M,M,..", help=f"methods (default {','.join(METHODS)})"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of LSH's projections and ITQ's rotation (default 0)")
    parser.add_argument(
        "--pixel-size", type=int, default=DEFAULT_PIXEL_SIZE, metavar="P", help="side of the pixel features (16)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, metavar="B", help="images per forward pass (evaluation.batch_size)"
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda", "auto"), default=None, help="where the backbone runs (train.device)"
    )
    parser.add_argument(
        "opts",
        help="config overrides as key=value (e.g. train.data_path=/data/AID)",
        default=None,
        nargs=argparse.REMAINDER,
    )
    return parser


def _parse_list(text: str, option: str, allowed: Optional[Sequence[str]] = None) -> List[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise BaselineError(f"{option} is empty: give a comma-separated list")
    if allowed is not None:
        unknown = [item for item in items if item not in allowed]
        if unknown:
            raise BaselineError(f"{option}: unknown value(s) {', '.join(unknown)} (expected some of {', '.join(allowed)})")
    return list(dict.fromkeys(items))


def parse_bits(text: str) -> List[int]:
    """``"16,32"`` -> [16, 32]; each a positive integer, else BaselineError naming the value."""
    bits = []
    for item in _parse_list(text, "--bits"):
        if not item.isdigit() or int(item) <= 0:
            raise BaselineError(f"--bits: '{item}' is not a positive integer number of bits")
        bits.append(int(item))
    return bits


def feature_kinds(features: Optional[str], weights: str) -> List[str]:
    """The feature kinds to run: the --features choice, or pixels (+ backbone when weights are given)."""
    if features is None:
        return ["pixels", "backbone"] if weights else ["pixels"]
    return list(FEATURE_KINDS) if features == "both" else [features]


def make_pixel_transform(crop_size: int, pixel_size: int):
    """PIL image -> float [3 * pixel_size^2]: the eval resize and centre crop, then a small antialiased resize."""


    resize, crop = make_classification_eval_transform(crop_size=crop_size).transforms[:2]
    return transforms.Compose(
        [
            resize,
            crop,
            transforms.Resize(
                (pixel_size, pixel_size), interpolation=transforms.InterpolationMode.BILINEAR, antialias=True
            ),
            transforms.ToTensor(),
            transforms.Lambda(lambda t: t.reshape(-1)),
        ]
    )


class _ClsToken(torch.nn.Module):
    """Frozen backbone -> its normalised CLS token [B, D] (the features of "DINOv2 + ITQ")."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone
        self.hash_bit = getattr(backbone, "embed_dim", 0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(images)["x_norm_clstoken"]


def compute_features(kind, args, cfg, datasets, device) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """Features and labels of database and queries for one kind; returns (db, db_y, q, q_y, description)."""


    if kind == "pixels":
        encoder = torch.nn.Identity()
        encoder.hash_bit = 3 * args.pixel_size**2
        transform = make_pixel_transform(cfg.crops.global_crops_size, args.pixel_size)
        description = f"{args.pixel_size}x{args.pixel_size} RGB pixels of the eval crop ({cfg.crops.global_crops_size} px)"
        run_device = torch.device("cpu")
    else:

        weights = args.weights or ""
        network, fmt = load_hashing_network(cfg, weights, device)
        encoder = _ClsToken(network.backbone).to(device).eval()
        transform = make_classification_eval_transform(crop_size=cfg.crops.global_crops_size)
        source = weights or cfg.student.pretrained_weights
        description = f"CLS token of the frozen {cfg.student.arch} backbone of {source} ({fmt})"
        run_device = device
    batch_size = args.batch_size or cfg.evaluation.batch_size
    out = []
    for name, dataset in datasets.items():
        dataset.transform = transform
        features, labels = extract_codes(
            encoder,
            dataset,
            batch_size,
            cfg.evaluation.num_workers,
            run_device,
            sys.stderr.isatty(),
            f"{kind} features of the {name}",
        )
        out += [features.double().numpy(), labels.numpy()]
    return (*out, description)


def evaluate_baselines(
    db: np.ndarray,
    db_labels: np.ndarray,
    queries: np.ndarray,
    query_labels: np.ndarray,
    methods: Sequence[str],
    bits_list: Sequence[int],
    seed: int = 0,
    topk: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """Fit every method at every length on ``db`` and score the queries with the retrieval tool's metrics.

    Returns:
        One row per (method, bits): ``method``, ``bits``, ``mAP`` (= mAP@all), the metrics of
        ``dinov2.eval.metrics.retrieval_metrics`` (mAP@all, tie-aware mAP, mAP@k, P@k, precision
        within radius 2), ``feature_dim``, ``seed``, ``fit_s``. A length a method cannot take (bits above
        the feature dimension for pcah/itq) gives a row with ``mAP`` None and the reason in ``skipped``.
    """


    rows = []
    for method in methods:
        for bits in bits_list:
            row: Dict[str, Any] = {"method": method, "bits": int(bits), "feature_dim": int(db.shape[1]), "seed": seed}
            start = time.perf_counter()
            try:
                model = fit_baseline(method, db, bits, seed=seed)
            except BaselineError as exc:
                if method in ("pcah", "itq") and bits > db.shape[1]:
                    logger.warning(f"{method} at {bits} bits skipped: {exc}")
                    rows.append({**row, "mAP": None, "skipped": str(exc)})
                    continue
                raise
            row["fit_s"] = time.perf_counter() - start
            d_bits, q_bits = model.encode(db), model.encode(queries)
            metrics = retrieval_metrics(q_bits, d_bits, query_labels, db_labels, topk)
            row = {**row, **metrics}
            row.update(describe(model))
            rows.append(row)
            logger.info(f"{method} {bits} bits: mAP@all {row['mAP']:.4f}")
    return rows


def format_table(rows: Sequence[Dict[str, Any]], value: str = "mAP") -> str:
    """A plain-text table: one line per (features, method), one column per bit length, ``value`` in cells."""
    bits_list = sorted({row["bits"] for row in rows})
    keys = list(dict.fromkeys((row.get("features", ""), row["method"]) for row in rows))
    cells = {(row.get("features", ""), row["method"], row["bits"]): row.get(value) for row in rows}
    width = max([len("features")] + [len(k[0]) for k in keys])
    lines = [f"{'features':<{width}}  {'method':<6}  " + "  ".join(f"{b:>7}" for b in bits_list)]
    for feats, method in keys:
        values = [cells.get((feats, method, b)) for b in bits_list]
        shown = ["      -" if v is None else f"{v:7.4f}" for v in values]
        lines.append(f"{feats:<{width}}  {method:<6}  " + "  ".join(shown))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the baselines tool; returns the exit status (0, or 2 on bad input with a message on stderr)."""



    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error already printed by argparse
        return int(exit_.code or 0)
    try:
        if not args.output_dir:
            raise BaselineError("--output-dir is required")
        bits_list = parse_bits(args.bits)
        methods = _parse_list(args.methods, "--methods", METHODS)
        if args.pixel_size < 1:
            raise BaselineError(f"--pixel-size={args.pixel_size} must be a positive number of pixels")
        if args.batch_size is not None and args.batch_size < 1:
            raise BaselineError(f"--batch-size={args.batch_size} must be a positive number of images")
        kinds = feature_kinds(args.features, args.weights)
        cfg = get_cfg_from_args(args)
        if args.device:
            cfg.train.device = args.device
        check_run_inputs(cfg, weights=args.weights, need_pretrained="backbone" in kinds and not args.weights)
        if "backbone" in kinds and not (args.weights or cfg.student.pretrained_weights):
            raise BaselineError(
                "--features backbone needs --weights (DINOv2 backbone weights or an SDSH checkpoint) "
                "or student.pretrained_weights=<file>"
            )
        output_dir = args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        setup_logging(output=os.path.join(output_dir, "baselines_log.txt"), level=logging.INFO)
        device = select_device(cfg)
        root = resolve_data_root(cfg)
        atomic_write_text(os.path.join(output_dir, "baselines_config.yaml"), OmegaConf.to_yaml(cfg))
        datasets = {"database": make_eval_dataset(cfg, root, "train"), "queries": make_eval_dataset(cfg, root, "query")}
        manifest = datasets["database"].write_manifest(os.path.join(output_dir, "split_manifest.csv"))

        rows: List[Dict[str, Any]] = []
        for kind in kinds:
            db, db_y, q, q_y, description = compute_features(kind, args, cfg, datasets, device)
            logger.info(f"{kind}: {description}; database {tuple(db.shape)}, queries {tuple(q.shape)}")
            extra = {
                "features": kind,
                "features_description": description,
                "num_database": int(db.shape[0]),
                "num_queries": int(q.shape[0]),
                "data_root": os.path.abspath(root),
                "split_manifest": manifest,
            }
            for row in evaluate_baselines(db, db_y, q, q_y, methods, bits_list, args.seed, cfg.evaluation.topk):
                # The identifying keys first, as in the row schema {"method", "bits", "features", "mAP", ...}.
                rows.append({"method": row["method"], "bits": row["bits"], **extra, **row})
        path = os.path.join(output_dir, "baselines.json")
        atomic_write_text(path, json.dumps(rows, indent=2) + "\n")
        print(f"mAP@all (Hamming ranking, ties by database index), {rows[0]['num_queries']} queries, "
              f"{rows[0]['num_database']} database images")
        print(format_table(rows))
        print(f"rows: {path}")
    except (
        BaselineError,
        ConfigError,
        CheckpointFormatError,
        CheckpointError,
        ImageLoadError,
        FileNotFoundError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0

