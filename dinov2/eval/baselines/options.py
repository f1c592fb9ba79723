"""Command-line options of the baselines tool (``python -m dinov2.eval.baselines``), importable without torch.

``main`` parses them and runs ``dinov2.eval.baselines.tool.run`` through the shared wrapper.
"""

import argparse
from typing import Optional, Sequence

from dinov2.utils.cli import EXIT_STATUS_HELP, config_options, positive_int, run_cli

# The method names, here so that the options list them without importing the methods (numpy, torch).
METHODS = ("lsh", "pcah", "itq", "sh")
FEATURE_KINDS = ("pixels", "backbone")
DEFAULT_PIXEL_SIZE = 16

_EXAMPLES = f"""examples:
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
dinov2/configs/ssl_default_config.yaml.
{EXIT_STATUS_HELP}
"""


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line options of the baselines tool.

    Args:
        add_help: add ``-h/--help`` (False when used as a parent parser).
    Returns:
        The parser: --config-file, --output-dir, --device, --bits, --features, --weights, --methods, --seed,
        --pixel-size, --batch-size and ``key=value`` options.
    """
    parser = argparse.ArgumentParser(
        "SDSH hashing baselines",
        description="Fit LSH, PCAH, ITQ and Spectral Hashing on database features (small image pixels and/or "
        "a frozen backbone's CLS token) and score Hamming-ranking retrieval on the split of the training-time "
        "evaluation.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=add_help,
        parents=[config_options(device_help="where the backbone runs")],
    )
    parser.add_argument("--bits", default="16,32,48,64", metavar="K,K,..", help="code lengths (default 16,32,48,64)")
    parser.add_argument(
        "--features",
        choices=(*FEATURE_KINDS, "both"),
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
        "--pixel-size", type=positive_int, default=DEFAULT_PIXEL_SIZE, metavar="P", help="side of the pixel features (16)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=None, metavar="B", help="images per forward pass (evaluation.batch_size)"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the baselines tool.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).
    Returns:
        The exit status of ``dinov2.utils.cli`` (0 success, 2 bad input, with ``error: ...`` on stderr).
    """
    return run_cli(get_args_parser(), "dinov2.eval.baselines.tool:run", argv)
