"""Pretrain the demo-size ViT with the plain DINOv2 objective and save it as public DINOv2 weights.

SDSH starts from a pretrained DINOv2 backbone (``student.pretrained_weights``). No such file exists for
the CPU-size ``vit_demo``, and nothing here downloads one, so this script makes one:

1. builds the pretraining mix of ``scripts/image_families.py`` (12 classes of 6 generated families, none of
   them a fine-tuning set), as one folder per class;
2. trains with the project's trainer (``dinov2/train/train.py``) and ``configs/pretrain_demo.yaml``, with the
   hash head replaced by a pass-through (``ClsTokenHead``): the DINO head reads the normalised CLS token,
   the iBOT head the patch tokens, KoLeo acts on the CLS token, and there is no quantization or
   contrastive term: DINOv2's objective on DINOv2's tokens;
3. keeps the last teacher's backbone and writes it as a plain state dict with the public file's names,
   ``pos_embed`` built for a larger image (``--save-size``, 128 px: 1 + 8x8 tokens, as the public ViT-S/14
   is built for 518 px), resized bicubically from the training grid;
4. checks that the file loads with strict keys into a ``vit_demo`` built for ``--save-size`` and through
   ``dinov2.utils.utils.load_pretrained_weights`` (the loader of ``student.pretrained_weights``) into one
   built for the 64 px crops, with no missing or unexpected key.

::

    python scripts/pretrain_backbone.py --output-dir outputs/pretrain
    python scripts/pretrain_backbone.py --output-dir outputs/pretrain_short --iterations 200 -- train.seed=1

The weights are written to ``<output-dir>/dinov2_vitdemo16_pretrain.pth`` (git-ignored, regenerated).
"""

import argparse
import os
import sys
import time
from typing import Dict, List

import torch
from torch import nn

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (REPO_ROOT, os.path.dirname(os.path.abspath(__file__))):
    if path not in sys.path:
        sys.path.insert(0, path)

import image_families  # noqa: E402

from dinov2.checkpoint import load_pretrained_weights, load_torch_file  # noqa: E402
from dinov2.layers.pos_embed import resize_pos_embed  # noqa: E402
from dinov2.models.vision_transformer import vit_demo  # noqa: E402
from dinov2.train import ssl_meta_arch  # noqa: E402
from dinov2.train import train as train_module  # noqa: E402

PRESET = os.path.join(REPO_ROOT, "configs", "pretrain_demo.yaml")
WEIGHTS_NAME = "dinov2_vitdemo16_pretrain.pth"
PATCH_SIZE = 16
EPOCH_LENGTH = 100  # configs/pretrain_demo.yaml: train.OFFICIAL_EPOCH_LENGTH


class ClsTokenHead(nn.Module):
    """The plain DINOv2 heads' inputs in place of the hash head: the CLS token and the patch tokens as they are.

    It has no parameter; ``codes`` is the normalised CLS token, ``patch_proj`` the normalised patch tokens.
    """

    def __init__(self, embed_dim: int):
        super().__init__()
        self.hash_bit = embed_dim

    def forward(self, cls_token: torch.Tensor, patch_tokens: torch.Tensor, view: str = "global") -> Dict[str, torch.Tensor]:
        return {"codes": cls_token, "patch_proj": patch_tokens}


def _plain_head(cfg, embed_dim: int) -> ClsTokenHead:
    if cfg.hash.hash_bit != embed_dim or cfg.hash.patch_proj_dim != embed_dim:
        raise ValueError(
            f"plain DINOv2 pretraining needs hash.hash_bit and hash.patch_proj_dim equal to the backbone width "
            f"{embed_dim} (got {cfg.hash.hash_bit} and {cfg.hash.patch_proj_dim})"
        )
    return ClsTokenHead(embed_dim)


def backbone_state_dict(teacher_state: Dict[str, torch.Tensor], save_size: int) -> Dict[str, torch.Tensor]:
    """The ``backbone.*`` tensors of a teacher state dict, unprefixed, ``pos_embed`` resized for ``save_size`` px."""
    state = {k[len("backbone."):]: v.clone() for k, v in teacher_state.items() if k.startswith("backbone.")}
    if not state:
        raise ValueError("the teacher state dict has no backbone.* tensor")
    side = save_size // PATCH_SIZE
    if state["pos_embed"].shape[1] != 1 + side * side:
        state["pos_embed"] = resize_pos_embed(state["pos_embed"], (side, side), num_prefix_tokens=1)
    return state


def check_weights(path: str, save_size: int, crop_size: int) -> List[str]:
    """Load ``path`` strictly as it is built and through the pretrained loader; return what was checked."""
    state = load_torch_file(path)
    built = vit_demo(patch_size=PATCH_SIZE, img_size=save_size, init_values=0.1, block_chunks=0)
    built.load_state_dict(state, strict=True)
    cropped = vit_demo(patch_size=PATCH_SIZE, img_size=crop_size, init_values=0.1, block_chunks=0)
    result = load_pretrained_weights(cropped, path)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path}: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    return [
        f"strict load into vit_demo/16 built for {save_size} px: ok ({len(state)} tensors, pos_embed {tuple(state['pos_embed'].shape)})",
        f"student.pretrained_weights loader into vit_demo/16 built for {crop_size} px: no missing or unexpected key",
    ]


def pretrain(output_dir: str, iterations: int, seed: int, per_class: int, save_size: int, opts: List[str]) -> str:
    """Build the mix, train, write and check the weights; return their path."""
    output_dir = os.path.abspath(output_dir)
    data = image_families.build_pretrain_mix(os.path.join(output_dir, "data"), seed, per_class)
    epochs = max(1, iterations // EPOCH_LENGTH)
    args = train_module.get_args_parser().parse_args(
        ["--config-file", PRESET, "--output-dir", os.path.join(output_dir, "run"), "--no-resume",
         f"train.data_path={data}", f"optim.epochs={epochs}", f"optim.warmup_epochs={max(1, epochs // 10)}",
         f"train.seed={seed}", *opts]
    )  # fmt: skip
    original = ssl_meta_arch.build_hash_head
    ssl_meta_arch.build_hash_head = _plain_head
    try:
        train_module.main(args)
    finally:
        ssl_meta_arch.build_hash_head = original
    teacher = load_torch_file(os.path.join(output_dir, "run", "eval", "last", "teacher_checkpoint.pth"))["teacher"]
    path = os.path.join(output_dir, WEIGHTS_NAME)
    torch.save(backbone_state_dict(teacher, save_size), path)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="outputs/pretrain", help="mix, training run and the weights file")
    parser.add_argument("--iterations", type=int, default=2000, help="training iterations (multiple of 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mix and of the training run")
    parser.add_argument("--per-class", type=int, default=150, help="images per class of the mix (12 classes)")
    parser.add_argument("--save-size", type=int, default=128, help="image size the saved pos_embed is built for")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="-- key=value config overrides")
    args = parser.parse_args(argv)
    opts = [o for o in args.opts if o != "--"]
    start = time.time()
    path = pretrain(args.output_dir, args.iterations, args.seed, args.per_class, args.save_size, opts)
    for line in check_weights(path, args.save_size, 64):
        print(line)
    print(f"pretrained weights: {path} ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
