from .augmentations import DataAugmentationDINO
from .collate import collate_data_and_cast
from .datasets import ClassFolderDataset, ImageLoadError
from .demo import generate_demo_dataset
from .loaders import IndexedDataset, make_data_loader, make_eval_data_loader
from .masking import MaskingGenerator
from .samplers import EvalShardSampler, InfiniteSampler
from .transforms import make_classification_eval_transform

__all__ = [
    "ClassFolderDataset",
    "DataAugmentationDINO",
    "EvalShardSampler",
    "ImageLoadError",
    "IndexedDataset",
    "InfiniteSampler",
    "MaskingGenerator",
    "collate_data_and_cast",
    "generate_demo_dataset",
    "make_classification_eval_transform",
    "make_data_loader",
    "make_eval_data_loader",
]
