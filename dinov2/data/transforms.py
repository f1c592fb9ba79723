"""Image transforms shared by training and evaluation."""

from typing import Optional, Sequence

from torchvision import transforms

# ImageNet statistics, as used by the public DINOv2 weights.
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

# The evaluation recipe resizes to 256 before a 224 centre crop; other crop sizes keep that ratio.
_REFERENCE_RESIZE, _REFERENCE_CROP = 256, 224


class GaussianBlur(transforms.RandomApply):
    """Gaussian blur with probability ``p`` and a radius (sigma) drawn uniformly in [radius_min, radius_max].

    ``p`` is the probability of blurring. DINOv2's class of the same name passes ``1 - p`` to
    ``RandomApply``, so there ``p=1.0`` never blurs; pass ``1 - p`` here to reproduce that.

    Args:
        p: probability of applying the blur.
        radius_min: smallest sigma in pixels.
        radius_max: largest sigma in pixels.
        kernel_size: odd kernel size (9 as in DINOv2).
    """

    def __init__(self, *, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0, kernel_size: int = 9):
        blur = transforms.GaussianBlur(kernel_size=kernel_size, sigma=(radius_min, radius_max))
        super().__init__(transforms=[blur], p=p)


def make_normalize_transform(
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> transforms.Normalize:
    """Per-channel normalisation of a [3,H,W] tensor in [0, 1].

    Args:
        mean: channel means.
        std: channel standard deviations.

    Returns:
        A torchvision ``Normalize``.
    """
    return transforms.Normalize(mean=mean, std=std)


def make_classification_eval_transform(
    resize_size: Optional[int] = None,
    crop_size: int = _REFERENCE_CROP,
    interpolation=transforms.InterpolationMode.BICUBIC,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> transforms.Compose:
    """Evaluation transform: resize (shorter side), centre crop, to tensor, normalise.

    Args:
        resize_size: shorter side after resizing; None means ``round(crop_size * 256 / 224)``
            (256 for the 224 crop of the protocol).
        crop_size: side of the square centre crop.
        interpolation: resize interpolation (bicubic, as in DINOv2).
        mean: channel means.
        std: channel standard deviations.

    Returns:
        A transform from a PIL image to a normalised [3, crop_size, crop_size] float tensor.
    """
    if resize_size is None:
        resize_size = round(crop_size * _REFERENCE_RESIZE / _REFERENCE_CROP)
    if resize_size < crop_size:
        raise ValueError(f"resize_size={resize_size} is smaller than crop_size={crop_size}")
    return transforms.Compose(
        [
            transforms.Resize(resize_size, interpolation=interpolation),
            transforms.CenterCrop(crop_size),
            transforms.ToTensor(),
            make_normalize_transform(mean=mean, std=std),
        ]
    )
