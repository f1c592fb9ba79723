"""A Hugging Face Hub dataset as its parquet shards: image bytes and class labels in columns.

A dataset downloaded from the Hub (``huggingface-cli download blanchon/UC_Merced --repo-type dataset``)
is a folder of shards such as ``data/train-00000-of-00001.parquet``. This source reads them with
``pyarrow`` (the ``parquet`` extra), without the ``datasets`` library:

- the **image column** is the one the Hub's schema metadata (key ``huggingface``) types as ``Image``, a
  struct ``{bytes: binary, path: string}``; without metadata, the first column of that struct type;
- the **label column** is the one typed ``ClassLabel`` (int64; class names from the metadata), or a list
  of ``ClassLabel`` (several labels per image: relevant = at least one shared label); without metadata,
  a column named ``label`` or ``labels`` (integers, names "0", "1", ...; or strings, names sorted).
  No label column: an unlabeled dataset (training and indexing only);
- the **split** of a shard is the dataset's own, from its name (``train-...``, ``test-...``,
  ``validation-...``, or a folder ``train/``): with both a train and a test split, train is the
  retrieval database (and training set), test the queries and validation the validation queries
  (``val_ratio`` carves them from train when there is no validation split). Otherwise every row is
  split like a class folder: grouped by first label in row order, the first ``int(n * train_ratio)``
  rows of each group are the database.

A sample's file is ``<shard path relative to the root>#<row in the shard>``. Images are read when
needed, one row group at a time (the last few kept per process, under ``ROW_GROUP_CACHE_BYTES``), so
the whole dataset is never in memory unless ``cache`` asks for it.
"""

import io
import json
import logging
import os
import re
from collections import OrderedDict
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Sequence, Tuple

from PIL import Image

from .base import ImageEntry, SplitImageDataset, check_split_arguments, is_visible, split_counts, split_of_position
from .decoders import PathLike, load_image_rgb

logger = logging.getLogger("dinov2")

PARQUET_SUFFIX = ".parquet"
# The Hub's split names and the split each becomes here (train is also the retrieval database).
HUB_SPLITS = {"train": "train", "test": "query", "validation": "val", "valid": "val", "val": "val"}
ROW_GROUP_CACHE_BYTES = 64 * 1024 * 1024
_SHARD_NAME = re.compile(r"(?P<split>[A-Za-z0-9_.]+?)((?P<numbered>-\d+-of-\d+)|-\d+)?\.parquet")
_LOCATOR = re.compile(r"(?P<shard>.+\.parquet)#(?P<row>[0-9]+)")


class ParquetError(ValueError):
    """A parquet dataset that cannot be used: the message names the shard, the column or the row."""


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ParquetError(
            "reading a parquet dataset needs pyarrow: pip install 'sdsh[parquet]' (or pip install pyarrow)"
        ) from None
    return pq


def list_parquet_shards(root: str) -> List[str]:
    """The ``*.parquet`` files under ``root`` (any depth, hidden entries skipped), relative and sorted."""
    shards = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if is_visible(name))
        relative = os.path.relpath(folder, root)
        for name in names:
            if is_visible(name) and name.endswith(PARQUET_SUFFIX):
                shards.append(name if relative == "." else os.path.join(relative, name).replace(os.sep, "/"))
    return sorted(shards)


def shard_split(shard: str) -> Optional[str]:
    """The Hub split name of a shard (``data/train-00000-of-00002.parquet`` -> train), or None."""
    parts = shard.split("/")
    match = _SHARD_NAME.fullmatch(parts[-1])
    if match and match.group("split") in HUB_SPLITS:
        return match.group("split")
    if len(parts) > 1 and parts[-2] in HUB_SPLITS:  # the Hub's converted layout: default/train/0000.parquet
        return parts[-2]
    # "extra-00000-of-00001.parquet" is the Hub naming a split this source does not know.
    return match.group("split") if match and match.group("numbered") else None


def parse_locator(file: str) -> Optional[Tuple[str, int]]:
    """``(shard, row)`` of a parquet sample's file ``shard#row``; None for an ordinary image file."""
    match = _LOCATOR.fullmatch(file)
    return (match.group("shard"), int(match.group("row"))) if match else None


