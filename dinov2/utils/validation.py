"""The one start-up check shared by every entry point: training, ``--eval-only``, the retrieval tool,
the baselines tool and the SLURM launcher.

``check_run_inputs`` runs before anything is written to the output directory. It checks the merged
config's values (``validate_config``), then the files the run will read, in the order a user meets
them: the pretrained backbone weights, an explicit checkpoint (``MODEL.WEIGHTS`` or ``--weights``),
then the dataset root. Each problem is a ``ConfigError`` naming the key, the path and how to fix it.
"""

import os
from typing import Optional

from dinov2.utils.config import ConfigError

DEMO_DATA_PATH = "demo"


class InputNotFoundError(ConfigError, FileNotFoundError):
    """A file or folder that the config names is missing or of the wrong kind (also a FileNotFoundError)."""


def _check_file(path: str, what: str, fix: str) -> None:
    if os.path.isdir(path):
        raise InputNotFoundError(f"{what} is a directory, not a file: {path}. {fix}")
    if not os.path.isfile(path):
        raise InputNotFoundError(f"{what} not found: {path}. {fix}")


def check_data_path(data_path: Optional[str], source: str = "class_folders") -> None:
    """``train.data_path`` names what ``data.source`` reads (or is ``demo``): a readable folder with at
    least one sub-folder (class folders), a folder (folder tree), a file (image list), a folder or a
    ``.parquet`` file (parquet) or any of these (auto)."""
    if not data_path:
        raise ConfigError(
            "train.data_path is empty: set it to a folder of class folders, e.g. train.data_path=/data/AID "
            "(or train.data_path=demo for the generated demo dataset)"
        )
    if data_path == DEMO_DATA_PATH:
        return
    is_shard = os.path.isfile(data_path) and data_path.endswith(".parquet")
    if source == "parquet" or (source == "auto" and is_shard):
        if not os.path.exists(data_path):
            raise InputNotFoundError(
                f"train.data_path={data_path} does not exist (data.source=parquet reads a folder of *.parquet shards, "
                "e.g. a Hugging Face dataset download, or one .parquet file)"
            )
        if os.path.isfile(data_path) and not data_path.endswith(".parquet"):
            raise InputNotFoundError(
                f"train.data_path={data_path} is a file but not a .parquet file (data.source=parquet): give the "
                "dataset folder or a .parquet shard, or set data.source=image_list for a list file"
            )
        return
    if source == "image_list" or (source == "auto" and os.path.isfile(data_path)):
        if os.path.isdir(data_path):
            raise InputNotFoundError(
                f"train.data_path={data_path} is a folder but data.source=image_list reads a list file: give the "
                "list's path, or set data.source=class_folders (or folder_tree)"
            )
        if not os.path.isfile(data_path):
            raise InputNotFoundError(f"train.data_path={data_path}: image list file not found (data.source=image_list)")
        return
    if not os.path.isdir(data_path):
        if os.path.exists(data_path):
            raise InputNotFoundError(
                f"train.data_path={data_path} is a file, not a folder: for an image list set data.source=image_list, "
                "otherwise set train.data_path= to a folder with one sub-folder of images per class"
            )
        raise InputNotFoundError(
            f"train.data_path={data_path} does not exist: set train.data_path= to a folder with one sub-folder of "
            "images per class (or a list file with data.source=image_list)"
        )
    try:
        entries = os.listdir(data_path)
    except OSError as exc:
        raise ConfigError(f"train.data_path={data_path} cannot be read: {exc}") from exc
    if source == "class_folders" and not any(os.path.isdir(os.path.join(data_path, name)) for name in entries):
        raise InputNotFoundError(
            f"train.data_path={data_path} has no class folders: it must hold one sub-folder of images per class "
            "(for images without class folders set data.source=folder_tree)"
        )


def check_run_inputs(cfg, weights: Optional[str] = None, need_data: bool = True, need_pretrained: bool = True) -> None:
    """Check a merged config and the files it names before a run starts.

    Args:
        cfg: the merged configuration.
        weights: a checkpoint the entry point will read (``--weights`` of the tools), if any.
        need_data: whether the run reads ``train.data_path``.
        need_pretrained: whether the run loads ``student.pretrained_weights`` (not when a full
            checkpoint replaces the backbone anyway).
    Raises:
        ConfigError: the first problem, naming the key and the path.
    """
    pretrained = cfg.student.pretrained_weights
    if need_pretrained and pretrained:
        _check_file(
            pretrained,
            "student.pretrained_weights file",
            "Pass student.pretrained_weights=/path/to/dinov2_vits14_pretrain.pth (the public DINOv2 ViT-S/14 "
            "weights), or student.pretrained_weights= (empty) to train from random weights",
        )
    model_weights = cfg.MODEL.WEIGHTS
    if model_weights:
        _check_file(model_weights, "MODEL.WEIGHTS file", "Set MODEL.WEIGHTS= to a teacher_checkpoint.pth, or empty")
    if weights:
        _check_file(weights, "--weights file", "Pass the path of a teacher_checkpoint.pth or of DINOv2 weights")
    if need_data:
        check_data_path(cfg.train.data_path, cfg.data.source)
