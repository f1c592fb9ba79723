"""A dataset given as an image list file: one image per line, with zero, one or several labels.

Format (CSV, so a path with a comma can be quoted)::

    # comments and blank lines are skipped; the header line is optional
    path,labels,split
    airport/airport_1.jpg,airport
    tiles/0001.png,building;road;tree
    /abs/path/scene.tif,river,query

- ``path``: relative to the folder of the list file (or absolute);
- ``labels``: names separated by ";" (several = multi-label; relevant = at least one shared label);
  empty on every line = an unlabeled list (training and indexing only);
- ``split`` (optional column): ``train`` (or ``db``), ``val`` or ``query`` on every line. Without it,
  the lines are grouped by their first label, in list order, and each group is split by
  ``train_ratio`` / ``val_ratio`` exactly like a class folder (the first ``int(n * train_ratio)`` lines
  are the database); an unlabeled list is all training data.

Without a header the columns are positional: ``path[,labels[,split]]``. Every problem is a
``ImageListError`` naming the list file and the line.
"""

import csv
import os
from typing import Callable, Dict, List, Optional, Tuple

from .base import ImageEntry, SplitImageDataset, check_split_arguments, split_counts, split_of_position
from .decoders import PathLike

COLUMNS = ("path", "labels", "split")
_COLUMN_ALIASES = {"label": "labels", "file": "path", "image": "path"}
_SPLIT_VALUES = {"train": "train", "db": "train", "val": "val", "query": "query"}


class ImageListError(ValueError):
    """An image list file that cannot be used: the message names the file and the line."""


class _Row:
    __slots__ = ("line", "path", "labels", "split")

    def __init__(self, line: int, path: str, labels: Tuple[str, ...], split: str):
        self.line, self.path, self.labels, self.split = line, path, labels, split


def _header_columns(fields: List[str]) -> Optional[List[str]]:
    names = [_COLUMN_ALIASES.get(f.strip().lower(), f.strip().lower()) for f in fields]
    if not names or names[0] != "path":
        return None
    return names


def read_image_list(list_file: str) -> List[_Row]:
    """The rows of an image list, checked: every file exists, no path twice, consistent columns."""
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"image list '{list_file}' does not exist or is not a file")
    base = os.path.dirname(os.path.abspath(list_file))
    rows: List[_Row] = []
    seen: Dict[str, int] = {}
    columns: Optional[List[str]] = None
    try:
        with open(list_file, newline="", encoding="utf-8-sig") as f:
            for line_number, fields in enumerate(csv.reader(f), start=1):
                where = f"image list '{list_file}', line {line_number}"
                if not fields or not "".join(fields).strip() or fields[0].lstrip().startswith("#"):
                    continue
                if columns is None and not rows:
                    header = _header_columns(fields)
                    if header is not None:
                        unknown = sorted(set(header) - set(COLUMNS))
                        if unknown or len(set(header)) != len(header):
                            raise ImageListError(
                                f"{where}: header columns {fields} must be distinct names among {', '.join(COLUMNS)}"
                            )
                        columns = header
                        continue
                names = columns or list(COLUMNS[: len(fields)])
                if len(fields) > len(names):
                    raise ImageListError(
                        f"{where}: {len(fields)} columns, expected at most {len(names)} ({','.join(names)}); "
                        "quote a path that contains a comma"
                    )
                values = dict(zip(names, (field.strip() for field in fields)))
                path = values.get("path", "")
                if not path:
                    raise ImageListError(f"{where}: the path is empty")
                labels = tuple(name.strip() for name in values.get("labels", "").split(";") if name.strip())
                if len(set(labels)) != len(labels):
                    raise ImageListError(f"{where}: label listed twice in '{values['labels']}'")
                split = values.get("split", "")
                if split and split.lower() not in _SPLIT_VALUES:
                    raise ImageListError(f"{where}: split '{split}' is not one of train, db, val, query")
                absolute = os.path.normpath(path if os.path.isabs(path) else os.path.join(base, path))
                if absolute in seen:
                    raise ImageListError(f"{where}: '{path}' is already listed on line {seen[absolute]}")
                if not os.path.isfile(absolute):
                    raise ImageListError(f"{where}: image file '{absolute}' not found")
                seen[absolute] = line_number
                rows.append(_Row(line_number, path, labels, _SPLIT_VALUES.get(split.lower(), "")))
    except UnicodeDecodeError as exc:
        raise ImageListError(f"image list '{list_file}' is not UTF-8 text ({exc})") from None
    except csv.Error as exc:
        raise ImageListError(f"image list '{list_file}': {exc}") from None
    if not rows:
        raise ImageListError(f"image list '{list_file}' lists no images")
    _check_consistent(list_file, rows)
    return rows


