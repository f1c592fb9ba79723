"""A searchable archive: a folder of images encoded by a teacher into a ``BinaryIndex``, on disk.

Layout of an index directory (``python -m dinov2.search build`` writes it)::

    fingerprint.json  what the codes depend on (weights file, model config, image list, chunk size)
    chunks/chunk_<i>.npy  packed codes uint8 [n_i, ceil(K/8)] of images i*chunk_size .. , one file each
    index.sdshbix     the BinaryIndex of all codes (ids = positions in files.jsonl)
    files.jsonl       one JSON object per id: {"id", "path" (relative to the image root), "labels"}
    meta.json         format version, code bits, count, weights, image root, config; written last

Every file is written atomically. ``meta.json`` is written after everything else, so a directory
without it is an unfinished build that the next ``build`` with the same fingerprint resumes from
its finished chunks, and that ``search``/``serve`` refuse.
"""

import hashlib
import json
import os
import threading
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from dinov2.checkpoint import atomic_path, atomic_write_text, weights_identity
from dinov2.data import make_classification_eval_transform
from dinov2.data.datasets import open_image_source
from dinov2.distributed.devices import select_device
from dinov2.eval.encode import extract_codes
from dinov2.eval.hashing import binarize, pack_codes_padded
from dinov2.models.hashing_network import NETWORK_CONFIG_SECTIONS, load_hashing_network
from dinov2.search.index import BinaryIndex, IndexFormatError

FORMAT_NAME = "sdsh-archive-index"
FORMAT_VERSION = 1
FINGERPRINT_FILE = "fingerprint.json"
CHUNKS_DIR = "chunks"
INDEX_FILE = "index.sdshbix"
FILES_FILE = "files.jsonl"
META_FILE = "meta.json"
DEFAULT_CHUNK_SIZE = 1024


class ArchiveError(RuntimeError):
    """An index directory or an image set that cannot be used (the message names the file or option)."""


# ---------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------


def open_images(path: str, transform=None, source: str = "auto"):
    """The image set of ``--images``: class folders, an image list file (CSV) or an unlabeled folder tree.

    ``source`` is one of ``dinov2.data.datasets.SOURCES``; ``auto`` decides from the path as
    ``data.source=auto`` does in training. Every image of the set is indexed (split ``all``).

    Returns:
        A dataset of ``(image, target)`` with ``.root``, ``.samples`` [(absolute path, target)] and
        ``label_names(i)``.
    Raises:
        ArchiveError: ``path`` does not exist, is of the wrong kind for ``source``, or a list line is
            unusable (the message names the file and line).
    """
    if not os.path.exists(path):
        raise ArchiveError(f"--images {path}: no such folder or image list file")
    try:
        return open_image_source(path, source, "all", transform=transform)
    except (ValueError, FileNotFoundError) as exc:  # ImageListError is a ValueError
        raise ArchiveError(f"--images {path} (--source {source}): {exc}") from None


def label_names(dataset, index: int) -> List[str]:
    """The label names of sample ``index`` (one class name for a class folder tree)."""
    if hasattr(dataset, "label_names"):
        return list(dataset.label_names(index))
    return [dataset.classes[dataset.samples[index][1]]]


