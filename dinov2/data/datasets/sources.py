"""Choosing the image source of a path: class folders (the default), an image list, a folder tree or
a Hugging Face parquet dataset.

``data.source`` names it in the config (``train.data_path`` is then the root folder or the list file);
``auto`` decides from the path: a ``.parquet`` file, or a folder holding ``*.parquet`` shards and no
image file, is a parquet dataset; any other file is an image list; a folder whose visible entries are
all folders of images is class folders; any other folder is an unlabeled folder tree.
"""

import os
from typing import Callable, Optional

from .base import SplitImageDataset, is_image_file, is_visible
from .class_folder import ClassFolderDataset
from .decoders import PathLike
from .folder_tree import FolderTreeDataset
from .image_list import ImageListDataset
from .parquet import PARQUET_SUFFIX, ParquetDataset

SOURCES = ("class_folders", "image_list", "folder_tree", "parquet", "auto")


def holds_parquet_shards(folder: str) -> bool:
    """Whether ``folder`` holds ``*.parquet`` files (any depth) and no image file: a Hub dataset download.

    The walk stops at the first image file, so a folder of images is recognised after one listing.
    """
    found = False
    for _, subfolders, names in os.walk(folder):
        subfolders[:] = sorted(name for name in subfolders if is_visible(name))
        for name in names:
            if is_image_file(name):
                return False
            found = found or (is_visible(name) and name.endswith(PARQUET_SUFFIX))
    return found


def detect_source(path: str) -> str:
    """The source ``auto`` picks for ``path`` (see the module docstring)."""
    if os.path.isfile(path):
        return "parquet" if path.endswith(PARQUET_SUFFIX) else "image_list"
    if not os.path.isdir(path):
        raise FileNotFoundError(f"'{path}' is neither an image list file nor a folder")
    if holds_parquet_shards(path):
        return "parquet"
    names = [name for name in os.listdir(path) if is_visible(name)]
    folders = [name for name in names if os.path.isdir(os.path.join(path, name))]
    if not folders or any(is_image_file(name) for name in names if name not in folders):
        # Images at the top, or no sub-folder: not one folder per class.
        return "folder_tree"
    for folder in folders:
        inside = os.listdir(os.path.join(path, folder))
        if not any(is_image_file(name) and os.path.isfile(os.path.join(path, folder, name)) for name in inside):
            return "folder_tree"
    return "class_folders"


def open_image_source(
    path: PathLike,
    source: str = "auto",
    split: str = "all",
    train_ratio: float = 0.5,
    val_ratio: float = 0.0,
    transform: Optional[Callable] = None,
    target_transform: Optional[Callable] = None,
    cache: bool = False,
    cache_size: Optional[int] = None,
) -> SplitImageDataset:
    """One split of the images at ``path`` read as ``source`` (one of ``SOURCES``).

    Raises:
        ValueError: an unknown source; a path of the wrong kind for it (named with the fix).
        FileNotFoundError, ImageListError, ParquetError: as the dataset classes.
    """
    path = os.fspath(path)
    if source not in SOURCES:
        raise ValueError(f"image source '{source}' is not one of {', '.join(SOURCES)}")
    if source == "auto":
        source = detect_source(path)
    options = dict(transform=transform, target_transform=target_transform, cache=cache, cache_size=cache_size)
    if source == "parquet":
        return ParquetDataset(path, split, train_ratio, val_ratio, **options)
    if source == "image_list":
        if os.path.isdir(path):
            raise ValueError(f"data.source=image_list but '{path}' is a folder: give the list file, or data.source=class_folders")
        return ImageListDataset(path, split, train_ratio, val_ratio, **options)
    if os.path.isfile(path):
        raise ValueError(f"data.source={source} but '{path}' is a file: for an image list set data.source=image_list")
    if source == "folder_tree":
        return FolderTreeDataset(path, split, **options)
    return ClassFolderDataset(path, split, train_ratio, val_ratio, **options)
