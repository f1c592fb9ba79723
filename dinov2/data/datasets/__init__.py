from .base import IMAGE_EXTENSIONS, SPLITS, UNLABELED, ImageEntry, SplitImageDataset
from .class_folder import ClassFolderDataset, SplitEntry
from .decoders import ImageLoadError, load_image_rgb, to_rgb
from .folder_tree import FolderTreeDataset
from .image_list import ImageListDataset, ImageListError
from .parquet import ParquetDataset, ParquetError, parse_locator, read_parquet_image
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
    "ParquetDataset",
    "ParquetError",
    "SplitEntry",
    "SplitImageDataset",
    "detect_source",
    "load_image_rgb",
    "open_image_source",
    "parse_locator",
    "read_parquet_image",
    "to_rgb",
]
