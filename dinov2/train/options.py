"""Command-line options of the training entry point (``dinov2/train/train.py``), importable without torch."""

import argparse

from dinov2.utils.cli import EXIT_STATUS_HELP, config_options

_EXAMPLES = f"""examples:
  # the demo: a generated dataset and a tiny ViT trained from scratch on the CPU (a few minutes)
  python dinov2/train/train.py --config-file configs/demo.yaml --output-dir outputs/demo

  # AID, 64 bits, from the public DINOv2 ViT-S/14 weights, on 8 GPUs
  torchrun --nproc_per_node 8 dinov2/train/train.py --config-file configs/aid_64bit.yaml \\
      --output-dir runs/aid64 train.data_path=/data/AID student.pretrained_weights=/w/dinov2_vits14_pretrain.pth

  # evaluate the teacher of the last checkpoint of a run (or any checkpoint with MODEL.WEIGHTS=...)
  python dinov2/train/train.py --config-file configs/aid_64bit.yaml --output-dir runs/aid64 --eval-only

Every key=value option must name a key of dinov2/configs/ssl_default_config.yaml.
{EXIT_STATUS_HELP}
"""


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line options of the training entry point.

    Args:
        add_help: add ``-h/--help`` (False when used as a parent parser, e.g. by the SLURM launcher).
    Returns:
        The parser: --config-file, --output-dir, --device, --no-resume, --eval-only and ``key=value`` options.
    """
    parser = argparse.ArgumentParser(
        "SDSH training",
        description="Train SDSH (self-distilled self-supervised hashing) with the DINOv2 trainer, evaluating "
        "the teacher's binary codes by Hamming-ranking retrieval mAP.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=add_help,
        parents=[
            config_options(
                output_help="directory of the config, logs, checkpoints and evaluation results",
                device_help="where training runs",
            )
        ],
    )
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="start from the initial weights instead of the last checkpoint in --output-dir",
    )
    parser.add_argument(
        "--eval-only",
        action="store_true",
        help="only evaluate: the teacher of the last checkpoint in --output-dir, or MODEL.WEIGHTS when set",
    )
    return parser
