"""Block-wise patch masking for the iBOT loss (BEiT-style, as used by DINOv2)."""

import math
import random
from typing import Optional, Tuple, Union

import numpy as np

# Attempts to place one block before giving up on the current mask.
_BLOCK_ATTEMPTS = 10


class MaskingGenerator:
    """Masks rectangles of patches until a requested number of patches is masked.

    Each block has an area drawn uniformly in [min_num_patches, remaining budget] (the budget is capped
    by ``max_num_patches``) and an aspect ratio drawn log-uniformly in [min_aspect, max_aspect]. A block
    is accepted when it masks at least one new patch and no more new patches than the budget, so a
    mask never exceeds the requested count. Generation stops when the count is reached or when
    ``_BLOCK_ATTEMPTS`` draws in a row place nothing (the mask can then hold fewer patches).

    Randomness comes from Python's ``random`` module, which PyTorch seeds in each data-loader worker.

    Args:
        input_size: patch grid (H, W), or one int for a square grid.
        num_masking_patches: default count when called without one (informational, as in DINOv2).
        min_num_patches: smallest block area drawn.
        max_num_patches: largest number of new patches one block may add; None means the whole grid.
        min_aspect: smallest block aspect ratio (height / width).
        max_aspect: largest aspect ratio; None means ``1 / min_aspect``.
    """

    def __init__(
        self,
        input_size: Union[int, Tuple[int, int]],
        num_masking_patches: Optional[int] = None,
        min_num_patches: int = 4,
        max_num_patches: Optional[float] = None,
        min_aspect: float = 0.3,
        max_aspect: Optional[float] = None,
    ):
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        self.height, self.width = (int(v) for v in input_size)
        if self.height < 1 or self.width < 1:
            raise ValueError(f"input_size={input_size} must be positive")
        self.num_patches = self.height * self.width
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = self.num_patches if max_num_patches is None else max_num_patches
        if min_aspect <= 0:
            raise ValueError(f"min_aspect={min_aspect} must be > 0")
        max_aspect = max_aspect or 1.0 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))

    def __repr__(self) -> str:
        return (
            f"MaskingGenerator({self.height}x{self.width}, blocks of {self.min_num_patches}..{self.max_num_patches} "
            f"patches, log aspect {self.log_aspect_ratio[0]:.3f}..{self.log_aspect_ratio[1]:.3f})"
        )

    def get_shape(self) -> Tuple[int, int]:
        """The patch grid (H, W)."""
        return self.height, self.width

    def _add_block(self, mask: np.ndarray, budget: float) -> int:
        """Try to mask one block adding between 1 and ``budget`` new patches; return how many it added."""
        for _ in range(_BLOCK_ATTEMPTS):
            area = random.uniform(self.min_num_patches, budget)
            aspect = math.exp(random.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            # Blocks strictly smaller than the grid, as in BEiT/DINOv2.
            if w < self.width and h < self.height:
                top = random.randint(0, self.height - h)
                left = random.randint(0, self.width - w)
                block = mask[top : top + h, left : left + w]
                added = h * w - int(block.sum())
                if 0 < added <= budget:
                    block[...] = True
                    return added
        return 0

    def __call__(self, num_masking_patches: int = 0) -> np.ndarray:
        """Draw one mask.

        Args:
            num_masking_patches: number of patches to mask (0 gives an empty mask).

        Returns:
            A bool array [H, W] with at most ``num_masking_patches`` True entries.
        """
        mask = np.zeros(self.get_shape(), dtype=bool)
        count = 0
        while count < num_masking_patches:
            budget = min(num_masking_patches - count, self.max_num_patches)
            added = self._add_block(mask, budget)
            if added == 0:
                break
            count += added
        return mask
