"""Decoding image files into 8-bit RGB PIL images, with errors that name the file.

Remote-sensing collections mix formats: AID ships 8-bit JPEG, UC Merced ships TIFF (some not 256x256),
other sets have palette PNGs, grayscale, 16-bit or float TIFFs. Every mode is turned into 8-bit RGB
here, once, so the transforms only ever see ``RGB`` images.
"""

import os
from typing import BinaryIO, Optional, Union

import numpy as np
from PIL import Image

from dinov2.utils.errors import InputError

PathLike = Union[str, os.PathLike]

_UINT16_MAX = 65535
_UINT8_MAX = 255


class ImageLoadError(InputError, RuntimeError):
    """An image file that cannot be read or decoded completely.

    It takes a single message argument so that PyTorch can rebuild it in the main process when a
    data-loader worker raises it (the message, which names the file, survives).
    """


def _scale_16bit(array: np.ndarray) -> np.ndarray:
    """Map 0..65535 onto 0..255 by rounding v / 257 (65535 / 255 = 257), instead of clipping."""
    return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _scale_integer(array: np.ndarray) -> np.ndarray:
    """Mode ``I`` (32-bit signed): 8-bit data kept, 16-bit data scaled, anything else min-max stretched.

    PIL has opened 16-bit PNGs as ``I`` in some versions, so the value range decides the bit depth.
    """
    low, high = int(array.min()), int(array.max())
    if low >= 0 and high <= _UINT8_MAX:
        return array.astype(np.uint8)
    if low >= 0 and high <= _UINT16_MAX:
        return _scale_16bit(array)
    return _stretch(array.astype(np.float64), low, high)


def _scale_float(array: np.ndarray) -> np.ndarray:
    """Mode ``F``: [0, 1] data scaled by 255, [0, 255] data kept, anything else min-max stretched."""
    array = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(array.min()), float(array.max())
    if low >= 0.0 and high <= 1.0:
        return np.rint(array * _UINT8_MAX).astype(np.uint8)
    if low >= 0.0 and high <= _UINT8_MAX:
        return np.rint(array).astype(np.uint8)
    return _stretch(array, low, high)


def _stretch(array: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.rint((array - low) * (_UINT8_MAX / (high - low))).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded PIL image of any mode to 8-bit RGB.

    16-bit modes (``I;16*``) are scaled to 8 bits (v / 257, rounded), not clipped as PIL's own
    ``convert`` does; ``I`` and ``F`` follow their value range (see ``_scale_integer`` and
    ``_scale_float``). Alpha is dropped, keeping the stored colours; palette images go through RGBA
    so their transparency is read without warnings; CMYK uses PIL's conversion.

    Args:
        image: a loaded PIL image.

    Returns:
        An ``RGB`` PIL image of the same size.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16"):
        gray = _scale_16bit(np.asarray(image))
        return Image.fromarray(gray).convert("RGB")
    if mode == "I":
        return Image.fromarray(_scale_integer(np.asarray(image))).convert("RGB")
    if mode == "F":
        return Image.fromarray(_scale_float(np.asarray(image))).convert("RGB")
    if mode in ("P", "PA"):
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")


def load_image_rgb(path: Union[PathLike, BinaryIO], name: Optional[str] = None) -> Image.Image:
    """Read an image file completely and return it as 8-bit RGB.

    The pixel data is decoded inside the ``try`` (``Image.open`` alone only reads the header), so a
    truncated file fails here rather than later or never. Nothing is substituted for a bad file.
    PIL's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left as the application set it; with its
    default (False) truncation raises.

    Args:
        path: image file, or a binary file object holding an encoded image.
        name: how errors name the image (default ``file '<path>'``), e.g. a row of a parquet shard.

    Returns:
        An ``RGB`` PIL image, detached from the file.

    Raises:
        ImageLoadError: the file is missing, empty, not an image, truncated or cannot be converted.
    """
    try:
        with Image.open(path) as image:
            image.load()
            rgb = to_rgb(image)
            # Closing the file invalidates ``image``; converted images are already separate objects.
            return rgb.copy() if rgb is image else rgb
    except Exception as error:  # PIL raises OSError, ValueError, SyntaxError, struct.error, ...
        what = name or f"file '{path}'"
        raise ImageLoadError(
            f"cannot read image {what}: {type(error).__name__}: {error} "
            "(expected a complete, readable image; replace or remove the file)"
        ) from error
