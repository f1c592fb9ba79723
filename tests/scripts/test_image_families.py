"""scripts/image_families.py: the pretraining mix and the shapes family, built in code and deterministic."""

import hashlib
import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def families():
    spec = importlib.util.spec_from_file_location("image_families", os.path.join(REPO, "scripts", "image_families.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def digest(folder):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


def class_folders(path):
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))


def test_pretrain_mix_has_two_classes_per_family_and_is_deterministic(families, tmp_path):
    path = families.build_pretrain_mix(str(tmp_path / "a"), seed=0, per_class=3)
    folders = class_folders(path)
    assert len(folders) == 2 * len(families.PRETRAIN_FAMILIES) == 12
    for name in families.PRETRAIN_FAMILIES:
        assert sum(f.endswith("_" + name) for f in folders) == 2
    assert all(len(os.listdir(os.path.join(path, d))) == 3 for d in folders)
    image = Image.open(os.path.join(path, folders[0], "0000.png"))
    assert image.size == (64, 64) and image.mode == "RGB"
    assert digest(path) == digest(families.build_pretrain_mix(str(tmp_path / "b"), seed=0, per_class=3))
    assert digest(path) != digest(families.build_pretrain_mix(str(tmp_path / "c"), seed=1, per_class=3))


def test_shapes_classes_are_the_shapes_not_the_colours(families, tmp_path):
    path = families.build_family("shapes", str(tmp_path), seed=0, per_class=12)
    folders = class_folders(path)
    assert len(folders) == len(families.SHAPES) == 6
    means = np.stack(
        [
            np.mean([np.asarray(Image.open(os.path.join(path, d, f)), dtype=float).mean((0, 1)) for f in os.listdir(os.path.join(path, d)) if f.endswith(".png")], axis=0)
            for d in folders
        ]
    )
    # Colours are drawn the same way for every class: the classes' mean colours are close to each other.
    assert np.abs(means - means.mean(0)).max() < 40


@pytest.mark.parametrize("kind", ["disc", "square", "triangle", "cross", "ring", "bar"])
def test_every_shape_mask_covers_part_of_its_box(families, kind):
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32) / 64
    mask = families._shape_mask(kind, yy, xx, 0.5, 0.5, 0.2, 0.3)
    assert 0.01 < mask.mean() < 0.25
    # Centred at (0.5, 0.5): nothing lies near the image border.
    assert not mask[0].any() and not mask[:, 0].any()


def test_unknown_family_is_named(families, tmp_path):
    with pytest.raises(ValueError, match="nosuch"):
        families.build_family("nosuch", str(tmp_path), seed=0)
