"""Shared test pieces: a tiny ViT registered under a name, and tiny end-to-end training options.

Tests import them with ``from ..conftest import ...`` (pytest runs with ``--import-mode=importlib``).
"""

import argparse
import os
import socket
from functools import partial

import pytest

from dinov2.models import vision_transformer as vits

TINY_ARCH = "vit_test_tiny"


def tiny_vit(patch_size: int = 8, num_register_tokens: int = 0, **kwargs):
    """Width 32, depth 1, 2 heads: every code path of the trainer in well under a second per step."""
    kwargs.pop("block_fn", None)
    return vits.DinoVisionTransformer(
        patch_size=patch_size,
        embed_dim=32,
        depth=1,
        num_heads=2,
        mlp_ratio=2,
        block_fn=partial(vits.Block, attn_class=vits.MemEffAttention),
        num_register_tokens=num_register_tokens,
        **kwargs,
    )


# A demo dataset of 3 classes x 8 images of 32 px; train_ratio 0.5 gives 12 database images and 12 queries.
TINY_OPTS = [
    f"student.arch={TINY_ARCH}",
    "student.patch_size=8",
    "student.drop_path_rate=0.0",
    "dino.head_n_prototypes=64",
    "dino.head_hidden_dim=32",
    "dino.head_bottleneck_dim=16",
    "ibot.head_n_prototypes=64",
    "ibot.head_hidden_dim=32",
    "ibot.head_bottleneck_dim=16",
    "hash.hash_bit=16",
    "hash.patch_proj_dim=16",
    "crops.global_crops_size=32",
    "crops.local_crops_size=16",
    "crops.local_crops_number=2",
    "train.data_path=demo",
    "data.demo_classes=3",
    "data.demo_images_per_class=8",
    "data.demo_image_size=32",
    "train.batch_size_per_gpu=4",
    "train.num_workers=0",
    "train.device=cpu",
    "train.log_period=1",
    "train.OFFICIAL_EPOCH_LENGTH=2",
    "train.saveckp_freq=1",
    "optim.epochs=2",
    "optim.warmup_epochs=1",
    "optim.freeze_last_layer_epochs=1",
    "teacher.warmup_teacher_temp_epochs=1",
    "evaluation.eval_period_iterations=2",
    "evaluation.batch_size=8",
    "evaluation.num_workers=0",
]


@pytest.fixture(scope="session", autouse=True)
def _demo_data_cache(tmp_path_factory):
    """Generated demo data goes to a temporary cache, not the user's ~/.cache (subprocesses inherit it)."""
    previous = os.environ.get("SDSH_CACHE")
    os.environ["SDSH_CACHE"] = str(tmp_path_factory.mktemp("sdsh_cache"))
    yield
    if previous is None:
        os.environ.pop("SDSH_CACHE", None)
    else:
        os.environ["SDSH_CACHE"] = previous


@pytest.fixture
def tiny_arch(monkeypatch):
    """Register the tiny ViT factory under TINY_ARCH for the duration of a test."""
    monkeypatch.setattr(vits, TINY_ARCH, tiny_vit, raising=False)
    return TINY_ARCH


def make_args(output_dir, *opts, no_resume=False, eval_only=False, config_file=""):
    """Training arguments as ``get_args_parser`` produces them, with TINY_OPTS before ``opts``."""
    return argparse.Namespace(
        config_file=config_file,
        output_dir=str(output_dir),
        no_resume=no_resume,
        eval_only=eval_only,
        opts=[*TINY_OPTS, *opts],
    )


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a multi-process test's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export_torchrun_env(rank: int, world_size: int, port: int) -> None:
    """Set what torchrun exports for one process (the entry points start the process group from it)."""
    os.environ.update(
        {"RANK": str(rank), "WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    os.environ.pop("LOCAL_RANK", None)
    os.environ.pop("LOCAL_WORLD_SIZE", None)


def synthetic_multicrop_batch(
    global_size, local_size, n_local, patch, batch_size, seed, dtype, mask_ratio, mask_probability
):
    """A collated multi-crop batch of random crops (as the training loader yields), seeded."""
    import random

    import torch

    from dinov2.data import MaskingGenerator, collate_data_and_cast

    g = torch.Generator().manual_seed(seed)
    samples = []
    for label in range(batch_size):
        crops = {
            "global_crops": [torch.randn(3, global_size, global_size, generator=g) for _ in range(2)],
            "local_crops": [torch.randn(3, local_size, local_size, generator=g) for _ in range(n_local)],
        }
        crops["global_crops_teacher"] = crops["global_crops"]
        samples.append((crops, label))
    grid = global_size // patch
    random.seed(seed)
    torch.manual_seed(seed)
    return collate_data_and_cast(
        samples,
        mask_ratio_tuple=mask_ratio,
        mask_probability=mask_probability,
        dtype=dtype,
        n_tokens=grid * grid,
        mask_generator=MaskingGenerator(input_size=(grid, grid), max_num_patches=0.5 * grid * grid),
    )


def write_hub_parquet(path, images, labels, names, row_group_size=2, list_labels=False, label_column="label"):
    """Write one shard as the Hugging Face Hub does: an ``Image`` struct column and a ``ClassLabel`` column.

    Args:
        path: the shard file, e.g. ``root/data/train-00000-of-00001.parquet`` (folders are created).
        images: per row, the encoded image bytes (or any bytes, to write a broken cell).
        labels: per row, a class index (or a list of them with ``list_labels``); None writes no label column.
        names: the class names recorded in the schema metadata (None: no metadata at all).
        row_group_size: rows per row group (small, so reading one image is seen to read one group).
    Returns:
        The path written.
    """
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    columns = {"image": pa.array([{"bytes": data, "path": f"{i:04d}.png"} for i, data in enumerate(images)], image_type)}
    features = {"image": {"_type": "Image"}}
    if labels is not None:
        label_type = pa.list_(pa.int64()) if list_labels else pa.int64()
        columns[label_column] = pa.array(labels, label_type)
        class_label = {"names": list(names or []), "_type": "ClassLabel"}
        features[label_column] = {"feature": class_label, "_type": "Sequence"} if list_labels else class_label
    table = pa.table(columns)
    if names is not None:
        metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
        table = table.replace_schema_metadata(metadata)
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    pq.write_table(table, str(path), row_group_size=row_group_size)
    return str(path)


def png_bytes(colour, size=(12, 10)):
    """A small solid-colour PNG, encoded."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()
