import csv
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dinov2.data import ClassFolderDataset, make_classification_eval_transform

# Creation order is deliberately not sorted; names mix extensions and case.
LAYOUT = {
    "b_river": ["r4.png", "r0.JPG", "r2.tif", "r1.bmp", "r3.jpeg"],  # 5 files
    "a_forest": ["f6.TIFF", "f0.png", "f3.jpg", "f1.PNG", "f5.png", "f2.bmp", "f4.png"],  # 7 files
}


def _sorted_names(class_name):
    return sorted(LAYOUT[class_name])


@pytest.fixture
def tree(make_tree):
    root = make_tree(LAYOUT)
    # Entries that are not data: a non-image file, a hidden resource fork, a nested folder, a stray root file.
    (root / "b_river" / "notes.txt").write_text("not an image")
    (root / "b_river" / "._r0.jpg").write_bytes(b"\x00\x05garbage")
    os.makedirs(root / "a_forest" / "thumbs")
    (root / "README.md").write_text("readme")
    return root


def _expected(split_of_position):
    """(relative path, label) in sample order for a split, from the independently sorted layout."""
    out = []
    for label, class_name in enumerate(sorted(LAYOUT)):
        names = _sorted_names(class_name)
        for position, name in enumerate(names):
            if split_of_position(len(names), position):
                out.append((f"{class_name}/{name}", label))
    return out


def _relative(dataset):
    return [(os.path.relpath(path, dataset.root).replace(os.sep, "/"), label) for path, label in dataset.samples]


def test_classes_sorted_and_split_membership_with_odd_counts(tree):
    # int(7 * 0.5) = 3 and int(5 * 0.5) = 2 database images; the rest are queries.
    train = ClassFolderDataset(tree, "train", train_ratio=0.5)
    db = ClassFolderDataset(tree, "db", train_ratio=0.5)
    query = ClassFolderDataset(tree, "query", train_ratio=0.5)
    everything = ClassFolderDataset(tree, "all", train_ratio=0.5)

    assert train.classes == ["a_forest", "b_river"]
    n_db = {7: 3, 5: 2}
    assert _relative(train) == _expected(lambda n, i: i < n_db[n])
    assert _relative(db) == _relative(train)
    assert _relative(query) == _expected(lambda n, i: i >= n_db[n])
    assert _relative(everything) == _expected(lambda n, i: True)
    assert len(train) == 5 and len(query) == 7 and len(everything) == 12
    assert train.targets == [label for _, label in train.samples]
    assert set(_relative(train)).isdisjoint(_relative(query))


def test_split_is_deterministic_across_instances(tree):
    first = ClassFolderDataset(tree, "query", train_ratio=0.3)
    second = ClassFolderDataset(tree, "query", train_ratio=0.3)
    assert first.samples == second.samples


def test_val_split_comes_from_the_end_of_each_training_part(tree):
    # n_db: a=3, b=2; val = int(n_db * 0.5): a=1, b=1 -> train a=2, b=1.
    val = ClassFolderDataset(tree, "val", train_ratio=0.5, val_ratio=0.5)
    train = ClassFolderDataset(tree, "train", train_ratio=0.5, val_ratio=0.5)
    query = ClassFolderDataset(tree, "query", train_ratio=0.5, val_ratio=0.5)
    n_db = {7: 3, 5: 2}
    n_train = {7: 2, 5: 1}
    assert _relative(train) == _expected(lambda n, i: i < n_train[n])
    assert _relative(val) == _expected(lambda n, i: n_train[n] <= i < n_db[n])
    assert _relative(query) == _expected(lambda n, i: i >= n_db[n])
    assert len(ClassFolderDataset(tree, "db", train_ratio=0.5, val_ratio=0.5)) == len(train)


