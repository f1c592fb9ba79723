"""Command-line options of the retrieval tool (``python -m dinov2.eval.retrieval``), importable without torch.

``main`` parses them and runs ``dinov2.eval.retrieval.tool.run`` through the shared wrapper.
"""

import argparse
from typing import Optional, Sequence

from dinov2.utils.cli import EXIT_STATUS_HELP, config_options, positive_int, run_cli

_EXAMPLES = f"""examples:
  # evaluate a trained teacher on AID (metrics.json, codes.npz, database.faissindex, plots)
  python -m dinov2.eval.retrieval --config-file configs/aid_64bit.yaml \\
      --weights runs/aid64/eval/best/teacher_checkpoint.pth --output-dir runs/aid64/retrieval train.data_path=/data/AID

  # the demo run of dinov2/train/train.py, evaluated on its generated dataset
  python -m dinov2.eval.retrieval --config-file configs/demo.yaml \\
      --weights outputs/demo/eval/best/teacher_checkpoint.pth --output-dir outputs/demo/retrieval

  # the 10 nearest database images of one image (reuses codes.npz of --output-dir when it matches)
  python -m dinov2.eval.retrieval --config-file configs/aid_64bit.yaml --weights teacher_checkpoint.pth \\
      --output-dir runs/aid64/retrieval --query some_image.jpg --topk 10 train.data_path=/data/AID

  # baseline: a randomly initialised hash head on the public DINOv2 backbone
  python -m dinov2.eval.retrieval --config-file configs/aid_64bit.yaml --random-weights \\
      --output-dir runs/aid64/random train.data_path=/data/AID student.pretrained_weights=/w/dinov2_vits14_pretrain.pth

--weights accepts this project's training checkpoints (model_*.pth) and teacher checkpoints, a
teacher_checkpoint.pth of the reference SDSH code, or a bare DINOv2 backbone (random hash head).
Every key=value option must name a key of dinov2/configs/ssl_default_config.yaml.
{EXIT_STATUS_HELP}
"""


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line options of the retrieval tool.

    Args:
        add_help: add ``-h/--help`` (False when used as a parent parser).
    Returns:
        The parser: --config-file, --output-dir, --device, --weights, --random-weights, --query, --topk,
        --batch-size, --no-plots and ``key=value`` options.
    """
    parser = argparse.ArgumentParser(
        "SDSH retrieval",
        description="Encode a dataset with an SDSH teacher into binary codes and evaluate Hamming-ranking "
        "retrieval (database = train split, queries = query split), or search the database with one image.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=add_help,
        parents=[config_options(device_help="where the network runs")],
    )
    parser.add_argument("--weights", default="", metavar="CKPT", help="checkpoint of the network to evaluate")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="evaluate without --weights: random hash head (and backbone unless student.pretrained_weights is set)",
    )
    parser.add_argument("--query", default="", metavar="IMAGE", help="print the nearest database images of IMAGE")
    parser.add_argument("--topk", type=positive_int, default=10, metavar="N", help="with --query: how many (default 10)")
    parser.add_argument(
        "--batch-size", type=positive_int, default=None, metavar="B", help="images per forward pass (evaluation.batch_size)"
    )
    parser.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the retrieval tool.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).
    Returns:
        The exit status of ``dinov2.utils.cli`` (0 success, 2 bad input, with ``error: ...`` on stderr).
    """
    return run_cli(get_args_parser(), "dinov2.eval.retrieval.tool:run", argv, distributed=True)
