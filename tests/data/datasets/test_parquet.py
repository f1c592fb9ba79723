"""Hugging Face parquet datasets (dinov2/data/datasets/parquet.py), built here in the Hub's layout."""

import os
import pickle

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="data.source=parquet needs pyarrow (pip install 'sdsh[parquet]')")

from dinov2.data.datasets import (  # noqa: E402
    ImageLoadError,
    ParquetDataset,
    ParquetError,
    detect_source,
    open_image_source,
    parse_locator,
    read_parquet_image,
)
from dinov2.data.datasets import parquet as parquet_module  # noqa: E402

from ...conftest import png_bytes, write_hub_parquet  # noqa: E402

# Class names in the Hub's order, which is not alphabetical: labels must follow the metadata.
NAMES = ["runway", "forest", "harbor"]


def colour(row):
    return (row * 20 % 256, 100, 255 - row * 20 % 256)


@pytest.fixture
def uc_merced_like(tmp_path):
    """A train-only dataset as ``blanchon/UC_Merced`` ships: 3 classes x 4 rows, interleaved, row groups of 2."""
    root = tmp_path / "UC_Merced"
    labels = [row % 3 for row in range(12)]
    write_hub_parquet(root / "data" / "train-00000-of-00001.parquet", [png_bytes(colour(r)) for r in range(12)], labels, NAMES)
    (root / "README.md").write_text("---\ndataset_info: ...\n---\n")
    return root


def test_a_train_only_dataset_splits_each_class_by_train_ratio_with_the_hub_class_names(uc_merced_like):
    db = ParquetDataset(uc_merced_like, "train", train_ratio=0.5)
    queries = ParquetDataset(uc_merced_like, "query", train_ratio=0.5)
    assert db.classes == NAMES and db.labeled and not db.multi_label
    shard = "data/train-00000-of-00001.parquet"
    # Rows 0..11 carry labels 0,1,2,0,1,2,...: the first 2 rows of each class are the database.
    assert db.relative_files() == [f"{shard}#{r}" for r in (0, 1, 2, 3, 4, 5)] and db.targets == [0, 1, 2, 0, 1, 2]
    assert queries.relative_files() == [f"{shard}#{r}" for r in range(6, 12)]
    assert db.label_names(1) == ["forest"]
    image, target = queries[0]
    assert image.mode == "RGB" and image.size == (12, 10) and image.getpixel((0, 0)) == colour(6) and target == 0
    assert parse_locator(queries.samples[0][0]) == (os.path.join(uc_merced_like, "data", "train-00000-of-00001.parquet"), 6)
    assert parse_locator("tiles/a.png") is None


def test_the_manifest_writes_rows_and_class_names(uc_merced_like, tmp_path):
    db = ParquetDataset(uc_merced_like, "train", train_ratio=0.5)
    lines = open(db.write_manifest(tmp_path / "split.csv")).read().splitlines()
    assert lines[0] == "file,label,class,split" and len(lines) == 13
    assert lines[1] == "data/train-00000-of-00001.parquet#0,0,runway,train"
    assert lines[12] == "data/train-00000-of-00001.parquet#11,2,harbor,query"


def test_the_dataset_s_own_splits_become_database_queries_and_validation(tmp_path):
    root = tmp_path / "hub"
    for split, rows, first in (("train", 6, 0), ("test", 3, 6), ("validation", 3, 9)):
        images = [png_bytes(colour(first + r)) for r in range(rows)]
        write_hub_parquet(root / "data" / f"{split}-00000-of-00001.parquet", images, [r % 3 for r in range(rows)], NAMES)
    db = open_image_source(root, "parquet", "train", train_ratio=0.9)
    queries = open_image_source(root, "parquet", "query", train_ratio=0.9)
    val = open_image_source(root, "parquet", "val", train_ratio=0.9)
    assert len(db) == 6 and len(queries) == 3 and len(val) == 3
    assert {f.split("#")[0] for f in queries.relative_files()} == {"data/test-00000-of-00001.parquet"}
    assert val.get_image(0).getpixel((0, 0)) == colour(9)
    assert len(open_image_source(root, "parquet", "all")) == 12


