"""Classical unsupervised hashing baselines: LSH, PCAH, ITQ and Spectral Hashing.

Each method is fitted on real-valued features of the retrieval database (never on the queries) and
maps features to binary codes in {-1, +1} (sign(0) = +1, as for SDSH codes):

- ``lsh``: random Gaussian projections of the centred features (Charikar 2002; the sign-random-
  projection LSH of the hashing literature). Any number of bits.
- ``pcah``: the top ``bits`` principal directions, sign of the projection.
- ``itq``: PCA to ``bits`` dimensions, then the rotation R minimising the quantization loss
  ``||B - V R||_F^2`` by alternating B = sign(V R) and the orthogonal Procrustes solution for R,
  50 iterations from a random rotation (Gong & Lazebnik, CVPR 2011 / TPAMI 2013).
- ``sh``: Spectral Hashing (Weiss, Torralba & Fergus, NIPS 2008): PCA to ``min(bits, dim)``
  dimensions, each assumed uniform on its observed range [a_k, b_k]; the one-dimensional Laplacian
  eigenfunctions ``cos(m pi (x_k - a_k) / (b_k - a_k))`` (m >= 1) are ranked by their analytical
  eigenvalue, which grows with ``(m / (b_k - a_k))^2``, and the ``bits`` smallest are thresholded at 0.

Fitting is deterministic for a fixed ``seed`` (only LSH and ITQ draw random numbers) and uses numpy
in float64. The command-line tool (``python dinov2/eval/baselines.py --help``) evaluates the four
methods on the split and metric of the training-time evaluation.
"""

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]

METHODS = ("lsh", "pcah", "itq", "sh")
ITQ_ITERATIONS = 50

__all__ = ["METHODS", "BaselineError", "HashingBaseline", "fit_baseline"]


class BaselineError(ValueError):
    """Features, bit length or method name a baseline cannot be fitted with (or encode with)."""


