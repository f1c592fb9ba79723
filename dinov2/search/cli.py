"""Command line of the archive index: ``build`` an index of an image folder, ``search`` it, ``serve`` it.

Run as ``python -m dinov2.search <command> ...``; the layout of the index directory is described in
``dinov2.search.archive``, the HTTP service in ``dinov2.search.service``.
"""

import argparse
import json
import logging
import os
import shutil
import sys
from typing import Any, Dict, List, Optional, Sequence, TextIO

import torch
from omegaconf import OmegaConf
from torch.utils.data import Subset

from dinov2 import distributed
from dinov2.checkpoint import CheckpointError, atomic_write_text, weights_identity
from dinov2.data import ImageLoadError, make_classification_eval_transform
from dinov2.data.datasets import SOURCES, load_image_rgb
from dinov2.distributed.devices import select_device
from dinov2.logging import setup_logging
from dinov2.models.hashing_network import load_hashing_network
from dinov2.search.archive import (
    CHUNKS_DIR,
    DEFAULT_CHUNK_SIZE,
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
from dinov2.utils.config import ConfigError, merge_config
from dinov2.utils.validation import check_run_inputs

logger = logging.getLogger("dinov2")

DEFAULT_K = 10
DEFAULT_MAX_UPLOAD_MB = 16.0

_EXAMPLES = """examples:
  # encode every image of a class-folder tree with a trained teacher (resumable: run it again after a stop)
  python -m dinov2.search build --config-file configs/aid_64bit.yaml \\
      --weights runs/aid64/eval/best/teacher_checkpoint.pth --images /data/AID --output-dir indexes/aid

  # an image list (CSV "path,label1;label2", paths relative to the list) or an unlabeled folder tree
  python -m dinov2.search build --weights teacher_checkpoint.pth --images /data/tiles.csv --output-dir indexes/tiles

  # the same on 4 GPUs: each process encodes its own chunks, the first merges them
  torchrun --nproc_per_node 4 -m dinov2.search build --config-file configs/aid_64bit.yaml \\
      --weights teacher_checkpoint.pth --images /data/AID --output-dir indexes/aid

  # the 10 nearest indexed images of one image (with the weights recorded in the index)
  python -m dinov2.search search --index indexes/aid --image query.jpg -k 10

  # a web page and a JSON API on http://127.0.0.1:8000/
  python -m dinov2.search serve --index indexes/aid --port 8000

Exit status: 0 on success, 2 on bad input (the message names the file, option or key).
"""


def get_args_parser() -> argparse.ArgumentParser:
    """Options of ``build``, ``search`` and ``serve``."""
    parser = argparse.ArgumentParser(
        "python -m dinov2.search",
        description="Index an image archive with an SDSH teacher and search it by image (exact Hamming k-NN).",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="{build,search,serve}", required=True)
    formatter = argparse.RawDescriptionHelpFormatter

    build = commands.add_parser(
        "build", help="encode an image folder into an index directory", epilog=_EXAMPLES, formatter_class=formatter
    )
    build.add_argument("--weights", required=True, metavar="CKPT", help="teacher checkpoint that encodes the images")
    build.add_argument(
        "--images",
        required=True,
        metavar="PATH",
        help="the images: a folder of class folders, an image list file (CSV path,labels) or any folder tree",
    )
    build.add_argument(
        "--source",
        choices=SOURCES,
        default="auto",
        help="how to read --images (default auto: a file is an image list, a folder of image folders is "
        "class folders, any other folder an unlabeled tree)",
    )
    build.add_argument("--output-dir", required=True, metavar="DIR", help="the index directory to write")
    build.add_argument("--config-file", default="", metavar="FILE", help="YAML overrides of the default config")
    build.add_argument("--batch-size", type=int, default=None, metavar="B", help="images per forward pass")
    build.add_argument("--device", choices=("cpu", "cuda", "auto"), default=None, help="where the network runs")
    build.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, metavar="N", help="images per resumable chunk"
    )
    build.add_argument(
        "--overwrite", action="store_true", help="replace an index built with other weights, config or images"
    )
    build.add_argument("opts", nargs=argparse.REMAINDER, default=None, help="config overrides as key=value")

    search = commands.add_parser(
        "search", help="print the nearest indexed images of one image", epilog=_EXAMPLES, formatter_class=formatter
    )
    search.add_argument("--index", required=True, metavar="DIR", help="an index directory written by build")
    search.add_argument("--image", required=True, metavar="FILE", help="the query image")
    search.add_argument("-k", type=int, default=DEFAULT_K, metavar="N", help=f"how many results (default {DEFAULT_K})")
    search.add_argument("--weights", default=None, metavar="CKPT", help="teacher checkpoint (default: meta.json's)")
    search.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto", help="where the network runs")
    search.add_argument("--json", action="store_true", help="print the results as one JSON object")

    serve = commands.add_parser(
        "serve", help="a web page and JSON API to search the index", epilog=_EXAMPLES, formatter_class=formatter
    )
    serve.add_argument("--index", required=True, metavar="DIR", help="an index directory written by build")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, metavar="N", help="port (0: a free one, printed)")
    serve.add_argument("--weights", default=None, metavar="CKPT", help="teacher checkpoint (default: meta.json's)")
    serve.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto", help="where the network runs")
    serve.add_argument(
        "--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, metavar="MB", help="largest accepted upload"
    )
    return parser


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
    if args.chunk_size < 1:
        raise ArchiveError(f"--chunk-size={args.chunk_size} must be a positive number of images")
    if args.batch_size is not None and args.batch_size < 1:
        raise ArchiveError(f"--batch-size={args.batch_size} must be a positive number of images")
    if not os.path.isfile(args.weights):
        raise FileNotFoundError(f"weights file not found: {args.weights}")
    cfg = merge_config(args.config_file, list(args.opts or []))
    if args.device:
        cfg.train.device = args.device
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
    check_images_readable([dataset.samples[i][0] for c in mine for i in ranges[c]], progress)
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
    if args.k < 1:
        raise ArchiveError(f"-k={args.k} must be a positive number of results")
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
    from dinov2.search.service import serve

    if args.max_upload_mb <= 0:
        raise ArchiveError(f"--max-upload-mb={args.max_upload_mb} must be positive")
    searcher = ArchiveSearcher(args.index, args.weights, args.device)
    serve(searcher, args.host, args.port, int(args.max_upload_mb * 1024 * 1024))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).
    Returns:
        The exit status: 0 on success, 2 on bad input (message on stderr, prefixed ``error:``).
    """
    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error already printed by argparse
        return int(exit_.code or 0)
    started_distributed = False
    try:
        setup_logging(level=logging.INFO if args.command != "search" else logging.WARNING)
        if args.command == "build":
            if not distributed.is_enabled():
                distributed.enable(overwrite=True)
                started_distributed = distributed.is_enabled()
            run_build(args)
        elif distributed.get_global_size() > 1:
            raise ArchiveError(f"{args.command} runs in a single process; launch it without torchrun")
        elif args.command == "search":
            run_search(args)
        else:
            run_serve(args)
    except (
        ArchiveError,
                ConfigError,
        CheckpointError,
        ImageLoadError,
        FileNotFoundError,
    ) as error:
        # Expected failures (bad options, config, checkpoint, images or index) get their message, not a traceback.
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if started_distributed:
            torch.distributed.destroy_process_group()
    return 0
