"""Image list files (dinov2/data/datasets/image_list.py) and the source chooser (sources.py)."""

import os

import numpy as np
import pytest

from dinov2.data.datasets import (
    ClassFolderDataset,
    FolderTreeDataset,
    ImageListDataset,
    ImageListError,
    detect_source,
    open_image_source,
)

from ..conftest import write_image


@pytest.fixture
def images(tmp_path):
    """Six images in two folders, and a helper writing a list file next to them."""
    names = [f"tiles/{kind}_{i}.png" for kind in ("a", "b") for i in range(3)]
    for index, name in enumerate(names):
        write_image(str(tmp_path / name), colour=(index * 40, 0, 0))

    def write_list(text, name="list.csv"):
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return names, write_list


def test_single_label_list_splits_each_first_label_group_like_a_class_folder(images, make_tree):
    names, write_list = images
    # Rows interleave the two classes; each class keeps its list order.
    rows = ["path,labels"] + [f"{n},{'x' if 'a_' in n else 'y'}" for n in (names[0], names[3], names[1], names[4], names[2], names[5])]
    list_file = write_list("\n".join(rows) + "\n")
    db = ImageListDataset(list_file, "train", train_ratio=0.5)
    queries = ImageListDataset(list_file, "query", train_ratio=0.5)
    assert db.classes == ["x", "y"] and not db.multi_label and db.labeled
    # int(3 * 0.5) = 1 database image per class: the first row of each.
    assert db.relative_files() == ["tiles/a_0.png", "tiles/b_0.png"] and db.targets == [0, 1]
    assert queries.relative_files() == ["tiles/a_1.png", "tiles/b_1.png", "tiles/a_2.png", "tiles/b_2.png"]
    assert queries.targets == [0, 1, 0, 1]
    assert db.samples[0][0] == os.path.join(os.path.dirname(list_file), "tiles", "a_0.png")
    # The same images as class folders give the same membership.
    tree = make_tree({"x": ["0.png", "1.png", "2.png"], "y": ["0.png", "1.png", "2.png"]})
    folder_db = ClassFolderDataset(tree, "train", train_ratio=0.5)
    assert [f.split("/")[1] for f in folder_db.relative_files()] == ["0.png", "0.png"] and folder_db.targets == [0, 1]


def test_multi_label_targets_are_multi_hot_and_manifest_joins_labels(images, tmp_path):
    names, write_list = images
    list_file = write_list(
        "# aerial tiles\n"
        f"{names[0]},road;tree,train\n"
        f"{names[1]},tree,train\n"
        f"\n{names[2]},building;road,query\n"
        f'"{names[3]}",building,val\n'
    )
    all_ = ImageListDataset(list_file, "all")
    assert all_.multi_label and all_.classes == ["building", "road", "tree"]
    np.testing.assert_array_equal(all_.targets, [[0, 1, 1], [0, 0, 1], [1, 1, 0], [1, 0, 0]])
    assert all_.label_names(2) == ["building", "road"]
    assert ImageListDataset(list_file, "query").relative_files() == [names[2]]
    assert ImageListDataset(list_file, "db").relative_files() == names[:2]
    image, target = ImageListDataset(list_file, "val")[0]
    assert image.size == (12, 10) and target.tolist() == [1, 0, 0]
    manifest = (tmp_path / "m.csv")
    all_.write_manifest(manifest)
    lines = manifest.read_text().splitlines()
    assert lines[0] == "file,label,class,split" and lines[1] == f"{names[0]},1;2,road;tree,train"
    assert lines[4] == f"{names[3]},0,building,val"


