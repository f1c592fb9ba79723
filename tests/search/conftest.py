"""Shared pieces of the archive index tests: a small teacher checkpoint, an image folder, a built index.

The network is the demo ViT (``vit_demo``, a registered architecture, so subprocesses need no set-up)
at 32 px crops and 16-bit codes with tiny heads; the images are the generated demo set, 3 classes x 4
images of 32 px, indexed in chunks of 5 (5 + 5 + 2 images).
"""

import os

import numpy as np
import pytest
import torch

from dinov2.data import ClassFolderDataset, generate_demo_dataset, make_classification_eval_transform
from dinov2.eval.encode import extract_codes
from dinov2.eval.hashing import binarize, pack_codes
from dinov2.models import build_hashing_network
from dinov2.utils.config import merge_config

INDEX_OPTS = [
    "student.arch=vit_demo",
    "student.patch_size=16",
    "student.drop_path_rate=0.0",
    "student.layerscale=0.1",
    "crops.global_crops_size=32",
    "crops.local_crops_size=16",
    "crops.local_crops_number=2",
    "hash.hash_bit=16",
    "hash.patch_proj_dim=16",
    "dino.head_n_prototypes=32",
    "dino.head_hidden_dim=32",
    "dino.head_bottleneck_dim=16",
    "ibot.head_n_prototypes=32",
    "ibot.head_hidden_dim=32",
    "ibot.head_bottleneck_dim=16",
    "evaluation.batch_size=4",
    "evaluation.num_workers=0",
    "train.device=cpu",
]
CHUNK_SIZE = 5


def save_teacher(path, seed: int) -> str:
    """A teacher checkpoint of the INDEX_OPTS model, initialised from ``seed``."""
    from dinov2.train.ssl_meta_arch import SSLMetaArch

    torch.manual_seed(seed)
    torch.save({"teacher": SSLMetaArch(merge_config(None, INDEX_OPTS)).teacher.state_dict()}, path)
    return str(path)


def build_argv(weights, images, output_dir, *extra):
    return [
        "build",
        "--weights",
        str(weights),
        "--images",
        str(images),
        "--output-dir",
        str(output_dir),
        "--chunk-size",
        str(CHUNK_SIZE),
        "--device",
        "cpu",
        *extra,
        *INDEX_OPTS,
    ]


def reference_packed_codes(weights, images) -> np.ndarray:
    """Packed codes of every image computed here from the checkpoint, without the index tools."""
    cfg = merge_config(None, INDEX_OPTS)
    transform = make_classification_eval_transform(crop_size=cfg.crops.global_crops_size)
    dataset = ClassFolderDataset(images, "all", 0.5, transform=transform)
    codes, _ = extract_codes(build_hashing_network(cfg, weights), dataset, 3, 0, torch.device("cpu"), progress=False)
    return pack_codes(binarize(codes.numpy()))


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """An image folder, a teacher checkpoint and an index directory built from them by the CLI."""
    from dinov2.search import cli as index_cli

    base = tmp_path_factory.mktemp("archive")
    images = generate_demo_dataset(base / "images", num_classes=3, images_per_class=4, image_size=32)
    weights = save_teacher(base / "teacher_checkpoint.pth", seed=0)
    index_dir = base / "index"
    assert index_cli.main(build_argv(weights, images, index_dir)) == 0
    return {"base": base, "images": images, "weights": weights, "index": index_dir}


def files_of(index_dir):
    """Every file under an index directory (relative paths) with its bytes."""
    found = {}
    for folder, _, names in os.walk(index_dir):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, index_dir)] = f.read()
    return found