def hub_features(schema, shard: str) -> Dict[str, Any]:
    """The ``features`` of the Hub's schema metadata (``{}`` without it)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return {}
    try:
        features = json.loads(raw)["info"]["features"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ParquetError(f"parquet shard '{shard}': unreadable 'huggingface' schema metadata ({exc})") from None
    return features if isinstance(features, dict) else {}


def _is_image_struct(field_type) -> bool:
    import pyarrow as pa

    return pa.types.is_struct(field_type) and {field_type.field(i).name for i in range(field_type.num_fields)} >= {"bytes"}


def image_column(schema, features: Dict[str, Any], shard: str) -> str:
    for name, feature in features.items():
        if isinstance(feature, dict) and feature.get("_type") == "Image" and name in schema.names:
            return name
    for field in schema:
        if _is_image_struct(field.type):
            return field.name
    raise ParquetError(
        f"parquet shard '{shard}' has no image column (expected a Hub 'Image' feature, a struct with a 'bytes' "
        f"field); its columns are {', '.join(schema.names)}"
    )


def _class_label(feature) -> Tuple[Optional[List[str]], bool]:
    """(class names, is a list) of a ``ClassLabel`` feature or a list of one; (None, False) otherwise."""
    if isinstance(feature, list) and len(feature) == 1:  # the older serialisation of a list feature
        return _class_label(feature[0])[0], True
    if not isinstance(feature, dict):
        return None, False
    if feature.get("_type") == "ClassLabel":
        return [str(name) for name in feature.get("names", [])], False
    if feature.get("_type") in ("Sequence", "List", "LargeList"):
        return _class_label(feature.get("feature"))[0], True
    return None, False


def label_column(schema, features: Dict[str, Any]) -> Tuple[Optional[str], Optional[List[str]]]:
    """(label column, class names from the metadata or None); (None, None) for an unlabeled dataset."""
    typed = [(name, _class_label(feature)[0]) for name, feature in features.items() if name in schema.names]
    typed = [(name, names) for name, names in typed if names is not None]
    if typed:
        chosen = next(((n, names) for n, names in typed if n in ("label", "labels")), typed[0])
        if len(typed) > 1:
            logger.info("parquet dataset: class-label columns %s, using '%s'", [n for n, _ in typed], chosen[0])
        return chosen
    for name in ("label", "labels"):
        if name in schema.names:
            return name, None
    return None, None


class _Shard:
    """One shard: its path, row count and the first row of each row group."""

    def __init__(self, root: str, rel: str, pq):
        self.rel = rel
        self.path = os.path.join(root, *rel.split("/"))
        try:
            self.file = pq.ParquetFile(self.path)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
            raise ParquetError(f"parquet shard '{self.path}' cannot be read: {type(exc).__name__}: {exc}") from None
        meta = self.file.metadata
        self.num_rows = meta.num_rows
        self.group_starts = []
        start = 0
        for group in range(meta.num_row_groups):
            self.group_starts.append(start)
            start += meta.row_group(group).num_rows
        self.schema = self.file.schema_arrow
        self.features = hub_features(self.schema, self.path)
        self.image_column = image_column(self.schema, self.features, self.path)

    def labels(self, column: str) -> List[Any]:
        """The label column's values in row order, read one row group at a time."""
        values: List[Any] = []
        for batch in self.file.iter_batches(columns=[column]):
            values.extend(batch.column(0).to_pylist())
        return values


def row_group_of(group_starts: Sequence[int], row: int) -> Tuple[int, int]:
    """(row group, offset in it) of a row, from the first row of each group."""
    group = max(i for i, start in enumerate(group_starts) if start <= row)
    return group, row - group_starts[group]


def read_row_bytes(file, image_column_name: str, group: int, offset: int, where: str) -> bytes:
    """The encoded image of one row: read its row group's image column, take the row's ``bytes``."""
    column = file.read_row_group(group, columns=[image_column_name]).column(0).combine_chunks()
    return cell_bytes(column, offset, where)


def cell_bytes(column, offset: int, where: str) -> bytes:
    value = column[offset].as_py()
    if isinstance(value, dict):
        value = value.get("bytes")
    if not value:
        raise ParquetError(f"{where}: the image cell holds no bytes (images stored as paths only are not read)")
    return value


def read_parquet_image(shard_path: str, row: int) -> bytes:
    """The encoded image of row ``row`` of one shard (for a single look-up, such as a served image)."""
    pq = _pyarrow_parquet()
    shard = _Shard(os.path.dirname(shard_path), os.path.basename(shard_path), pq)
    if not 0 <= row < shard.num_rows:
        raise ParquetError(f"parquet shard '{shard_path}' has {shard.num_rows} rows, no row {row}")
    group, offset = row_group_of(shard.group_starts, row)
    return read_row_bytes(shard.file, shard.image_column, group, offset, f"parquet shard '{shard_path}', row {row}")


