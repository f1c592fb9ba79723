"""SDSH retrieval tool: encode a dataset with a trained teacher, score Hamming-ranking retrieval, search.

Evaluation (the database is the ``train`` split, the queries the ``query`` split of the paper's protocol)::

    python -m dinov2.eval.retrieval --config-file configs/aid_64bit.yaml \\
        --weights runs/aid64/eval/best/teacher_checkpoint.pth --output-dir runs/aid64/retrieval train.data_path=/data/AID

writes to ``--output-dir``: ``metrics.json`` (the keys of ``dinov2.eval.metrics``: ``mAP`` = mAP@all,
``mAP@k``, ``mAP_tie_aware``, ``P@k``, ``precision_radius2``, counts; then paths and timing), ``codes.npz`` (packed binary codes, labels and relative file paths of
the database and the queries), ``database.faissindex`` (a faiss ``IndexBinaryFlat`` of the database
codes, when faiss is installed), ``split_manifest.csv``, ``retrieval_config.yaml``,
``retrieval_log.txt`` and the plots ``pr_curve.png``, ``precision_at_k.png`` and
``retrieval_grid.png``. Every file is written atomically.

Search with one image (reuses ``codes.npz`` of ``--output-dir`` when it was written with the same
weights, model and data settings; otherwise encodes the database first)::

    python -m dinov2.eval.retrieval --config-file configs/aid_64bit.yaml --weights teacher_checkpoint.pth \\
        --output-dir runs/aid64/retrieval --query /data/AID/Airport/airport_1.jpg --topk 10 train.data_path=/data/AID

Several processes (torchrun or SLURM) share the encoding; every image is encoded exactly once::

    torchrun --nproc_per_node 4 -m dinov2.eval.retrieval --config-file ... --weights ... --output-dir ...
"""

import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, TextIO

import torch
from omegaconf import OmegaConf

from dinov2 import distributed
from dinov2.checkpoint import atomic_write_text, weights_identity
from dinov2.data import ImageLoadError
from dinov2.data.builders import make_eval_dataset, resolve_data_root
from dinov2.data.datasets import load_image_rgb
from dinov2.distributed.devices import select_device
from dinov2.eval.encode import extract_codes
from dinov2.eval.hashing import binarize, hamming_topk, pack_codes_padded
from dinov2.eval.hashing.collapse import describe_collapse
from dinov2.eval.metrics import retrieval_metrics
from dinov2.eval.retrieval.options import get_args_parser, main  # noqa: F401  (the command line, callable from here)
from dinov2.eval.retrieval.outputs import (  # noqa: F401  (grid_query_indices and precision_curve_depths: used from here)
    draw_plots,
    grid_query_indices,
    load_cached_codes,
    precision_curve_depths,
    save_codes,
    write_faiss_index,
)
from dinov2.logging import setup_logging
from dinov2.models import NETWORK_CONFIG_SECTIONS, load_hashing_network
from dinov2.models.checkpoint_config import merge_config_for_weights
from dinov2.utils.config import command_line_opts
from dinov2.utils.errors import InputError
from dinov2.utils.validation import check_run_inputs

logger = logging.getLogger("dinov2")

class RetrievalError(InputError, RuntimeError):
    """Input the retrieval tool cannot use: a bad option combination or an unusable query."""


# ---------------------------------------------------------------------------------------------------
# Model, data and encoding
# ---------------------------------------------------------------------------------------------------


def _check_args(args) -> None:
    """Fail before any work on option combinations and files that cannot be used."""
    if not args.output_dir:
        raise RetrievalError("--output-dir is required")
    if args.weights and args.random_weights:
        raise RetrievalError("give either --weights or --random-weights, not both")
    if not args.weights and not args.random_weights:
        raise RetrievalError("--weights is required (pass --random-weights to evaluate an untrained hash head)")
    if args.weights and not os.path.isfile(args.weights):
        raise FileNotFoundError(f"weights file not found: {args.weights}")
    if args.query and not os.path.isfile(args.query):
        raise FileNotFoundError(f"query image not found: {args.query}")


