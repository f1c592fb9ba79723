"""A dataset laid out as one folder per class, split deterministically into database and queries.

This is the layout AID, UC Merced, NWPU-RESISC45, WHU-RS19 and PatternNet ship in. The retrieval
protocol of the SDSH paper splits each class by file name: the first ``int(n * train_ratio)`` files are
the training set, which is also the retrieval database, and the remaining files are the queries.

With ``val_ratio > 0`` the last ``int(n_train * val_ratio)`` training files of each class are held
out as validation queries: ``train``/``db`` then exclude them, and ``val`` queries are meant to be
searched against that reduced database, so model selection never looks at the test queries.
"""

import csv
import io
import logging
import os
from typing import Callable, List, NamedTuple, Optional, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from dinov2 import distributed
from dinov2.utils.checkpoint import atomic_write_text

from .decoders import PathLike, load_image_rgb

logger = logging.getLogger("dinov2")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
SPLITS = ("train", "db", "query", "val", "all")
# "db" is the retrieval database, which is the training set by protocol.
_SPLIT_ALIASES = {"db": "train"}


class SplitEntry(NamedTuple):
    """One file of the dataset and the split it belongs to (``train``, ``val`` or ``query``)."""

    file: str  # relative to the root, "/"-separated
    label: int
    class_name: str
    split: str


def _is_visible(name: str) -> bool:
    # Hidden entries (".DS_Store", "._x.jpg" resource forks, ".complete" markers) are never data.
    return not name.startswith(".")


def _list_class_folders(root: str) -> List[str]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset root '{root}' does not exist or is not a directory")
    classes = sorted(name for name in os.listdir(root) if _is_visible(name) and os.path.isdir(os.path.join(root, name)))
    if not classes:
        raise FileNotFoundError(f"dataset root '{root}' contains no class folders (expected one folder per class)")
    return classes


def _list_images(root: str, class_name: str) -> List[str]:
    folder = os.path.join(root, class_name)
    files = sorted(
        name
        for name in os.listdir(folder)
        if _is_visible(name) and name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, name))
    )
    if not files:
        raise FileNotFoundError(
            f"class folder '{folder}' contains no images (expected files ending in {', '.join(IMAGE_EXTENSIONS)})"
        )
    return files


def _split_counts(n: int, train_ratio: float, val_ratio: float, class_name: str, folder: str) -> Tuple[int, int, int]:
    """Return (n_train, n_val, n_query) for a class of ``n`` files, or raise naming the class."""
    n_db = int(n * train_ratio)
    n_query = n - n_db
    if n_db < 1 or n_query < 1:
        raise ValueError(
            f"train_ratio={train_ratio} leaves class '{class_name}' ('{folder}', {n} images) with "
            f"{n_db} database and {n_query} query images; each class needs at least one of both"
        )
    n_val = int(n_db * val_ratio)
    n_train = n_db - n_val
    if val_ratio > 0 and (n_val < 1 or n_train < 1):
        raise ValueError(
            f"val_ratio={val_ratio} leaves class '{class_name}' ('{folder}', {n_db} training images) with "
            f"{n_train} training and {n_val} validation images; each class needs at least one of both"
        )
    return n_train, n_val, n_query


def _resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    if min(width, height) == size:
        return image
    scale = size / min(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(new_size, Image.Resampling.BICUBIC)


class ClassFolderDataset(Dataset):
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
        if split not in SPLITS:
            raise ValueError(f"split '{split}' is not one of {', '.join(SPLITS)}")
        if not 0.0 < train_ratio < 1.0:
            raise ValueError(f"train_ratio={train_ratio} must be in (0, 1)")
        if not 0.0 <= val_ratio < 1.0:
            raise ValueError(f"val_ratio={val_ratio} must be in [0, 1)")
        if split == "val" and val_ratio == 0.0:
            raise ValueError("split 'val' needs val_ratio > 0 (got val_ratio=0.0)")
        if cache_size is not None and cache_size < 1:
            raise ValueError(f"cache_size={cache_size} must be a positive number of pixels or None")

        self.root = os.fspath(root)
        self.split = split
        self.train_ratio = train_ratio
        self.val_ratio = val_ratio
        self.transform = transform
        self.target_transform = target_transform

        self.classes = _list_class_folders(self.root)
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        self._entries = self._build_entries()

        wanted = _SPLIT_ALIASES.get(split, split)
        selected = [e for e in self._entries if split == "all" or e.split == wanted]
        self.samples: List[Tuple[str, int]] = [(os.path.join(self.root, *e.file.split("/")), e.label) for e in selected]
        self.targets: List[int] = [label for _, label in self.samples]

        self.cache_size = cache_size
        self._cache: Optional[List[np.ndarray]] = self._decode_all() if cache else None
        logger.info(
            "dataset '%s' split %s: %d images, %d classes (train_ratio %s, val_ratio %s, cache %s)",
            self.root,
            split,
            len(self.samples),
            len(self.classes),
            train_ratio,
            val_ratio,
            "off" if not cache else f"shorter side {cache_size}" if cache_size else "full size",
        )

    def _build_entries(self) -> List[SplitEntry]:
        entries = []
        for label, class_name in enumerate(self.classes):
            files = _list_images(self.root, class_name)
            folder = os.path.join(self.root, class_name)
            n_train, n_val, _ = _split_counts(len(files), self.train_ratio, self.val_ratio, class_name, folder)
            for position, name in enumerate(files):
                if position < n_train:
                    split = "train"
                elif position < n_train + n_val:
                    split = "val"
                else:
                    split = "query"
                entries.append(SplitEntry(f"{class_name}/{name}", label, class_name, split))
        return entries

    def _decode_all(self) -> List[np.ndarray]:
        cached = []
        progress = tqdm(self.samples, desc=f"caching {self.split} images", disable=not distributed.is_main_process())
        for path, _ in progress:
            image = load_image_rgb(path)
            if self.cache_size is not None:
                image = _resize_shorter_side(image, self.cache_size)
            cached.append(np.asarray(image, dtype=np.uint8))
        return cached

    def get_split_entries(self) -> List[SplitEntry]:
        """Every file of the dataset (all splits) with its label, class and split, in sample order.

        Returns:
            A list of ``SplitEntry(file, label, class_name, split)``; ``split`` is ``train`` (also the
            database), ``val`` or ``query``.
        """
        return list(self._entries)

    def write_manifest(self, path: PathLike) -> str:
        """Write the split of every file as CSV (``file,label,class,split``), atomically.

        The bytes depend only on the tree and the ratios, so two manifests can be compared with ``cmp``.

        Args:
            path: destination file; written through a temporary file, fsync and ``os.replace``.

        Returns:
            The path written.
        """
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["file", "label", "class", "split"])
        for entry in self._entries:
            writer.writerow([entry.file, entry.label, entry.class_name, entry.split])
        return atomic_write_text(path, buffer.getvalue())

    def get_image(self, index: int) -> Image.Image:
        """The RGB PIL image of sample ``index``, from the cache when there is one."""
        if self._cache is not None:
            return Image.fromarray(self._cache[index])
        return load_image_rgb(self.samples[index][0])

    def __getitem__(self, index: int):
        image = self.get_image(index)
        target = self.targets[index]
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def __len__(self) -> int:
        return len(self.samples)
