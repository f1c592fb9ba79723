"""Batching of multi-crop samples together with the iBOT masks of the global crops."""

import random
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .masking import MaskingGenerator


def collate_data_and_cast(
    samples_list: List[Tuple[Dict[str, object], object]],
    mask_ratio_tuple: Sequence[float],
    mask_probability: float,
    dtype: torch.dtype,
    n_tokens: Optional[int] = None,
    mask_generator: Optional[MaskingGenerator] = None,
) -> Dict[str, object]:
    """Stack the crops of a batch and draw the iBOT masks of its global crops (DINOv2 semantics).

    Of the 2B global crops, ``int(2B * mask_probability)`` are masked. Their mask ratios are spread
    over ``mask_ratio_tuple``: masked crop i draws its ratio uniformly in the i-th of equal
    sub-intervals, so a batch covers the whole range. The masks are then shuffled over the crops.

    Args:
        samples_list: B samples ``(augmentation dict, label)`` as produced by ``DataAugmentationDINO``.
        mask_ratio_tuple: (min, max) fraction of patches to mask in a masked crop.
        mask_probability: fraction of global crops that are masked.
        dtype: dtype of the returned crops (float32 on CPU, float16/bfloat16 on CUDA; the caller picks).
        n_tokens: patches per global crop N; None takes H * W of ``mask_generator``.
        mask_generator: block-wise generator of [H, W] masks; None only when nothing is masked.

    Returns:
        A dict with
        ``collated_global_crops`` [2B, 3, G, G] (crop 1 of every image, then crop 2),
        ``collated_local_crops`` [nB, 3, L, L] (local crop 1 of every image, then crop 2, ...),
        ``collated_masks`` bool [2B, N],
        ``mask_indices_list`` long [M], flat indices of the masked tokens in ``collated_masks``,
        ``masks_weight`` float [M], 1 / (masked tokens of its crop) for each masked token,
        ``upperbound`` int, the largest number of masked tokens this draw allowed,
        ``n_masked_patches`` long [1], M.
    """
    n_global_crops = len(samples_list[0][0]["global_crops"])
    n_local_crops = len(samples_list[0][0]["local_crops"])

    # Crop-major order: every image's first crop, then every image's second crop.
    collated_global_crops = torch.stack([s[0]["global_crops"][i] for i in range(n_global_crops) for s in samples_list])
    if n_local_crops > 0:
        collated_local_crops = torch.stack([s[0]["local_crops"][i] for i in range(n_local_crops) for s in samples_list])
    else:
        collated_local_crops = torch.empty((0,), dtype=dtype)

    if n_tokens is None:
        if mask_generator is None:
            raise ValueError("collate_data_and_cast needs n_tokens or a mask_generator to size the masks")
        height, width = mask_generator.get_shape()
        n_tokens = height * width
    elif mask_generator is not None and n_tokens != mask_generator.get_shape()[0] * mask_generator.get_shape()[1]:
        raise ValueError(f"n_tokens={n_tokens} differs from the mask generator's grid {mask_generator.get_shape()}")

    n_crops = len(collated_global_crops)
    n_masked_crops = int(n_crops * mask_probability)
    if n_masked_crops > 0 and mask_generator is None:
        raise ValueError(f"mask_probability={mask_probability} masks crops but no mask_generator was given")
    ratio_bounds = torch.linspace(float(mask_ratio_tuple[0]), float(mask_ratio_tuple[1]), n_masked_crops + 1).tolist()

    upperbound = 0
    masks_list = []
    for i in range(n_masked_crops):
        low, high = ratio_bounds[i], ratio_bounds[i + 1]
        n_masked = int(n_tokens * random.uniform(low, high))
        masks_list.append(torch.from_numpy(mask_generator(n_masked)).flatten())
        upperbound += int(n_tokens * high)
    empty = torch.zeros(n_tokens, dtype=torch.bool)
    masks_list.extend(empty.clone() for _ in range(n_masked_crops, n_crops))
    random.shuffle(masks_list)

    collated_masks = torch.stack(masks_list)  # [2B, N]
    mask_indices_list = collated_masks.flatten().nonzero().flatten()
    # Each masked crop's tokens weigh 1 / (its masked count), so every masked crop sums to 1.
    per_crop_weight = 1.0 / collated_masks.sum(-1).clamp(min=1.0)
    masks_weight = per_crop_weight.unsqueeze(-1).expand_as(collated_masks)[collated_masks]

    return {
        "collated_global_crops": collated_global_crops.to(dtype),
        "collated_local_crops": collated_local_crops.to(dtype),
        "collated_masks": collated_masks,
        "mask_indices_list": mask_indices_list,
        "masks_weight": masks_weight,
        "upperbound": upperbound,
        "n_masked_patches": torch.full((1,), fill_value=mask_indices_list.shape[0], dtype=torch.long),
    }
