"""An unlabeled folder tree: every image file under a root, at any depth (training and indexing only).

Files are ordered by their path relative to the root; hidden files and folders (names starting with
".") are skipped; symbolic links to folders are not followed (a link cycle cannot loop). There are no
labels, so the only splits are ``train`` (= ``db``) and ``all``, both every image.
"""

import os
from typing import Callable, List, Optional

from .base import IMAGE_EXTENSIONS, ImageEntry, SplitImageDataset, check_split_arguments, is_image_file, is_visible
from .decoders import PathLike


def list_tree_images(root: str) -> List[str]:
    """Image files under ``root`` relative to it, "/"-separated and sorted."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"folder tree '{root}' does not exist or is not a directory")
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if is_visible(name))
        relative = os.path.relpath(folder, root)
        for name in names:
            if is_image_file(name) and os.path.isfile(os.path.join(folder, name)):
                files.append(name if relative == "." else os.path.join(relative, name).replace(os.sep, "/"))
    if not files:
        raise FileNotFoundError(
            f"folder tree '{root}' contains no images (expected files ending in {', '.join(IMAGE_EXTENSIONS)})"
        )
    return sorted(files)


class FolderTreeDataset(SplitImageDataset):
    """Every image under ``root`` (any depth), unlabeled: targets are -1.

    Args:
        root: the top folder.
        split: ``train``, ``db`` or ``all`` (the same images); ``query`` and ``val`` raise ValueError.
        transform, target_transform, cache, cache_size: as ``ClassFolderDataset``.
    """

    kind = "folder tree"

    def __init__(
        self,
        root: PathLike,
        split: str = "all",
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
        cache: bool = False,
        cache_size: Optional[int] = None,
    ):
        check_split_arguments(split, 0.5, 0.0, cache_size)
        root = os.fspath(root)
        entries = [ImageEntry(file, (), "train") for file in list_tree_images(root)]
        self._select(root, split, entries, [], transform, target_transform, cache, cache_size, "all images")