def _read_manifest(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_manifest_is_byte_identical_and_covers_every_file_once(tree, tmp_path):
    first = tmp_path / "first.csv"
    second = tmp_path / "second.csv"
    ClassFolderDataset(tree, "train", train_ratio=0.5, val_ratio=0.5).write_manifest(first)
    ClassFolderDataset(tree, "query", train_ratio=0.5, val_ratio=0.5).write_manifest(second)
    assert first.read_bytes() == second.read_bytes()

    # The same tree elsewhere gives the same bytes: paths are relative to the root.
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy)
    third = tmp_path / "third.csv"
    ClassFolderDataset(copy, "all", train_ratio=0.5, val_ratio=0.5).write_manifest(third)
    assert third.read_bytes() == first.read_bytes()

    rows = _read_manifest(first)
    files = [row["file"] for row in rows]
    expected_files = [f"{c}/{n}" for c in sorted(LAYOUT) for n in _sorted_names(c)]
    assert files == expected_files  # every image once, nothing else
    by_file = {row["file"]: row for row in rows}
    assert by_file["a_forest/f0.png"]["split"] == "train"
    assert by_file["a_forest/f2.bmp"]["split"] == "val"
    assert by_file["a_forest/f3.jpg"]["split"] == "query"
    assert by_file["b_river/r1.bmp"]["split"] == "val"
    assert by_file["b_river/r0.JPG"] == {"file": "b_river/r0.JPG", "label": "1", "class": "b_river", "split": "train"}
    assert [e.split for e in ClassFolderDataset(tree, "all", 0.5, 0.5).get_split_entries()] == [
        row["split"] for row in rows
    ]
    assert not [name for name in os.listdir(tmp_path) if ".tmp" in name]


def test_manifest_replaces_an_existing_file(tree, tmp_path):
    target = tmp_path / "manifest.csv"
    target.write_text("old content")
    ClassFolderDataset(tree, "all", train_ratio=0.5).write_manifest(target)
    assert target.read_text().startswith("file,label,class,split\n")


def test_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ClassFolderDataset(missing, "train", train_ratio=0.5)


def test_root_without_class_folders(tmp_path):
    root = tmp_path / "flat"
    os.makedirs(root)
    Image.new("RGB", (4, 4)).save(root / "loose.png")
    with pytest.raises(FileNotFoundError, match="flat.*no class folders"):
        ClassFolderDataset(root, "train", train_ratio=0.5)


def test_class_folder_without_images(make_tree):
    root = make_tree({"full": ["a.png", "b.png"]})
    os.makedirs(root / "empty_class")
    (root / "empty_class" / "labels.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="empty_class.*no images"):
        ClassFolderDataset(root, "train", train_ratio=0.5)


def test_train_ratio_leaving_a_class_without_database_names_the_class(tree):
    # int(5 * 0.15) = 0 database images for b_river (a_forest gets int(1.05) = 1).
    with pytest.raises(ValueError, match=r"b_river.*5 images.*0 database and 5 query"):
        ClassFolderDataset(tree, "train", train_ratio=0.15)


def test_val_ratio_leaving_a_class_without_validation(tree):
    # a_forest (first class): n_db = 3, int(3 * 0.3) = 0 validation images.
    with pytest.raises(ValueError, match=r"val_ratio=0.3.*a_forest.*3 training and 0 validation"):
        ClassFolderDataset(tree, "val", train_ratio=0.5, val_ratio=0.3)


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.2])
def test_train_ratio_out_of_range(tree, ratio):
    with pytest.raises(ValueError, match=f"train_ratio={ratio}"):
        ClassFolderDataset(tree, "train", train_ratio=ratio)


def test_bad_split_and_val_without_ratio(tree):
    with pytest.raises(ValueError, match="'test'"):
        ClassFolderDataset(tree, "test", train_ratio=0.5)
    with pytest.raises(ValueError, match="val_ratio"):
        ClassFolderDataset(tree, "val", train_ratio=0.5)
    with pytest.raises(ValueError, match="val_ratio=1.0"):
        ClassFolderDataset(tree, "train", train_ratio=0.5, val_ratio=1.0)


def test_cache_gives_the_same_tensors_as_files(make_tree):
    root = make_tree({"x": ["a.png", "b.jpg"], "y": ["c.tif", "d.bmp"]}, size=(37, 29))
    transform = make_classification_eval_transform(crop_size=28)
    from_files = ClassFolderDataset(root, "all", train_ratio=0.5, transform=transform)
    from_cache = ClassFolderDataset(root, "all", train_ratio=0.5, transform=transform, cache=True)
    for index in range(len(from_files)):
        image_f, label_f = from_files[index]
        image_c, label_c = from_cache[index]
        assert label_f == label_c
        assert image_f.shape == (3, 28, 28)
        assert torch.equal(image_f, image_c)


def test_cache_size_sets_the_shorter_side(make_tree):
    root = make_tree({"x": ["wide.png", "other.png"]}, size=(40, 20))
    dataset = ClassFolderDataset(root, "all", train_ratio=0.5, cache=True, cache_size=10)
    image, _ = dataset[0]
    assert image.size == (20, 10)
    # Solid colours survive resizing, so the cached pixels still match the file.
    file_pixels = np.asarray(Image.open(dataset.samples[0][0]).convert("RGB"))[0, 0]
    assert np.abs(np.asarray(image)[5, 10].astype(int) - file_pixels.astype(int)).max() <= 1
