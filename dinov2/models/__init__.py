import logging

from . import vision_transformer as vits

logger = logging.getLogger("dinov2")


def _known_archs():
    return sorted(name for name, value in vars(vits).items() if name.startswith("vit_") and callable(value))


def build_model(args, only_teacher: bool = False, img_size: int = 224):
    """Build the student and teacher backbones from ``cfg.student``, as DINOv2 does.

    Args:
        args: ``cfg.student`` (arch, patch_size, drop_path_rate, layerscale, drop_path_uniform, ffn_layer,
            block_chunks, qkv_bias, proj_bias, ffn_bias, num_register_tokens, interpolate_antialias,
            interpolate_offset).
        only_teacher: build the teacher only.
        img_size: image size the position embeddings are built for.

    Returns:
        (student, teacher, embed_dim), or (teacher, embed_dim) when ``only_teacher``. The teacher has
        no stochastic depth.
    """
    arch = args.arch
    if arch.endswith("_memeff"):
        arch = arch[: -len("_memeff")]
    factory = getattr(vits, arch, None) if "vit" in arch else None
    if not callable(factory):
        raise ValueError(f"unknown student.arch {args.arch!r}, expected one of {_known_archs()}")
    if img_size % args.patch_size:
        raise ValueError(f"image size {img_size} is not divisible by student.patch_size {args.patch_size}")
    vit_kwargs = dict(
        img_size=img_size,
        patch_size=args.patch_size,
        init_values=args.layerscale,
        ffn_layer=args.ffn_layer,
        block_chunks=args.block_chunks,
        qkv_bias=args.qkv_bias,
        proj_bias=args.proj_bias,
        ffn_bias=args.ffn_bias,
        num_register_tokens=args.num_register_tokens,
        interpolate_offset=args.interpolate_offset,
        interpolate_antialias=args.interpolate_antialias,
    )
    teacher = factory(**vit_kwargs)
    if only_teacher:
        return teacher, teacher.embed_dim
    student = factory(**vit_kwargs, drop_path_rate=args.drop_path_rate, drop_path_uniform=args.drop_path_uniform)
    return student, teacher, student.embed_dim


def build_model_from_cfg(cfg, only_teacher: bool = False):
    """``build_model(cfg.student, only_teacher, img_size=cfg.crops.global_crops_size)``.

    Args:
        cfg: full configuration.
        only_teacher: build the teacher only.

    Returns:
        as ``build_model``.
    """
    img_size = cfg.crops.global_crops_size
    if img_size % cfg.student.patch_size:
        raise ValueError(
            f"crops.global_crops_size {img_size} is not divisible by student.patch_size {cfg.student.patch_size}"
        )
    return build_model(cfg.student, only_teacher=only_teacher, img_size=img_size)


# Imported last: the hashing network builds its backbone with build_model_from_cfg above.
from .hashing_network import HashingNetwork, build_hashing_network  # noqa: E402

__all__ = ["HashingNetwork", "build_hashing_network", "build_model", "build_model_from_cfg"]