@pytest.mark.parametrize(
    "text, message",
    [
        ("tiles/a_0.png,x\ntiles/missing.png,x\n", "line 2: image file '.*missing.png' not found"),
        ("tiles/a_0.png,x\n\ntiles/a_0.png,y\n", "line 3: 'tiles/a_0.png' is already listed on line 1"),
        ("tiles/a_0.png,x,train,extra\n", "line 1: 4 columns, expected at most 3"),
        ("tiles/a_0.png,x,test\n", "line 1: split 'test' is not one of"),
        ("tiles/a_0.png,x\ntiles/a_1.png,\n", "line 2: 'tiles/a_1.png' has no label while line 1 has one"),
        ("tiles/a_0.png,x,train\ntiles/a_1.png,x\n", "line 2: no split while line 1 has one"),
        ("path,labels,colour\ntiles/a_0.png,x,red\n", "line 1: header columns"),
        (",x\n", "line 1: the path is empty"),
        ("# nothing\n\n", "lists no images"),
        ("tiles/a_0.png,x;x\n", "line 1: label listed twice"),
    ],
)
def test_bad_lines_are_errors_naming_the_file_and_line(images, text, message):
    _, write_list = images
    list_file = write_list(text)
    with pytest.raises(ImageListError, match=message) as info:
        ImageListDataset(list_file, "all")
    assert list_file in str(info.value) or "lists no images" in message


def test_ratio_that_empties_a_class_names_the_class_and_list(images):
    names, write_list = images
    list_file = write_list(f"{names[0]},lonely\n{names[1]},x\n{names[2]},x\n")
    with pytest.raises(ImageListError, match="class 'lonely' of image list .* 0 database and 1 query"):
        ImageListDataset(list_file, "train", train_ratio=0.5)


def test_split_all_takes_a_class_too_small_to_split(images, make_tree):
    # Indexing or training on every file needs no database/query split: a one-image class is fine there.
    names, write_list = images
    list_file = write_list(f"{names[0]},lonely\n{names[1]},x\n{names[2]},x\n")
    every = ImageListDataset(list_file, "all", train_ratio=0.5)
    assert every.relative_files() == names[:3] and len(every) == 3
    root = make_tree({"lonely": ["a.png"], "pair": ["b.png", "c.png"]})
    assert len(ClassFolderDataset(root, "all", 0.5)) == 3
    with pytest.raises(ValueError, match="class 'lonely'"):
        ClassFolderDataset(root, "train", 0.5)


def test_unlabeled_list_is_all_training_data_and_has_no_query_split(images):
    names, write_list = images
    list_file = write_list("\n".join(names[:4]) + "\n", name="paths.txt")
    train = ImageListDataset(list_file, "train")
    assert not train.labeled and train.targets == [-1] * 4 and train.relative_files() == names[:4]
    with pytest.raises(ValueError, match="unlabeled: it has no query split"):
        ImageListDataset(list_file, "query")


def test_folder_tree_lists_every_image_at_any_depth_sorted(tmp_path):
    for name in ("z.png", "b/deep/x.jpg", "a/y.png", ".hidden/h.png", "a/.h.png"):
        write_image(str(tmp_path / "tree" / name))
    (tmp_path / "tree" / "a" / "notes.txt").write_text("no image")
    tree = FolderTreeDataset(tmp_path / "tree", "train")
    assert tree.relative_files() == ["a/y.png", "b/deep/x.jpg", "z.png"] and tree.targets == [-1, -1, -1]
    assert tree.label_names(0) == [] and not tree.labeled
    with pytest.raises(ValueError, match="folder tree .* unlabeled"):
        FolderTreeDataset(tmp_path / "tree", "query")
    os.makedirs(tmp_path / "empty" / "sub")
    with pytest.raises(FileNotFoundError, match="contains no images"):
        FolderTreeDataset(tmp_path / "empty")


def test_auto_detects_list_class_folders_and_tree(images, make_tree, tmp_path):
    names, write_list = images
    list_file = write_list(f"{names[0]},x\n")
    classes = make_tree({"c1": ["0.png"], "c2": ["0.png"]}, root_name="classes")
    assert detect_source(list_file) == "image_list"
    assert detect_source(str(classes)) == "class_folders"
    # An image next to the class folders: not one folder per class any more.
    write_image(str(classes / "stray.png"))
    assert detect_source(str(classes)) == "folder_tree"
    assert isinstance(open_image_source(classes, "auto"), FolderTreeDataset)
    with pytest.raises(ValueError, match="is a file: for an image list set data.source=image_list"):
        open_image_source(list_file, "class_folders")
    with pytest.raises(ValueError, match="is a folder: give the list file"):
        open_image_source(classes, "image_list")
    with pytest.raises(ValueError, match="image source 'csv' is not one of"):
        open_image_source(list_file, "csv")
