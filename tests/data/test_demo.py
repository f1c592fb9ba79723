import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from dinov2.data import ClassFolderDataset, generate_demo_dataset
from dinov2.data import demo as demo_module


def _digests(root):
    digests = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                digests[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return digests


def test_same_parameters_give_the_same_bytes_in_different_folders(tmp_path):
    first = generate_demo_dataset(tmp_path / "one" / "demo", num_classes=3, images_per_class=4, image_size=24, seed=1)
    second = generate_demo_dataset(tmp_path / "two" / "demo", num_classes=3, images_per_class=4, image_size=24, seed=1)
    assert _digests(first) == _digests(second)
    other = generate_demo_dataset(tmp_path / "three", num_classes=3, images_per_class=4, image_size=24, seed=2)
    assert _digests(other) != _digests(first)


def test_layout_classes_and_images(tmp_path):
    root = generate_demo_dataset(tmp_path / "demo", num_classes=8, images_per_class=5, image_size=20)
    classes = sorted(name for name in os.listdir(root) if not name.startswith("."))
    assert len(classes) == 8
    for name in classes:
        files = sorted(os.listdir(os.path.join(root, name)))
        assert len(files) == 5 and all(f.endswith(".png") for f in files)
        image = Image.open(os.path.join(root, name, files[0]))
        assert image.size == (20, 20) and image.mode == "RGB"
    dataset = ClassFolderDataset(root, "all", train_ratio=0.6)
    assert dataset.classes == classes and len(dataset) == 40


def test_classes_differ_more_between_than_within():
    # Mean colour alone already separates most scene kinds: the task is learnable.
    size, per_class = 32, 6
    means = {
        name: np.stack(
            [
                demo_module.render_scene(name, size, np.random.default_rng([0, k, i])).mean((0, 1))
                for i in range(per_class)
            ]
        )
        for k, name in enumerate(demo_module.PAINTERS)
    }
    within = np.mean([np.linalg.norm(m - m.mean(0), axis=1).mean() for m in means.values()])
    centres = np.stack([m.mean(0) for m in means.values()])
    between = np.mean([np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[i + 1 :]])
    assert between > 2 * within


def test_complete_folder_is_reused_without_writing(tmp_path, monkeypatch):
    root = generate_demo_dataset(tmp_path / "demo", num_classes=2, images_per_class=2, image_size=16)
    marker = os.path.join(root, demo_module.COMPLETE_MARKER)
    assert os.path.isfile(marker)

    def fail(*args, **kwargs):
        raise AssertionError("a complete demo dataset was regenerated")

    monkeypatch.setattr(demo_module, "_write_tree", fail)
    assert generate_demo_dataset(tmp_path / "demo", num_classes=2, images_per_class=2, image_size=16) == root


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = demo_module.render_scene

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(demo_module, "render_scene", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_demo_dataset(tmp_path / "demo", num_classes=2, images_per_class=4, image_size=16)
    assert os.listdir(tmp_path) == []  # neither the root nor a partial folder

    monkeypatch.setattr(demo_module, "render_scene", original)
    root = generate_demo_dataset(tmp_path / "demo", num_classes=2, images_per_class=4, image_size=16)
    assert len(ClassFolderDataset(root, "all", train_ratio=0.5)) == 8


def test_existing_folders_are_never_overwritten(tmp_path):
    root = generate_demo_dataset(tmp_path / "demo", num_classes=2, images_per_class=2, image_size=16)
    before = _digests(root)
    with pytest.raises(FileExistsError, match="demo"):
        generate_demo_dataset(root, num_classes=3, images_per_class=2, image_size=16)
    assert _digests(root) == before

    foreign = tmp_path / "photos"
    os.makedirs(foreign / "cats")
    (foreign / "cats" / "x.png").write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="photos"):
        generate_demo_dataset(foreign)
    assert (foreign / "cats" / "x.png").read_bytes() == b"keep me"

    empty = tmp_path / "empty"
    os.makedirs(empty)
    assert os.path.isdir(
        os.path.join(generate_demo_dataset(empty, num_classes=1, images_per_class=2, image_size=8), "forest")
    )


def test_bad_parameters():
    with pytest.raises(ValueError, match="num_classes=9"):
        generate_demo_dataset("/nonexistent/demo", num_classes=9)
    with pytest.raises(ValueError, match="images_per_class=0"):
        generate_demo_dataset("/nonexistent/demo", images_per_class=0)


def test_the_demo_data_is_generated_once_and_shared_by_every_run(tmp_path, monkeypatch):
    from dinov2.data.builders import resolve_data_root
    from dinov2.utils.config import merge_config

    monkeypatch.setenv("SDSH_CACHE", str(tmp_path / "cache"))
    opts = ["train.data_path=demo", "data.demo_classes=2", "data.demo_images_per_class=2", "data.demo_image_size=16"]
    first = merge_config(None, [*opts, f"train.output_dir={tmp_path / 'run_a'}"])
    second = merge_config(None, [*opts, f"train.output_dir={tmp_path / 'run_b'}"])
    root = resolve_data_root(first)
    assert root == resolve_data_root(second) and root.startswith(str(tmp_path / "cache"))
    assert len([name for name in os.listdir(root) if not name.startswith(".")]) == 2  # the two class folders
    assert not (tmp_path / "run_a").exists() and not (tmp_path / "run_b").exists()
    other = merge_config(None, [*opts[:-1], "data.demo_image_size=24"])
    assert resolve_data_root(other) != root