def check_images_readable(paths: Sequence[str], progress: bool = False) -> None:
    """Open every file and check its structure (``PIL.Image.verify``) without decoding the pixels.

    Raises:
        ArchiveError: naming the first file that is not a readable image.
    """
    if progress:
        from tqdm import tqdm

        paths = tqdm(paths, desc="checking images", unit="image", leave=False)
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
            raise ArchiveError(f"cannot read image file '{path}': {type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------------------------------------------
# Fingerprint and chunks
# ---------------------------------------------------------------------------------------------------


def image_list_digest(dataset) -> str:
    """SHA-256 over every image's relative path, size and modification time, in id order."""
    digest = hashlib.sha256()
    for (path, _), rel in zip(dataset.samples, dataset.relative_files()):
        stat = os.stat(path)
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def build_fingerprint(cfg, weights: str, dataset, chunk_size: int) -> Dict[str, Any]:
    """What the chunk files depend on: a finished chunk is reused only under the same values."""
    fingerprint: Dict[str, Any] = {"format_version": FORMAT_VERSION, **weights_identity(weights)}
    for section in NETWORK_CONFIG_SECTIONS:
        fingerprint[section] = OmegaConf.to_container(cfg[section], resolve=True)
    fingerprint.update(
        image_root=os.path.abspath(dataset.root),
        image_count=len(dataset),
        image_list_sha256=image_list_digest(dataset),
        chunk_size=int(chunk_size),
    )
    return fingerprint


def fingerprint_differences(stored: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """Top-level keys whose values differ between two fingerprints."""
    return sorted(key for key in set(stored) | set(current) if stored.get(key) != current.get(key))


def chunk_path(index_dir: str, chunk: int) -> str:
    return os.path.join(index_dir, CHUNKS_DIR, f"chunk_{chunk:06d}.npy")


def chunk_ranges(count: int, chunk_size: int) -> List[range]:
    """Image ids of each chunk: [0, c), [c, 2c), ... the last one shorter."""
    return [range(start, min(start + chunk_size, count)) for start in range(0, count, chunk_size)]


def write_chunk(path: str, packed: np.ndarray) -> None:
    with atomic_path(path) as tmp_path, open(tmp_path, "wb") as f:
        np.save(f, packed, allow_pickle=False)


def read_chunk(path: str, rows: int, nbytes: int) -> np.ndarray:
    """A finished chunk, checked against the rows and bytes per code it must have."""
    try:
        packed = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"chunk file {path} cannot be read ({exc}); delete it and run build again") from None
    if packed.dtype != np.uint8 or packed.shape != (rows, nbytes):
        raise ArchiveError(
            f"chunk file {path} holds {packed.dtype} {packed.shape}, expected uint8 ({rows}, {nbytes}); "
            "delete it and run build again"
        )
    return packed


def encode_packed(network, dataset, batch_size: int, num_workers: int, device) -> np.ndarray:
    """Packed binary codes uint8 [N, ceil(K/8)] of every image of ``dataset``, in this process alone."""
    codes, _ = extract_codes(network, dataset, batch_size, num_workers, device, progress=False, shard=False)
    return pack_codes_padded(binarize(codes.numpy()))


# ---------------------------------------------------------------------------------------------------
# Merge and read back
# ---------------------------------------------------------------------------------------------------


def merge_chunks(index_dir: str, dataset, nbits: int, chunk_size: int, meta: Dict[str, Any]) -> Dict[str, Any]:
    """Write index.sdshbix, files.jsonl and, last, meta.json from the finished chunks.

    Args:
        index_dir: the index directory.
        dataset: the image set (ids = sample positions).
        nbits: code length K of the network.
        chunk_size: images per chunk.
        meta: the fields of meta.json other than those computed here.
    Returns:
        The meta.json fields written.
    """
    nbytes = -(-nbits // 8)
    index = BinaryIndex(8 * nbytes)
    index.reserve(len(dataset))
    for chunk, ids in enumerate(chunk_ranges(len(dataset), chunk_size)):
        index.add(read_chunk(chunk_path(index_dir, chunk), len(ids), nbytes))
    index.save(os.path.join(index_dir, INDEX_FILE))
    lines = [
        json.dumps({"id": i, "path": rel, "labels": label_names(dataset, i)}, ensure_ascii=False)
        for i, rel in enumerate(dataset.relative_files())
    ]
    atomic_write_text(os.path.join(index_dir, FILES_FILE), "".join(line + "\n" for line in lines))
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "nbits": int(nbits),
        "index_nbits": 8 * nbytes,
        "count": len(dataset),
        "image_root": os.path.abspath(dataset.root),
        "chunk_size": int(chunk_size),
        "index_file": INDEX_FILE,
        "files_file": FILES_FILE,
        **meta,
    }
    atomic_write_text(os.path.join(index_dir, META_FILE), json.dumps(meta, indent=2) + "\n")
    return meta


def read_meta(index_dir: str) -> Dict[str, Any]:
    """meta.json of a finished index directory.

    Raises:
        ArchiveError: not a directory, no meta.json (an unfinished build), another format or version.
    """
    if not os.path.isdir(index_dir):
        raise ArchiveError(f"--index {index_dir}: not a directory (expected the --output-dir of a build)")
    path = os.path.join(index_dir, META_FILE)
    if not os.path.isfile(path):
        raise ArchiveError(
            f"{index_dir} has no {META_FILE}: the build did not finish (run build again with the same options "
            "to resume it)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"{path} cannot be read: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
        found = (meta.get("format"), meta.get("format_version")) if isinstance(meta, dict) else type(meta).__name__
        raise ArchiveError(f"{path}: format {found}, expected ({FORMAT_NAME!r}, {FORMAT_VERSION})")
    return meta


def read_records(index_dir: str, meta: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The records of files.jsonl, checked to number ``meta['count']`` with ids 0..count-1 in order."""
    path = os.path.join(index_dir, meta["files_file"])
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for line_number, line in enumerate(f, 1):
                record = json.loads(line)
                if record.get("id") != len(records) or not isinstance(record.get("path"), str):
                    raise ArchiveError(f"{path}, line {line_number}: expected the record of id {len(records)}")
                records.append(record)
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"{path} cannot be read: {exc}") from None
    if len(records) != meta["count"]:
        raise ArchiveError(f"{path} has {len(records)} records, {META_FILE} announces {meta['count']}")
    return records


class ArchiveSearcher:
    """A finished index directory with its network loaded once: image in, nearest indexed images out.

    Encoding and search run under one lock, so the searcher can be shared by threads.

    Args:
        index_dir: the index directory.
        weights: the teacher checkpoint; None uses the one recorded in meta.json.
        device: ``cpu``, ``cuda`` or ``auto`` (the GPU when there is one).
    """

    def __init__(self, index_dir: str, weights: Optional[str] = None, device: str = "auto"):
        self.index_dir = index_dir
        self.meta = read_meta(index_dir)
        self.records = read_records(index_dir, self.meta)
        index_path = os.path.join(index_dir, self.meta["index_file"])
        try:
            self.index = BinaryIndex.load(index_path)
        except (IndexFormatError, FileNotFoundError) as exc:
            raise ArchiveError(str(exc)) from None
        if self.index.ntotal != self.meta["count"] or self.index.nbits != self.meta["index_nbits"]:
            raise ArchiveError(
                f"{index_path} holds {self.index.ntotal} codes of {self.index.nbits} bits, {META_FILE} announces "
                f"{self.meta['count']} of {self.meta['index_nbits']}"
            )
        self.weights = weights or self.meta["weights"]
        if not self.weights or not os.path.isfile(self.weights):
            raise ArchiveError(f"weights file not found: {self.weights} (recorded in {META_FILE}; pass --weights)")
        self.cfg = OmegaConf.create(self.meta["config"])
        self.cfg.train.device = device
        self.device = select_device(self.cfg)
        self.network, _ = load_hashing_network(self.cfg, self.weights, self.device)
        self.transform = make_classification_eval_transform(crop_size=self.cfg.crops.global_crops_size)
        self.index.build()  # multi-index tables, if the mode uses them, before threads share the index
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return self.index.ntotal

    @property
    def nbits(self) -> int:
        return int(self.meta["nbits"])

    def image_path(self, image_id: int) -> str:
        """Absolute path of indexed image ``image_id`` (0 <= id < count)."""
        path = self.records[image_id]["path"]
        if os.path.isabs(path):  # an image list may name files outside its folder
            return path
        return os.path.join(self.meta["image_root"], *path.split("/"))

    def search(self, image: Image.Image, k: int) -> List[Dict[str, Any]]:
        """The ``min(k, count)`` nearest indexed images of an RGB image, by (Hamming distance, id).

        Returns:
            One dict per result: rank (from 1), id, path (relative to the image root), distance, labels.
        """
        batch = self.transform(image)[None]
        with self._lock, torch.no_grad():
            code = self.network(batch.to(self.device)).float().cpu().numpy()  # [1, K]
            distances, ids = self.index.search(pack_codes_padded(binarize(code)), min(int(k), self.count))
        return [
            {
                "rank": rank + 1,
                "id": int(i),
                "path": self.records[int(i)]["path"],
                "distance": int(d),
                "labels": list(self.records[int(i)].get("labels", [])),
            }
            for rank, (d, i) in enumerate(zip(distances[0], ids[0]))
        ]
