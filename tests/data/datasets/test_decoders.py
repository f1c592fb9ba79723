import io

import numpy as np
import pytest
from PIL import Image

from dinov2.data import ClassFolderDataset, ImageLoadError
from dinov2.data.datasets import load_image_rgb


def _rgb(path):
    image = load_image_rgb(path)
    assert image.mode == "RGB"
    return np.asarray(image)


def test_grayscale(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.array([[0, 100], [200, 255]], dtype=np.uint8)).save(path)
    pixels = _rgb(path)
    assert pixels.shape == (2, 2, 3)
    assert pixels[:, :, 0].tolist() == [[0, 100], [200, 255]]
    assert (pixels[:, :, 0] == pixels[:, :, 2]).all()


def test_rgba_keeps_stored_colours(tmp_path):
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (3, 2), (10, 20, 30, 0)).save(path)
    assert _rgb(path)[1, 2].tolist() == [10, 20, 30]


def test_palette(tmp_path):
    path = tmp_path / "palette.png"
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 1
    image.save(path, transparency=1)
    assert _rgb(path)[0].tolist() == [[255, 0, 0], [0, 0, 255]]


@pytest.mark.parametrize("extension", [".tif", ".png"])
def test_16_bit_is_scaled_not_clipped(tmp_path, extension):
    values = np.array([[0, 257, 1000, 30000], [32896, 40000, 65280, 65535]], dtype=np.uint16)
    path = tmp_path / f"deep{extension}"
    Image.fromarray(values).save(path)
    # Independent expectation: the nearest 8-bit level, v * 255 / 65535 rounded.
    expected = np.floor(values.astype(np.float64) * 255.0 / 65535.0 + 0.5).astype(np.uint8)
    pixels = _rgb(path)
    assert pixels[:, :, 1].tolist() == expected.tolist()
    assert pixels[1, 3].tolist() == [255, 255, 255] and pixels[0, 2].tolist() == [4, 4, 4]


def test_32_bit_integer_and_float_modes(tmp_path):
    small = tmp_path / "int.tif"
    Image.fromarray(np.array([[0, 7, 255]], dtype=np.int32)).save(small)
    assert _rgb(small)[0, :, 0].tolist() == [0, 7, 255]

    unit = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(unit)
    assert _rgb(unit)[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk(tmp_path):
    path = tmp_path / "print.tif"
    image = Image.new("CMYK", (2, 1), (0, 0, 0, 0))
    image.putpixel((1, 0), (0, 0, 0, 255))
    image.save(path)
    assert _rgb(path)[0].tolist() == [[255, 255, 255], [0, 0, 0]]


def test_odd_sized_tiff_keeps_its_size(tmp_path):
    path = tmp_path / "ucmd.tif"
    pixels = np.random.default_rng(0).integers(0, 256, (253, 257, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    loaded = _rgb(path)
    assert loaded.shape == (253, 257, 3)
    assert np.array_equal(loaded, pixels)


def _jpeg_bytes():
    buffer = io.BytesIO()
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _png_bytes():
    buffer = io.BytesIO()
    noise = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, content",
    [
        ("empty.png", b""),
        ("garbage.jpg", b"this is not an image at all"),
        ("truncated.jpg", _jpeg_bytes()[: len(_jpeg_bytes()) // 2]),
        ("truncated.png", _png_bytes()[: len(_png_bytes()) // 2]),
    ],
)
def test_unreadable_files_raise_naming_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=name):
        load_image_rgb(path)


def test_missing_file_raises_naming_it(tmp_path):
    with pytest.raises(ImageLoadError, match="gone.png"):
        load_image_rgb(tmp_path / "gone.png")


def test_dataset_item_raises_for_a_corrupt_file_and_never_substitutes(make_tree):
    root = make_tree({"c": ["a.png", "b.png", "c.png"]})
    (root / "c" / "b.png").write_bytes(_png_bytes()[:100])
    dataset = ClassFolderDataset(root, "all", train_ratio=0.5)
    assert dataset[0][0].size == (12, 10)
    with pytest.raises(ImageLoadError, match="b.png"):
        dataset[1]
    with pytest.raises(ImageLoadError, match="b.png"):
        ClassFolderDataset(root, "all", train_ratio=0.5, cache=True)
