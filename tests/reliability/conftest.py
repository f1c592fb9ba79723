"""Shared pieces of the reliability tests: a tiny ViT, tiny training options and a launcher script.

The launcher lets a subprocess run the real entry point (``python dinov2/train/train.py`` with its
``__main__`` block) after registering the tiny ViT, which a monkeypatch cannot do across processes.
"""

import os
import sys
import textwrap
from functools import partial

import pytest

from dinov2.models import vision_transformer as vits

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_SCRIPT = os.path.join(REPO_ROOT, "dinov2", "train", "train.py")
TINY_ARCH = "vit_reliability_test"


def tiny_vit(patch_size: int = 8, **kwargs):
    """Width 32, depth 1, 2 heads: every code path of the trainer in well under a second per step."""
    kwargs.pop("block_fn", None)
    return vits.DinoVisionTransformer(
        patch_size=patch_size,
        embed_dim=32,
        depth=1,
        num_heads=2,
        mlp_ratio=2,
        block_fn=partial(vits.Block, attn_class=vits.MemEffAttention),
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
    "data.root=demo",
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


@pytest.fixture
def tiny_arch(monkeypatch):
    """Register the tiny ViT factory under TINY_ARCH for the duration of a test."""
    monkeypatch.setattr(vits, TINY_ARCH, tiny_vit, raising=False)
    return TINY_ARCH


_LAUNCHER = """\
import runpy
import sys
from functools import partial

from dinov2.models import vision_transformer as vits


def tiny_vit(patch_size=8, **kwargs):
    kwargs.pop("block_fn", None)
    return vits.DinoVisionTransformer(
        patch_size=patch_size, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2,
        block_fn=partial(vits.Block, attn_class=vits.MemEffAttention), **kwargs,
    )


vits.{arch} = tiny_vit
sys.argv[0] = {script!r}
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.fixture
def launcher(tmp_path):
    """Path of a script that registers the tiny ViT, then runs dinov2/train/train.py as ``__main__``."""
    path = tmp_path / "launch_train.py"
    path.write_text(textwrap.dedent(_LAUNCHER.format(arch=TINY_ARCH, script=TRAIN_SCRIPT)))
    return str(path)


def subprocess_env():
    """Environment of a training subprocess: one thread (deterministic and light on 2 cores)."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


PYTHON = sys.executable
