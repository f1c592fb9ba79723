"""Command line of the archive index: ``build`` an index of an image folder, ``search`` it, ``serve`` it.

Run as ``python -m dinov2.search <command> ...``; the layout of the index directory is described in
``dinov2.search.archive``, the HTTP service in ``dinov2.search.service``.
"""

import json
import logging
import os
import shutil
import sys
from typing import Any, Dict, List, Optional, TextIO

import torch
from omegaconf import OmegaConf
from torch.utils.data import Subset

from dinov2 import distributed
from dinov2.checkpoint import atomic_write_text, weights_identity
from dinov2.data import ImageLoadError, make_classification_eval_transform
from dinov2.data.datasets import load_image_rgb
from dinov2.distributed.devices import select_device
from dinov2.logging import setup_logging
from dinov2.models import load_hashing_network
from dinov2.models.checkpoint_config import merge_config_for_weights
from dinov2.search.archive import (
    CHUNKS_DIR,
    FILES_FILE,
    FINGERPRINT_FILE,
    INDEX_FILE,
    META_FILE,
    ArchiveError,
    ArchiveSearcher,
    build_fingerprint,
    check_images_readable,
    chunk_path,
    chunk_ranges,
    encode_packed,
    fingerprint_differences,
    merge_chunks,
    open_images,
    write_chunk,
)
from dinov2.search.options import get_args_parser, main  # noqa: F401  (the command line, callable from here)
from dinov2.utils.config import command_line_opts
from dinov2.utils.validation import check_run_inputs

logger = logging.getLogger("dinov2")

# ---------------------------------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------------------------------


def _barrier() -> None:
    if distributed.is_enabled():
        torch.distributed.barrier()


def _read_stored_fingerprint(output_dir: str) -> Optional[Dict[str, Any]]:
    """The stored fingerprint; {} for a directory holding index files but no fingerprint; None when fresh."""
    path = os.path.join(output_dir, FINGERPRINT_FILE)
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}
    if any(os.path.exists(os.path.join(output_dir, name)) for name in (CHUNKS_DIR, INDEX_FILE, META_FILE)):
        return {}
    return None


def _clear_index_files(output_dir: str) -> None:
    """Remove what build writes (and nothing else the directory may hold); meta.json first."""
    for name in (META_FILE, INDEX_FILE, FILES_FILE, FINGERPRINT_FILE):
        path = os.path.join(output_dir, name)
        if os.path.exists(path):
            os.remove(path)
    shutil.rmtree(os.path.join(output_dir, CHUNKS_DIR), ignore_errors=True)


def run_build(args) -> Optional[Dict[str, Any]]:
    """Encode the chunks of this rank that are not finished, then (rank 0) merge all of them.

    Returns:
        The meta.json fields on rank 0, None on the other ranks.
    """
    if not os.path.isfile(args.weights):
        raise FileNotFoundError(f"weights file not found: {args.weights}")
    cfg = merge_config_for_weights(args.config_file, command_line_opts(args), args.weights)
    check_run_inputs(cfg, weights=args.weights, need_data=False, need_pretrained=False)
    device = select_device(cfg)
    transform = make_classification_eval_transform(crop_size=cfg.crops.global_crops_size)
    dataset = open_images(args.images, transform, args.source)
    if len(dataset) == 0:
        raise ArchiveError(f"--images {args.images}: no images to index")
    out = args.output_dir
    fingerprint = build_fingerprint(cfg, args.weights, dataset, args.chunk_size)
    stored = _read_stored_fingerprint(out)
    stale = stored is not None and stored != fingerprint
    if stale and not args.overwrite:
        what = ", ".join(fingerprint_differences(stored, fingerprint)) or FINGERPRINT_FILE
        raise ArchiveError(
            f"{out} holds an index built with other settings (differing: {what}); pass --overwrite to replace it, "
            "or choose another --output-dir"
        )
    network, fmt = load_hashing_network(cfg, args.weights, device)  # checks the weights against the config

    rank, world = distributed.get_global_rank(), distributed.get_global_size()
    ranges = chunk_ranges(len(dataset), args.chunk_size)
    mine = [c for c in range(rank, len(ranges), world) if stale or not os.path.isfile(chunk_path(out, c))]
    progress = rank == 0 and sys.stderr.isatty()
    check_images_readable(dataset, [i for c in mine for i in ranges[c]], progress)
    _barrier()  # every rank has checked its images and read the old fingerprint before anything changes
    if rank == 0:
        if stale:
            _clear_index_files(out)
        elif os.path.exists(os.path.join(out, META_FILE)):
            os.remove(os.path.join(out, META_FILE))  # the index stays unloadable until the merge is done
        os.makedirs(os.path.join(out, CHUNKS_DIR), exist_ok=True)
        atomic_write_text(os.path.join(out, FINGERPRINT_FILE), json.dumps(fingerprint, indent=2) + "\n")
    _barrier()

    todo = sum(len(ranges[c]) for c in mine)
    logger.info(
        f"{len(dataset)} images in {len(ranges)} chunks of {args.chunk_size}; this process ({rank} of {world}) "
        f"encodes {len(mine)} chunks ({todo} images) on {device}"
    )
    batch_size = args.batch_size or cfg.evaluation.batch_size
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=todo, desc="encoding", unit="image")
    for c in mine:
        packed = encode_packed(network, Subset(dataset, ranges[c]), batch_size, cfg.evaluation.num_workers, device)
        write_chunk(chunk_path(out, c), packed)
        if bar is not None:
            bar.update(len(ranges[c]))
    if bar is not None:
        bar.close()
    _barrier()
    if rank != 0:
        return None
    meta = merge_chunks(
        out,
        dataset,
        network.hash_bit,
        args.chunk_size,
        {
            **weights_identity(args.weights),
            "checkpoint_format": fmt,
            "images": os.path.abspath(args.images),
            "fingerprint": fingerprint,
            "config": OmegaConf.to_container(cfg, resolve=True),
        },
    )
    logger.info(f"index of {meta['count']} images, {meta['nbits']} bits: {out}")
    return meta