def test_val_ratio_carves_validation_from_train_when_the_dataset_has_no_validation_split(tmp_path):
    root = tmp_path / "hub"
    write_hub_parquet(root / "train-00000-of-00001.parquet", [png_bytes(colour(r)) for r in range(8)], [r % 2 for r in range(8)], NAMES[:2])
    write_hub_parquet(root / "test-00000-of-00001.parquet", [png_bytes(colour(r)) for r in range(2)], [0, 1], NAMES[:2])
    train = ParquetDataset(root, "train", val_ratio=0.25)
    val = ParquetDataset(root, "val", val_ratio=0.25)
    # 4 train rows per class; the last one of each becomes validation.
    assert [f.split("#")[1] for f in val.relative_files()] == ["6", "7"] and len(train) == 6
    with pytest.raises(ParquetError, match="no validation split"):
        ParquetDataset(root, "val")


def test_a_list_of_class_labels_gives_multi_hot_targets(tmp_path):
    root = tmp_path / "multi"
    labels = [[0, 2], [1], [2], [0, 1], [1, 2], [0]]
    write_hub_parquet(root / "data" / "train-00000-of-00001.parquet", [png_bytes(colour(r)) for r in range(6)], labels, NAMES, list_labels=True)
    dataset = ParquetDataset(root, "all")
    assert dataset.multi_label and dataset.targets.shape == (6, 3)
    assert dataset.targets[0].tolist() == [1, 0, 1] and dataset.label_names(3) == ["runway", "forest"]
    lines = open(dataset.write_manifest(tmp_path / "m.csv")).read().splitlines()
    assert lines[1].startswith("data/train-00000-of-00001.parquet#0,0;2,runway;harbor,")


