"""A dataset laid out as one folder per class, split deterministically into database and queries.

This is the layout AID, UC Merced, NWPU-RESISC45, WHU-RS19 and PatternNet ship in. The retrieval
protocol of the SDSH paper splits each class by file name: the first ``int(n * train_ratio)`` files are
the training set, which is also the retrieval database, and the remaining files are the queries.

With ``val_ratio > 0`` the last ``int(n_train * val_ratio)`` training files of each class are held
out as validation queries: ``train``/``db`` then exclude them, and ``val`` queries are meant to be
searched against that reduced database, so model selection never looks at the test queries.
"""

import os
from typing import Callable, List, NamedTuple, Optional

from .base import (
    IMAGE_EXTENSIONS,
    SPLITS,
    ImageEntry,
    SplitImageDataset,
    check_split_arguments,
    is_image_file,
    is_visible,
    split_counts,
    split_of_position,
)
from .decoders import PathLike

__all__ = ["IMAGE_EXTENSIONS", "SPLITS", "ClassFolderDataset", "SplitEntry"]


class SplitEntry(NamedTuple):
    """One file of the dataset and the split it belongs to (``train``, ``val`` or ``query``)."""

    file: str  # relative to the root, "/"-separated
    label: int
    class_name: str
    split: str


def _list_class_folders(root: str) -> List[str]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset root '{root}' does not exist or is not a directory")
    classes = sorted(name for name in os.listdir(root) if is_visible(name) and os.path.isdir(os.path.join(root, name)))
    if not classes:
        raise FileNotFoundError(f"dataset root '{root}' contains no class folders (expected one folder per class)")
    return classes


def _list_images(root: str, class_name: str) -> List[str]:
    folder = os.path.join(root, class_name)
    files = sorted(
        name for name in os.listdir(folder) if is_image_file(name) and os.path.isfile(os.path.join(folder, name))
    )
    if not files:
        raise FileNotFoundError(
            f"class folder '{folder}' contains no images (expected files ending in {', '.join(IMAGE_EXTENSIONS)})"
        )
    return files


class ClassFolderDataset(SplitImageDataset):
    """Images in ``root/<class>/<file>``, one split of the deterministic per-class split.

    Classes are sorted by folder name (label = position); within a class, files with an image
    extension (case-insensitive: .jpg .jpeg .png .tif .tiff .bmp .webp) are sorted by name. Hidden
    entries (names starting with ".") are ignored. Samples are ordered by class, then by file name.

    Args:
        root: dataset root, one sub-folder per class.
        split: ``train`` (= ``db``, the training set and retrieval database), ``query``, ``val``
            (validation queries, only with ``val_ratio > 0``) or ``all``.
        train_ratio: fraction of each class in the training set, in (0, 1).
        val_ratio: fraction of each class's training files held out as validation queries, in [0, 1).
        transform: applied to the RGB PIL image.
        target_transform: applied to the integer label.
        cache: decode every image of the split once and keep it in memory (uint8 arrays).
        cache_size: with ``cache``, resize so the shorter side is this many pixels (aspect kept).

    Raises:
        FileNotFoundError: missing root, root without class folders, class folder without images.
        ValueError: a split name, ratio or per-class count that cannot be used (named in the message).
        ImageLoadError: with ``cache``, a file that cannot be decoded.
    """

    kind = "dataset"

    def __init__(
        self,
        root: PathLike,
        split: str,
        train_ratio: float,
        val_ratio: float = 0.0,
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
        cache: bool = False,
        cache_size: Optional[int] = None,
    ):
        check_split_arguments(split, train_ratio, val_ratio, cache_size)
        if split == "val" and val_ratio == 0.0:
            raise ValueError("split 'val' needs val_ratio > 0 (got val_ratio=0.0)")
        root = os.fspath(root)
        self.train_ratio = train_ratio
        self.val_ratio = val_ratio
        classes = _list_class_folders(root)
        entries = []
        for label, class_name in enumerate(classes):
            files = _list_images(root, class_name)
            group = f"class '{class_name}' ('{os.path.join(root, class_name)}'"
            n_train, n_val, _ = split_counts(len(files), train_ratio, val_ratio, group + ")", split != "all")
            for position, name in enumerate(files):
                entries.append(ImageEntry(f"{class_name}/{name}", (label,), split_of_position(position, n_train, n_val)))
        details = f"train_ratio {train_ratio}, val_ratio {val_ratio}"
        self._select(root, split, entries, classes, transform, target_transform, cache, cache_size, details)

    def get_split_entries(self) -> List[SplitEntry]:
        """Every file of the dataset (all splits) with its label, class and split, in sample order.

        Returns:
            A list of ``SplitEntry(file, label, class_name, split)``; ``split`` is ``train`` (also the
            database), ``val`` or ``query``.
        """
        return [SplitEntry(e.file, e.labels[0], self.classes[e.labels[0]], e.split) for e in self._entries]