# ---------------------------------------------------------------------------------------------------
# search and serve
# ---------------------------------------------------------------------------------------------------


def print_results(query: str, searcher: ArchiveSearcher, rows: List[Dict[str, Any]], out: TextIO) -> None:
    print(f"query: {query}  ({searcher.nbits} bits, {searcher.count} indexed images)", file=out)
    width = max(len("path"), *(len(r["path"]) for r in rows))
    print(f"{'rank':>4}  {'hamming':>7}  {'path':<{width}}  labels", file=out)
    for r in rows:
        print(f"{r['rank']:>4}  {r['distance']:>7}  {r['path']:<{width}}  {';'.join(r['labels'])}", file=out)


def run_search(args, out: Optional[TextIO] = None) -> List[Dict[str, Any]]:
    """Print the ``-k`` nearest indexed images of ``--image`` (a table, or JSON with ``--json``)."""
    if not os.path.isfile(args.image):
        raise FileNotFoundError(f"query image not found: {args.image}")
    searcher = ArchiveSearcher(args.index, args.weights, args.device)
    try:
        image = load_image_rgb(args.image)
    except ImageLoadError as exc:
        raise ImageLoadError(f"query image: {exc}") from None
    rows = searcher.search(image, args.k)
    out = sys.stdout if out is None else out
    if args.json:
        payload = {"query": args.image, "k": len(rows), "nbits": searcher.nbits, "results": rows}
        print(json.dumps(payload, ensure_ascii=False), file=out)
    else:
        print_results(args.image, searcher, rows, out)
    return rows


def run_serve(args) -> None:
    if args.max_upload_mb <= 0:
        raise ArchiveError(f"--max-upload-mb={args.max_upload_mb} must be positive")
    try:
        # The service is an optional extra (FastAPI and uvicorn): build and search work without it.
        from dinov2.search.service import serve
    except ImportError as exc:
        raise ArchiveError(f"serve needs the service extra ({exc.name} is missing): pip install 'sdsh[service]'") from None
    searcher = ArchiveSearcher(args.index, args.weights, args.device)
    serve(searcher, args.host, args.port, int(args.max_upload_mb * 1024 * 1024))


def run(args) -> None:
    """Run the ``build``, ``search`` or ``serve`` command of the parsed options of ``get_args_parser``."""
    setup_logging(level=logging.INFO if args.command != "search" else logging.WARNING)
    if args.command == "build":
        run_build(args)
    elif distributed.get_global_size() > 1:
        raise ArchiveError(f"{args.command} runs in a single process; launch it without torchrun")
    elif args.command == "search":
        run_search(args)
    else:
        run_serve(args)