def codes_fingerprint(cfg, weights: str, root: str) -> str:
    """What the database codes depend on, as a JSON string: weights file, model and data settings.

    Random weights depend on ``train.seed`` (the network is built right after seeding).
    """
    fingerprint = dict(weights_identity(weights))
    if not weights:
        fingerprint["seed"] = cfg.train.seed
    for section in NETWORK_CONFIG_SECTIONS:
        fingerprint[section] = OmegaConf.to_container(cfg[section], resolve=True)
    fingerprint["data"] = {
        "root": os.path.abspath(root),
        "train_ratio": cfg.train.train_ratio,
        "val_ratio": cfg.data.val_ratio,
    }
    return json.dumps(fingerprint, sort_keys=True)


def _encode(network, dataset, batch_size: int, cfg, device, desc: str):
    # Progress bars only on a terminal: in log files they would interleave with the log lines.
    return extract_codes(network, dataset, batch_size, cfg.evaluation.num_workers, device, sys.stderr.isatty(), desc)


# ---------------------------------------------------------------------------------------------------
# The two modes
# ---------------------------------------------------------------------------------------------------


def run_evaluation(args, cfg, root: str, device: torch.device) -> Optional[Dict[str, Any]]:
    """Encode database and queries, then (rank 0) write metrics, codes, index, manifest and plots.

    Returns:
        The metrics on rank 0, None on the other ranks.
    """
    start = time.perf_counter()
    timing: Dict[str, float] = {}
    db = make_eval_dataset(cfg, root, "train")
    queries = make_eval_dataset(cfg, root, "query")
    network, fmt = load_hashing_network(cfg, args.weights, device)
    timing["build_s"] = time.perf_counter() - start

    batch_size = args.batch_size or cfg.evaluation.batch_size
    mark = time.perf_counter()
    db_codes, db_labels = _encode(network, db, batch_size, cfg, device, "encoding database")
    timing["encode_database_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    q_codes, q_labels = _encode(network, queries, batch_size, cfg, device, "encoding queries")
    timing["encode_queries_s"] = time.perf_counter() - mark
    if not distributed.is_main_process():
        return None

    output_dir = args.output_dir
    d_bits, q_bits = binarize(db_codes.numpy()), binarize(q_codes.numpy())
    d_labels, q_labels = db_labels.numpy(), q_labels.numpy()
    mark = time.perf_counter()
    metrics: Dict[str, Any] = retrieval_metrics(q_bits, d_bits, q_labels, d_labels, cfg.evaluation.topk)
    timing["metrics_s"] = time.perf_counter() - mark

    fingerprint = codes_fingerprint(cfg, args.weights, root)
    codes_path = save_codes(
        os.path.join(output_dir, "codes.npz"), d_bits, q_bits, db, queries, fingerprint, args.weights
    )
    index_path, index_note = write_faiss_index(
        os.path.join(output_dir, "database.faissindex"), pack_codes_padded(d_bits), d_bits.shape[1]
    )
    manifest = db.write_manifest(os.path.join(output_dir, "split_manifest.csv"))
    plots: List[str] = []
    plots_note = "disabled by --no-plots"
    if not args.no_plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            plots_note = "matplotlib is not installed (pip install 'sdsh[eval]'): no plots were drawn"
            logger.warning(plots_note)
        else:
            mark = time.perf_counter()
            plots = draw_plots(output_dir, cfg, q_bits, d_bits, q_labels, d_labels, db, queries, network)
            timing["plots_s"] = time.perf_counter() - mark
            plots_note = f"{len(plots)} plots"
    timing["total_s"] = time.perf_counter() - start

    metrics.update(
        {
            "bits": int(d_bits.shape[1]),
            "num_database": int(d_bits.shape[0]),
            "num_queries": int(q_bits.shape[0]),
            "num_classes": len(db.classes),
            **weights_identity(args.weights),
            "checkpoint_format": fmt,
            "data_root": os.path.abspath(root),
            "train_ratio": cfg.train.train_ratio,
            "val_ratio": cfg.data.val_ratio,
            "device": str(device),
            "world_size": distributed.get_global_size(),
            "codes": codes_path,
            "faiss_index": index_path,
            "faiss_index_note": index_note,
            "split_manifest": manifest,
            "plots": plots,
            "plots_note": plots_note,
            "timing": timing,
        }
    )
    atomic_write_text(os.path.join(output_dir, "metrics.json"), json.dumps(metrics, indent=2) + "\n")
    summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith(("mAP", "P@", "precision_")))
    logger.info(
        f"{metrics['bits']} bits, {metrics['num_queries']} queries, {metrics['num_database']} database: {summary}"
    )
    if metrics["collapse"] != "ok":
        label = "CODE COLLAPSE" if metrics["collapse"] == "full" else "partial code collapse"
        logger.warning(f"{label} in the database codes: {describe_collapse(metrics, metrics['num_database'])}")
    logger.info(f"results in {output_dir}")
    return metrics


