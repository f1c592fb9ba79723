"""Exact k-nearest-neighbour search over packed binary codes, and its file format.

``BinaryIndex(nbits)`` holds packed codes (``pack_codes`` layout: uint8 [N, nbits/8], first bit in
the lowest bit, as faiss) and answers ``search(queries, k)`` with the first k codes in the order
(Hamming distance, id): exact, ties broken by id. Two search modes return the same result:

- ``flat``: a linear scan (numba popcount over 64-bit words, per-distance buckets instead of a
  sort, see ``dinov2.search.kernels``).
- ``mih``: multi-index hashing (Norouzi et al., TPAMI 2014): m substring tables probed at a radius
  grown until the k nearest are certain; sublinear on codes that are not uniformly random.
- ``auto`` (default): ``flat`` below ``auto_threshold`` codes. From there on, the first search
  after an ``add`` times both modes on its first few queries and keeps the faster one until the
  next ``add``: multi-index hashing wins on codes that group (as trained codes do) and loses badly
  on uniformly random ones. Both modes are exact, so the choice changes only the speed.

Memory: the packed codes (plus spare capacity left by ``add``; ``load`` allocates exactly N) and,
in ``mih`` mode, the tables: m id arrays of N int32 and m offset arrays of 2^(nbits/m) + 1 int64,
built at the first search after an ``add`` and not stored in the file.

File format (all integers little-endian), written atomically by ``save``::

    offset  size  field
         0     8  magic b"SDSHBIX\\0"
         8     4  format version (uint32, 1)
        12     4  header size in bytes (uint32, 64)
        16     4  nbits (uint32, a positive multiple of 8)
        20     4  mode (uint32: 0 flat, 1 mih, 2 auto)
        24     4  mih tables m (uint32; 0 = chosen from N at search time)
        28     4  reserved (0)
        32     8  count N (uint64)
        40     8  auto threshold (uint64)
        48     4  CRC-32 of the codes
        52     4  CRC-32 of bytes 0..51
        56     8  reserved (0)
        64  N*nbits/8  the packed codes, row-major

A file that is shorter or longer than the header announces, has another magic or version, or whose
checksums do not match, is refused with an ``IndexFormatError`` naming the file and the field.
"""

import math
import os
import struct
import time
import zlib
from typing import Optional

import numpy as np

from dinov2.checkpoint import atomic_path
from dinov2.search import kernels as index_kernels

MAGIC = b"SDSHBIX\0"
FORMAT_VERSION = 1
HEADER_SIZE = 64
_HEADER = struct.Struct("<8sIIIIIIQQII8x")  # the fields above; 64 bytes
_CRC_FIELDS = 52  # the header checksum covers the bytes before it
MODES = ("flat", "mih", "auto")
# From this many codes on, mode "auto" searches with multi-index hashing (see scripts/bench_index.py).
AUTO_THRESHOLD = 1_000_000
# Queries the first auto search above the threshold times in each mode.
AUTO_SAMPLE_QUERIES = 8
# Longest substring of a table: its offsets take 2^len + 1 int64 (8 MiB at 20 bits).
MAX_SUBSTRING_BITS = 20
_CRC_CHUNK = 64 << 20

assert _HEADER.size == HEADER_SIZE


class IndexFormatError(ValueError):
    """An index file that cannot be read: wrong magic or version, truncated, or corrupt."""


def _word_dtype(nbytes: int):
    """The widest unsigned word that divides a code (codes are scanned as words of it)."""
    for dtype in (np.uint64, np.uint32, np.uint16):
        if nbytes % np.dtype(dtype).itemsize == 0:
            return dtype
    return np.uint8


def default_mih_tables(nbits: int, n: int) -> int:
    """Number of substring tables for N codes: nbits / log2(N) (Norouzi et al.), substrings <= 20 bits."""
    m = round(nbits / math.log2(max(n, 2)))
    return int(min(nbits, max(1, m, math.ceil(nbits / MAX_SUBSTRING_BITS))))