def _as_features(features: ArrayLike, name: str = "features") -> np.ndarray:
    """float64 numpy [N, D] after checking shape, emptiness and finiteness."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().float().numpy()
    if not isinstance(features, np.ndarray):
        raise BaselineError(f"{name} must be a numpy array or torch tensor, got {type(features).__name__}")
    if features.ndim != 2:
        raise BaselineError(f"{name} must be a 2-D array [num_items, dim], got shape {tuple(features.shape)}")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise BaselineError(f"{name} is empty (shape {tuple(features.shape)}); need at least one item of one dimension")
    if features.dtype.kind not in "biuf":
        raise BaselineError(f"{name} must be real numbers, got dtype {features.dtype}")
    x = features.astype(np.float64)
    finite = np.isfinite(x)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1))
        shown = ", ".join(str(r) for r in rows[:8]) + (", ..." if len(rows) > 8 else "")
        raise BaselineError(f"{name} contains NaN or inf values, in {len(rows)} row(s): {shown}")
    return x


def _sign(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1, -1).astype(np.int8)


def _principal_directions(centred: np.ndarray, count: int) -> Tuple[np.ndarray, np.ndarray]:
    """The ``count`` leading eigenvectors [D, count] of the covariance and their eigenvalues.

    Each direction's sign is fixed (its largest-magnitude component positive), so the result does not
    depend on the eigen-solver's arbitrary choice of sign.
    """
    covariance = centred.T @ centred / centred.shape[0]  # [D, D]
    values, vectors = np.linalg.eigh(covariance)  # ascending
    order = np.argsort(-values, kind="stable")[:count]
    values, vectors = values[order], vectors[:, order]
    pivot = np.argmax(np.abs(vectors), axis=0)
    signs = np.where(vectors[pivot, np.arange(count)] < 0, -1.0, 1.0)
    return vectors * signs, values


class HashingBaseline:
    """A fitted baseline: ``encode(features)`` gives int8 codes in {-1, +1} of shape [N, bits].

    Attributes:
        method: the method name (one of METHODS).
        bits: code length.
        dim: feature dimension it was fitted on.
        mean: the database mean [dim], removed before projecting.
        projection: the linear map [dim, p] applied to centred features (p = bits, except SH: min(bits, dim)).
    """

    def __init__(self, method: str, bits: int, mean: np.ndarray, projection: np.ndarray):
        self.method = method
        self.bits = bits
        self.dim = mean.shape[0]
        self.mean = mean
        self.projection = projection

    def project(self, features: ArrayLike) -> np.ndarray:
        """Real values [N, bits] whose signs are the codes."""
        x = _as_features(features)
        if x.shape[1] != self.dim:
            raise BaselineError(
                f"features have dimension {x.shape[1]} but the {self.method} baseline was fitted on dimension {self.dim}"
            )
        return (x - self.mean) @ self.projection

    def encode(self, features: ArrayLike) -> np.ndarray:
        """Binary codes of ``features`` [N, dim]: int8 [N, bits] in {-1, +1}."""
        return _sign(self.project(features))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(method={self.method!r}, bits={self.bits}, dim={self.dim})"


class SpectralHashing(HashingBaseline):
    """Spectral Hashing: bit i is the sign of ``cos(m_i pi (v_{k_i} - a_{k_i}) / (b_{k_i} - a_{k_i}))``.

    Attributes (beyond HashingBaseline's):
        low, high: the range [a_k, b_k] of each PCA coordinate v_k on the database [p].
        modes: int array [bits, 2]: (PCA coordinate k, frequency m >= 1) of each bit, smallest
            eigenvalue first.
        eigenvalues: ``(m pi / (b_k - a_k))^2`` of each bit (the order of the analytical eigenvalues).
    """

    def __init__(self, bits, mean, projection, low, high, modes, eigenvalues):
        super().__init__("sh", bits, mean, projection)
        self.low, self.high = low, high
        self.modes, self.eigenvalues = modes, eigenvalues

    def project(self, features: ArrayLike) -> np.ndarray:
        v = super().project(features)  # [N, p]
        k, m = self.modes[:, 0], self.modes[:, 1]
        width = (self.high - self.low)[k]
        return np.cos(m * math.pi * (v[:, k] - self.low[k]) / width)  # [N, bits]


def spectral_modes(widths: Sequence[float], bits: int) -> Tuple[np.ndarray, np.ndarray]:
    """The ``bits`` one-dimensional modes of smallest analytical eigenvalue for uniform ranges ``widths``.

    Mode (k, m) along a coordinate uniform on a range of width w_k has eigenvalue increasing in
    ``(m pi / w_k)^2`` (Weiss et al. 2008, eq. 5); m = 0 is the constant function and never a bit.
    Ties are broken by coordinate, then frequency.

    Returns:
        (modes int64 [bits, 2] of (k, m), their ``(m pi / w_k)^2`` [bits]).
    """
    widths = np.asarray(widths, dtype=np.float64)
    # Along any coordinate, frequencies above ``bits`` are never among the ``bits`` smallest.
    k, m = np.meshgrid(np.arange(len(widths)), np.arange(1, bits + 1), indexing="ij")
    k, m = k.ravel(), m.ravel()
    omega2 = (m * math.pi / widths[k]) ** 2
    order = np.lexsort((m, k, omega2))[:bits]
    return np.stack([k[order], m[order]], axis=1), omega2[order]


def _check_bits(bits, dim: int, method: str) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits <= 0:
        raise BaselineError(f"bits must be a positive integer, got {bits!r}")
    if method in ("pcah", "itq") and bits > dim:
        raise BaselineError(
            f"bits={bits} is larger than the feature dimension {dim}: {method} takes {bits} principal "
            f"directions of {dim}-dimensional features (use at most {dim} bits, or lsh/sh)"
        )


def _random_rotation(rng: np.random.Generator, size: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((size, size)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)  # Haar-distributed orthogonal matrix


def itq_rotation(
    v: np.ndarray, iterations: int = ITQ_ITERATIONS, rng: Optional[np.random.Generator] = None
) -> Tuple[np.ndarray, List[float]]:
    """Iterative quantization of PCA-projected data ``v`` [N, c].

    Alternates B = sign(V R) and R = argmin_{R orthogonal} ||B - V R||_F (orthogonal Procrustes:
    with V^T B = U S W^T, R = U W^T). Neither step can increase the loss.

    Returns:
        (R [c, c], quantization loss ``||B - V R||_F^2`` at the start and after each iteration).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    rotation = _random_rotation(rng, v.shape[1])
    b = _sign(v @ rotation).astype(np.float64)
    losses = [float(np.sum((b - v @ rotation) ** 2))]
    for _ in range(iterations):
        u, _, wt = np.linalg.svd(v.T @ b)
        rotation = u @ wt
        projected = v @ rotation
        b = _sign(projected).astype(np.float64)
        losses.append(float(np.sum((b - projected) ** 2)))
    return rotation, losses


def fit_baseline(name: str, features: ArrayLike, bits: int, seed: int = 0) -> HashingBaseline:
    """Fit one classical hashing method on database features.

    Args:
        name: ``lsh``, ``pcah``, ``itq`` or ``sh``.
        features: real features of the database [N, D] (numpy or torch); finite, N >= 1.
        bits: code length K (at most D for pcah and itq).
        seed: seed of the random projections (lsh) and of ITQ's initial rotation.
    Returns:
        A HashingBaseline whose ``encode`` maps [M, D] features to int8 codes [M, K] in {-1, +1}.
        ITQ's has ``quantization_losses`` (start and each of the 50 iterations).
    Raises:
        BaselineError: unknown name, a non-positive or too large bit length, or empty, non-2-D or
            non-finite features (the message names the value).
    """
    if name not in METHODS:
        raise BaselineError(f"unknown baseline method {name!r} (expected one of {', '.join(METHODS)})")
    x = _as_features(features)
    _check_bits(bits, x.shape[1], name)
    bits = int(bits)
    mean = x.mean(axis=0)
    centred = x - mean
    rng = np.random.default_rng(seed)
    if name == "lsh":
        return HashingBaseline(name, bits, mean, rng.standard_normal((x.shape[1], bits)))
    if name == "pcah":
        directions, _ = _principal_directions(centred, bits)
        return HashingBaseline(name, bits, mean, directions)
    if name == "itq":
        directions, _ = _principal_directions(centred, bits)
        rotation, losses = itq_rotation(centred @ directions, ITQ_ITERATIONS, rng)
        model = HashingBaseline(name, bits, mean, directions @ rotation)
        model.quantization_losses = losses
        return model
    directions, _ = _principal_directions(centred, min(bits, x.shape[1]))
    v = centred @ directions
    low, high = v.min(axis=0), v.max(axis=0)
    width = high - low
    # A coordinate with no spread (constant, or beyond the data's rank) carries no information.
    width = np.where(width > 0, width, np.finfo(np.float64).tiny)
    modes, eigenvalues = spectral_modes(width, bits)
    return SpectralHashing(bits, mean, directions, low, low + width, modes, eigenvalues)


def describe(model: HashingBaseline) -> Dict[str, Any]:
    """Method-specific facts of a fitted baseline for a results row (ITQ: its quantization loss)."""
    info: Dict[str, Any] = {}
    if hasattr(model, "quantization_losses"):
        info["itq_loss_start"] = model.quantization_losses[0]
        info["itq_loss_end"] = model.quantization_losses[-1]
    return info


# ---------------------------------------------------------------------------------------------------
# Command-line tool: the four methods on the split and metric of the training-time evaluation
# ---------------------------------------------------------------------------------------------------

FEATURE_KINDS = ("pixels", "backbone")
DEFAULT_PIXEL_SIZE = 16

_EXAMPLES = """examples:
  # LSH, PCAH, ITQ and SH on 16x16 pixels of the demo data (the split of configs/demo.yaml)
  python dinov2/eval/baselines.py --config-file configs/demo.yaml --output-dir outputs/demo_baselines --bits 16,32,64

  # "DINOv2 + ITQ": the CLS token of the public DINOv2 ViT-S/14 on AID, and pixels, at the paper's lengths
  python dinov2/eval/baselines.py --config-file configs/aid_64bit.yaml --output-dir runs/aid_baselines \\
      --bits 16,32,48,64 --weights /w/dinov2_vits14_pretrain.pth data.root=/data/AID

  # the frozen backbone of a trained SDSH teacher
  python dinov2/eval/baselines.py --config-file configs/demo.yaml --output-dir outputs/demo_baselines \\
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
    import argparse

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
        help="config overrides as key=value (e.g. data.root=/data/AID)",
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
    from torchvision import transforms

    from dinov2.data import make_classification_eval_transform

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
    import sys

    from dinov2.data import make_classification_eval_transform
    from dinov2.eval.encode import extract_codes

    if kind == "pixels":
        encoder = torch.nn.Identity()
        encoder.hash_bit = 3 * args.pixel_size**2
        transform = make_pixel_transform(cfg.crops.global_crops_size, args.pixel_size)
        description = f"{args.pixel_size}x{args.pixel_size} RGB pixels of the eval crop ({cfg.crops.global_crops_size} px)"
        run_device = torch.device("cpu")
    else:
        from dinov2.eval.retrieval import build_network

        weights = args.weights or ""
        network, fmt = build_network(cfg, weights, device)
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
    import logging
    import time

    from dinov2.eval.metrics import retrieval_metrics

    logger = logging.getLogger("dinov2")
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
    import json
    import logging
    import os
    import sys

    from omegaconf import OmegaConf

    from dinov2.data import ImageLoadError
    from dinov2.eval.retrieval import RetrievalError, make_dataset
    from dinov2.logging import setup_logging
    from dinov2.train.train import resolve_data_root, select_device
    from dinov2.utils.checkpoint import CheckpointError, CheckpointFormatError, atomic_write_text
    from dinov2.utils.config import ConfigError, get_cfg_from_args

    logger = logging.getLogger("dinov2")
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
        if args.weights and not os.path.isfile(args.weights):
            raise FileNotFoundError(f"weights file not found: {args.weights}")
        kinds = feature_kinds(args.features, args.weights)
        cfg = get_cfg_from_args(args)
        if args.device:
            cfg.train.device = args.device
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
        datasets = {"database": make_dataset(cfg, root, "train"), "queries": make_dataset(cfg, root, "query")}
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
        RetrievalError,
        ConfigError,
        CheckpointFormatError,
        CheckpointError,
        ImageLoadError,
        FileNotFoundError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
