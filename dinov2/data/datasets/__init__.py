from .class_folder import IMAGE_EXTENSIONS, SPLITS, ClassFolderDataset, SplitEntry
from .decoders import ImageLoadError, load_image_rgb, to_rgb

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "ClassFolderDataset",
    "ImageLoadError",
    "SplitEntry",
    "load_image_rgb",
    "to_rgb",
]
