"""Datasets and loaders of a run: the dataset root (or the generated demo set), the evaluation
splits and the multi-crop training loader."""

import logging
import os
from functools import partial
from typing import Optional

import torch

from dinov2 import distributed
from dinov2.utils.config import ConfigError

from .augmentations import DataAugmentationDINO
from .collate import collate_data_and_cast
from .datasets import SplitImageDataset, open_image_source
from .demo import generate_demo_dataset
from .loaders import make_data_loader
from .masking import MaskingGenerator
from .transforms import make_classification_eval_transform

logger = logging.getLogger("dinov2")

DEMO_ROOT = "demo"


def resolve_data_root(cfg) -> str:
    """``train.data_path``, or the demo dataset generated once under ``<output-dir>/demo_data`` for ``demo``."""
    root = cfg.train.data_path
    if not root:
        raise ConfigError("train.data_path is empty: set it to a folder of class folders (or 'demo'), e.g. train.data_path=/data/AID")
    if root != DEMO_ROOT:
        return root
    demo_root = os.path.join(cfg.train.output_dir, "demo_data")
    if distributed.is_main_process():
        generate_demo_dataset(
            demo_root,
            num_classes=cfg.data.demo_classes,
            images_per_class=cfg.data.demo_images_per_class,
            image_size=cfg.data.demo_image_size,
        )
    if distributed.is_enabled():
        torch.distributed.barrier()
    return demo_root


def data_source(cfg, root: str) -> str:
    """``data.source`` (the generated demo dataset is always class folders)."""
    return "class_folders" if cfg.train.data_path == DEMO_ROOT else cfg.data.source


def open_dataset(cfg, root: str, split: str, transform, cache_size) -> SplitImageDataset:
    """One split of the run's image source (``data.source``) with ``transform``."""
    try:
        return open_image_source(
            root,
            data_source(cfg, root),
            split,
            cfg.train.train_ratio,
            cfg.data.val_ratio,
            transform=transform,
            cache=cfg.train.cache_dataset,
            cache_size=cache_size,
        )
    except ValueError as exc:
        # Split rules that cannot be met and unusable list lines name the file; say which keys lead there.
        raise ConfigError(f"train.data_path={cfg.train.data_path} (data.source={data_source(cfg, root)}): {exc}") from None


def is_labeled(cfg, root: str) -> bool:
    """Whether the run's images have labels (an unlabeled source trains without retrieval evaluation)."""
    return open_image_source(root, data_source(cfg, root), "all", cfg.train.train_ratio, cfg.data.val_ratio).labeled


def make_eval_dataset(cfg, root: str, split: str) -> SplitImageDataset:
    """One split of the dataset with the evaluation transform of ``crops.global_crops_size``.

    Args:
        cfg: the configuration (``data.*``, ``crops.global_crops_size``, ``train.cache_dataset``).
        root: the dataset root (or image list file).
        split: ``train`` (the database), ``query`` or ``val``.
    """
    transform = make_classification_eval_transform(crop_size=cfg.crops.global_crops_size)
    try:
        # The transform first resizes the shorter side to this size: caching at it changes nothing.
        return open_dataset(cfg, root, split, transform, transform.transforms[0].size)
    except ConfigError:
        raise
    except ValueError as exc:
        # e.g. a train_ratio that leaves a class without database or query images
        raise ConfigError(f"dataset '{root}', split {split}: {exc}") from None


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def train_loader_workers(cfg, device: Optional[torch.device] = None) -> int:
    """``train.num_workers``; a CPU-only run uses at most one worker per usable core (and logs it).

    The YAML default stays the reference's 8 (sized for GPU nodes); on a CPU the training step
    itself needs the cores, so more workers than cores only adds processes and memory.
    """
    requested = cfg.train.num_workers
    if device is None or device.type != "cpu":
        return requested
    cores = usable_cpus()
    if requested <= cores:
        return requested
    logger.info(
        f"train.num_workers={requested} but this CPU-only run has {cores} usable CPU core(s): "
        f"using {cores} loader worker(s); set train.num_workers to choose"
    )
    return cores


def build_train_loader(cfg, root: str, input_dtype: torch.dtype, start_iter: int, device: Optional[torch.device] = None):
    """The multi-crop training loader over the ``train`` split; also writes the split manifest (rank 0)."""
    crops = cfg.crops
    augmentation = DataAugmentationDINO(
        crops.global_crops_scale,
        crops.local_crops_scale,
        crops.local_crops_number,
        global_crops_size=crops.global_crops_size,
        local_crops_size=crops.local_crops_size,
    )
    dataset = open_dataset(cfg, root, "train", augmentation, cfg.data.cache_size)
    if distributed.is_main_process():
        manifest = dataset.write_manifest(os.path.join(cfg.train.output_dir, "split_manifest.csv"))
        logger.info(f"split manifest: {manifest}")
    patch = cfg.student.patch_size
    if crops.global_crops_size % patch or crops.local_crops_size % patch:
        raise ConfigError(
            f"crops.global_crops_size={crops.global_crops_size} and crops.local_crops_size={crops.local_crops_size} "
            f"must be multiples of student.patch_size={patch}"
        )
    grid = crops.global_crops_size // patch
    mask_generator = MaskingGenerator(input_size=(grid, grid), max_num_patches=0.5 * grid * grid)
    collate_fn = partial(
        collate_data_and_cast,
        mask_ratio_tuple=tuple(cfg.ibot.mask_ratio_min_max),
        mask_probability=cfg.ibot.mask_sample_probability,
        n_tokens=grid * grid,
        mask_generator=mask_generator,
        dtype=input_dtype,
    )
    batch_size = cfg.train.batch_size_per_gpu
    return make_data_loader(
        dataset,
        batch_size=batch_size,
        num_workers=train_loader_workers(cfg, device),
        shuffle=True,
        seed=cfg.train.seed,
        sampler_advance=start_iter * batch_size,
        drop_last=True,
        collate_fn=collate_fn,
    )
