"""What every image source shares: a list of files with labels and a split, decoded on demand or
cached, and the split manifest.

A source (class folders, an image list, an unlabeled folder tree) only decides which files exist,
their labels and their split; ``SplitImageDataset`` does the rest. Targets are

- an ``int`` class index when every file has exactly one label (the class-folder layout);
- a multi-hot ``uint8`` vector [C] when some file has several labels (``targets`` is then an array
  [N, C]); relevance in the metrics is "at least one shared label";
- ``-1`` for an unlabeled source (``labeled`` is False): training and indexing only.
"""

import csv
import io
import logging
import os
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from dinov2 import distributed
from dinov2.checkpoint import atomic_write_text

from .decoders import PathLike, load_image_rgb

logger = logging.getLogger("dinov2")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
SPLITS = ("train", "db", "query", "val", "all")
# "db" is the retrieval database, which is the training set by protocol.
SPLIT_ALIASES = {"db": "train"}
UNLABELED = -1


class ImageEntry(NamedTuple):
    """One file of a source: its path relative to the source root, label indices and split."""

    file: str  # relative to the root, "/"-separated
    labels: Tuple[int, ...]  # indices into ``classes``; empty for an unlabeled file
    split: str  # train (also the database), val or query


def is_visible(name: str) -> bool:
    """Hidden entries (".DS_Store", "._x.jpg" resource forks, ".complete" markers) are never data."""
    return not name.startswith(".")


