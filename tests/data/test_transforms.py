import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from dinov2.data import make_classification_eval_transform
from dinov2.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, GaussianBlur


def _resize_of(transform):
    return next(t for t in transform.transforms if isinstance(t, transforms.Resize)).size


@pytest.mark.parametrize("crop, resize", [(224, 256), (112, 128), (98, 112), (518, 592)])
def test_eval_resize_keeps_the_256_over_224_ratio(crop, resize):
    transform = make_classification_eval_transform(crop_size=crop)
    assert _resize_of(transform) == resize
    image = Image.new("RGB", (301, 211), (1, 2, 3))
    assert transform(image).shape == (3, crop, crop)


def test_explicit_resize_is_honoured_and_checked():
    assert _resize_of(make_classification_eval_transform(resize_size=300, crop_size=224)) == 300
    with pytest.raises(ValueError, match="resize_size=100"):
        make_classification_eval_transform(resize_size=100, crop_size=224)


def test_eval_transform_normalises_with_imagenet_statistics():
    colour = (124, 116, 104)
    output = make_classification_eval_transform(crop_size=32)(Image.new("RGB", (50, 40), colour))
    expected = [(c / 255.0 - m) / s for c, m, s in zip(colour, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]
    torch.testing.assert_close(output.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5, rtol=0)


def _checkerboard():
    pattern = (np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)
    return Image.fromarray(pattern).convert("RGB")


def test_blur_probability_means_probability_of_blurring():
    image = _checkerboard()
    original = np.asarray(image)
    torch.manual_seed(0)
    always = [np.asarray(GaussianBlur(p=1.0)(image)) for _ in range(10)]
    never = [np.asarray(GaussianBlur(p=0.0)(image)) for _ in range(10)]
    assert all(not np.array_equal(out, original) for out in always)
    assert all(np.array_equal(out, original) for out in never)
