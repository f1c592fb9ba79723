"""DINO multi-crop training augmentation (the SDSH paper's settings)."""

import logging
from typing import Dict, Sequence, Tuple

from PIL import Image
from torchvision import transforms

from .transforms import GaussianBlur, make_normalize_transform

logger = logging.getLogger("dinov2")

# Blur probabilities of global crop 1, global crop 2 and the local crops, as stated by DINOv2/BYOL.
DOCUMENTED_BLUR_PROBABILITIES = (1.0, 0.1, 0.5)
# What DINOv2's code (and the reference SDSH fork) actually applies: its GaussianBlur inverts p.
REFERENCE_CODE_BLUR_PROBABILITIES = (0.0, 0.9, 0.5)


class DataAugmentationDINO:
    """Two global crops and ``local_crops_number`` local crops of one image.

    Each crop: random resized crop (bicubic) and horizontal flip; colour jitter (brightness 0.4,
    contrast 0.4, saturation 0.2, hue 0.1) with probability 0.8; grayscale with probability 0.2;
    Gaussian blur with probability ``blur_probabilities`` (global 1, global 2, local); solarize with
    probability 0.2 on global crop 2 only; ImageNet normalisation.

    Args:
        global_crops_scale: (min, max) area fraction of the global crops.
        local_crops_scale: (min, max) area fraction of the local crops.
        local_crops_number: number of local crops (0 allowed).
        global_crops_size: side of the global crops in pixels.
        local_crops_size: side of the local crops in pixels.
        blur_probabilities: blur probability of global crop 1, global crop 2 and local crops; the
            default is the documented (1.0, 0.1, 0.5); ``REFERENCE_CODE_BLUR_PROBABILITIES`` reproduces
            the reference code, whose blur class applies 1 - p.
    """

    def __init__(
        self,
        global_crops_scale: Sequence[float],
        local_crops_scale: Sequence[float],
        local_crops_number: int,
        global_crops_size: int = 224,
        local_crops_size: int = 96,
        blur_probabilities: Tuple[float, float, float] = DOCUMENTED_BLUR_PROBABILITIES,
    ):
        if local_crops_number < 0:
            raise ValueError(f"local_crops_number={local_crops_number} must be >= 0")
        self.global_crops_scale = tuple(global_crops_scale)
        self.local_crops_scale = tuple(local_crops_scale)
        self.local_crops_number = local_crops_number
        self.global_crops_size = global_crops_size
        self.local_crops_size = local_crops_size
        self.blur_probabilities = tuple(blur_probabilities)
        logger.info(
            "augmentation: global crops %d px scale %s, %d local crops %d px scale %s, blur p %s",
            global_crops_size,
            self.global_crops_scale,
            local_crops_number,
            local_crops_size,
            self.local_crops_scale,
            self.blur_probabilities,
        )

        bicubic = transforms.InterpolationMode.BICUBIC
        self.geometric_augmentation_global = transforms.Compose(
            [
                transforms.RandomResizedCrop(global_crops_size, scale=self.global_crops_scale, interpolation=bicubic),
                transforms.RandomHorizontalFlip(p=0.5),
            ]
        )
        self.geometric_augmentation_local = transforms.Compose(
            [
                transforms.RandomResizedCrop(local_crops_size, scale=self.local_crops_scale, interpolation=bicubic),
                transforms.RandomHorizontalFlip(p=0.5),
            ]
        )

        color_jittering = transforms.Compose(
            [
                transforms.RandomApply(
                    [transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8
                ),
                transforms.RandomGrayscale(p=0.2),
            ]
        )
        blur_global1, blur_global2, blur_local = self.blur_probabilities
        self.normalize = transforms.Compose([transforms.ToTensor(), make_normalize_transform()])
        self.global_transfo1 = transforms.Compose([color_jittering, GaussianBlur(p=blur_global1), self.normalize])
        self.global_transfo2 = transforms.Compose(
            [
                color_jittering,
                GaussianBlur(p=blur_global2),
                transforms.RandomSolarize(threshold=128, p=0.2),
                self.normalize,
            ]
        )
        self.local_transfo = transforms.Compose([color_jittering, GaussianBlur(p=blur_local), self.normalize])

    def __call__(self, image: Image.Image) -> Dict[str, object]:
        """Crop and distort one image.

        Args:
            image: an RGB PIL image.

        Returns:
            A dict with ``global_crops`` (2 tensors [3, G, G]), ``global_crops_teacher`` (the same two),
            ``local_crops`` (``local_crops_number`` tensors [3, L, L]) and ``offsets`` (empty tuple).
        """
        global_crop_1 = self.global_transfo1(self.geometric_augmentation_global(image))
        global_crop_2 = self.global_transfo2(self.geometric_augmentation_global(image))
        local_crops = [
            self.local_transfo(self.geometric_augmentation_local(image)) for _ in range(self.local_crops_number)
        ]
        return {
            "global_crops": [global_crop_1, global_crop_2],
            # The teacher sees the same two global crops as the student.
            "global_crops_teacher": [global_crop_1, global_crop_2],
            "local_crops": local_crops,
            "offsets": (),
        }
