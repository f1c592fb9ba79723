import os

import numpy as np
import pytest
from PIL import Image


def write_image(path, size=(12, 10), colour=(0, 0, 0)):
    """Write a small solid-colour RGB image; the format follows the file extension."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture
def make_tree(tmp_path):
    """Build root/<class>/<file> from {class: [file names]}; each image gets its own colour."""

    def build(layout, root_name="root", size=(12, 10)):
        root = tmp_path / root_name
        rng = np.random.default_rng(len(layout))
        for class_name, names in layout.items():
            os.makedirs(root / class_name, exist_ok=True)
            for name in names:
                colour = tuple(int(v) for v in rng.integers(0, 256, 3))
                write_image(str(root / class_name / name), size=size, colour=colour)
        return root

    return build