def run_query(args, cfg, root: str, device: torch.device, out: Optional[TextIO] = None) -> List[Dict[str, Any]]:
    """Print the ``--topk`` nearest database images of the ``--query`` image as a table.

    Args:
        args: parsed options (query, topk, weights, output_dir, batch_size).
        cfg: the merged configuration.
        root: the dataset root.
        device: where the network runs.
        out: where the table is printed (standard output when None).
    Returns:
        One dict per result: rank, distance, file (path under the dataset root) and class.
    """
    if distributed.get_global_size() > 1:
        raise RetrievalError("--query runs in a single process; launch it without torchrun")
    db = make_eval_dataset(cfg, root, "train")
    network, _ = load_hashing_network(cfg, args.weights, device)
    fingerprint = codes_fingerprint(cfg, args.weights, root)
    cached = load_cached_codes(os.path.join(args.output_dir, "codes.npz"), fingerprint, db.relative_files())
    if cached is None:
        batch_size = args.batch_size or cfg.evaluation.batch_size
        db_codes, db_labels = _encode(network, db, batch_size, cfg, device, "encoding database")
        d_bits, db_labels = binarize(db_codes.numpy()), db_labels.numpy()
        source = "database encoded now"
    else:
        d_bits, db_labels = cached
        source = f"database codes from {os.path.join(args.output_dir, 'codes.npz')}"

    try:
        image = db.transform(load_image_rgb(args.query))
    except ImageLoadError as exc:
        raise ImageLoadError(f"query image: {exc}") from None
    with torch.no_grad():
        code = network(image[None].to(device)).float().cpu().numpy()  # [1, K]
    k = min(args.topk, d_bits.shape[0])
    distances, neighbours = hamming_topk(binarize(code), d_bits, k=k)
    rows = [
        {
            "rank": rank + 1,
            "distance": int(distance),
            "file": db.samples[index][0],
            "class": ";".join(db.label_names(int(index))),
        }
        for rank, (distance, index) in enumerate(zip(distances[0], neighbours[0]))
    ]
    out = sys.stdout if out is None else out
    print(f"query: {args.query}  ({d_bits.shape[1]} bits, {d_bits.shape[0]} database images, {source})", file=out)
    width = max(len("file"), *(len(r["file"]) for r in rows))
    print(f"{'rank':>4}  {'hamming':>7}  {'file':<{width}}  class", file=out)
    for r in rows:
        print(f"{r['rank']:>4}  {r['distance']:>7}  {r['file']:<{width}}  {r['class']}", file=out)
    return rows


def run(args) -> None:
    """Evaluate, or with ``--query`` search, as described by the parsed options of ``get_args_parser``."""
    _check_args(args)
    # The network keys come from the checkpoint's own config when it carries one.
    cfg = merge_config_for_weights(args.config_file, command_line_opts(args), args.weights)
    args.output_dir = os.path.abspath(args.output_dir)
    cfg.train.output_dir = args.output_dir
    check_run_inputs(cfg, weights=args.weights, need_pretrained=not args.weights)
    output_dir = args.output_dir
    os.makedirs(output_dir, exist_ok=True)
    setup_logging(
        output=os.path.join(output_dir, "retrieval_log.txt"), level=logging.WARNING if args.query else logging.INFO
    )
    device = select_device(cfg)
    root = resolve_data_root(cfg)
    if args.query:
        run_query(args, cfg, root, device)
        return
    if distributed.is_main_process():
        atomic_write_text(os.path.join(output_dir, "retrieval_config.yaml"), OmegaConf.to_yaml(cfg))
    logger.info(f"device: {device}, {distributed.get_global_size()} process(es), weights: {args.weights or 'random'}")
    run_evaluation(args, cfg, root, device)
    if distributed.is_enabled():
        torch.distributed.barrier()
