from .base import IMAGE_EXTENSIONS, SPLITS, UNLABELED, ImageEntry, SplitImageDataset
from .class_folder import ClassFolderDataset, SplitEntry
from .decoders import ImageLoadError, load_image_rgb, to_rgb
from .folder_tree import FolderTreeDataset
from .image_list import ImageListDataset, ImageListError
from .sources import SOURCES, detect_source, open_image_source

__all__ = [
    "IMAGE_EXTENSIONS",
    "SOURCES",
    "SPLITS",
    "UNLABELED",
    "ClassFolderDataset",
    "FolderTreeDataset",
    "ImageEntry",
    "ImageListDataset",
    "ImageListError",
    "ImageLoadError",
    "SplitEntry",
    "SplitImageDataset",
    "detect_source",
    "load_image_rgb",
    "open_image_source",
    "to_rgb",
]