def _crc32(data: np.ndarray) -> int:
    flat = data.reshape(-1)
    crc = 0
    for start in range(0, flat.size, _CRC_CHUNK):
        crc = zlib.crc32(flat[start : start + _CRC_CHUNK], crc)
    return crc


class BinaryIndex:
    """Exact Hamming k-NN over packed binary codes; ids are positions in order of ``add``.

    Args:
        nbits: code length, a positive multiple of 8.
        mode: ``flat``, ``mih`` or ``auto`` (``mih`` from ``auto_threshold`` codes on).
        mih_tables: number of substring tables m (None: ``default_mih_tables`` of the size).
        auto_threshold: size from which ``auto`` uses multi-index hashing.
    """

    def __init__(
        self, nbits: int, mode: str = "auto", mih_tables: Optional[int] = None, auto_threshold: int = AUTO_THRESHOLD
    ):
        if isinstance(nbits, bool) or not isinstance(nbits, (int, np.integer)) or nbits <= 0 or nbits % 8:
            raise ValueError(f"nbits must be a positive multiple of 8, got {nbits!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mih_tables is not None and not math.ceil(nbits / MAX_SUBSTRING_BITS) <= int(mih_tables) <= nbits:
            raise ValueError(
                f"mih_tables must be in [{math.ceil(nbits / MAX_SUBSTRING_BITS)}, {nbits}] for {nbits} bits "
                f"(substrings of at most {MAX_SUBSTRING_BITS} bits), got {mih_tables!r}"
            )
        if int(auto_threshold) < 0:
            raise ValueError(f"auto_threshold must be >= 0, got {auto_threshold!r}")
        self.nbits = int(nbits)
        self.nbytes = self.nbits // 8
        self.mode = mode
        self.mih_tables = None if mih_tables is None else int(mih_tables)
        self.auto_threshold = int(auto_threshold)
        self._word = _word_dtype(self.nbytes)
        self._buffer = np.empty((0, self.nbytes), dtype=np.uint8)
        self._n = 0
        self._tables = None  # (n, m, starts, lengths, masks, offsets, ids) of the last build
        self._auto_choice = None  # (n, "flat" or "mih") measured by the last auto search

    # ---- contents

    @property
    def ntotal(self) -> int:
        """Number of codes held."""
        return self._n

    def __len__(self) -> int:
        return self._n

    @property
    def codes(self) -> np.ndarray:
        """The packed codes, uint8 [N, nbits/8] (a read-only view, no copy)."""
        view = self._buffer[: self._n]
        view.flags.writeable = False
        return view

    def memory_bytes(self) -> int:
        """Bytes held: the code buffer (with its spare capacity) and the multi-index tables."""
        total = self._buffer.nbytes
        if self._tables is not None:
            total += sum(a.nbytes for a in self._tables[4:])
        return total

    def _check_codes(self, codes, name: str) -> np.ndarray:
        array = np.asarray(codes)
        if array.dtype != np.uint8:
            raise ValueError(
                f"{name} must be packed codes of dtype uint8 (see dinov2.eval.hashing.pack_codes), got {array.dtype}"
            )
        if array.ndim != 2 or array.shape[1] != self.nbytes:
            raise ValueError(
                f"{name} must have shape [n, {self.nbytes}] ({self.nbits} bits packed 8 per byte), got {array.shape}"
            )
        return np.ascontiguousarray(array)

    def reserve(self, n: int) -> None:
        """Make room for ``n`` codes in total, so adds up to that size do not reallocate."""
        if n > self._buffer.shape[0]:
            grown = np.empty((n, self.nbytes), dtype=np.uint8)
            grown[: self._n] = self._buffer[: self._n]
            self._buffer = grown

    def add(self, codes) -> None:
        """Append packed codes uint8 [n, nbits/8]; they get ids N..N+n-1."""
        array = self._check_codes(codes, "codes")
        end = self._n + array.shape[0]
        if end > self._buffer.shape[0]:
            self.reserve(max(end, self._buffer.shape[0] * 3 // 2))
        self._buffer[self._n : end] = array
        self._n = end

    # ---- search

    def resolved_mode(self) -> str:
        """``flat`` or ``mih``: what a search with the current size uses (in ``auto`` above the
        threshold: the measured choice, or ``mih`` before the first search has measured it)."""
        if self.mode == "auto":
            if self._n < max(self.auto_threshold, 1):
                return "flat"
            return "mih" if self._auto_unmeasured() else self._auto_choice[1]
        return self.mode

    def _auto_unmeasured(self) -> bool:
        # auto above the threshold, and no choice measured for the current number of codes
        return (
            self.mode == "auto"
            and self._n >= max(self.auto_threshold, 1)
            and (self._auto_choice is None or self._auto_choice[0] != self._n)
        )

    def _measure_auto_choice(self, q: np.ndarray, qw: np.ndarray, codes: np.ndarray, k: int) -> str:
        # Time both exact modes on the first queries (after one untimed query each, which also
        # compiles or loads the kernels) and keep the faster one for this many codes.
        self._mih_tables()
        sample = slice(0, min(len(q), AUTO_SAMPLE_QUERIES))
        timings = {}
        for mode in ("flat", "mih"):
            self._search_mode(mode, q[:1], qw[:1], codes, k)
            start = time.perf_counter()
            self._search_mode(mode, q[sample], qw[sample], codes, k)
            timings[mode] = time.perf_counter() - start
        choice = "mih" if timings["mih"] < timings["flat"] else "flat"
        self._auto_choice = (self._n, choice)
        if choice == "flat":
            self._tables = None  # the flat scan needs only the codes
        return choice

    def _search_mode(self, mode: str, q: np.ndarray, qw: np.ndarray, codes: np.ndarray, k: int):
        if mode == "flat":
            dist, ids = index_kernels.flat_search(qw, codes, k, self.nbits)
            return dist, ids, np.full(q.shape[0], self._n, dtype=np.int64)
        _, _, starts, lengths, masks, offsets, table_ids = self._mih_tables()
        subs = index_kernels.substrings(q, starts, lengths)
        return index_kernels.mih_search(qw, codes, subs, starts, lengths, masks, offsets, table_ids, k, self.nbits)

    def _words(self, packed: np.ndarray) -> np.ndarray:
        return packed.view(self._word)

    def _mih_tables(self):
        if self._tables is None or self._tables[0] != self._n:
            m = self.mih_tables or default_mih_tables(self.nbits, self._n)
            starts, lengths = index_kernels.substring_layout(self.nbits, m)
            word_bits = 8 * np.dtype(self._word).itemsize
            masks = index_kernels.substring_masks(starts, lengths, word_bits, self.nbytes * 8 // word_bits)
            self._tables = None  # release the old tables before building new ones
            offsets, ids = index_kernels.build_tables(self._buffer[: self._n], starts, lengths)
            self._tables = (self._n, m, starts, lengths, masks, offsets, ids)
        return self._tables

    def build(self) -> None:
        """Build the multi-index tables now if the mode uses them (a search would build them)."""
        if self.resolved_mode() == "mih" and self._n > 0:
            self._mih_tables()

    def search(self, queries, k: int, return_probed: bool = False):
        """The k nearest codes of every query, in the order (Hamming distance, id).

        Args:
            queries: packed query codes uint8 [Q, nbits/8].
            k: neighbours per query, 1 <= k <= N.
            return_probed: also return the number of codes whose distance was computed, per query.
        Returns:
            (distances int32 [Q, k], ids int64 [Q, k]) (and probed int64 [Q] if asked).
        """
        q = self._check_codes(queries, "queries")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if self._n == 0:
            raise ValueError("the index is empty: add codes before searching")
        if k > self._n:
            raise ValueError(f"k={k} exceeds the number of indexed codes ({self._n})")
        k = int(k)
        codes = self._words(self._buffer[: self._n])
        qw = self._words(q)
        if q.shape[0] == 0:
            mode = "flat"
        elif self._auto_unmeasured():
            mode = self._measure_auto_choice(q, qw, codes, k)
        else:
            mode = self.resolved_mode()
        dist, ids, probed = self._search_mode(mode, q, qw, codes, k)
        return (dist, ids, probed) if return_probed else (dist, ids)

    # ---- file

    def save(self, path: str) -> str:
        """Write the index (header + packed codes, see the module docstring) atomically to ``path``."""
        codes = self._buffer[: self._n]
        header = _HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            HEADER_SIZE,
            self.nbits,
            MODES.index(self.mode),
            self.mih_tables or 0,
            0,
            self._n,
            self.auto_threshold,
            _crc32(codes),
            0,
        )
        header = header[:_CRC_FIELDS] + struct.pack("<I", zlib.crc32(header[:_CRC_FIELDS])) + header[_CRC_FIELDS + 4 :]
        with atomic_path(path) as tmp_path, open(tmp_path, "wb") as f:
            f.write(header)
            if codes.size:
                f.write(memoryview(codes.reshape(-1)))
        return path

    @classmethod
    def load(cls, path: str, mmap: bool = False, verify: bool = True) -> "BinaryIndex":
        """Read an index written by ``save``.

        Args:
            path: the index file.
            mmap: map the codes read-only instead of reading them (an ``add`` then copies them).
            verify: check the CRC-32 of the codes (reads them all once).
        Raises:
            IndexFormatError: wrong magic or version, bad header fields, truncated or corrupt file.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"index file not found: {path}")
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(HEADER_SIZE)
        if len(raw) < len(MAGIC) or raw[: len(MAGIC)] != MAGIC:
            raise IndexFormatError(f"{path}: not a binary index file (magic {raw[:8]!r}, expected {MAGIC!r})")
        if len(raw) < HEADER_SIZE:
            raise IndexFormatError(f"{path}: truncated header ({len(raw)} of {HEADER_SIZE} bytes)")
        fields = _HEADER.unpack(raw)
        _, version, header_size, nbits, mode, mih_tables, _, count, threshold, codes_crc, header_crc = fields
        if version != FORMAT_VERSION:
            raise IndexFormatError(f"{path}: format version {version}, this code reads version {FORMAT_VERSION}")
        if zlib.crc32(raw[:_CRC_FIELDS]) != header_crc:
            raise IndexFormatError(f"{path}: corrupt header (header checksum mismatch)")
        bad_tables = (
            nbits % 8 == 0
            and nbits > 0
            and mih_tables
            and not (math.ceil(nbits / MAX_SUBSTRING_BITS) <= mih_tables <= nbits)
        )
        if header_size != HEADER_SIZE or nbits == 0 or nbits % 8 or mode >= len(MODES) or bad_tables:
            raise IndexFormatError(
                f"{path}: bad header fields (header_size={header_size}, nbits={nbits}, mode={mode}, "
                f"mih_tables={mih_tables})"
            )
        expected = HEADER_SIZE + count * (nbits // 8)
        if size != expected:
            what = "truncated" if size < expected else "has trailing bytes"
            raise IndexFormatError(
                f"{path}: {what}: {size} bytes, the header announces {count} codes of {nbits} bits ({expected} bytes)"
            )
        index = cls(nbits, MODES[mode], mih_tables or None, threshold)
        if mmap and count:
            codes = np.memmap(path, dtype=np.uint8, mode="r", offset=HEADER_SIZE, shape=(count, nbits // 8))
        else:
            codes = np.fromfile(path, dtype=np.uint8, offset=HEADER_SIZE).reshape(count, nbits // 8)
        if verify and _crc32(np.asarray(codes)) != codes_crc:
            raise IndexFormatError(f"{path}: corrupt codes (checksum mismatch)")
        index._buffer = codes
        index._n = int(count)
        return index