def test_without_metadata_a_label_column_of_strings_or_integers_is_used(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array([{"bytes": png_bytes(colour(r)), "path": None} for r in range(4)], image_type)
    pq.write_table(pa.table({"img": images, "label": ["sea", "city", "sea", "city"]}), tmp_path / "tiles.parquet")
    dataset = ParquetDataset(tmp_path / "tiles.parquet", "train", train_ratio=0.5)
    assert dataset.classes == ["city", "sea"] and dataset.targets == [1, 0]
    write_hub_parquet(tmp_path / "ints" / "0000.parquet", [png_bytes(colour(r)) for r in range(4)], [1, 0, 1, 0], None)
    assert ParquetDataset(tmp_path / "ints", "all").classes == ["0", "1"]


def test_without_a_label_column_the_dataset_is_unlabeled(tmp_path):
    write_hub_parquet(tmp_path / "u" / "train-00000-of-00001.parquet", [png_bytes(colour(r)) for r in range(3)], None, [])
    dataset = ParquetDataset(tmp_path / "u", "train")
    assert not dataset.labeled and dataset.targets == [-1, -1, -1]
    with pytest.raises(ValueError, match="unlabeled"):
        ParquetDataset(tmp_path / "u", "query")


def test_images_are_read_one_row_group_at_a_time_within_the_cache_budget(uc_merced_like, monkeypatch):
    monkeypatch.setattr(parquet_module, "ROW_GROUP_CACHE_BYTES", 1)
    dataset = ParquetDataset(uc_merced_like, "all")
    reads = []
    for shard in dataset._shards.values():
        original = shard.file.read_row_group
        monkeypatch.setattr(shard.file, "read_row_group", lambda g, columns, o=original: reads.append(g) or o(g, columns=columns))
    pixels = [dataset.get_image(i).getpixel((0, 0)) for i in range(len(dataset))]
    assert pixels == [colour(r) for r in range(12)]
    # 6 row groups of 2 rows, each read once in order; one kept at a time under a 1-byte budget.
    assert reads == [0, 1, 2, 3, 4, 5] and len(dataset._groups) == 1
    assert dataset.stored_file(3).endswith("train-00000-of-00001.parquet")


def test_a_dataset_survives_pickling_for_loader_workers(uc_merced_like):
    dataset = ParquetDataset(uc_merced_like, "query", cache=False)
    dataset.get_image(0)
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.get_image(5).getpixel((0, 0)) == colour(11) and len(copy._groups) == 1


def test_cache_decodes_every_image_of_the_split_once(uc_merced_like):
    dataset = ParquetDataset(uc_merced_like, "train", cache=True, cache_size=5)
    assert len(dataset._cache) == 6 and dataset.get_image(2).size == (6, 5)


def test_a_served_image_is_read_from_its_row(uc_merced_like):
    shard = os.path.join(uc_merced_like, "data", "train-00000-of-00001.parquet")
    assert read_parquet_image(shard, 7) == png_bytes(colour(7))
    with pytest.raises(ParquetError, match="no row 12"):
        read_parquet_image(shard, 12)


def test_auto_recognises_shards_but_not_image_folders(uc_merced_like, make_tree, tmp_path):
    assert detect_source(str(uc_merced_like)) == "parquet"
    assert detect_source(str(uc_merced_like / "data" / "train-00000-of-00001.parquet")) == "parquet"
    tree = make_tree({"a": ["0.png"], "b": ["0.png"]})
    assert detect_source(str(tree)) == "class_folders"
    (tree / "a" / "extra.parquet").write_bytes(b"")
    assert detect_source(str(tree)) == "class_folders"


def test_a_cell_that_is_not_an_image_names_the_shard_and_row(tmp_path):
    write_hub_parquet(tmp_path / "b" / "train-00000-of-00001.parquet", [png_bytes((0, 0, 0)), b"not an image"], [0, 0], NAMES)
    dataset = ParquetDataset(tmp_path / "b", "all")
    with pytest.raises(ImageLoadError, match=r"train-00000-of-00001.parquet', row 1"):
        dataset[1]


@pytest.mark.parametrize(
    "labels, names, message",
    [
        ([0, None], NAMES, r"row 1, column 'label': label None is not a class"),
        ([0, 5], NAMES, r"row 1, column 'label': label 5 is not a class \(expected 0..2"),
        ([0, -1], NAMES, r"label -1 is not a class"),
    ],
)
def test_unusable_labels_name_the_shard_row_and_column(tmp_path, labels, names, message):
    write_hub_parquet(tmp_path / "d" / "train-00000-of-00001.parquet", [png_bytes((0, 0, 0))] * 2, labels, names)
    with pytest.raises(ParquetError, match=message):
        ParquetDataset(tmp_path / "d", "all")


def test_shards_that_disagree_or_unknown_splits_are_errors(tmp_path):
    image = [png_bytes((0, 0, 0))] * 2
    write_hub_parquet(tmp_path / "x" / "train-00000-of-00001.parquet", image, [0, 1], NAMES)
    write_hub_parquet(tmp_path / "x" / "test-00000-of-00001.parquet", image, [0, 1], ["a", "b"])
    with pytest.raises(ParquetError, match="every shard must agree"):
        ParquetDataset(tmp_path / "x", "all")
    write_hub_parquet(tmp_path / "y" / "train-00000-of-00001.parquet", image, [0, 1], NAMES)
    write_hub_parquet(tmp_path / "y" / "extra-00000-of-00001.parquet", image, [0, 1], NAMES)
    with pytest.raises(ParquetError, match="split 'extra' is not one of train, test"):
        ParquetDataset(tmp_path / "y", "all")


def test_missing_folder_no_shards_and_no_image_column_are_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pytest.raises(FileNotFoundError, match="neither a folder nor a .parquet file"):
        ParquetDataset(tmp_path / "nowhere", "all")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no"):
        ParquetDataset(tmp_path / "empty", "all")
    pq.write_table(pa.table({"x": np.arange(3)}), tmp_path / "plain.parquet")
    with pytest.raises(ParquetError, match=r"plain.parquet' has no image column .* columns are x"):
        ParquetDataset(tmp_path / "plain.parquet", "all")


def test_the_start_up_check_accepts_shards_and_names_what_is_wrong(uc_merced_like, tmp_path):
    from dinov2.utils.validation import InputNotFoundError, check_data_path

    shard = str(uc_merced_like / "data" / "train-00000-of-00001.parquet")
    check_data_path(str(uc_merced_like), "parquet")
    check_data_path(shard, "parquet")
    check_data_path(shard, "auto")
    with pytest.raises(InputNotFoundError, match=r"train.data_path=.*nowhere does not exist \(data.source=parquet"):
        check_data_path(str(tmp_path / "nowhere"), "parquet")
    (tmp_path / "list.csv").write_text("a.png,x\n")
    with pytest.raises(InputNotFoundError, match="not a .parquet file"):
        check_data_path(str(tmp_path / "list.csv"), "parquet")
