"""Bad input through the training entry point, and fuzzed image files.

Cases already covered elsewhere (see the listing in the module docstrings there): missing/empty
dataset root, class folder without images, split leaving a class without database images
(tests/data/datasets/test_class_folder.py); corrupt, truncated and zero-byte files and loader
workers (tests/data/datasets/test_decoders.py, tests/data/test_loaders.py); pretrained weights of
another architecture (tests/utils/test_utils.py); codes of mismatched length
(tests/eval/test_hashing.py). Here: the same failures seen from ``train.py``, and a fuzz test.
"""

import io
import os
import random
import subprocess

import numpy as np
import pytest
from PIL import Image

from dinov2.data import ClassFolderDataset, ImageLoadError
from dinov2.data.datasets.decoders import load_image_rgb
from dinov2.train import train as train_module
from dinov2.utils.config import ConfigError

from ..conftest import make_args
from .conftest import PYTHON, TRAIN_SCRIPT, subprocess_env


def _write_dataset(root, classes=3, per_class=6, size=32):
    rng = np.random.default_rng(0)
    for c in range(classes):
        os.makedirs(root / f"class_{c}", exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"img_{i}.png")
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_training_image_stops_training_naming_the_file(tmp_path, tiny_arch, workers):
    root = _write_dataset(tmp_path / "data")
    # img_0 is in the database (training) split of class_1, so training reads it in its first epoch.
    (root / "class_1" / "img_0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    out = tmp_path / "run"
    with pytest.raises(ImageLoadError, match=r"class_1[/\\]img_0\.png"):
        train_module.main(make_args(out, f"train.data_path={root}", f"train.num_workers={workers}"))
    assert not list(out.glob("model_*.pth"))


def test_corrupt_query_image_stops_the_evaluation_naming_the_file(tmp_path, tiny_arch):
    root = _write_dataset(tmp_path / "data")
    (root / "class_2" / "img_5.png").write_bytes(b"")  # a query: only the evaluation reads it
    with pytest.raises(ImageLoadError, match=r"class_2[/\\]img_5\.png"):
        train_module.main(make_args(tmp_path / "run", f"train.data_path={root}"))


def test_command_line_errors_exit_with_the_cause_named(tmp_path):
    env = subprocess_env()
    cases = [(["train.no_such_key=1"], "train.no_such_key"), (["optim.epochs=-3"], "optim.epochs")]
    for opts, named in cases:
        result = subprocess.run(
            [PYTHON, TRAIN_SCRIPT, "--output-dir", str(tmp_path / "out"), *opts],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 2, result.stderr[-2000:]
        assert named in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_empty_dataset_root_through_the_entry_point_names_it(tmp_path, tiny_arch):
    empty = tmp_path / "empty_root"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty_root.*no class folders"):
        train_module.main(make_args(tmp_path / "run", f"train.data_path={empty}"))


def test_command_line_error_leaves_an_earlier_config_untouched(tmp_path, tiny_arch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("kept: true\n")
    with pytest.raises(ConfigError, match="hash.hash_bit"):
        train_module.main(make_args(out, "hash.hash_bit=-8"))
    assert (out / "config.yaml").read_text() == "kept: true\n"


def _valid_image_bytes(fmt: str, seed: int) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


# Mangled TIFF headers make PIL warn about tags and EXIF before it fails; the failure is what is tested.
@pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")
@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_as_images_always_raise_image_load_error_naming_the_file(tmp_path, seed):
    rng = random.Random(seed)
    for index in range(40):
        kind = rng.choice(["random", "header", "truncated", "flipped"])
        if kind == "random":
            content = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
        else:
            fmt, ext = rng.choice([("PNG", "png"), ("JPEG", "jpg"), ("TIFF", "tif"), ("BMP", "bmp")])
            valid = _valid_image_bytes(fmt, seed * 100 + index)
            if kind == "header":
                content = valid[: rng.randint(4, 16)] + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
            elif kind == "truncated":
                content = valid[: rng.randint(0, len(valid) - 1)]
            else:
                content = bytearray(valid)
                for _ in range(rng.randint(1, 20)):
                    content[rng.randrange(len(content))] = rng.getrandbits(8)
                content = bytes(content)
        path = tmp_path / f"fuzz_{seed}_{index}_{kind}.{rng.choice(['png', 'jpg', 'tif', 'bmp', 'webp'])}"
        path.write_bytes(content)
        try:
            image = load_image_rgb(path)
        except ImageLoadError as error:
            assert path.name in str(error)
        else:
            # Flipped bytes can leave a decodable image (changed pixels or header fields); it is then real RGB data.
            assert kind == "flipped" and image.mode == "RGB", (kind, path.name)
            assert np.asarray(image).shape == (image.size[1], image.size[0], 3)


def test_random_bytes_in_a_dataset_are_reported_not_replaced(tmp_path):
    root = _write_dataset(tmp_path / "data", classes=2, per_class=4, size=8)
    bad = root / "class_0" / "img_2.png"
    bad.write_bytes(bytes(random.Random(7).getrandbits(8) for _ in range(128)))
    dataset = ClassFolderDataset(root, "all", train_ratio=0.5)
    index = [i for i, (p, _) in enumerate(dataset.samples) if p == str(bad)][0]
    with pytest.raises(ImageLoadError, match="img_2.png"):
        dataset[index]