def is_image_file(name: str) -> bool:
    return is_visible(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def check_split_arguments(split: str, train_ratio: float, val_ratio: float, cache_size: Optional[int]) -> None:
    if split not in SPLITS:
        raise ValueError(f"split '{split}' is not one of {', '.join(SPLITS)}")
    if not 0.0 < train_ratio < 1.0:
        raise ValueError(f"train_ratio={train_ratio} must be in (0, 1)")
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio={val_ratio} must be in [0, 1)")
    if cache_size is not None and cache_size < 1:
        raise ValueError(f"cache_size={cache_size} must be a positive number of pixels or None")


def split_counts(
    n: int, train_ratio: float, val_ratio: float, group: str, need_split: bool = True
) -> Tuple[int, int, int]:
    """(n_train, n_val, n_query) of a group (a class) of ``n`` files, or raise naming the group.

    The first ``int(n * train_ratio)`` files are the database; of those, the last ``int(n_db * val_ratio)``
    are validation queries. With ``need_split=False`` (split ``all``: indexing or training on every
    file) a group too small to split is not an error: all its files count as ``train``.
    """
    n_db = int(n * train_ratio)
    n_query = n - n_db
    n_val = int(n_db * val_ratio)
    n_train = n_db - n_val
    if n_db < 1 or n_query < 1:
        problem = (
            f"train_ratio={train_ratio} leaves {group} ({n} images) with {n_db} database and {n_query} query "
            "images; each class needs at least one of both"
        )
    elif val_ratio > 0 and (n_val < 1 or n_train < 1):
        problem = (
            f"val_ratio={val_ratio} leaves {group} ({n_db} training images) with {n_train} training and "
            f"{n_val} validation images; each class needs at least one of both"
        )
    else:
        return n_train, n_val, n_query
    if not need_split:
        return n, 0, 0
    raise ValueError(problem)


def split_of_position(position: int, n_train: int, n_val: int) -> str:
    if position < n_train:
        return "train"
    return "val" if position < n_train + n_val else "query"


def _resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    if min(width, height) == size:
        return image
    scale = size / min(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(new_size, Image.Resampling.BICUBIC)


class SplitImageDataset(Dataset):
    """One split of a list of ``ImageEntry`` under ``root``: ``(image, target)`` samples in entry order.

    Subclasses build ``entries`` and ``classes`` and call ``_select``. Attributes after ``_select``:
    ``samples`` [(absolute path, target)], ``targets`` (list of int, or uint8 array [N, C] when
    ``multi_label``), ``classes``, ``labeled``, ``multi_label``.
    """

    # Shown in log lines and errors: "dataset", "image list", "folder tree".
    kind = "dataset"

    def _select(
        self,
        root: str,
        split: str,
        entries: Sequence[ImageEntry],
        classes: List[str],
        transform: Optional[Callable],
        target_transform: Optional[Callable],
        cache: bool,
        cache_size: Optional[int],
        details: str,
    ) -> None:
        self.root = root
        self.split = split
        self.transform = transform
        self.target_transform = target_transform
        self.classes = list(classes)
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        self._entries = list(entries)
        self.labeled = all(entry.labels for entry in self._entries)
        self.multi_label = any(len(entry.labels) > 1 for entry in self._entries)

        wanted = SPLIT_ALIASES.get(split, split)
        if not self.labeled and wanted in ("query", "val"):
            raise ValueError(
                f"{self.kind} '{root}' is unlabeled: it has no {split} split (training and indexing only; "
                "retrieval evaluation needs labels: class folders or an image list with labels)"
            )
        selected = [e for e in self._entries if split == "all" or e.split == wanted]
        self.entries = selected
        targets = [self._target(entry.labels) for entry in selected]
        self.samples: List[Tuple[str, object]] = [
            (self._absolute(entry.file), target) for entry, target in zip(selected, targets)
        ]
        if self.multi_label:
            self.targets = np.stack(targets) if targets else np.zeros((0, len(self.classes)), dtype=np.uint8)
        else:
            self.targets = targets
        self.cache_size = cache_size
        self._cache: Optional[List[np.ndarray]] = self._decode_all() if cache else None
        logger.info(
            "%s '%s' split %s: %d images, %s (%s, cache %s)",
            self.kind,
            self.root,
            split,
            len(self.samples),
            f"{len(self.classes)} classes" + (", multi-label" if self.multi_label else "") if self.labeled else "unlabeled",
            details,
            "off" if not cache else f"shorter side {cache_size}" if cache_size else "full size",
        )

    def _absolute(self, file: str) -> str:
        return file if os.path.isabs(file) else os.path.join(self.root, *file.split("/"))

    def _target(self, labels: Tuple[int, ...]):
        if not labels:
            return UNLABELED
        if not self.multi_label:
            return labels[0]
        hot = np.zeros(len(self.classes), dtype=np.uint8)
        hot[list(labels)] = 1
        return hot

    def _decode_all(self) -> List[np.ndarray]:
        cached = []
        progress = tqdm(self.samples, desc=f"caching {self.split} images", disable=not distributed.is_main_process())
        for path, _ in progress:
            image = load_image_rgb(path)
            if self.cache_size is not None:
                image = _resize_shorter_side(image, self.cache_size)
            cached.append(np.asarray(image, dtype=np.uint8))
        return cached

    def relative_files(self) -> List[str]:
        """The files of this split relative to the root, "/"-separated (as in the split manifest)."""
        return [entry.file for entry in self.entries]

    def label_names(self, index: int) -> List[str]:
        """The class names of sample ``index`` (empty for an unlabeled file)."""
        return [self.classes[label] for label in self.entries[index].labels]

    def write_manifest(self, path: PathLike) -> str:
        """Write the split of every file as CSV (``file,label,class,split``), atomically.

        Several labels are joined with ";" in both label columns; an unlabeled file has empty ones.
        The bytes depend only on the source and the ratios, so two manifests can be compared with ``cmp``.

        Args:
            path: destination file; written through a temporary file, fsync and ``os.replace``.
        Returns:
            The path written.
        """
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["file", "label", "class", "split"])
        for entry in self._entries:
            labels = ";".join(str(label) for label in entry.labels)
            names = ";".join(self.classes[label] for label in entry.labels)
            writer.writerow([entry.file, labels, names, entry.split])
        return atomic_write_text(path, buffer.getvalue())

    def get_image(self, index: int) -> Image.Image:
        """The RGB PIL image of sample ``index``, from the cache when there is one."""
        if self._cache is not None:
            return Image.fromarray(self._cache[index])
        return load_image_rgb(self.samples[index][0])

    def __getitem__(self, index: int):
        image = self.get_image(index)
        target = self.samples[index][1]
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def __len__(self) -> int:
        return len(self.samples)