def _check_consistent(list_file: str, rows: List[_Row]) -> None:
    labeled = [row for row in rows if row.labels]
    if labeled and len(labeled) != len(rows):
        first = next(row for row in rows if not row.labels)
        raise ImageListError(
            f"image list '{list_file}', line {first.line}: '{first.path}' has no label while line "
            f"{labeled[0].line} has one; label every line or none"
        )
    with_split = [row for row in rows if row.split]
    if with_split and len(with_split) != len(rows):
        first = next(row for row in rows if not row.split)
        raise ImageListError(
            f"image list '{list_file}', line {first.line}: no split while line {with_split[0].line} has one; "
            "give the split on every line or on none (then train_ratio decides)"
        )


def _relative_file(path: str) -> str:
    return path if os.path.isabs(path) else os.path.normpath(path).replace(os.sep, "/")


class ImageListDataset(SplitImageDataset):
    """One split of the images of an image list file (format in the module docstring).

    Args:
        list_file: the list; relative paths in it are relative to its folder (the ``root``).
        split: ``train`` (= ``db``), ``query``, ``val`` or ``all``.
        train_ratio: without a split column, fraction of each first-label group in the database.
        val_ratio: without a split column, fraction of each group's database held out as ``val``.
        transform, target_transform, cache, cache_size: as ``ClassFolderDataset``.

    Raises:
        FileNotFoundError: the list file is missing.
        ImageListError: a line that cannot be used, named with its number; a split without images.
    """

    kind = "image list"

    def __init__(
        self,
        list_file: PathLike,
        split: str,
        train_ratio: float = 0.5,
        val_ratio: float = 0.0,
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
        cache: bool = False,
        cache_size: Optional[int] = None,
    ):
        check_split_arguments(split, train_ratio, val_ratio, cache_size)
        self.list_file = os.fspath(list_file)
        self.train_ratio = train_ratio
        self.val_ratio = val_ratio
        rows = read_image_list(self.list_file)
        classes = sorted({name for row in rows for name in row.labels})
        index = {name: i for i, name in enumerate(classes)}
        splits = self._splits(rows, train_ratio, val_ratio, split != "all")
        entries = [
            ImageEntry(_relative_file(row.path), tuple(index[name] for name in row.labels), row_split)
            for row, row_split in zip(rows, splits)
        ]
        if split in ("query", "val") and rows[0].labels and not any(e.split == split for e in entries):
            raise ImageListError(f"image list '{self.list_file}' has no line in split {split}")
        if rows[0].split:
            details = "split column"
        else:
            details = f"train_ratio {train_ratio}, val_ratio {val_ratio}"
        root = os.path.dirname(os.path.abspath(self.list_file))
        self._select(root, split, entries, classes, transform, target_transform, cache, cache_size, details)

    def _splits(self, rows: List[_Row], train_ratio: float, val_ratio: float, need_split: bool) -> List[str]:
        if rows[0].split:
            return [row.split for row in rows]
        if not rows[0].labels:
            return ["train"] * len(rows)
        groups: Dict[str, List[int]] = {}
        for position, row in enumerate(rows):
            groups.setdefault(row.labels[0], []).append(position)
        splits = [""] * len(rows)
        for name, members in groups.items():
            group = f"class '{name}' of image list '{self.list_file}' (first label of lines {rows[members[0]].line}, ...)"
            try:
                n_train, n_val, _ = split_counts(len(members), train_ratio, val_ratio, group, need_split)
            except ValueError as exc:
                raise ImageListError(str(exc)) from None
            for rank, position in enumerate(members):
                splits[position] = split_of_position(rank, n_train, n_val)
        return splits
