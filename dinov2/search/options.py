"""Command-line options of the archive index (``python -m dinov2.search``), importable without torch.

``main`` parses them and runs ``dinov2.search.cli.run`` through the shared wrapper.
"""

import argparse
from typing import Optional, Sequence

from dinov2.utils.cli import DEVICES, EXIT_STATUS_HELP, config_options, positive_int, run_cli

DEFAULT_K = 10
DEFAULT_MAX_UPLOAD_MB = 16.0
DEFAULT_CHUNK_SIZE = 1024
# The values of dinov2.data.datasets.SOURCES (a test keeps them equal), here without importing the datasets.
IMAGE_SOURCES = ("class_folders", "image_list", "folder_tree", "parquet", "auto")

_EXAMPLES = f"""examples:
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

{EXIT_STATUS_HELP}
"""


def get_args_parser() -> argparse.ArgumentParser:
    """Options of ``build``, ``search`` and ``serve``.

    Returns:
        The parser; ``build`` takes the shared config options of ``dinov2.utils.cli.config_options``.
    """
    parser = argparse.ArgumentParser(
        "python -m dinov2.search",
        description="Index an image archive with an SDSH teacher and search it by image (exact Hamming k-NN).",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="{build,search,serve}", required=True)
    formatter = argparse.RawDescriptionHelpFormatter

    build = commands.add_parser(
        "build",
        help="encode an image folder into an index directory",
        epilog=_EXAMPLES,
        formatter_class=formatter,
        parents=[
            config_options(
                output_help="the index directory to write", device_help="where the network runs", output_required=True
            )
        ],
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
        choices=IMAGE_SOURCES,
        default="auto",
        help="how to read --images (default auto: a file is an image list, a folder of *.parquet shards a "
        "Hugging Face dataset, a folder of image folders class folders, any other folder an unlabeled tree)",
    )
    build.add_argument("--batch-size", type=positive_int, default=None, metavar="B", help="images per forward pass")
    build.add_argument(
        "--chunk-size", type=positive_int, default=DEFAULT_CHUNK_SIZE, metavar="N", help="images per resumable chunk"
    )
    build.add_argument(
        "--overwrite", action="store_true", help="replace an index built with other weights, config or images"
    )

    search = commands.add_parser(
        "search", help="print the nearest indexed images of one image", epilog=_EXAMPLES, formatter_class=formatter
    )
    search.add_argument("--index", required=True, metavar="DIR", help="an index directory written by build")
    search.add_argument("--image", required=True, metavar="FILE", help="the query image")
    search.add_argument("-k", type=positive_int, default=DEFAULT_K, metavar="N", help=f"how many results (default {DEFAULT_K})")
    search.add_argument("--weights", default=None, metavar="CKPT", help="teacher checkpoint (default: meta.json's)")
    search.add_argument("--device", choices=DEVICES, default="auto", help="where the network runs")
    search.add_argument("--json", action="store_true", help="print the results as one JSON object")

    serve = commands.add_parser(
        "serve", help="a web page and JSON API to search the index", epilog=_EXAMPLES, formatter_class=formatter
    )
    serve.add_argument("--index", required=True, metavar="DIR", help="an index directory written by build")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, metavar="N", help="port (0: a free one, printed)")
    serve.add_argument("--weights", default=None, metavar="CKPT", help="teacher checkpoint (default: meta.json's)")
    serve.add_argument("--device", choices=DEVICES, default="auto", help="where the network runs")
    serve.add_argument(
        "--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, metavar="MB", help="largest accepted upload"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).
    Returns:
        The exit status of ``dinov2.utils.cli`` (0 success, 2 bad input, with ``error: ...`` on stderr).
    """
    return run_cli(get_args_parser(), "dinov2.search.cli:run", argv, distributed=True)
