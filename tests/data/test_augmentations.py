import numpy as np
import pytest
import torch
from PIL import Image

from dinov2.data import DataAugmentationDINO
from dinov2.data.augmentations import REFERENCE_CODE_BLUR_PROBABILITIES
from dinov2.data.transforms import GaussianBlur


def _image(width=61, height=47):
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("n_local", [0, 3])
def test_output_structure_and_shapes(n_local):
    augment = DataAugmentationDINO((0.6, 1.0), (0.05, 0.5), n_local, global_crops_size=28, local_crops_size=14)
    torch.manual_seed(0)
    output = augment(_image())
    assert set(output) == {"global_crops", "global_crops_teacher", "local_crops", "offsets"}
    assert len(output["global_crops"]) == 2
    assert all(crop.shape == (3, 28, 28) and crop.dtype == torch.float32 for crop in output["global_crops"])
    assert output["global_crops_teacher"][0] is output["global_crops"][0]
    assert output["global_crops_teacher"][1] is output["global_crops"][1]
    assert len(output["local_crops"]) == n_local
    assert all(crop.shape == (3, 14, 14) for crop in output["local_crops"])
    assert output["offsets"] == ()


def test_crops_differ_and_are_normalised():
    augment = DataAugmentationDINO((0.6, 1.0), (0.05, 0.5), 2, global_crops_size=32, local_crops_size=16)
    torch.manual_seed(1)
    output = augment(_image())
    first, second = output["global_crops"]
    assert not torch.equal(first, second)
    # Normalised ImageNet-style: values leave [0, 1] on both sides for a random-noise image.
    assert first.min() < 0 and first.max() > 1


def test_seeded_runs_repeat():
    augment = DataAugmentationDINO((0.6, 1.0), (0.05, 0.5), 2, global_crops_size=16, local_crops_size=8)
    torch.manual_seed(3)
    first = augment(_image())
    torch.manual_seed(3)
    second = augment(_image())
    for a, b in zip(first["global_crops"] + first["local_crops"], second["global_crops"] + second["local_crops"]):
        assert torch.equal(a, b)


def test_blur_probabilities_are_configurable():
    spec = DataAugmentationDINO((0.6, 1.0), (0.05, 0.5), 1)
    reference = DataAugmentationDINO((0.6, 1.0), (0.05, 0.5), 1, blur_probabilities=REFERENCE_CODE_BLUR_PROBABILITIES)

    def blur_p(compose):
        return next(t.p for t in compose.transforms if isinstance(t, GaussianBlur))

    assert (blur_p(spec.global_transfo1), blur_p(spec.global_transfo2), blur_p(spec.local_transfo)) == (1.0, 0.1, 0.5)
    assert blur_p(reference.global_transfo1) == 0.0 and blur_p(reference.global_transfo2) == 0.9