class ParquetDataset(SplitImageDataset):
    """One split of a Hugging Face parquet dataset (layout and rules in the module docstring).

    Args:
        root: the dataset folder (shards at any depth), or one ``.parquet`` file.
        split: ``train`` (= ``db``), ``query``, ``val`` or ``all``.
        train_ratio: without the dataset's own train/test splits, fraction of each first-label group
            in the database.
        val_ratio: fraction of each group's database held out as ``val`` (ignored when the dataset has
            a validation split).
        transform, target_transform, cache, cache_size: as ``ClassFolderDataset``.

    Raises:
        FileNotFoundError: no such folder or file, or no shard in it.
        ParquetError: a shard, column or row that cannot be used (named); pyarrow missing.
    """

    kind = "parquet dataset"

    def __init__(
        self,
        root: PathLike,
        split: str,
        train_ratio: float = 0.5,
        val_ratio: float = 0.0,
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
        cache: bool = False,
        cache_size: Optional[int] = None,
    ):
        check_split_arguments(split, train_ratio, val_ratio, cache_size)
        pq = _pyarrow_parquet()
        path = os.fspath(root)
        if os.path.isfile(path) and path.endswith(PARQUET_SUFFIX):
            root, rels = os.path.dirname(os.path.abspath(path)), [os.path.basename(path)]
        elif os.path.isdir(path):
            root, rels = path, list_parquet_shards(path)
        else:
            raise FileNotFoundError(f"parquet dataset '{path}' is neither a folder nor a .parquet file")
        if not rels:
            raise FileNotFoundError(f"parquet dataset '{path}' holds no *.parquet files")
        self.train_ratio, self.val_ratio = train_ratio, val_ratio
        self._shards = {rel: _Shard(root, rel, pq) for rel in rels}
        self._groups: OrderedDict[Tuple[str, int], Any] = OrderedDict()
        classes, rows = self._read_labels(root)
        splits, details = self._splits(path, rows, train_ratio, val_ratio, split)
        entries = [ImageEntry(f"{rel}#{row}", labels, row_split) for (rel, row, labels), row_split in zip(rows, splits)]
        self._select(root, split, entries, classes, transform, target_transform, cache, cache_size, details)

    # ---- labels and splits

    def _read_labels(self, root: str) -> Tuple[List[str], List[Tuple[str, int, Tuple[int, ...]]]]:
        first = next(iter(self._shards.values()))
        column, names = label_column(first.schema, first.features)
        values: List[Tuple[str, int, Any]] = []
        for shard in self._shards.values():
            shard_column, shard_names = label_column(shard.schema, shard.features)
            if (shard_column, shard_names) != (column, names):
                raise ParquetError(
                    f"parquet shard '{shard.path}' has label column {shard_column!r} with classes {shard_names}, "
                    f"shard '{first.path}' has {column!r} with {names}; every shard must agree"
                )
            labels = shard.labels(column) if column else [None] * shard.num_rows
            values.extend((shard.rel, row, value) for row, value in enumerate(labels))
        if column is None:
            logger.info("parquet dataset '%s' has no label column: unlabeled", root)
            return [], [(rel, row, ()) for rel, row, _ in values]
        if names is None:
            flat = [v for _, _, value in values for v in (value if isinstance(value, list) else [value])]
            if all(isinstance(v, int) for v in flat if v is not None):
                names = [str(i) for i in range(max((v for v in flat if v is not None), default=-1) + 1)]
            else:
                names = sorted({str(v) for v in flat if v is not None})
        index = {name: i for i, name in enumerate(names)}
        rows = []
        for rel, row, value in values:
            where = f"parquet shard '{self._shards[rel].path}', row {row}, column '{column}'"
            labels = tuple(self._label_index(v, names, index, where) for v in (value if isinstance(value, list) else [value]))
            if not labels:
                raise ParquetError(f"{where}: no label (label every row, or drop the column for an unlabeled set)")
            if len(set(labels)) != len(labels):
                raise ParquetError(f"{where}: a label listed twice in {value}")
            rows.append((rel, row, labels))
        return list(names), rows

    @staticmethod
    def _label_index(value, names: List[str], index: Dict[str, int], where: str) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
            return value
        if isinstance(value, str) and value in index:
            return index[value]
        raise ParquetError(f"{where}: label {value!r} is not a class (expected 0..{len(names) - 1} or one of the names)")

    def _splits(self, path: str, rows, train_ratio: float, val_ratio: float, split: str) -> Tuple[List[str], str]:
        named = {rel: shard_split(rel) for rel in self._shards}
        known = {name for name in named.values() if name is not None}
        for rel, name in named.items():
            if known and (name is None or name not in HUB_SPLITS):
                raise ParquetError(
                    f"parquet shard '{self._shards[rel].path}': split {name!r} is not one of {', '.join(HUB_SPLITS)} "
                    f"(other shards are named by split: {', '.join(sorted(known))})"
                )
        labeled = bool(rows) and bool(rows[0][2])
        if not labeled:
            return ["train"] * len(rows), "unlabeled"
        own = {HUB_SPLITS[name] for name in known}
        if {"train", "query"} <= own:
            splits = [HUB_SPLITS[named[rel]] for rel, _, _ in rows]
            details = f"the dataset's splits {', '.join(sorted(known))}"
            if "val" not in own and val_ratio > 0:
                splits = self._carve_val(path, rows, splits, val_ratio)
                details += f", val_ratio {val_ratio} of train"
            elif split == "val" and "val" not in own:
                raise ParquetError(f"parquet dataset '{path}' has no validation split: split 'val' needs val_ratio > 0")
            return splits, details
        if split == "val" and val_ratio == 0.0:
            raise ParquetError("split 'val' needs val_ratio > 0 (got val_ratio=0.0)")
        groups: Dict[int, List[int]] = {}
        for position, (_, _, labels) in enumerate(rows):
            groups.setdefault(labels[0], []).append(position)
        splits = [""] * len(rows)
        for label, members in groups.items():
            first_rel, first_row, _ = rows[members[0]]
            group = f"class {label} of parquet dataset '{path}' (first row: '{first_rel}' row {first_row})"
            n_train, n_val, _ = split_counts(len(members), train_ratio, val_ratio, group, split != "all")
            for rank, position in enumerate(members):
                splits[position] = split_of_position(rank, n_train, n_val)
        return splits, f"train_ratio {train_ratio}, val_ratio {val_ratio} (no train and test splits)"

    @staticmethod
    def _carve_val(path: str, rows, splits: List[str], val_ratio: float) -> List[str]:
        """The last ``int(n * val_ratio)`` train rows of each first-label group become ``val``."""
        groups: Dict[int, List[int]] = {}
        for position, ((_, _, labels), row_split) in enumerate(zip(rows, splits)):
            if row_split == "train":
                groups.setdefault(labels[0], []).append(position)
        splits = list(splits)
        for label, members in groups.items():
            n_val = int(len(members) * val_ratio)
            if n_val < 1 or n_val == len(members):
                raise ParquetError(
                    f"val_ratio={val_ratio} leaves class {label} of parquet dataset '{path}' ({len(members)} train rows) "
                    f"with {len(members) - n_val} training and {n_val} validation rows; each class needs both"
                )
            for position in members[len(members) - n_val :]:
                splits[position] = "val"
        return splits

    # ---- images

    def _row(self, index: int) -> Tuple[_Shard, int]:
        rel, row = parse_locator(self.entries[index].file)
        return self._shards[rel], row

    def _group_column(self, shard: _Shard, group: int):
        key = (shard.rel, group)
        column = self._groups.get(key)
        if column is None:
            column = shard.file.read_row_group(group, columns=[shard.image_column]).column(0).combine_chunks()
            self._groups[key] = column
            while len(self._groups) > 1 and sum(c.nbytes for c in self._groups.values()) > ROW_GROUP_CACHE_BYTES:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(key)
        return column

    def image_bytes(self, index: int) -> bytes:
        """The encoded image of sample ``index`` (its row group is read, and kept while the budget allows)."""
        shard, row = self._row(index)
        group, offset = row_group_of(shard.group_starts, row)
        return cell_bytes(self._group_column(shard, group), offset, f"parquet shard '{shard.path}', row {row}")

    def _load_image(self, index: int) -> Image.Image:
        data, name = self.encoded_image(index)
        return load_image_rgb(data, name)

    def encoded_image(self, index: int) -> Tuple[BinaryIO, str]:
        shard, row = self._row(index)
        return io.BytesIO(self.image_bytes(index)), f"in parquet shard '{shard.path}', row {row}"

    def stored_file(self, index: int) -> str:
        return self._row(index)[0].path

    def __getstate__(self):
        # Open shards and cached row groups stay in the process that read them (loader workers reopen).
        state = dict(self.__dict__)
        state["_groups"] = OrderedDict()
        state["_shards"] = {rel: shard.path for rel, shard in self._shards.items()}
        return state

    def __setstate__(self, state):
        pq = _pyarrow_parquet()
        shards = state.pop("_shards")
        self.__dict__.update(state)
        self._shards = {rel: _Shard(self.root, rel, pq) for rel in shards}
